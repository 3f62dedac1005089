"""MinAtar games (Young & Tian, 2019) as gymnasium environments that take any gymnasium seed."""

from __future__ import annotations

from minatar.gym import BaseEnv


class MinAtarEnv(BaseEnv):
    """The `minatar` package's environment; seeds beyond 32 bits are folded into its legacy RNG's range."""

    def seed(self, seed: int | None = None) -> None:
        super().seed(None if seed is None else seed % 2**32)

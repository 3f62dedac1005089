"""When structured exploration noise is redrawn: every episode start and every k steps."""

from __future__ import annotations

from typing import Literal

from stable_baselines3.common.callbacks import BaseCallback


class ResamplingCallback(BaseCallback):
    """Base for callbacks that redraw noise at every episode start and, with an integer
    `interval` k, every k environment steps within an episode.

    :param interval: "episode", or k
    """

    def __init__(self, interval: int | Literal["episode"] = "episode", verbose: int = 0) -> None:
        super().__init__(verbose)
        if interval != "episode" and (not isinstance(interval, int) or isinstance(interval, bool) or interval <= 0):
            raise ValueError(f"interval must be 'episode' or a positive integer, got {interval!r}")
        self.interval = interval
        self._steps_in_episode = 0

    def _resample_due(self) -> bool:
        """Count the step just taken; whether the next action needs new noise."""
        self._steps_in_episode += 1
        if self.locals["dones"][0]:
            self._steps_in_episode = 0
            return True
        return self.interval != "episode" and self._steps_in_episode % self.interval == 0

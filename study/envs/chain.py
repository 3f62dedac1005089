"""The chain MDP of Osband et al. (2016), as used by Plappert et al. (2018) for DQN exploration."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium import spaces

LEFT, RIGHT = 0, 1


class ChainEnv(gym.Env[np.ndarray, np.int64]):
    """States s_1..s_N, start in s_2, actions left/right, N + 9 steps per episode.

    Choosing left in s_1 pays 0.001, choosing right in s_N pays 1; every other step pays 0.
    The observation is the thermometer encoding of the state (ones up to and including it).
    The optimal policy goes right all the way and keeps pushing right at s_N
    (`optimal_return`); going left to s_1 is the deceptive local optimum.

    With the thermometer encoding a network that maps every state to the same action
    generalizes "right" to the whole chain. `randomize_actions` removes that shortcut as
    bsuite's DeepSea does: in each state a fixed random choice, drawn from `task_seed`, decides
    which of the two actions moves right, so the way right must be learned state by state.

    :param n: the chain length N (at least 3)
    :param randomize_actions: draw per state which action moves right
    :param task_seed: the seed of that draw (a run passes its own seed)
    """

    metadata = {"render_modes": []}

    def __init__(self, n: int = 10, randomize_actions: bool = False, task_seed: int = 0) -> None:
        if int(n) != n or n < 3:
            raise ValueError(f"chain length n must be an integer >= 3, got {n!r}")
        self.n = int(n)
        # the action that moves right in each state
        self.right = (
            np.random.default_rng(task_seed).integers(0, 2, size=self.n)
            if randomize_actions
            else np.full(self.n, RIGHT)
        )
        self.horizon = self.n + 9
        self.observation_space = spaces.Box(0.0, 1.0, shape=(self.n,), dtype=np.float32)
        self.action_space = spaces.Discrete(2)
        self._encodings = np.tril(np.ones((self.n, self.n), dtype=np.float32))
        self._state = 1
        self._t = 0

    @property
    def optimal_return(self) -> float:
        """The return of always going right: one reward per step spent pushing right in s_N."""
        return float(self.horizon - (self.n - 2))

    def reset(self, *, seed: int | None = None, options: dict[str, Any] | None = None) -> tuple[np.ndarray, dict]:
        super().reset(seed=seed)
        self._state, self._t = 1, 0  # s_2, 0-based
        return self._encodings[self._state].copy(), {}

    def step(self, action: int) -> tuple[np.ndarray, float, bool, bool, dict]:
        if not self.action_space.contains(action):
            raise ValueError(f"invalid action {action!r}: 0 or 1")
        reward = 0.0
        if action == self.right[self._state]:
            reward = 1.0 if self._state == self.n - 1 else 0.0
            self._state = min(self._state + 1, self.n - 1)
        else:
            reward = 0.001 if self._state == 0 else 0.0
            self._state = max(self._state - 1, 0)
        self._t += 1
        return self._encodings[self._state].copy(), reward, False, self._t >= self.horizon, {}

"""Temporally extended ε-greedy, εz-greedy (Dabney, Ostrovski & Barreto, ICLR 2021).

While no random action is running, with probability ε start one: a uniformly random action
repeated for a duration n ~ zeta(μ) (P(n) ∝ n^−μ, n ≥ 1), otherwise act greedily. With every
duration 1 it is ε-greedy. It is the discrete, action-space analogue of the sampling interval k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback


class EzGreedy:
    """The εz-greedy choice of one env's actions, from its own random stream; a running random
    action ends at the episode's end."""

    def __init__(self, mu: float, max_duration: int, n_actions: int, rng: np.random.Generator) -> None:
        self.mu, self.max_duration, self.n_actions, self.rng = mu, max_duration, n_actions, rng
        self.remaining = 0  # steps the running random action still takes
        self.action = 0
        self.durations: dict[int, int] = {}  # how often each duration was drawn

    def act(self, greedy: int, epsilon: float) -> int:
        """This step's action, given the greedy one and the current ε."""
        if self.remaining == 0 and self.rng.random() < epsilon:
            self.remaining = min(int(self.rng.zipf(self.mu)), self.max_duration)
            self.action = int(self.rng.integers(self.n_actions))
            self.durations[self.remaining] = self.durations.get(self.remaining, 0) + 1
        if self.remaining > 0:
            self.remaining -= 1
            return self.action
        return greedy

    def end_episode(self) -> None:
        self.remaining = 0

    def state_dict(self) -> dict[str, Any]:
        return {
            "remaining": self.remaining,
            "action": self.action,
            "durations": dict(self.durations),
            "rng": self.rng.bit_generator.state,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.remaining, self.action, self.durations = state["remaining"], state["action"], dict(state["durations"])
        self.rng.bit_generator.state = state["rng"]


class EzGreedyCallback(BaseCallback):
    """Replaces a DQN's ε-greedy acting with εz-greedy at SB3's ε schedule (`model.ez_greedy`,
    which `study.dqn`'s `predict` uses); a random action does not outlast its episode."""

    def __init__(self, mu: float, max_duration: int, n_actions: int, seed: int) -> None:
        super().__init__()
        self.ez_greedy = EzGreedy(mu, max_duration, n_actions, np.random.default_rng(seed))

    def _init_callback(self) -> None:
        self.model.ez_greedy = self.ez_greedy

    def _on_step(self) -> bool:
        if self.locals["dones"][0]:
            self.ez_greedy.end_episode()
        return True

    def state_dict(self) -> dict[str, Any]:
        """The running action and the random stream (for checkpoints)."""
        return self.ez_greedy.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.ez_greedy.load_state_dict(state)

"""Callbacks that record training episodes and periodic evaluations as table rows."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback

from study.costs import continuity_cost, jerk_cost

EPISODE_COLUMNS = {
    "step": "int64",
    "episode": "int64",
    "return": "float64",
    "length": "int64",
    "continuity_cost": "float64",
    "jerk_cost": "float64",
    "sigma": "float64",
    "warmup": "bool",
}
EVALUATION_COLUMNS = {
    "step": "int64",
    "return_mean": "float64",
    "return_std": "float64",
    "length_mean": "float64",
    "continuity_cost": "float64",
    "jerk_cost": "float64",
}
ADAPTATION_COLUMNS = {"step": "int64", "sigma": "float64", "distance": "float64"}


def episode_costs(actions: list[np.ndarray], space: spaces.Space) -> tuple[float, float]:
    """(continuity cost, jerk cost) of one episode's actions; NaN where undefined."""
    if not isinstance(space, spaces.Box):
        return float("nan"), float("nan")
    a = np.asarray(actions)
    return continuity_cost(a, space.low, space.high), jerk_cost(a, space.low, space.high)


class EpisodeRecorder(BaseCallback):
    """One row per training episode, on the actions actually sent to the environment.

    :param sigma: reads the current parameter-noise σ (NaN columns without one)
    """

    def __init__(self, sigma: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.sigma = sigma
        self.rows: list[dict[str, float | int | bool]] = []
        self._reset()

    def _reset(self) -> None:
        self._actions: list[np.ndarray] = []
        self._return = 0.0

    def state_dict(self) -> dict[str, Any]:
        return {k: v for k, v in vars(self).items() if k in ("rows", "_actions", "_return", "_start", "_sigma")}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)

    def _on_step(self) -> bool:
        if not self._actions:
            self._start = self.num_timesteps - 1
            self._sigma = self.sigma() if self.sigma else float("nan")
        self._actions.append(np.array(self.locals["actions"][0]))
        self._return += float(self.locals["rewards"][0])
        if self.locals["dones"][0]:
            continuity, jerk = episode_costs(self._actions, self.model.action_space)
            self.rows.append(
                {
                    "step": self.num_timesteps,
                    "episode": len(self.rows),
                    "return": self._return,
                    "length": len(self._actions),
                    "continuity_cost": continuity,
                    "jerk_cost": jerk,
                    "sigma": self._sigma,
                    "warmup": self._start < self.model.learning_starts,
                }
            )
            self._reset()
        return True


class Evaluator(BaseCallback):
    """Every `eval_freq` steps and at the end: `n_episodes` with the deterministic, unperturbed policy.

    :param eval_env: a separate environment, reset with `seed` once, then continuing its stream
    """

    def __init__(self, eval_env: gym.Env, eval_freq: int, n_episodes: int, seed: int | None = None) -> None:
        super().__init__()
        self.eval_env = eval_env
        self.eval_freq = eval_freq
        self.n_episodes = n_episodes
        self._seed = seed
        self.rows: list[dict[str, float | int]] = []

    def state_dict(self) -> dict[str, Any]:
        # between evaluations the env only needs its random stream for the next reset
        return {"rows": list(self.rows), "seed": self._seed, "np_random": self.eval_env.unwrapped.np_random}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self._seed = list(state["rows"]), state["seed"]
        self.eval_env.unwrapped.np_random = state["np_random"]

    def _on_step(self) -> bool:
        if self.num_timesteps % self.eval_freq == 0:
            self.evaluate()
        return True

    def _on_training_end(self) -> None:
        if not self.rows or self.rows[-1]["step"] != self.num_timesteps:
            self.evaluate()

    def evaluate(self) -> dict[str, float | int]:
        """Run the evaluation episodes and record a row; a diverged policy raises instead."""
        if not all(th.isfinite(p).all() for p in self.model.policy.parameters()):
            raise FloatingPointError(f"non-finite policy parameters at step {self.num_timesteps}: the loss diverged")
        returns, lengths, continuity, jerk = [], [], [], []
        for _ in range(self.n_episodes):
            obs, _ = self.eval_env.reset(seed=self._seed)
            self._seed = None
            actions, total, done = [], 0.0, False
            while not done:
                action, _ = self.model.predict(obs, deterministic=True)
                obs, reward, terminated, truncated, _ = self.eval_env.step(action)
                actions.append(action)
                total += float(reward)
                done = terminated or truncated
            c, j = episode_costs(actions, self.eval_env.action_space)
            returns.append(total)
            lengths.append(len(actions))
            continuity.append(c)
            jerk.append(j)
        row = {
            "step": self.num_timesteps,
            "return_mean": float(np.mean(returns)),
            "return_std": float(np.std(returns)),
            "length_mean": float(np.mean(lengths)),
            "continuity_cost": float(np.mean(continuity)),
            "jerk_cost": float(np.mean(jerk)),
        }
        self.rows.append(row)
        self.logger.record("eval/mean_reward", row["return_mean"])
        return row

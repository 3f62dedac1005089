"""Callbacks that record training episodes and periodic evaluations as table rows."""

from __future__ import annotations

import time
from collections.abc import Callable, Generator
from typing import Any

import gymnasium as gym
import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, StopTrainingOnMaxEpisodes

from study.config import EvalSettings
from study.costs import continuity_cost, jerk_cost


def episode_costs(actions: list[np.ndarray], space: spaces.Space) -> tuple[float, float]:
    """(continuity cost, jerk cost) of one episode's actions; NaN where undefined."""
    if not isinstance(space, spaces.Box):
        return float("nan"), float("nan")
    a = np.asarray(actions)
    return continuity_cost(a, space.low, space.high), jerk_cost(a, space.low, space.high)


def switch_rate(actions: list[np.ndarray], space: spaces.Space) -> float:
    """Discrete actions: the fraction of steps whose action differs from the previous one."""
    if not isinstance(space, spaces.Discrete) or len(actions) < 2:
        return float("nan")
    a = np.asarray(actions).reshape(len(actions), -1)
    return float(np.mean(np.any(a[1:] != a[:-1], axis=1)))


#: the longest stretch of an episode a trace keeps (its first steps)
TRACE_STEPS = 200
#: the fractions of training whose first evaluation episode is traced (1.0: the final evaluation)
TRACE_POINTS = (0.1, 0.5, 1.0)


def trace_rows(kind: str, point: float, step: int, actions: list[np.ndarray], sigma: float) -> list[dict[str, Any]]:
    """One episode's actions (its first TRACE_STEPS) as rows of the traces table."""
    return [
        {"kind": kind, "point": point, "step": step, "t": t, "dim": dim, "action": float(value), "sigma": sigma}
        for t, action in enumerate(actions[:TRACE_STEPS])
        for dim, value in enumerate(np.asarray(action, dtype=float).ravel())
    ]


class EpisodeRecorder(BaseCallback):
    """One row per training episode, on the actions actually sent to the environment, and the
    trace of the first episode after warm-up (`trace`).

    :param sigma: reads the current parameter-noise σ (NaN columns without one)
    """

    def __init__(self, sigma: Callable[[], float] | None = None) -> None:
        super().__init__()
        self.sigma = sigma
        self.rows: list[dict[str, float | int | bool]] = []
        self.trace: list[dict[str, Any]] = []
        self._reset()

    def _reset(self) -> None:
        self._actions: list[np.ndarray] = []
        self._return = 0.0

    def state_dict(self) -> dict[str, Any]:
        kept = ("rows", "trace", "_actions", "_return", "_start", "_sigma")
        return {k: v for k, v in vars(self).items() if k in kept}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        vars(self).update(state)

    def _on_step(self) -> bool:
        if not self._actions:
            self._start = self.num_timesteps - 1
            self._sigma = self.sigma() if self.sigma else float("nan")
        self._actions.append(np.array(self.locals["actions"][0]))
        normalize = self.model.get_vec_normalize_env()  # the env's own reward, not the scaled one
        self._return += float((self.locals["rewards"] if normalize is None else normalize.get_original_reward())[0])
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
                    "warmup": self._start < getattr(self.model, "learning_starts", 0),  # on-policy: none
                    "switch_rate": switch_rate(self._actions, self.model.action_space),
                }
            )
            if not self.trace and not self.rows[-1]["warmup"]:
                self.trace = trace_rows("train", float("nan"), self._start, self._actions, self._sigma)
            self._reset()
        return True


class Evaluator(BaseCallback):
    """Every `freq` steps (or after every training episode) and at the end: `episodes`
    episodes with the deterministic, unperturbed policy. With `stop_when_solved`, training
    stops once the env's `optimal_return` was reached in `solved_window` evaluations in a row,
    counting only evaluations after learning has begun (after the first gradient step): an
    untrained network that happens to be optimal is never credited.

    :param eval_env: a separate environment, reset with `seed` once, then continuing its stream
    :param on_evaluation: sees each evaluation's row; returning False stops training
    """

    def __init__(
        self,
        eval_env: gym.Env,
        settings: EvalSettings,
        seed: int | None = None,
        on_evaluation: Callable[[dict[str, Any]], bool] | None = None,
    ) -> None:
        super().__init__()
        self.eval_env = eval_env
        self.settings = settings
        self._seed = seed
        self.on_evaluation = on_evaluation
        self.optimal_return: float | None = getattr(eval_env.unwrapped, "optimal_return", None)
        if settings.stop_when_solved and self.optimal_return is None:
            raise ValueError(f"eval.stop_when_solved: {eval_env.spec.id} has no optimal_return")
        self.rows: list[dict[str, float | int | bool | None]] = []
        self.streak = 0
        self.trace: list[dict[str, Any]] = []  # the first episode of the evaluations at TRACE_POINTS
        self._last_episode: tuple[int, list[np.ndarray]] | None = None  # the latest evaluation's first
        self.deferred = False  # set by the stacked engine: a due evaluation waits, `pending`, for it
        self.pending = False

    def state_dict(self) -> dict[str, Any]:
        # between evaluations the env only needs its random stream for the next reset
        return {
            "rows": list(self.rows),
            "seed": self._seed,
            "streak": self.streak,
            "np_random": self.eval_env.unwrapped.np_random,
            "trace": list(self.trace),
            "last_episode": self._last_episode,
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.rows, self._seed, self.streak = list(state["rows"]), state["seed"], state.get("streak", 0)
        self.eval_env.unwrapped.np_random = state["np_random"]
        self.trace, self._last_episode = list(state.get("trace", [])), state.get("last_episode")

    def _on_step(self) -> bool:
        freq = self.settings.freq
        if self.locals["dones"][0] if freq == "episode" else self.num_timesteps % freq == 0:
            if self.deferred:  # the stacked engine evaluates its members together, then concludes
                self.pending = True
                return True
            return self.conclude(self.evaluate())
        return True

    def conclude(self, row: dict[str, Any]) -> bool:
        """After the evaluation `row` of a step: whether training goes on."""
        self.pending = False
        self.streak = self.streak + 1 if row["optimal"] and row["gradient_steps"] > 0 else 0
        if self.on_evaluation is not None and not self.on_evaluation(row):
            return False
        return not (self.settings.stop_when_solved and self.streak >= self.settings.solved_window)

    @property
    def due_at_end(self) -> bool:
        """Whether training's end evaluates (its last step was not evaluated yet)."""
        return not self.rows or self.rows[-1]["step"] != self.num_timesteps

    def _on_training_end(self) -> None:
        if self.due_at_end:
            self.evaluate()
        if self._last_episode is not None:  # the final evaluation, whenever training ended
            self._trace(1.0, *self._last_episode)

    def _trace(self, point: float, step: int, actions: list[np.ndarray]) -> None:
        if not any(row["point"] == point for row in self.trace):
            self.trace += trace_rows("eval", point, step, actions, float("nan"))

    def evaluate(self) -> dict[str, Any]:
        """Run the evaluation episodes and record a row; a diverged policy raises instead."""
        episodes = self.episodes()
        obs = next(episodes)
        try:
            while True:
                obs = episodes.send(self.model.predict(obs, deterministic=True)[0])
        except StopIteration as done:
            return done.value

    def episodes(self) -> Generator[np.ndarray, np.ndarray, dict[str, Any]]:
        """`evaluate()` as a dialogue: yields each observation as the policy sees it (normalized
        by the training env's statistics of the moment, with `normalize`), is sent the policy's
        deterministic action for it (`model.predict(obs, deterministic=True)`), and returns the
        recorded row."""
        normalize = self.model.get_vec_normalize_env()
        seen = (lambda obs: obs) if normalize is None else normalize.normalize_obs
        if not all(th.isfinite(p).all() for p in self.model.policy.parameters()):
            raise FloatingPointError(f"non-finite policy parameters at step {self.num_timesteps}: the loss diverged")
        returns, lengths, continuity, jerk = [], [], [], []
        first: list[np.ndarray] | None = None
        for _ in range(self.settings.episodes):
            obs, _ = self.eval_env.reset(seed=self._seed)
            self._seed = None
            actions, total, done = [], 0.0, False
            while not done:
                action = yield seen(obs)
                obs, reward, terminated, truncated, _ = self.eval_env.step(action)
                actions.append(action)
                total += float(reward)
                done = terminated or truncated
            first = actions if first is None else first
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
            "optimal": None if self.optimal_return is None else bool(min(returns) >= self.optimal_return - 1e-9),
            "gradient_steps": self.model._n_updates,
        }
        self.rows.append(row)
        self._last_episode = (self.num_timesteps, first or [])
        for point in TRACE_POINTS[:-1]:
            if self.num_timesteps >= point * self.model._total_timesteps:
                self._trace(point, *self._last_episode)
        self.logger.record("eval/mean_reward", row["return_mean"])
        return row


class EpisodeLimit(StopTrainingOnMaxEpisodes):
    """SB3's stop after `max_episodes` training episodes, with its count kept in checkpoints."""

    def state_dict(self) -> dict[str, Any]:
        return {"n_episodes": self.n_episodes}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.n_episodes = state["n_episodes"]


class ProgressReporter(BaseCallback):
    """Sends its run's steps (all, and `taken` since this start: a resumed run began at its
    checkpoint), speed and last evaluation to `send(run_id, row)` every `every_s` seconds of
    training (live progress; it changes nothing in the run)."""

    def __init__(
        self, run_id: str, total: int, send: Callable[[str, dict[str, Any]], None], evaluator: Evaluator, every_s: float
    ) -> None:
        super().__init__()
        self.run_id, self.total, self.send, self.evaluator, self.every_s = run_id, total, send, evaluator, every_s
        self._at: tuple[float, int] | None = None

    def _on_step(self) -> bool:
        now = time.monotonic()
        if self._at is None:
            self._at, self._start = (now, self.num_timesteps), self.num_timesteps - 1
        elif now - self._at[0] >= self.every_s:
            speed = (self.num_timesteps - self._at[1]) / (now - self._at[0])
            last = self.evaluator.rows[-1]["return_mean"] if self.evaluator.rows else None
            row = {"steps": self.num_timesteps, "taken": self.num_timesteps - self._start, "total": self.total}
            self.send(self.run_id, row | {"steps_per_s": speed, "last_return": last})
            self._at = (now, self.num_timesteps)
        return True

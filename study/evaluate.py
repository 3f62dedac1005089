"""A run's saved model evaluated again: more episodes, the deterministic policy or the run's exploration."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm

from study.config import RunSpec, Study, StudyError
from study.envs import make_env
from study.exploration.param_noise import derived_seed
from study.messages import did_you_mean
from study.recording import episode_costs
from study.registry import ALGORITHMS, resolve
from study.store import MODEL, run_dir


@dataclass(frozen=True)
class Evaluation:
    """Per episode: return, length and the continuity and jerk costs of its actions."""

    returns: list[float]
    lengths: list[int]
    continuity: list[float]
    jerk: list[float]


def find_run(study: Study, run: str) -> RunSpec:
    """The study's run named by its run id or its 8-character hash."""
    for spec in study.runs:
        if run in (spec.run_id, spec.spec_hash):
            return spec
    ids = [spec.run_id for spec in study.runs]
    raise StudyError(f"--run {run}: no run of {study.name} (budget {study.budget}) has that id{did_you_mean(run, ids)}")


def load_model(results: Path, spec: RunSpec) -> BaseAlgorithm:
    """The run's final model, as its algorithm's `load` reads it (on the CPU)."""
    path = run_dir(Path(results), spec) / MODEL
    if not path.is_file():
        raise StudyError(
            f"--run {spec.run_id}: no saved model at {path} (a run keeps one unless `save_model: false`; "
            "runs from before saved models have none)"
        )
    return resolve(ALGORITHMS[spec.settings.algo].cls).load(path, device="cpu")


def evaluate_model(spec: RunSpec, model: BaseAlgorithm, episodes: int, explore: bool = False) -> Evaluation:
    """`episodes` episodes of `model` in a fresh evaluation env of the run's (seeded from the run's
    seed): the deterministic, unperturbed policy, or with `explore` the run's exploration as it
    ended training (the perturbed actor at its last σ, gSDE's or SAC's sampling, action noise,
    ε-greedy at its final ε)."""
    settings = spec.settings
    env = make_env(spec.env, settings.env_kwargs, settings.env_wrapper, evaluation=True, task_seed=spec.seed)
    policy = model.policy
    if explore and settings.exploration.param_noise is not None:
        policy.explore_perturbed = True
    seed: int | None = derived_seed(spec.seed, "evaluate")
    out = Evaluation([], [], [], [])
    try:
        for _ in range(episodes):
            obs, _ = env.reset(seed=seed)
            seed = None
            if explore and getattr(model, "use_sde", False):
                policy.reset_noise()
            actions, total, done = [], 0.0, False
            while not done:
                action = _act(model, obs, explore)
                obs, reward, terminated, truncated, _ = env.step(action)
                actions.append(action)
                total += float(reward)
                done = terminated or truncated
            if explore and model.action_noise is not None:
                model.action_noise.reset()
            continuity, jerk = episode_costs(actions, env.action_space)
            out.returns.append(total)
            out.lengths.append(len(actions))
            out.continuity.append(continuity)
            out.jerk.append(jerk)
    finally:
        env.close()
    return out


def _act(model: BaseAlgorithm, obs: np.ndarray, explore: bool) -> np.ndarray:
    """The policy's action (`predict`); exploring, with the run's action noise added as SB3's
    `_sample_action` adds it."""
    action, _ = model.predict(obs, deterministic=not explore)
    noise = getattr(model, "action_noise", None)
    if explore and noise is not None and isinstance(model.action_space, spaces.Box):
        scaled = np.clip(model.policy.scale_action(action) + noise(), -1, 1)
        action = model.policy.unscale_action(scaled)
    return action

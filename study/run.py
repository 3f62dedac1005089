"""One run: seed, train, evaluate, record. Returns a RunResult; touches no results folder."""

from __future__ import annotations

import time
import traceback
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.utils import set_random_seed

from study import algos
from study.checkpoint import RESUME_VERSION, Checkpointer
from study.config import RunSpec
from study.envs import make_env
from study.exploration.noisy import NoisyNetCallback
from study.exploration.param_noise import ParamNoiseCallback, derived_seed
from study.recording import EpisodeLimit, EpisodeRecorder, Evaluator
from study.result import ADAPTATION_COLUMNS, EPISODE_COLUMNS, EVALUATION_COLUMNS, RunResult, run_meta, table


def execute(
    spec: RunSpec,
    cpus: int | None = None,
    checkpoint_dir: Path | None = None,
    on_evaluation: Callable[[dict[str, Any]], bool] | None = None,
) -> RunResult:
    """Train and evaluate one run; exceptions become a failed RunResult with the traceback.

    With `checkpoint_dir` and `spec.checkpoint_every`, the run saves checkpoints there and
    continues from the last one if it finds one; the checkpoint is removed when it completes.
    `on_evaluation` sees each evaluation's row; returning False stops training there.
    """
    cpus = cpus or spec.settings.resources.cpus
    th.set_num_threads(cpus)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    recorder = evaluator = noise = resumed_at = None
    envs: list[gym.Env] = []
    status, error = "done", None
    try:
        set_random_seed(spec.seed)
        settings = spec.settings
        envs = [
            make_env(spec.env, settings.env_kwargs, settings.env_wrapper, evaluation=evaluation, task_seed=spec.seed)
            for evaluation in (False, True)
        ]
        model, callbacks = algos.build(settings, envs[0], spec.seed)
        noise = next((cb for cb in callbacks if isinstance(cb, ParamNoiseCallback | NoisyNetCallback)), None)
        recorder = EpisodeRecorder(sigma=(lambda: noise.sigma) if noise else None)
        evaluator = Evaluator(envs[1], settings.eval, derived_seed(spec.seed, "eval-env"), on_evaluation)
        callbacks += [recorder, evaluator]
        if settings.max_episodes is not None:
            callbacks.append(EpisodeLimit(settings.max_episodes))
        checkpointer = None
        if checkpoint_dir is not None and spec.checkpoint_every:
            parts = {f"{i}:{type(cb).__name__}": cb for i, cb in enumerate(callbacks) if hasattr(cb, "state_dict")}
            checkpointer = Checkpointer(checkpoint_dir, spec.checkpoint_every, parts)
            resumed_at = model.num_timesteps if checkpointer.restore(model) else None
            callbacks.insert(0, checkpointer)
        model.learn(
            spec.settings.total_steps - model.num_timesteps,
            callback=CallbackList(callbacks),
            reset_num_timesteps=resumed_at is None,
        )
        steps = model.num_timesteps
        if checkpointer is not None:
            checkpointer.clear()
    except Exception:
        status, error, steps = "failed", traceback.format_exc(), 0
    finally:
        for env in envs:
            env.close()
    wall = time.perf_counter() - clock
    meta = run_meta(spec, status, started.isoformat()) | {
        "wall_time_s": wall,
        "steps": steps,
        "resumed_at": resumed_at,
        "resume_version": None if resumed_at is None else RESUME_VERSION,
        "steps_per_s": (steps - (resumed_at or 0)) / wall if wall > 0 else None,
        "episodes": len(recorder.rows) if recorder is not None else 0,
        "cpus": cpus,
        "torch_threads": th.get_num_threads(),
    }
    result = RunResult(spec=spec, status=status, meta=meta, error=error)
    if recorder is not None:
        result.episodes = table(recorder.rows, EPISODE_COLUMNS)
    if evaluator is not None:
        result.evaluations = table(evaluator.rows, EVALUATION_COLUMNS)
    if noise is not None:
        result.adaptations = table(noise.adaptations, ADAPTATION_COLUMNS)
    result.meta["final_return"] = result.final_return
    return result

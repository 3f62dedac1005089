"""One run: seed, train, evaluate, record. Returns a RunResult; touches no results folder."""

from __future__ import annotations

import io
import pickle
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import Logger, configure
from stable_baselines3.common.utils import set_random_seed

from study import algos, provenance
from study.checkpoint import RESUME_VERSION, Checkpointer
from study.config import RunSpec
from study.envs import make_env
from study.exploration.noisy import NoisyNetCallback
from study.exploration.onpolicy import OnPolicyParamNoiseCallback
from study.exploration.param_noise import ParamNoiseCallback, derived_seed
from study.live import REPORT_EVERY_S
from study.recording import EpisodeLimit, EpisodeRecorder, Evaluator, ProgressReporter
from study.result import (
    ADAPTATION_COLUMNS,
    EPISODE_COLUMNS,
    EVALUATION_COLUMNS,
    TRACE_COLUMNS,
    RunResult,
    run_meta,
    table,
)

OnEvaluation = Callable[[dict[str, Any]], bool]


@dataclass
class RunParts:
    """What an engine drives for one run: the SB3 model, its callbacks (exploration, recording,
    evaluation, episode limit), and its training and evaluation environments."""

    model: BaseAlgorithm
    callbacks: list[BaseCallback]
    recorder: EpisodeRecorder
    evaluator: Evaluator
    noise: ParamNoiseCallback | OnPolicyParamNoiseCallback | NoisyNetCallback | None
    envs: list[gym.Env]
    logger: Logger | None = None  # a TensorBoard logger set by `watch`

    def stateful(self) -> dict[str, Any]:
        """The callbacks whose state a checkpoint keeps, by name."""
        return {f"{i}:{type(cb).__name__}": cb for i, cb in enumerate(self.callbacks) if hasattr(cb, "state_dict")}

    def close(self) -> None:
        for env in self.envs:
            env.close()
        if self.logger is not None:
            self.logger.dump(self.model.num_timesteps)
            self.logger.close()
            self.logger = None


@dataclass(frozen=True)
class Watchers:
    """What watches runs without changing them: a receiver of live progress, `report(run_id,
    row)`, and a folder for TensorBoard logs (each run's under `<folder>/<study>/<run_id>`)."""

    report: Callable[[str, dict[str, Any]], None] | None = None
    tensorboard: Path | None = None
    every_s: float = REPORT_EVERY_S

    def watch(self, spec: RunSpec, parts: RunParts) -> None:
        """Add them to a built run: its progress reporter and its SB3 logger."""
        if self.report is not None:
            total = spec.settings.total_steps
            parts.callbacks.append(ProgressReporter(spec.run_id, total, self.report, parts.evaluator, self.every_s))
        if self.tensorboard is not None:
            parts.logger = configure(str(Path(self.tensorboard) / spec.study / spec.run_id), ["tensorboard"])
            parts.model.set_logger(parts.logger)


def build_run(spec: RunSpec, on_evaluation: OnEvaluation | None = None) -> RunParts:
    """Seed the global random streams with the run's seed and build its model, envs and callbacks."""
    provenance.code_version()  # the code this process runs, read (once) before the source tree can change
    set_random_seed(spec.seed)
    settings = spec.settings
    envs = [
        make_env(
            spec.env, settings.env_kwargs, settings.env_wrapper, evaluation, spec.seed, frame_stack=settings.frame_stack
        )
        for evaluation in (False, True)
    ]
    try:
        model, callbacks = algos.build(settings, envs[0], spec.seed)
        noise_kinds = ParamNoiseCallback | OnPolicyParamNoiseCallback | NoisyNetCallback
        noise = next((cb for cb in callbacks if isinstance(cb, noise_kinds)), None)
        recorder = EpisodeRecorder(sigma=(lambda: noise.sigma) if noise else None)
        evaluator = Evaluator(envs[1], settings.eval, derived_seed(spec.seed, "eval-env"), on_evaluation)
    except Exception:
        for env in envs:
            env.close()
        raise
    callbacks += [recorder, evaluator]
    if settings.max_episodes is not None:
        callbacks.append(EpisodeLimit(settings.max_episodes))
    return RunParts(model, callbacks, recorder, evaluator, noise, envs)


def model_zip(model: BaseAlgorithm) -> bytes:
    """The model as SB3's `save` writes it, without its replay buffer. Its tensors are saved
    from copies of their own (in a stacked group they are views of the group's tensors, which
    `torch.save` would write whole), then given back."""
    tensors = [*model.policy.parameters(), *model.policy.buffers()]
    if isinstance(getattr(model, "log_ent_coef", None), th.Tensor):
        tensors.append(model.log_ent_coef)
    views = [tensor.data for tensor in tensors]
    try:
        for tensor in tensors:
            tensor.data = tensor.data.clone()
        buffer = io.BytesIO()
        model.save(buffer)
        return buffer.getvalue()
    finally:
        for tensor, view in zip(tensors, views, strict=True):
            tensor.data = view


def run_result(
    spec: RunSpec,
    parts: RunParts | None,
    error: str | None,
    started: datetime,
    wall: float,
    resumed_at: int | None,
    cpus: int,
    **meta: Any,
) -> RunResult:
    """The RunResult of a finished (or failed, with `error`) run, its tables from `parts`."""
    status = "failed" if error is not None else "done"
    steps = parts.model.num_timesteps if parts is not None and error is None else 0
    recorded = run_meta(spec, status, started.isoformat()) | {
        "wall_time_s": wall,
        "steps": steps,
        "resumed_at": resumed_at,
        "resume_version": None if resumed_at is None else RESUME_VERSION,
        "steps_per_s": (steps - (resumed_at or 0)) / wall if wall > 0 else None,
        "episodes": len(parts.recorder.rows) if parts is not None else 0,
        "cpus": cpus,
        "torch_threads": th.get_num_threads(),
    }
    result = RunResult(spec=spec, status=status, meta=recorded | meta, error=error)
    if parts is not None:
        result.episodes = table(parts.recorder.rows, EPISODE_COLUMNS)
        result.evaluations = table(parts.evaluator.rows, EVALUATION_COLUMNS)
        if parts.noise is not None:
            result.adaptations = table(parts.noise.adaptations, ADAPTATION_COLUMNS)
        result.traces = table(parts.recorder.trace + parts.evaluator.trace, TRACE_COLUMNS)
        if status == "done" and spec.settings.save_model:
            try:  # the model and its statistics, both or neither
                normalize = parts.model.get_vec_normalize_env()
                statistics = None if normalize is None else pickle.dumps(normalize)
                result.model, result.normalize = model_zip(parts.model), statistics
            except Exception:  # the run is complete all the same
                result.meta["model_error"] = traceback.format_exc()
    result.meta["final_return"] = result.final_return
    return result


def execute(
    spec: RunSpec,
    cpus: int | None = None,
    checkpoint_dir: Path | None = None,
    on_evaluation: OnEvaluation | None = None,
    watchers: Watchers | None = None,
) -> RunResult:
    """Train and evaluate one run; exceptions become a failed RunResult with the traceback.

    With `checkpoint_dir` and `spec.checkpoint_every`, the run saves checkpoints there and
    continues from the last one if it finds one; the checkpoint is removed when it completes.
    `on_evaluation` sees each evaluation's row; returning False stops training there.
    `watchers` see the run train (live progress, TensorBoard) and change nothing in it.
    """
    cpus = cpus or spec.settings.resources.cpus
    th.set_num_threads(cpus)
    started = datetime.now(UTC)
    clock = time.perf_counter()
    parts = resumed_at = error = None
    try:
        parts = build_run(spec, on_evaluation)
        if watchers is not None:
            watchers.watch(spec, parts)
        model, callbacks = parts.model, list(parts.callbacks)
        checkpointer = None
        if checkpoint_dir is not None and spec.checkpoint_every:
            checkpointer = Checkpointer(checkpoint_dir, spec.checkpoint_every, parts.stateful())
            resumed_at = model.num_timesteps if checkpointer.restore(model) else None
            callbacks.insert(0, checkpointer)
        model.learn(
            spec.settings.total_steps - model.num_timesteps,
            callback=CallbackList(callbacks),
            reset_num_timesteps=resumed_at is None,
        )
        if checkpointer is not None:
            checkpointer.clear()
    except Exception:
        error = traceback.format_exc()
    finally:
        if parts is not None:
            parts.close()
    return run_result(spec, parts, error, started, time.perf_counter() - clock, resumed_at, cpus)

"""A study's compute before it runs: environment steps, and wall time from a short measured calibration.

Each distinct configuration (the runs' settings but their seed and the exploration scalars a
stacked group may mix, `MEMBER_SETTINGS`) is built and trained here for a few hundred steps:
warm-up steps, training steps (collection and updates, evaluations after every episode
included) and one evaluation are timed apart. A run's time is then its warm-up, training and
evaluations at those speeds, and the study's wall time that of the launcher's tasks
(`plan_tasks`) given to the workers in order, each to the first free one, as Ray does.
It is an estimate: the calibration is short, the machine's load may change, and runs that stop
early (`max_episodes`, `stop_when_solved`) take less.
"""

from __future__ import annotations

import heapq
import time
from collections.abc import Sequence
from dataclasses import dataclass

from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

from study.config import RunSpec
from study.launch import MEMBER_SETTINGS, plan_tasks
from study.run import RunParts, build_run

WARMUP_STEPS = 100  # warm-up steps timed per configuration (fewer where the run warms up less)
CALIBRATION_STEPS = 300  # training steps timed per configuration
NO_EVALUATION = 10**12


@dataclass(frozen=True)
class Speed:
    """What one task of a configuration costs, in seconds: to build, per warm-up step, per
    training step and per evaluation (a stacked group: all its members at once)."""

    build: float
    warmup: float
    train: float
    evaluation: float

    def seconds(self, spec: RunSpec, learning_starts: int) -> float:
        """The time of `spec`'s task at these speeds, `learning_starts` as its model has it."""
        total = spec.settings.total_steps
        warm = min(learning_starts, total)
        freq = spec.settings.eval.freq
        # and one at the end, unless the last step was evaluated; those after episodes are in the steps' time
        evaluations = 1 if freq == "episode" else total // freq + bool(total % freq)
        return self.build + warm * self.warmup + (total - warm) * self.train + evaluations * self.evaluation


@dataclass(frozen=True)
class Estimate:
    """The compute of a study's pending runs on `workers` local workers."""

    runs: int
    steps: int  # environment steps, at most (runs may stop early)
    seconds: float  # wall time, estimated
    run_seconds: float  # the tasks' times added up
    workers: int
    configurations: int  # calibrated
    calibration_seconds: float


class _Stopwatch(BaseCallback):
    """The time when training reaches step `at`."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.when = at, time.perf_counter()

    def _on_step(self) -> bool:
        if self.num_timesteps == self.at:
            self.when = time.perf_counter()
        return True


def configuration(task: Sequence[RunSpec]) -> str:
    """What a task's speed depends on: its settings but the seed, the steps and the members' scalars."""
    spec = task[0]
    exclude = MEMBER_SETTINGS | {"total_steps": True, "max_episodes": True, "checkpoint_every": True}
    return f"{spec.env}/{len(task)}/{spec.settings.model_dump_json(exclude=exclude)}"


def calibrate(task: Sequence[RunSpec], steps: int = CALIBRATION_STEPS) -> tuple[Speed, int]:
    """Train `task` (one run, or a stacked group) for a short warm-up and `steps` training
    steps here; its speeds and the learning_starts its runs have. Training in episodes with
    one gradient step per collected step is timed as one gradient step after each step."""
    import torch as th

    from study.stacked.group import Group, Member

    th.set_num_threads(task[0].settings.resources.cpus)  # as a worker sets it
    clock = time.perf_counter()
    parts = [build_run(spec) for spec in task]
    build = time.perf_counter() - clock
    model = parts[0].model
    learning_starts = model.learning_starts
    warm = min(learning_starts, WARMUP_STEPS)
    total = warm + steps
    stopwatch = _Stopwatch(warm)
    for part in parts:
        _shorten(part, warm)
    parts[0].callbacks.insert(0, stopwatch)
    specs = [
        spec.model_copy(update={"settings": spec.settings.model_copy(update={"total_steps": total})}) for spec in task
    ]
    try:
        start = time.perf_counter()
        if task[0].settings.engine == "stacked":
            group = Group([Member(spec, part) for spec, part in zip(specs, parts, strict=True)])
            group.learn()
            trained = time.perf_counter()
            group.evaluate(group.members)
        else:
            model.learn(total, callback=CallbackList(parts[0].callbacks))
            trained = time.perf_counter()
            parts[0].evaluator.evaluate()
        evaluation = time.perf_counter() - trained
    finally:
        for part in parts:
            part.close()
    warmup = (stopwatch.when - start) / warm if warm else 0.0
    train = max(trained - stopwatch.when - evaluation, 0.0) / steps  # less the final evaluation
    return Speed(build, warmup, train, evaluation), learning_starts


def _shorten(parts: RunParts, warm: int) -> None:
    """The run's model and evaluator set for calibration: `warm` warm-up steps, evaluations only
    after episodes (where the run evaluates so), one gradient step per step for episodic training."""
    model = parts.model
    model.learning_starts = warm
    if model.train_freq.unit == TrainFrequencyUnit.EPISODE and model.gradient_steps < 0:
        model.train_freq, model.gradient_steps = TrainFreq(1, TrainFrequencyUnit.STEP), 1
    if parts.evaluator.settings.freq != "episode":
        parts.evaluator.settings = parts.evaluator.settings.model_copy(update={"freq": NO_EVALUATION})


def makespan(durations: Sequence[float], workers: int) -> float:
    """The wall time of tasks taken in order, each by the first free of `workers`."""
    free = [0.0] * max(1, workers)
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def estimate(pending: Sequence[RunSpec], workers: int, steps: int = CALIBRATION_STEPS) -> Estimate:
    """The compute of `pending` on `workers` local workers, calibrating each configuration here."""
    tasks = plan_tasks(list(pending), workers)
    clock = time.perf_counter()
    speeds: dict[str, tuple[Speed, int]] = {}
    durations = []
    for task in tasks:
        key = configuration(task)
        if key not in speeds:
            speeds[key] = calibrate(task, steps)
        speed, learning_starts = speeds[key]
        durations.append(speed.seconds(task[0], learning_starts))
    return Estimate(
        runs=len(pending),
        steps=sum(spec.settings.total_steps for spec in pending),
        seconds=makespan(durations, workers),
        run_seconds=sum(durations),
        workers=workers,
        configurations=len(speeds),
        calibration_seconds=time.perf_counter() - clock,
    )

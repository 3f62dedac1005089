"""A study's compute before it runs: environment steps, and wall time from a short measured calibration.

Each distinct configuration (the runs' settings but their seed and the exploration scalars a
stacked group may mix, `MEMBER_SETTINGS`) is built and trained here for a few hundred steps:
warm-up steps, training steps (collection and updates) and one evaluation are timed apart,
and the episodes' length counts the evaluations of runs that evaluate after every episode.
A run's time is then its warm-up, training and evaluations at those speeds, and the study's
wall time that of the launcher's tasks (`plan_tasks`) given to as many at a time as the
launcher fits on the workers, in order, each to the first free one, as Ray does.
It is an estimate: the calibration is short, the machine's load may change, runs that stop
early (`max_episodes`, `stop_when_solved`) take less, and runs that differ only in those
scalars (a sampling interval, σ₀) share one calibration.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.type_aliases import TrainFreq, TrainFrequencyUnit

from study.config import RunSpec
from study.launch import MEMBER_SETTINGS, makespan, plan_tasks
from study.recording import EpisodeLimit
from study.run import RunParts, build_run

WARMUP_STEPS = 100  # warm-up steps timed per configuration (fewer where the run warms up less)
CALIBRATION_STEPS = 300  # training steps timed per configuration
NO_EVALUATION = 10**12


@dataclass(frozen=True)
class Speed:
    """What one task of a configuration costs, in seconds: to build, per warm-up step, per
    training step and per evaluation (a stacked group: all its members at once); and its
    episodes' length in steps (evaluations after every episode are counted by it)."""

    build: float
    warmup: float
    train: float
    evaluation: float
    episode_length: float = 1.0

    def seconds(self, spec: RunSpec, learning_starts: int, start: int = 0) -> float:
        """The time of `spec`'s task at these speeds, `learning_starts` as its model has it, from
        step `start` (where it resumes)."""
        total = spec.settings.total_steps
        start = min(start, total)
        warm = min(learning_starts, total)
        freq = spec.settings.eval.freq
        if freq == "episode":  # after every training episode, and at the end
            evaluations = (total - start) / self.episode_length + 1
        else:  # and one at the end, unless the last step was evaluated
            evaluations = total // freq + bool(total % freq) - start // freq
        warmup, training = max(warm - start, 0), total - max(warm, start)
        return self.build + warmup * self.warmup + training * self.train + evaluations * self.evaluation


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
    """The time when training reaches step `at` (None until it does)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.when = at, None

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
    """Train `task` (one run, or a stacked group) here for a short warm-up and about `steps`
    training steps, evaluating only once at the end; its speeds and the learning_starts its
    runs have. Training in episodes with one gradient step per collected step is timed as one
    gradient step after each step; rollouts longer than `steps` are timed whole."""
    import torch as th

    from study.stacked.group import Group, Member

    th.set_num_threads(task[0].settings.resources.cpus)  # as a worker sets it
    clock = time.perf_counter()
    parts: list[RunParts] = []
    try:
        for spec in task:
            parts.append(build_run(spec))
        model = parts[0].model
        learning_starts = getattr(model, "learning_starts", 0)  # on-policy: none
        warm = min(learning_starts, WARMUP_STEPS)
        for part in parts:
            _shorten(part, warm)
        stopwatch = _Stopwatch(warm)
        parts[0].callbacks.insert(0, stopwatch)
        total = warm + steps
        group = None
        if task[0].settings.engine == "stacked":
            update = {"total_steps": total}
            specs = [spec.model_copy(update={"settings": spec.settings.model_copy(update=update)}) for spec in task]
            group = Group([Member(spec, part) for spec, part in zip(specs, parts, strict=True)])
        build = time.perf_counter() - clock
        start = time.perf_counter()
        if group is not None:
            group.learn()
            failed = next((member.error for member in group.members if member.error), None)
            if failed:
                raise RuntimeError(failed.strip().splitlines()[-1])
        else:
            model.learn(total, callback=CallbackList(parts[0].callbacks))
        trained = time.perf_counter()
        if group is not None:
            group.evaluate(group.members)
        else:
            parts[0].evaluator.evaluate()
        evaluation = time.perf_counter() - trained
    finally:
        for part in parts:
            part.close()
    warmed = stopwatch.when if warm else start
    if warmed is None:
        raise RuntimeError(f"the calibration stopped before its {warm} warm-up steps")
    taken = model.num_timesteps - warm
    train = max(trained - warmed - evaluation, 0.0) / max(taken, 1)  # less the final evaluation
    lengths = [row["length"] for row in parts[0].recorder.rows] or [parts[0].evaluator.rows[-1]["length_mean"]]
    length = sum(lengths) / len(lengths)
    return Speed(build, (warmed - start) / warm if warm else 0.0, train, evaluation, length), learning_starts


def _shorten(parts: RunParts, warm: int) -> None:
    """The run's model and callbacks set for calibration: `warm` warm-up steps, one evaluation
    (at the end), no early stop, and one gradient step per step for episodic training."""
    model = parts.model
    if hasattr(model, "train_freq"):  # off-policy (on-policy models train after each rollout)
        model.learning_starts = warm
        if model.train_freq.unit == TrainFrequencyUnit.EPISODE and model.gradient_steps < 0:
            model.train_freq, model.gradient_steps = TrainFreq(1, TrainFrequencyUnit.STEP), 1
    once = {"freq": NO_EVALUATION, "stop_when_solved": False}
    parts.evaluator.settings = parts.evaluator.settings.model_copy(update=once)
    parts.callbacks[:] = [callback for callback in parts.callbacks if not isinstance(callback, EpisodeLimit)]


def waits_for_episodes(pending: Sequence[RunSpec]) -> bool:
    """Whether some of `pending` train in stacked groups at episode ends, where each round waits for
    its members' longest episode: a wait the calibration, taken before any member learns, cannot see."""
    for spec in pending:
        freq = spec.settings.hyperparams.sb3_kwargs().get("train_freq")
        episodic = isinstance(freq, tuple) and freq[1] == "episode"
        if episodic and spec.settings.engine == "stacked" and spec.settings.resources.group_size != 1:
            return True
    return False


def task_slots(pending: Sequence[RunSpec], workers: int) -> int:
    """How many of the tasks run at once on `workers` local CPUs (and this machine's GPUs), as
    the launcher fits them."""
    slots = max(1, workers // max(spec.settings.resources.cpus for spec in pending))
    gpus = max(spec.settings.resources.gpus for spec in pending)
    if gpus > 0:
        import torch as th

        slots = min(slots, max(1, int(th.cuda.device_count() / gpus)))
    return slots


def estimate(
    pending: Sequence[RunSpec], workers: int, steps: int = CALIBRATION_STEPS, resume_at: dict[str, int] | None = None
) -> Estimate:
    """The compute of `pending` on `workers` local CPUs, calibrating each configuration here; a
    run resumes at its step in `resume_at` (a stacked group: its members' earliest)."""
    resume_at = resume_at or {}
    slots = task_slots(pending, workers)
    tasks = plan_tasks(list(pending), slots)
    clock = time.perf_counter()
    speeds: dict[str, tuple[Speed, int]] = {}
    durations = []
    for task in tasks:
        key = configuration(task)
        if key not in speeds:
            speeds[key] = calibrate(task, steps)
        speed, learning_starts = speeds[key]
        start = min(resume_at.get(spec.run_id, 0) for spec in task)
        durations.append(speed.seconds(task[0], learning_starts, start))
    return Estimate(
        runs=len(pending),
        steps=sum(max(spec.settings.total_steps - resume_at.get(spec.run_id, 0), 0) for spec in pending),
        seconds=makespan(durations, slots),
        run_seconds=sum(durations),
        workers=workers,
        configurations=len(speeds),
        calibration_seconds=time.perf_counter() - clock,
    )

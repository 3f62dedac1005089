"""Grid fan-out on Ray: one task per pending run; the driver alone writes results/."""

from __future__ import annotations

import logging
import os
import signal
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from study.config import RunSpec, Study
from study.run import RunResult, execute, run_meta
from study.store import DONE, FAILED, PARTIAL, PENDING, checkpoint_dir, clear_staging, run_status, write_run
from study.studylock import StudyLock

TASK_NAME = "study_run"
MAX_RETRIES = 3  # Ray re-executes a task whose worker process or node died, this many times


@dataclass
class Summary:
    """What one invocation did."""

    skipped: int = 0
    failed_before: int = 0
    done: list[RunResult] = field(default_factory=list)
    failed: list[RunResult] = field(default_factory=list)


@dataclass
class Event:
    """A change the progress display shows: a run finished, or the counts moved."""

    kind: str  # "start" | "result" | "tick"
    done: int
    failed: int
    running: int
    pending: int
    elapsed: float
    eta: float | None = None
    result: RunResult | None = None


class Interrupted(Exception):
    """The driver was interrupted; completed runs are saved, the rest will resume."""


def pending_runs(study: Study, results: Path, retry_failed: bool = False) -> list[RunSpec]:
    """The runs to execute: those with no result, and failed ones with `retry_failed`."""
    todo = {PENDING, PARTIAL, FAILED} if retry_failed else {PENDING, PARTIAL}
    return [spec for spec in study.runs if run_status(results, spec) in todo]


def failed_result(spec: RunSpec, error: str) -> RunResult:
    """A failed RunResult for a run whose worker never returned one."""
    return RunResult(spec=spec, status=FAILED, meta=run_meta(spec, FAILED, started=None), error=error)


def _init_ray(address: str | None, workers: int | None, verbose: bool) -> bool:
    """Connect to a cluster or start a local instance; True if this call started Ray."""
    if address:
        # a cluster started with token authentication (Ray's default) takes the token this
        # machine has (~/.ray/auth_token, $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH); Ray reads
        # the mode when it is first imported
        token = Path.home() / ".ray" / "auth_token"
        if "RAY_AUTH_MODE" not in os.environ and (
            token.is_file() or {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ)
        ):
            os.environ["RAY_AUTH_MODE"] = "token"
    import ray

    if ray.is_initialized():
        return False
    options = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if address:
        ray.init(address=address, **options)
    else:
        ray.init(address="local", num_cpus=workers or os.cpu_count(), **options)  # never join another local instance
    return True


def run_study(
    study: Study,
    results: Path | str = "results",
    workers: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    verbose: bool = False,
    max_retries: int = MAX_RETRIES,
    on_event: Callable[[Event], None] | None = None,
) -> Summary:
    """Execute every pending run of the study as a Ray task and store each result as it arrives.

    Locks the study's results folder for the duration. On SIGINT (Ctrl-C) the running tasks
    are cancelled and `Interrupted` is raised; completed runs stay saved.
    """
    results = Path(results)
    with StudyLock(results / study.name):
        clear_staging(results / study.name)
        pending = pending_runs(study, results, retry_failed)
        summary = Summary(skipped=len(study.runs) - len(pending))
        if not retry_failed:
            summary.failed_before = sum(run_status(results, spec) == FAILED for spec in study.runs)
        if not pending:
            return summary
        started_ray = _init_ray(address, workers, verbose)
        try:
            _fan_out(pending, results, summary, max_retries, on_event)
        finally:
            if started_ray:
                import ray

                ray.shutdown()
    return summary


def _run_task(spec: RunSpec, checkpoint: str) -> RunResult:
    return execute(spec, checkpoint_dir=Path(checkpoint))


def _fan_out(
    pending: list[RunSpec],
    results: Path,
    summary: Summary,
    max_retries: int,
    on_event: Callable[[Event], None] | None,
) -> None:
    import ray
    from ray.exceptions import RayError

    task = ray.remote(_run_task)
    refs = {}
    for spec in pending:
        resources = spec.settings.resources
        options = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "max_retries": max_retries}
        ref = task.options(name=TASK_NAME, **options).remote(spec, str(checkpoint_dir(results.resolve(), spec)))
        refs[ref] = spec
    cpus_per_run = max(spec.settings.resources.cpus for spec in pending)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_run))
    clock = time.monotonic()

    def emit(kind: str, result: RunResult | None = None) -> None:
        finished = len(summary.done) + len(summary.failed)
        elapsed = time.monotonic() - clock
        left = len(refs)
        eta = elapsed / finished * left if finished else None
        if on_event:
            running = min(left, slots)
            on_event(Event(kind, len(summary.done), len(summary.failed), running, left - running, elapsed, eta, result))

    emit("start")
    with _interrupt_flag() as interrupted:
        while refs and not interrupted.is_set():
            ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
            for ref in ready:
                spec = refs.pop(ref)
                try:
                    result = ray.get(ref)
                except RayError as err:  # the worker died for good (retries exhausted) or Ray failed
                    result = failed_result(spec, f"{type(err).__name__}: {err}\n{traceback.format_exc()}")
                write_run(result, results)
                (summary.done if result.status == DONE else summary.failed).append(result)
                emit("result", result)
            if not ready:
                emit("tick")
    if interrupted.is_set():
        for ref in refs:
            ray.cancel(ref, force=True)
        raise Interrupted


@contextmanager
def _interrupt_flag() -> Iterator[threading.Event]:
    """SIGINT sets a flag that the driver loop checks, instead of raising wherever it lands
    (inside Ray's own calls an interrupt may be turned into cancelled tasks)."""
    flag = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    previous = signal.signal(signal.SIGINT, lambda signum, frame: flag.set())
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, previous)

"""Grid fan-out on Ray: one task per pending run; the driver alone writes results/."""

from __future__ import annotations

import heapq
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from study.config import RunSpec, Study, StudyError
from study.live import REPORT_EVERY_S, clear_progress, reporting, start_board, write_progress
from study.result import RunResult, run_meta
from study.store import (
    DAMAGED,
    DONE,
    FAILED,
    PARTIAL,
    PENDING,
    RunCheck,
    check_run,
    checkpoint_dir,
    clear_staging,
    resume_steps,
    write_run,
)
from study.studylock import StudyLock

if TYPE_CHECKING:
    from ray.exceptions import RayError

TASK_NAME = "study_run"
GROUP_TASK_NAME = "study_group"  # engine: stacked
MAX_RETRIES = 3  # Ray re-executes a task whose worker process or node died, this many times
PROBE_TIMEOUT_S = 5.0  # for the port of a cluster named by --address to accept a connection
GCS_TIMEOUT_S = 2.0  # then for its GCS to answer (each of the three steps of connecting)


@dataclass
class LostRun:
    """A run whose Ray task was lost with its worker, raylet, node or objects: not failed, still pending."""

    spec: RunSpec
    reason: str


@dataclass
class Summary:
    """What one invocation did."""

    skipped: int = 0
    failed_before: int = 0
    done: list[RunResult] = field(default_factory=list)
    failed: list[RunResult] = field(default_factory=list)
    lost: list[LostRun] = field(default_factory=list)
    redone: dict[str, str] = field(default_factory=dict)  # damaged runs run again: what was wrong


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
    progress: dict[str, dict[str, Any]] = field(default_factory=dict)  # running runs' latest reports, by run id


class Interrupted(Exception):
    """The driver was interrupted; completed runs are saved, the rest will resume."""


class ClusterUnreachable(StudyError):
    """--address names no Ray cluster that answers."""


def pending_runs(study: Study, results: Path, retry_failed: bool = False) -> list[RunSpec]:
    """The runs to execute: those with no result or a damaged one, and failed ones with `retry_failed`."""
    checks = {spec.run_id: check_run(results, spec) for spec in study.runs}
    return _todo(study, checks, retry_failed)


def _todo(study: Study, checks: dict[str, RunCheck], retry_failed: bool) -> list[RunSpec]:
    todo = {PENDING, PARTIAL, DAMAGED} | ({FAILED} if retry_failed else set())
    return [spec for spec in study.runs if checks[spec.run_id].state in todo]


def failed_result(spec: RunSpec, error: str) -> RunResult:
    """A failed RunResult for a run whose worker never returned one."""
    return RunResult(spec=spec, status=FAILED, meta=run_meta(spec, FAILED, started=None), error=error)


def _use_auth_token() -> None:
    """A cluster started with token authentication (Ray's default) takes the token this machine
    has (~/.ray/auth_token, $RAY_AUTH_TOKEN or $RAY_AUTH_TOKEN_PATH); Ray reads the mode when it
    is first imported."""
    token = Path.home() / ".ray" / "auth_token"
    if "RAY_AUTH_MODE" not in os.environ and (
        token.is_file() or {"RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"} & set(os.environ)
    ):
        os.environ["RAY_AUTH_MODE"] = "token"


def cluster_address(address: str) -> str:
    """The host:port of the Ray cluster that `address` names, once it has answered.

    `auto` is $RAY_ADDRESS, else the cluster that `ray start` last started on this machine.
    Raises ClusterUnreachable within PROBE_TIMEOUT_S + 3 × GCS_TIMEOUT_S if no cluster answers there.
    """
    _use_auth_token()
    from ray._private.services import canonicalize_bootstrap_address
    from ray._private.utils import get_ray_address_file, read_ray_address

    named, where = address, address
    if address == "auto":
        named = os.environ.get("RAY_ADDRESS") or read_ray_address()
        if not named or named == "auto":
            raise ClusterUnreachable(
                "--address auto: no Ray cluster started on this machine (no $RAY_ADDRESS, no "
                f"{get_ray_address_file(None)}): start one with `ray start --head`, or pass --address HOST:PORT"
            )
        source = "$RAY_ADDRESS" if os.environ.get("RAY_ADDRESS") else get_ray_address_file(None)
        where = f"{named} (read from {source}; stale if that cluster has stopped)"
    if "://" in named:  # a Ray Client address: ray.init checks it
        return named
    try:
        resolved = canonicalize_bootstrap_address(named)
    except (ValueError, OSError) as err:
        raise ClusterUnreachable(f"--address {address}: {named} is not a Ray address ({err})") from None
    if resolved is None:  # "local": a new local instance, nothing to reach
        return named
    problem = _probe(resolved)
    if problem:
        raise ClusterUnreachable(
            f"--address {address}: no Ray cluster answers at {where}: {problem}; start one with "
            "`ray start --head`, or pass the address of a running one"
        )
    return resolved


def _probe(address: str) -> str | None:
    """Why the GCS of a Ray cluster does not answer at host:port, or None if it does."""
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=PROBE_TIMEOUT_S):
            pass
    except (OSError, ValueError) as err:
        return str(err) or type(err).__name__
    import ray._raylet

    client = getattr(getattr(ray._raylet, "InnerGcsClient", None), "standalone", None)
    if client is None:  # a Ray without it: the port answers, ray.init does the rest
        return None
    try:  # something listens there: is it a GCS that answers?
        client(address, None, int(GCS_TIMEOUT_S * 1000))
    except Exception as err:
        return f"the port is open but no Ray GCS replies ({type(err).__name__}: {err})"
    return None


def _init_ray(address: str | None, workers: int | None, verbose: bool) -> bool:
    """Connect to a cluster or start a local instance; True if this call started Ray.

    Raises ClusterUnreachable if `address` names no cluster that answers.
    """
    resolved = cluster_address(address) if address else None
    import ray

    if ray.is_initialized():
        return False
    options = {
        "include_dashboard": False,
        "log_to_driver": verbose,
        "logging_level": logging.INFO if verbose else logging.ERROR,
    }
    if resolved:
        try:
            ray.init(address=resolved, **options)
        except (ConnectionError, RuntimeError, ray.exceptions.RayError) as err:
            raise ClusterUnreachable(
                f"--address {address}: could not join the Ray cluster at {resolved}: {err}"
            ) from None
    else:
        with _loopback_only():  # never join another local instance; listen on 127.0.0.1 only
            ray.init(address="local", num_cpus=workers or os.cpu_count(), _system_config=LOCAL_RAY_CONFIG, **options)
    return True


#: a local instance collects no metrics: no metrics agent, no exporter, one listening port fewer; and
#: returns results of up to 128 MiB (a group's models) in the task's reply, not through the object
#: store: a driver that reads an object from the store of a raylet that just died is ended outright
#: by Ray, with no chance to leave its runs pending (exit 4)
LOCAL_RAY_CONFIG = {
    "enable_metrics_collection": False,
    "max_direct_call_object_size": 128 * 2**20,
    "task_rpc_inlined_bytes_limit": 128 * 2**20,
}
#: Ray's switch that makes a node use the loopback address (its default on macOS and Windows)
_CLUSTER_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


@contextmanager
def _loopback_only() -> Iterator[None]:
    """Start Ray's processes with the loopback address as the node's: every server binds 127.0.0.1."""
    from ray._private import parameter, ray_constants

    before_env, before_flag = os.environ.get(_CLUSTER_SWITCH), ray_constants.ENABLE_RAY_CLUSTER
    os.environ[_CLUSTER_SWITCH] = "0"  # the processes Ray starts read it
    ray_constants.ENABLE_RAY_CLUSTER = False  # this process read it at import
    params = parameter.RayParams

    class LocalParams(params):
        """Ray's node parameters with the dashboard agent's HTTP port chosen by the system: its
        fixed default (52365) is taken while another local study runs, and the agent then
        retries for about 3 s before it starts without it."""

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            kwargs.setdefault("dashboard_agent_listen_port", 0)
            super().__init__(*args, **kwargs)

    parameter.RayParams = LocalParams
    try:
        yield
    finally:
        parameter.RayParams = params
        ray_constants.ENABLE_RAY_CLUSTER = before_flag
        if before_env is None:
            os.environ.pop(_CLUSTER_SWITCH, None)
        else:
            os.environ[_CLUSTER_SWITCH] = before_env


def run_study(
    study: Study,
    results: Path | str = "results",
    workers: int | None = None,
    address: str | None = None,
    retry_failed: bool = False,
    verbose: bool = False,
    max_retries: int = MAX_RETRIES,
    on_event: Callable[[Event], None] | None = None,
    tensorboard: Path | None = None,
) -> Summary:
    """Execute every pending or damaged run of the study as a Ray task and store each result as
    it arrives.

    Locks the study's results folder for the duration; an `address` that no cluster answers
    raises ClusterUnreachable before anything is written. A run whose task Ray loses (its
    worker, raylet or node died, its result was lost) is not failed: it is listed in
    `Summary.lost` and stays pending. On SIGINT (Ctrl-C) the running tasks are cancelled and
    `Interrupted` is raised; completed runs stay saved.
    """
    results = Path(results)
    if address:
        address = cluster_address(address)
    with StudyLock(results / study.name):
        clear_staging(results / study.name)
        clear_progress(results / study.name)  # a killed driver's
        checks = {spec.run_id: check_run(results, spec) for spec in study.runs}
        pending = _todo(study, checks, retry_failed)
        summary = Summary(skipped=len(study.runs) - len(pending))
        summary.redone = {run_id: check.problem for run_id, check in checks.items() if check.state == DAMAGED}
        if not retry_failed:
            summary.failed_before = sum(check.state == FAILED for check in checks.values())
        if not pending:
            return summary
        started_ray = _init_ray(address, workers, verbose)
        try:
            _fan_out(pending, results, summary, max_retries, on_event, tensorboard)
        finally:
            clear_progress(results / study.name)
            if started_ray:
                import ray

                ray.shutdown()
    return summary


def _run_task(spec: RunSpec, checkpoint: str, board: Any = None, tensorboard: Path | None = None) -> RunResult:
    from study.run import execute  # training code: imported by the workers only

    return execute(spec, checkpoint_dir=Path(checkpoint), watchers=_watchers(board, tensorboard))


def _run_group_task(
    specs: list[RunSpec], checkpoints: list[str], board: Any = None, tensorboard: Path | None = None
) -> list[RunResult]:
    from study.stacked.group import run_group  # training code: imported by the workers only

    folders = [Path(folder) for folder in checkpoints]
    return run_group(specs, checkpoint_dirs=folders, watchers=_watchers(board, tensorboard))


def _watchers(board: Any, tensorboard: Path | None) -> Any:
    """The run's watchers in a worker: its reports go to the driver's board, unanswered."""
    from study.run import Watchers

    report = None if board is None else lambda run_id, row: board.report.remote(run_id, row)
    return Watchers(report=report, tensorboard=tensorboard)


#: a stacked group's largest size when `resources.group_size` is not set (16–32 members: 5–7× one
#: SB3 run per CPU core, benchmarks/stacked_engine.py)
GROUP_SIZE = 32
#: exploration settings the members of one stacked group may differ in (they leave every shape alone)
MEMBER_SETTINGS = {
    "exploration": {
        "param_noise": {"interval", "adaptive", "initial_sigma", "target_distance", "adapt_every", "alpha"},
        "action_noise": {"sigma", "theta", "beta"},
        "gsde": {"interval", "log_std_init"},
        "sampling_noise": {"beta"},
        "ez_greedy": {"mu", "max_duration"},
    }
}


def plan_tasks(pending: list[RunSpec], slots: int = 1) -> list[list[RunSpec]]:
    """The Ray tasks for the pending runs, costliest first: each `engine: sb3` run alone;
    `engine: stacked` runs that differ only in seed and `MEMBER_SETTINGS` in even groups of at
    most `resources.group_size`, cut smaller where that shortens the study's wall time on
    `slots` workers (by `task_cost`; of equally short plans, the one of least compute, since
    smaller groups cost more in all)."""
    tasks: list[list[RunSpec]] = []
    alike: dict[str, list[RunSpec]] = {}
    for spec in pending:
        if spec.settings.engine != "stacked":
            tasks.append([spec])
            continue
        shared = spec.settings.model_dump_json(exclude=MEMBER_SETTINGS | {"resources": {"group_size"}})
        alike.setdefault(f"{spec.study}/{spec.budget}/{shared}", []).append(spec)
    runs_by_key = list(alike.values())
    fewest = [-(-len(runs) // (runs[0].settings.resources.group_size or GROUP_SIZE)) for runs in runs_by_key]

    def cut(counts: list[int]) -> list[list[RunSpec]]:
        groups = [runs[i::n] for runs, n in zip(runs_by_key, counts, strict=True) for i in range(n)]
        return sorted(tasks + groups, key=task_cost, reverse=True)

    def within(bound: float) -> list[int]:  # each configuration in the fewest groups that cost at most `bound`
        counts = []
        for runs, n in zip(runs_by_key, fewest, strict=True):
            while n < len(runs) and task_cost(runs[::n]) > bound:
                n += 1
            counts.append(n)
        return counts

    bounds = {
        task_cost(runs[::n])
        for runs, least in zip(runs_by_key, fewest, strict=True)
        for n in range(least, len(runs) + 1)
    }
    plans = [cut(within(bound)) for bound in sorted(bounds, reverse=True)] or [tasks]
    return min(plans, key=lambda plan: (makespan([task_cost(task) for task in plan], slots), sum(map(task_cost, plan))))


#: what each further member adds to a stacked group's time, in runs (benchmarks/stacked_engine.py:
#: 16 members train in the time of 1.5–3 runs, 32 in that of 2–6)
MEMBER_COST = 1 / 8


def task_cost(task: list[RunSpec]) -> float:
    """A task's time, in environment steps of one SB3 run: a stacked group of E members costs
    1 + (E − 1) × MEMBER_COST runs' steps."""
    spec = task[0]
    members = len(task) if spec.settings.engine == "stacked" else 1
    return spec.settings.total_steps * (1 + (members - 1) * MEMBER_COST)


def makespan(durations: Sequence[float], workers: int) -> float:
    """The wall time of tasks taken in order, each by the first free of `workers`."""
    free = [0.0] * max(1, workers)
    for duration in durations:
        heapq.heappush(free, heapq.heappop(free) + duration)
    return max(free)


def is_run_failure(err: RayError) -> bool:
    """Whether a Ray error is the run's own fault: its code raised (RayTaskError). Anything else —
    a worker process that kept dying (crash, OOM kill), a dead raylet or node, a lost object or
    owner, a system error, a timeout — is the infrastructure's: the run is lost, not failed."""
    from ray.exceptions import RayError, RayTaskError

    cause = getattr(err, "cause", None)
    return isinstance(err, RayTaskError) and not (isinstance(cause, RayError) and not isinstance(cause, RayTaskError))


def _first_line(err: BaseException, message: str | None = None) -> str:
    lines = str(err if message is None else message).strip().splitlines()
    return f"{type(err).__name__}: {lines[0]}" if lines else type(err).__name__


def _fan_out(
    pending: list[RunSpec],
    results: Path,
    summary: Summary,
    max_retries: int,
    on_event: Callable[[Event], None] | None,
    tensorboard: Path | None = None,
) -> None:
    import ray
    from ray.exceptions import RayError

    # what a Ray call raises when Ray itself fails: its own errors, or the core worker's
    # connection to a dead raylet reset (an OSError)
    ray_gone = (RayError, OSError)
    cpus_per_run = max(spec.settings.resources.cpus for spec in pending)
    slots = max(1, int(ray.cluster_resources().get("CPU", 1) // cpus_per_run))
    run_task, group_task = ray.remote(_run_task), ray.remote(_run_group_task)
    board = start_board()
    tensorboard = None if tensorboard is None else Path(tensorboard).resolve()
    refs: dict[Any, list[RunSpec]] = {}
    for specs in plan_tasks(pending, slots):
        resources = specs[0].settings.resources
        options = {"num_cpus": resources.cpus, "num_gpus": resources.gpus, "max_retries": max_retries}
        where = [str(checkpoint_dir(results.resolve(), spec)) for spec in specs]
        if specs[0].settings.engine == "stacked":
            ref = group_task.options(name=GROUP_TASK_NAME, **options).remote(specs, where, board, tensorboard)
        else:
            ref = run_task.options(name=TASK_NAME, **options).remote(specs[0], where[0], board, tensorboard)
        refs[ref] = specs
    # where the runs with a checkpoint on this machine resume (on a cluster's other nodes: not known here)
    resume_at = resume_steps(results, pending)
    clock = time.monotonic()
    finished_steps = 0  # steps of the runs this invocation finished
    copied = 0.0  # when the progress copy for `study status` was last written
    folder = results / pending[0].study

    asked, reports = board.snapshot.remote(), {}

    def emit(kind: str, result: RunResult | None = None) -> None:
        nonlocal copied, asked, reports
        elapsed = time.monotonic() - clock
        left = sum(len(specs) for specs in refs.values())
        out = {spec.run_id: spec for specs in refs.values() for spec in specs}
        try:
            if ray.wait([asked], timeout=0)[0]:  # the board's latest answer; the loop never waits for one
                answered, asked = asked, board.snapshot.remote()
                reports = ray.get(answered)
        except ray_gone:  # progress rows only: Ray's failure is met by the loop
            reports = {}
        progress = {run_id: row for run_id, row in reports.items() if run_id in out}
        running = max(sum(len(specs) for specs in list(refs.values())[:slots]), len(reporting(progress)))
        eta = _eta(elapsed, finished_steps, list(out.values()), progress, resume_at)
        event = Event(
            kind, len(summary.done), len(summary.failed), running, left - running, elapsed, eta, result, progress
        )
        if on_event:
            on_event(event)
        if time.monotonic() - copied >= REPORT_EVERY_S or kind != "tick":
            counts = {name: getattr(event, name) for name in ("done", "failed", "running", "pending", "elapsed", "eta")}
            try:
                write_progress(folder, counts, progress)
            except OSError:  # a copy for `study status`: never the driver's failure
                pass
            copied = time.monotonic()

    emit("start")
    taking: list[RunSpec] = []  # the runs whose result the driver is taking in
    with _interrupt_flag() as interrupted:
        try:
            while refs and not interrupted.is_set():
                try:
                    ready, _ = ray.wait(list(refs), num_returns=1, timeout=0.5)
                except ray_gone as err:  # Ray itself is gone: every run still out is lost
                    summary.lost += [LostRun(spec, _first_line(err)) for specs in refs.values() for spec in specs]
                    refs.clear()
                    break
                for ref in ready:
                    taking = refs.pop(ref)
                    try:
                        outcome = ray.get(ref)
                    except ray_gone as err:
                        if not (isinstance(err, RayError) and is_run_failure(err)):
                            summary.lost += [LostRun(spec, _first_line(err)) for spec in taking]
                            emit("tick")
                            continue
                        error = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
                        outcome = [failed_result(spec, error) for spec in taking]
                    board.drop.remote([spec.run_id for spec in taking])
                    for result in outcome if isinstance(outcome, list) else [outcome]:
                        if result.status == DONE:
                            finished_steps += result.meta["steps"] - (result.meta.get("resumed_at") or 0)
                        write_run(result, results)
                        result.model = result.normalize = None  # on disk now: the driver keeps no model in memory
                        (summary.done if result.status == DONE else summary.failed).append(result)
                        emit("result", result)
                if not ready:
                    emit("tick")
        except SystemExit as err:  # Ray's core worker ending this process (its raylet is gone): runs out are lost
            if not hasattr(err, "ray_terminate_msg"):
                raise
            handled = {run.spec.run_id for run in summary.done + summary.failed + summary.lost}
            out = [spec for spec in taking if spec.run_id not in handled]
            out += [spec for group in refs.values() for spec in group]
            summary.lost += [LostRun(spec, _first_line(err, str(err.ray_terminate_msg))) for spec in out]
            refs.clear()
    try:
        ray.kill(board)
    except Exception:  # Ray may be gone already (its runs are listed as lost)
        pass
    if interrupted.is_set():
        for ref in refs:
            ray.cancel(ref, force=True)
        raise Interrupted


def _eta(
    elapsed: float,
    finished: int,
    unfinished: list[RunSpec],
    progress: dict[str, dict[str, Any]],
    resume_at: dict[str, int] | None = None,
) -> float | None:
    """The time left at the study's speed so far: the unfinished runs' steps still to take over
    the steps taken per second in this invocation (by the finished runs and the running ones'
    reports). A run not reporting yet starts at its checkpoint's step (`resume_at`) or at 0."""
    taken = finished + sum(row["taken"] for row in progress.values())
    if not taken or elapsed <= 0:
        return None
    resume_at = resume_at or {}
    at = {
        spec.run_id: progress[spec.run_id]["steps"] if spec.run_id in progress else resume_at.get(spec.run_id, 0)
        for spec in unfinished
    }
    to_take = sum(max(spec.settings.total_steps - at[spec.run_id], 0) for spec in unfinished)
    return to_take / (taken / elapsed)


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

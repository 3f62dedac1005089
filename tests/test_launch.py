"""The grid engine on Ray: resume after a killed driver, failure isolation, retries, cluster, lock."""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import psutil
import pytest
from ray._private.ray_constants import DEFAULT_DASHBOARD_AGENT_LISTEN_PORT
from ray.exceptions import (
    ActorDiedError,
    GetTimeoutError,
    LocalRayletDiedError,
    NodeDiedError,
    ObjectLostError,
    OutOfMemoryError,
    OwnerDiedError,
    RaySystemError,
    RayTaskError,
    TaskUnschedulableError,
    WorkerCrashedError,
)

from study.config import load_study
from study.launch import TASK_NAME, is_run_failure, run_study
from study.run import execute
from study.store import DONE, load_results, run_dir
from study.studylock import StudyLock

ROOT = Path(__file__).resolve().parent.parent
TESTS = Path(__file__).resolve().parent


def cli_env() -> dict[str, str]:
    """The environment of a driver: workers must import tests/faulty_envs.py."""
    path = os.pathsep.join([str(TESTS), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path}


def start_cli(path: Path, results: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "study", "run", str(path), "--results", str(results), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def run_cli(
    path: Path, results: Path, *args: str, command: str = "run", env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "study", command, str(path), "--results", str(results), *args]
    return subprocess.run(cmd, cwd=ROOT, env=env or cli_env(), capture_output=True, text=True, timeout=600)


def completed(results: Path, study: str) -> list[Path]:
    return [p.parent for p in (results / study).glob("*/meta.json")]


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.1)


def ray_warnings(pid: int) -> str:
    """The warnings and errors in the Ray log of the driver process `pid`: what Ray saw, for a failure message."""
    logs = Path(tempfile.gettempdir(), "ray").glob(f"session_*/logs/python-core-driver-*_{pid}.log")
    lines = [line for log in logs for line in log.read_text(errors="replace").splitlines()]
    return "\n".join(line for line in lines if re.match(r"\[[^]]* [WEF] ", line))[-6000:]


def _all_task_processes() -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(["cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if cmdline and cmdline[0].startswith(f"ray::{TASK_NAME}"):
            found.append(proc)
    return found


OTHERS = {proc.pid for proc in _all_task_processes()}  # other studies running on this machine


def task_processes() -> list[psutil.Process]:
    """The Ray worker processes running runs of this test session's drivers."""
    return [proc for proc in _all_task_processes() if proc.pid not in OTHERS]


def no_orphan_workers() -> bool:
    return not task_processes()


def alive(proc: psutil.Process) -> bool:
    try:
        return proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE
    except psutil.Error:
        return False


@pytest.fixture
def six_runs(write_study):
    return write_study(
        {
            "name": "six",
            "seeds": 3,
            "total_steps": 600,
            "budgets.full": 600,
            "eval.freq": 200,
            "checkpoint_every": 200,
            "grid": {"exploration.param_noise.interval": [4, "episode"]},
        }
    )


def test_driver_killed_then_rerun_completes_each_run_exactly_once(six_runs, tmp_path: Path) -> None:
    results = tmp_path / "results"
    driver = start_cli(six_runs, results, "--workers", "2")
    wait_for(lambda: len(completed(results, "six")) >= 2)
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    before = {p.name: json.loads((p / "meta.json").read_text())["started"] for p in completed(results, "six")}
    assert 2 <= len(before) < 6
    wait_for(no_orphan_workers, timeout=60)

    status = run_cli(six_runs, results, command="status")
    assert status.returncode == 0 and f"done {len(before)}" in status.stdout

    rerun = run_cli(six_runs, results, "--workers", "2")
    assert rerun.returncode == 0, rerun.stderr
    assert f"{6 - len(before)} done, 0 failed, {len(before)} already complete" in rerun.stdout
    after = {p.name: json.loads((p / "meta.json").read_text())["started"] for p in completed(results, "six")}
    assert len(after) == 6
    assert all(after[name] == started for name, started in before.items())  # never rerun
    assert not list((results / "six" / ".checkpoints").glob("*/*"))

    # the same tables as runs that were never interrupted
    study = load_study(six_runs)
    for spec in study.runs:
        reference = execute(spec)
        for name, frame in reference.tables().items():
            stored = pd.read_parquet(run_dir(results, spec) / f"{name}.parquet")
            pd.testing.assert_frame_equal(stored, frame, obj=f"{spec.run_id}/{name}")


def test_a_raising_run_is_isolated_and_retried_on_request(write_study, tmp_path: Path) -> None:
    path = write_study({"name": "faulty", "envs": ["Pendulum-v1", "faulty_envs:Diverging-v0"]})
    results = tmp_path / "results"
    first = run_cli(path, results, "--workers", "2")
    assert first.returncode == 1
    assert "1 done, 1 failed" in first.stdout and "Diverging-v0" in first.stdout
    study = load_study(path)
    good, bad = (run_dir(results, spec) for spec in study.runs)
    assert json.loads((good / "meta.json").read_text())["status"] == "done"
    assert json.loads((bad / "meta.json").read_text())["status"] == "failed"
    assert "FloatingPointError: simulation diverged" in (bad / "error.txt").read_text()

    status = run_cli(path, results, command="status")
    assert "done 1 · failed 1 · partial 0 · pending 0" in status.stdout

    again = run_cli(path, results)
    assert again.returncode == 0
    assert "0 done, 0 failed, 1 already complete, 1 failed before (rerun them with --retry-failed)" in again.stdout

    started = json.loads((bad / "meta.json").read_text())["ended"]
    retried = run_cli(path, results, "--retry-failed")
    assert retried.returncode == 1 and "0 done, 1 failed, 1 already complete" in retried.stdout
    assert json.loads((bad / "meta.json").read_text())["ended"] != started
    assert len(load_results(study, results).runs) == 1


@pytest.mark.parametrize("retries", [3, 0])
def test_killed_worker_is_retried_or_left_pending(write_study, tmp_path: Path, retries: int) -> None:
    path = write_study({"name": "slow", "envs": ["faulty_envs:Slow-v0"], "total_steps": 400, "budgets.full": 400})
    results = tmp_path / "results"
    driver = start_cli(path, results, "--workers", "1", "--max-retries", str(retries))
    wait_for(lambda: task_processes())
    time.sleep(1.0)
    for proc in task_processes():
        proc.send_signal(signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    folder = run_dir(results, load_study(path).runs[0])
    if retries:
        assert driver.returncode == 0, err
        assert json.loads((folder / "meta.json").read_text())["status"] == "done"
    else:  # a worker that keeps dying is not the run's error: it stays pending
        assert driver.returncode == 4, out + err
        assert "lost 1 runs to Ray (WorkerCrashedError ×1)" in out and "again to resume" in out
        assert not folder.exists()


def test_only_an_error_raised_by_the_run_itself_fails_it() -> None:
    raised = FloatingPointError("simulation diverged")
    assert is_run_failure(RayTaskError("study_run", "Traceback", raised))
    assert is_run_failure(RayTaskError("study_run", "Traceback", raised).as_instanceof_cause())
    assert is_run_failure(RayTaskError("study_run", "Traceback", MemoryError()).as_instanceof_cause())
    lost = [
        WorkerCrashedError(),
        LocalRayletDiedError(),
        NodeDiedError("node died"),
        ObjectLostError("ab" * 14, None, ""),
        OwnerDiedError("ab" * 14, None, ""),
        RaySystemError("system error"),
        GetTimeoutError(),
        OutOfMemoryError("killed by the memory monitor"),
        ActorDiedError(),
        TaskUnschedulableError("infeasible"),
        RayTaskError("study_run", "Traceback", LocalRayletDiedError()),  # Ray failing inside the task
    ]
    assert not any(is_run_failure(err) for err in lost)


def test_a_dead_raylet_leaves_runs_pending_and_a_rerun_completes_each_once(write_study, tmp_path: Path) -> None:
    # eight short runs on two workers: when the first is stored, several are still queued at the raylet
    # (a task already running on a worker can still return its result after the raylet dies)
    path = write_study({"name": "lost", "seeds": 8, "total_steps": 600, "budgets.full": 600})
    results = tmp_path / "results"
    driver = start_cli(path, results, "--workers", "2")
    wait_for(lambda: len(completed(results, "lost")) >= 1, timeout=300)
    ray_processes = psutil.Process(driver.pid).children(recursive=True)  # this driver's Ray instance only
    raylet = next(proc for proc in ray_processes if proc.name() == "raylet")
    raylet.send_signal(signal.SIGKILL)
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 4, out + err + ray_warnings(driver.pid)
    reported = "LocalRayletDiedError" in out or "SystemExit" in out  # a failed task, or Ray ending the driver
    assert "lost " in out and reported and "again to resume" in out, out + ray_warnings(driver.pid)
    before = {p.name: json.loads((p / "meta.json").read_text()) for p in completed(results, "lost")}
    assert all(meta["status"] == DONE for meta in before.values())  # none recorded as failed
    assert 1 <= len(before) < 8
    wait_for(lambda: not any(alive(proc) for proc in ray_processes), timeout=60)  # nothing left behind

    rerun = run_cli(path, results, "--workers", "2")
    assert rerun.returncode == 0, rerun.stdout + rerun.stderr
    assert f"{8 - len(before)} done, 0 failed, {len(before)} already complete" in rerun.stdout
    after = {p.name: json.loads((p / "meta.json").read_text()) for p in completed(results, "lost")}
    assert len(after) == 8 and all(meta["status"] == DONE for meta in after.values())
    assert all(after[name]["started"] == meta["started"] for name, meta in before.items())  # never rerun


def test_a_local_instance_returns_results_in_the_task_reply_not_through_the_object_store() -> None:
    # a driver that reads a result from the store of a raylet that just died is ended by Ray outright
    import ray

    from study.launch import _init_ray

    assert _init_ray(None, 1, verbose=False)
    try:
        result = ray.remote(lambda: b"x" * 20 * 2**20).remote()  # a group's models: megabytes
        assert len(ray.get(result)) == 20 * 2**20
        assert ray.experimental.get_object_locations([result])[result]["node_ids"] == []  # on no node's store
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_ray_ending_the_driver_leaves_the_runs_out_pending(write_study, tmp_path: Path, monkeypatch) -> None:
    # Ray's core worker ends a driver whose raylet died by raising SystemExit from inside a Ray call
    import ray

    path = write_study({"name": "ended", "seeds": 3, "total_steps": 600, "budgets.full": 600})
    results = tmp_path / "results"
    real_wait = ray.wait

    def wait(*args, **kwargs):
        if completed(results, "ended"):
            ended = SystemExit(1)
            ended.ray_terminate_msg = "Exiting because the local raylet died"
            raise ended
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", wait)
    summary = run_study(load_study(path), results, workers=1)
    assert [result.spec.run_id for result in summary.done] == [p.name for p in completed(results, "ended")]
    assert len(summary.done) == 1 and not summary.failed
    assert sorted(lost.spec.run_id for lost in summary.lost) == sorted(
        spec.run_id for spec in load_study(path).runs if spec.run_id != summary.done[0].spec.run_id
    )
    assert {lost.reason for lost in summary.lost} == {"SystemExit: Exiting because the local raylet died"}
    assert not ray.is_initialized()

    monkeypatch.undo()
    rerun = run_study(load_study(path), results, workers=1)
    assert len(rerun.done) == 2 and rerun.skipped == 1 and not rerun.lost


@pytest.mark.slow
def test_a_connection_reset_by_a_dead_raylet_leaves_the_runs_out_pending(
    write_study, tmp_path: Path, monkeypatch
) -> None:
    # the core worker may instead report its raylet's death as a reset connection (OSError) from ray.wait
    import ray

    path = write_study({"name": "reset", "seeds": 3, "total_steps": 600, "budgets.full": 600})
    results = tmp_path / "results"
    real_wait = ray.wait

    def wait(*args, **kwargs):
        if completed(results, "reset"):
            raise OSError("Connection reset by peer")
        return real_wait(*args, **kwargs)

    monkeypatch.setattr(ray, "wait", wait)
    summary = run_study(load_study(path), results, workers=1)
    assert len(summary.done) == 1 and not summary.failed and len(summary.lost) == 2
    assert {lost.reason for lost in summary.lost} == {"OSError: Connection reset by peer"}
    monkeypatch.undo()
    rerun = run_study(load_study(path), results, workers=1)
    assert len(rerun.done) == 2 and rerun.skipped == 1 and not rerun.lost


def test_a_local_instance_listens_on_the_loopback_address_only(write_study, tmp_path: Path) -> None:
    path = write_study({"name": "quiet", "envs": ["faulty_envs:Slow-v0"], "total_steps": 400, "budgets.full": 400})
    driver = start_cli(path, tmp_path / "results", "--workers", "1")
    tree = psutil.Process(driver.pid)

    def running() -> list[psutil.Process]:
        return [proc for proc in tree.children(recursive=True) if proc.name().startswith(f"ray::{TASK_NAME}")]

    wait_for(running)
    workers = {proc.pid for proc in running()}
    pids = {tree.pid} | {proc.pid for proc in tree.children(recursive=True)}
    sockets = [
        conn for conn in psutil.net_connections("inet") if conn.status == psutil.CONN_LISTEN and conn.pid in pids
    ]
    listening = [(conn.pid, ipaddress.ip_address(conn.laddr.ip)) for conn in sockets]
    out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, out + err
    assert {pid for pid, _ in listening} >= {tree.pid, *workers}  # the driver's and the workers' servers seen
    exposed = [str(ip) for _, ip in listening if not (getattr(ip, "ipv4_mapped", None) or ip).is_loopback]
    assert listening and not exposed
    # no fixed port that a second local study would find taken (its agent then waits about 3 s)
    assert DEFAULT_DASHBOARD_AGENT_LISTEN_PORT not in {conn.laddr.port for conn in sockets}


@pytest.fixture
def no_cluster_env(tmp_path: Path) -> dict[str, str]:
    """A driver's environment whose Ray finds no cluster address of its own: $RAY_TMPDIR is empty."""
    env = {key: value for key, value in cli_env().items() if key != "RAY_ADDRESS"}
    (tmp_path / "raytmp" / "ray").mkdir(parents=True)
    return env | {"RAY_TMPDIR": str(tmp_path / "raytmp")}


@pytest.mark.parametrize("case", ["unused port", "stale address file", "no address file", "not a Ray cluster"])
def test_an_address_no_cluster_answers_fails_fast_and_writes_nothing(
    write_study, tmp_path: Path, no_cluster_env: dict[str, str], case: str
) -> None:
    path = write_study()
    results = tmp_path / "results"
    with socket.socket() as listener:  # accepts connections (its backlog) and never answers
        listener.bind(("0.0.0.0", 0))
        listener.listen()
        address = {
            "unused port": f"127.0.0.1:{free_port()}",
            "not a Ray cluster": f"127.0.0.1:{listener.getsockname()[1]}",
        }.get(case, "auto")
        if case == "stale address file":  # what `ray start` leaves behind once its cluster is gone
            (tmp_path / "raytmp" / "ray" / "ray_current_cluster").write_text(f"127.0.0.1:{free_port()}")
        clock = time.monotonic()
        proc = run_cli(path, results, "--address", address, env=no_cluster_env)
        elapsed = time.monotonic() - clock
    assert proc.returncode == 2, proc.stdout + proc.stderr
    assert elapsed < 30
    assert f"error: --address {address}: no Ray cluster" in proc.stderr
    if case == "stale address file":
        assert "ray_current_cluster; stale if that cluster has stopped" in proc.stderr
    assert not results.exists()  # no lock, no folder


def test_ctrl_c_stops_cleanly_and_says_how_to_resume(six_runs, tmp_path: Path) -> None:
    results = tmp_path / "results"
    driver = start_cli(six_runs, results, "--workers", "2")
    wait_for(lambda: len(completed(results, "six")) >= 1)
    driver.send_signal(signal.SIGINT)
    out, _ = driver.communicate(timeout=120)
    assert driver.returncode == 130, out
    assert "interrupted" in out and "again to resume" in out
    assert not list((results / "six" / ".staging").glob("*"))
    wait_for(no_orphan_workers, timeout=60)
    rerun = run_cli(six_runs, results, "--workers", "2")
    assert rerun.returncode == 0 and len(completed(results, "six")) == 6


def test_second_driver_refuses_while_the_first_holds_the_lock(write_study, tmp_path: Path) -> None:
    path = write_study()
    results = tmp_path / "results"
    with StudyLock(results / "tiny"):
        refused = run_cli(path, results)
    assert refused.returncode == 3
    assert f"is being run by PID {os.getpid()}" in refused.stderr
    assert not completed(results, "tiny")
    # a lock file left by a dead driver holds no lock: the next driver proceeds
    (results / "tiny" / ".lock").write_text(json.dumps({"pid": 999999, "host": "gone", "since": "then"}))
    assert run_cli(path, results).returncode == 0


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _cluster_processes(temp_dir: Path) -> list[psutil.Process]:
    """The processes of the Ray cluster whose files are under `temp_dir`, and their children."""
    found = {}
    for proc in psutil.process_iter(["cmdline"]):
        if str(temp_dir) in " ".join(proc.info["cmdline"] or []) and proc.pid != os.getpid():
            try:
                found |= {member.pid: member for member in [proc, *proc.children(recursive=True)]}
            except psutil.Error:
                continue
    return list(found.values())


@pytest.fixture
def ray_cluster():
    """A Ray cluster started with `ray start --head` in a temporary folder of its own (so that it
    leaves no address in /tmp/ray for `--address auto` to find); torn down by stopping its own
    processes only (`ray stop` would stop every Ray instance on the machine)."""
    port = free_port()
    ray = Path(sys.executable).parent / "ray"
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))  # short: Ray's socket paths live there
    start = [str(ray), "start", "--head", f"--port={port}", "--num-cpus=2", "--include-dashboard=false"]
    env = cli_env() | {"RAY_TMPDIR": str(temp_dir)}
    try:
        subprocess.run([*start, "--disable-usage-stats"], env=env, check=True, capture_output=True, timeout=120)
        yield f"127.0.0.1:{port}"
    finally:
        procs = _cluster_processes(temp_dir)
        for proc in procs:
            proc.terminate()
        _, alive = psutil.wait_procs(procs, timeout=20)
        for proc in alive:
            proc.kill()
        shutil.rmtree(temp_dir, ignore_errors=True)


def test_runs_on_an_existing_ray_cluster(ray_cluster: str, tmp_path: Path) -> None:
    results = tmp_path / "results"
    proc = run_cli(ROOT / "ablations" / "smoke.yaml", results, "--address", ray_cluster)
    assert proc.returncode == 0, proc.stderr
    assert "4 done, 0 failed" in proc.stdout
    loaded = load_results(load_study(ROOT / "ablations" / "smoke.yaml"), results)
    assert len(loaded.runs) == 4 and len(loaded.evaluations) == 12


def test_two_studies_run_side_by_side(write_study, tmp_path: Path) -> None:
    """A second driver on the same machine starts its own Ray instance, not joining the first's."""
    slow = write_study({"name": "slow", "envs": ["faulty_envs:Slow-v0"], "total_steps": 400, "budgets.full": 400})
    quick = write_study({"name": "quick"}, name="quick.yaml")
    results = tmp_path / "results"
    first = start_cli(slow, results, "--workers", "1")
    wait_for(lambda: task_processes())
    second = run_cli(quick, results, "--workers", "1")
    assert second.returncode == 0, second.stderr
    out, err = first.communicate(timeout=300)
    assert first.returncode == 0, err
    assert len(completed(results, "slow")) == len(completed(results, "quick")) == 1

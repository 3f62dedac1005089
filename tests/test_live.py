"""Watching runs train: live progress from the workers, `study status` while a driver runs, TensorBoard logs."""

from __future__ import annotations

import json
import time
from pathlib import Path
from typing import Any

import pandas as pd
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from test_launch import cli_env, start_cli, wait_for

from study.__main__ import main
from study.config import load_study
from study.launch import _eta, run_study
from study.live import PROGRESS, read_progress
from study.run import Watchers, execute
from study.stacked.group import run_group
from study.studylock import StudyLock


def test_a_watched_run_reports_its_progress_and_is_the_same_run(write_study) -> None:
    spec = load_study(write_study()).runs[0]
    reports: list[tuple[str, dict[str, Any]]] = []
    watched = execute(spec, watchers=Watchers(report=lambda run_id, row: reports.append((run_id, row)), every_s=0.0))
    plain = execute(spec)
    for name, frame in plain.tables().items():
        pd.testing.assert_frame_equal(watched.tables()[name], frame, check_exact=True, obj=name)
    assert {run_id for run_id, _ in reports} == {spec.run_id}
    rows = [row for _, row in reports]
    assert [row["steps"] for row in rows] == list(range(2, 301))  # each step after the first
    assert [row["taken"] for row in rows] == list(range(2, 301))  # all of them in this start
    assert {row["total"] for row in rows} == {300}
    assert all(row["steps_per_s"] > 0 for row in rows)
    first_evaluation = plain.evaluations.iloc[0]  # at step 150
    assert rows[147]["last_return"] is None and rows[148]["last_return"] == first_evaluation["return_mean"]


def _scalars(folder: Path) -> set[str]:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return set(accumulator.Tags()["scalars"])


def _last(folder: Path) -> dict[str, float]:
    accumulator = EventAccumulator(str(folder))
    accumulator.Reload()
    return {tag: accumulator.Scalars(tag)[-1].value for tag in accumulator.Tags()["scalars"]}


@pytest.mark.parametrize("engine", ["sb3", "stacked"])
def test_tensorboard_logs_each_run_under_its_study_and_id(write_study, tmp_path, engine) -> None:
    short = {"seeds": 2, "hyperparams.learning_starts": 50, "env_kwargs": {"max_episode_steps": 50}}
    study = load_study(write_study(short), engine=engine)  # 6 episodes: a dump after the 4th
    watchers = Watchers(tensorboard=tmp_path / "tb")
    if engine == "stacked":
        watched, plain = run_group(study.runs, watchers=watchers), run_group(study.runs)
    else:
        watched, plain = [execute(s, watchers=watchers) for s in study.runs], [execute(s) for s in study.runs]
    for one, other in zip(watched, plain, strict=True):
        pd.testing.assert_frame_equal(one.evaluations, other.evaluations, check_exact=True)
    for spec in study.runs:
        tags = _scalars(tmp_path / "tb" / spec.study / spec.run_id)
        expected = {"eval/mean_reward", "param_noise/sigma", "param_noise/distance", "rollout/ep_rew_mean"}
        assert expected | {"train/actor_loss", "train/critic_loss"} <= tags
    if engine == "stacked":  # each member's own losses, as its SB3 run records them
        spec = study.runs[0]
        alone = spec.model_copy(update={"settings": spec.settings.model_copy(update={"engine": "sb3"})})
        assert execute(alone, watchers=Watchers(tensorboard=tmp_path / "sb3")).status == "done"
        mine = _last(tmp_path / "tb" / spec.study / spec.run_id)
        theirs = _last(tmp_path / "sb3" / alone.study / alone.run_id)
        for tag in ("train/critic_loss", "train/actor_loss"):
            assert mine[tag] == pytest.approx(theirs[tag], rel=1e-3), tag


def test_the_eta_is_the_steps_left_at_the_speed_so_far(write_study) -> None:
    runs = load_study(write_study({"seeds": 2, "budgets.full": 1000})).runs
    # 10 s: one run of 1,000 steps finished, the other two at 500 of their 1,000 → 1,500 steps
    # taken, 150 per second; 2,000 − 500 = 1,500 left: 10 s
    progress = {runs[0].run_id: {"steps": 500, "taken": 500, "total": 1000}}
    assert _eta(10.0, 1000, runs, progress) == pytest.approx(10.0)
    assert _eta(10.0, 0, runs, {}) is None
    # a run resumed at step 400 has taken 100 of its 500 steps in this invocation: 1,100 in 10 s
    resumed = {runs[0].run_id: {"steps": 500, "taken": 100, "total": 1000}}
    assert _eta(10.0, 1000, runs, resumed) == pytest.approx(1500 / 110)
    # a run that has not reported yet, with a checkpoint at step 600: 400 left, not 1,000
    assert _eta(10.0, 1000, runs, {}, {runs[0].run_id: 600}) == pytest.approx(1400 / 100)
    assert _eta(10.0, 1000, runs, progress, {runs[0].run_id: 400}) == pytest.approx(10.0)  # its report counts


def test_the_launcher_shows_the_running_runs_progress(write_study, tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("PYTHONPATH", cli_env()["PYTHONPATH"])
    path = write_study({"envs": ["faulty_envs:Slow-v0"], "budgets.full": 400, "seeds": 2})
    events = []
    run_study(load_study(path), tmp_path / "results", workers=2, on_event=events.append)
    reported = [event.progress for event in events if event.progress]
    assert reported, "no progress reached the driver"
    row = next(iter(reported[-1].values()))
    assert 0 < row["steps"] <= 400 and row["total"] == 400 and row["steps_per_s"] > 0
    assert not (tmp_path / "results" / "tiny" / PROGRESS).exists()  # the driver's copy goes with it


def test_status_shows_the_progress_of_a_live_driver(write_study, tmp_path, capsys) -> None:
    path = write_study({"envs": ["faulty_envs:Slow-v0"], "budgets.full": 600})
    results = tmp_path / "results"
    folder = results / "tiny"
    driver = start_cli(path, results, "--workers", "1")
    try:
        wait_for(lambda: (folder / PROGRESS).is_file() and json.loads((folder / PROGRESS).read_text())["running"])
        assert main(["status", str(path), "--results", str(results)]) == 0
        out = capsys.readouterr().out
        assert "a driver is running this study" in out and "steps/s" in out and "running " in out
    finally:
        out, err = driver.communicate(timeout=300)
    assert driver.returncode == 0, out + err
    assert read_progress(folder) is None and not StudyLock.held(folder)
    assert main(["status", str(path), "--results", str(results)]) == 0
    assert "a driver is running" not in capsys.readouterr().out


def test_a_progress_copy_without_a_live_driver_is_not_shown(tmp_path) -> None:
    (tmp_path / PROGRESS).write_text(json.dumps({"written": time.time(), "counts": {}, "running": {}}))
    assert read_progress(tmp_path) is None  # a driver that died left it: no lock is held
    with StudyLock(tmp_path):
        assert read_progress(tmp_path) is not None


def test_a_run_silent_for_minutes_is_shown_so_and_not_counted_as_running(monkeypatch) -> None:
    """A killed worker's runs keep their last report until Ray's retry reports anew: past
    SILENT_S they are marked, and the driver no longer counts them as running."""
    from study import live

    clock = [1000.0]
    monkeypatch.setattr(live.time, "monotonic", lambda: clock[0])
    board = live.ProgressBoard()
    row = {"steps": 82_000, "taken": 42_000, "total": 100_000, "steps_per_s": 9.0, "last_return": 4000.0}
    board.report("killed", row)
    clock[0] += live.SILENT_S - 1
    board.report("alive", row | {"steps": 15_000})
    snapshot = board.snapshot()
    assert snapshot["killed"]["silent_s"] == live.SILENT_S - 1 and snapshot["alive"]["silent_s"] == 0
    assert set(live.reporting(snapshot)) == {"killed", "alive"}
    clock[0] += 1
    snapshot = board.snapshot()
    assert set(live.reporting(snapshot)) == {"alive"}
    assert "no report for 10 min" in live.progress_line("killed", snapshot["killed"])
    assert "no report" not in live.progress_line("alive", snapshot["alive"])


def test_the_board_comes_back_after_its_process_dies() -> None:
    """Ray's memory monitor may kill the board's process with the workers': Ray restarts it
    empty, and the runs' next reports fill it again (live progress does not end there)."""
    import ray
    from ray.exceptions import RayError

    from study.live import start_board

    ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        board = start_board()
        row = {"steps": 10, "taken": 10, "total": 100, "steps_per_s": 5.0, "last_return": None}
        board.report.remote("a", row)
        assert set(ray.get(board.snapshot.remote())) == {"a"}
        ray.kill(board, no_restart=False)
        deadline = time.monotonic() + 60
        while True:
            board.report.remote("b", row)
            try:
                rows = ray.get(board.snapshot.remote(), timeout=10)
            except RayError:
                rows = {}
            if (rows and "a" not in rows) or time.monotonic() > deadline:  # the kill takes a moment
                break
            time.sleep(0.5)
        assert set(rows) == {"b"}  # restarted empty, then reported to
    finally:
        ray.shutdown()

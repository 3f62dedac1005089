"""Tuning with Optuna: trials, resume after a kill, the exported overlay, Pareto sets, pruning, bad spaces."""

from __future__ import annotations

import signal
import sqlite3
import subprocess
import sys
import time
from contextlib import closing
from pathlib import Path

import optuna
import pytest
import yaml
from optuna.trial import TrialState
from test_launch import ROOT, cli_env, no_orphan_workers, ray_warnings, run_cli, wait_for

from study.store import load_results
from study.tune import (
    BEST_OVERLAY,
    _trial_task,
    best_trials,
    default_storage,
    load_tuning,
    open_study,
    run_tuning,
    tuned_study,
)

TUNE = {
    "name": "tiny_tune",
    "total_steps": 300,
    "budgets.full": 300,
    "tune": {
        "trials": 4,
        "sampler": "random",
        "pruner": "none",
        "search_space": {
            "exploration.param_noise.initial_sigma": {"type": "log_float", "low": 0.01, "high": 1.0},
            "exploration.param_noise.interval": {"type": "categorical", "choices": [4, "episode"]},
        },
    },
}


def trials_by_state(results: Path, name: str) -> dict[TrialState, list]:
    study = optuna.load_study(study_name=name, storage=default_storage(results, name))
    out: dict[TrialState, list] = {}
    for trial in study.trials:
        out.setdefault(trial.state, []).append(trial)
    return out


def completed_trials(results: Path, name: str) -> int:
    """Complete trials in the tuning's storage (0 while it does not exist yet), read only: Optuna's
    own reader would create the tables while the driver creates them."""
    db = results / name / "optuna.db"
    if not db.is_file():
        return 0
    try:
        with closing(sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=5)) as connection:
            return connection.execute("SELECT COUNT(*) FROM trials WHERE state = 'COMPLETE'").fetchone()[0]
    except sqlite3.Error:  # a poll: the tables may not exist yet, the file may be busy
        return 0


def test_a_storage_whose_tables_another_process_creates_at_the_same_moment_opens(tmp_path, monkeypatch) -> None:
    from sqlalchemy.exc import OperationalError

    from study.tune import _storage

    real, calls = optuna.storages.RDBStorage, []

    def racing(url: str, **kwargs):
        calls.append(url)
        if len(calls) == 1:  # as the driver meets a table a poller created between its check and its CREATE
            real(url, **kwargs)
            raise OperationalError("CREATE TABLE studies", {}, Exception("table studies already exists"))
        return real(url, **kwargs)

    monkeypatch.setattr(optuna.storages, "RDBStorage", racing)
    storage = _storage(f"sqlite:///{tmp_path / 'optuna.db'}")
    assert len(calls) == 2 and storage.get_all_studies() == []


def start_tune(path: Path, results: Path, *args: str) -> subprocess.Popen:
    cmd = [sys.executable, "-m", "study", "tune", str(path), "--results", str(results), *args]
    return subprocess.Popen(cmd, cwd=ROOT, env=cli_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_a_trial(driver: subprocess.Popen, results: Path, name: str, timeout: float = 600.0) -> None:
    """Until the tuning `driver` has told Optuna of a complete trial; if it exits first or the time
    runs out, fail with what it and Ray said."""
    deadline = time.monotonic() + timeout
    while completed_trials(results, name) < 1:
        if driver.poll() is not None or time.monotonic() > deadline:
            driver.kill()
            out, err = driver.communicate()
            pytest.fail(
                f"no complete trial (driver exit {driver.returncode}):\n{out}{err[-4000:]}{ray_warnings(driver.pid)}"
            )
        time.sleep(0.1)


def test_trials_left_running_are_requeued_with_their_settings_or_only_failed(write_study, tmp_path: Path) -> None:
    """A killed invocation may leave a trial running before it drew its settings (nothing to
    retry) or an enqueued retry whose settings are still only fixed: the rerun handles both."""
    tuning = load_tuning(write_study(TUNE | {"tune": TUNE["tune"] | {"trials": 2}}))
    results = tmp_path / "results"
    (results / tuning.name).mkdir(parents=True)
    study = open_study(tuning, default_storage(results, tuning.name))
    bare = study.ask()
    settings = {"exploration.param_noise.initial_sigma": 0.05, "exploration.param_noise.interval": "episode"}
    study.enqueue_trial(settings)
    fixed = study.ask()
    summary = run_tuning(tuning, results, workers=1)
    assert summary.retried == [fixed.number]
    trials = {t.number: t for t in study.get_trials()}
    assert trials[bare.number].state == trials[fixed.number].state == TrialState.FAIL
    retry = [t for t in trials.values() if t.user_attrs.get("retry_of") == fixed.number]
    assert len(retry) == 1 and retry[0].params == settings and retry[0].state == TrialState.COMPLETE
    assert not [t for t in trials.values() if t.user_attrs.get("retry_of") == bare.number]
    assert sum(t.state == TrialState.COMPLETE for t in trials.values()) == 2


def test_a_killed_tuning_resumes_without_losing_a_trial(write_study, tmp_path: Path) -> None:
    path = write_study(TUNE)
    results = tmp_path / "results"
    driver = start_tune(path, results, "--workers", "1")
    wait_for_a_trial(driver, results, "tiny_tune")  # told to Optuna, not only stored
    driver.send_signal(signal.SIGKILL)
    driver.wait()
    wait_for(no_orphan_workers, timeout=60)
    before = trials_by_state(results, "tiny_tune")
    assert 1 <= len(before.get(TrialState.COMPLETE, [])) < 4

    rerun = run_cli(path, results, "--workers", "1", command="tune")
    assert rerun.returncode == 0, rerun.stderr
    after = trials_by_state(results, "tiny_tune")
    complete = after[TrialState.COMPLETE]
    assert len(complete) == 4
    assert {t.number for t in before[TrialState.COMPLETE]} <= {t.number for t in complete}
    # a trial the kill left running failed and was run again with the same settings (if it had drawn any)
    for failed in after.get(TrialState.FAIL, []):
        retries = [t for t in complete if t.user_attrs.get("retry_of") == failed.number]
        assert len(retries) == (1 if failed.params else 0)
        assert all(retry.params == failed.params for retry in retries)
    assert len(after.get(TrialState.FAIL, [])) == len(before.get(TrialState.RUNNING, []))

    # each complete trial's runs are stored like a study's, and the analysis reads them
    tuning = load_tuning(path)
    study = optuna.load_study(study_name="tiny_tune", storage=default_storage(results, "tiny_tune"))
    loaded = load_results(tuned_study(tuning, study), results)
    assert sorted(loaded.runs["trial"].astype(int)) == sorted(t.number for t in complete)

    # the best settings come back as an overlay that `study run` accepts
    overlay = results / "tiny_tune" / BEST_OVERLAY
    best = yaml.safe_load(overlay.read_text())
    assert set(best) == set(TUNE["tune"]["search_space"])
    dry = run_cli(path, results, "--dry-run", "--overlay", str(overlay))
    assert dry.returncode == 0, dry.stderr
    assert (results / "tiny_tune" / "tune" / "history_return.png").is_file()
    show = run_cli(path, results, "--show", command="tune")
    assert show.returncode == 0 and "best settings" in show.stdout


def test_two_objectives_give_the_non_dominated_set(write_study, tmp_path: Path) -> None:
    path = write_study(
        TUNE
        | {
            "name": "pareto",
            "total_steps": 400,  # two 200-step episodes: one after the warm-up, for the continuity cost
            "budgets.full": 400,
            "tune.objectives": ["return", "continuity_cost"],
            "tune.sampler": "nsga2",
        }
    )
    tuning = load_tuning(path)
    results = tmp_path / "results"
    summary = run_tuning(tuning, results, workers=2)
    assert len(summary.completed) == 4
    study = open_study(tuning, default_storage(results, "pareto"))
    trials = [t for t in study.trials if t.state == TrialState.COMPLETE]

    def dominates(a, b) -> bool:  # maximize return, minimize continuity cost
        (ra, ca), (rb, cb) = a.values, b.values
        return ra >= rb and ca <= cb and (ra > rb or ca < cb)

    pareto = {t.number for t in trials if not any(dominates(o, t) for o in trials)}
    assert {t.number for t in best_trials(study)} == pareto
    overlay = yaml.safe_load(summary.overlay.read_text())
    assert set(overlay["grid"]["trial"]) == {str(n) for n in pareto}
    assert (results / "pareto" / "tune" / "pareto_front.png").is_file()


def test_pruned_trials_stop_their_runs_and_report_each_evaluation(write_study, tmp_path: Path) -> None:
    tuning = load_tuning(write_study(TUNE | {"seeds": 2, "eval.freq": 100}))
    storage = f"sqlite:///{tmp_path / 'optuna.db'}"
    study = optuna.create_study(study_name="tiny_tune", storage=storage)
    trial = study.ask()
    runs = tuning.trial_study({str(trial.number): {"exploration.param_noise.interval": 4}}).runs
    outcome = _trial_task(runs, storage, "tiny_tune", trial._trial_id, optuna.pruners.NopPruner())
    assert not outcome.pruned and len(outcome.results) == 2
    reported = study.trials[trial.number].intermediate_values
    assert sorted(reported) == [100, 200, 300, 400, 500, 600]  # run index × 300 + step
    assert reported[600] == outcome.results[1].final_return

    always = optuna.pruners.ThresholdPruner(lower=1e9)  # every return is below: prune at once
    trial = optuna.create_study(study_name="always", storage=storage).ask()
    outcome = _trial_task(runs, storage, "always", trial._trial_id, always)
    assert outcome.pruned and len(outcome.results) == 1
    assert outcome.results[0].meta["steps"] == 100  # stopped at the first evaluation


@pytest.mark.parametrize(
    ("space", "message"),
    [
        ({"hyperparams.learning_rate": {"type": "log_float", "low": 0.1, "high": 0.01}}, "low must be below high"),
        ({"exploration.param_noise.interval": {"type": "categorical", "choices": []}}, "at least 1 item"),
        (
            {"hyperparams.learnin_rate": {"type": "float", "low": 0.1, "high": 0.2}},
            "learnin_rate: not an argument of TD3; did you mean 'learning_rate'",
        ),
        ({"exploration.param_noise.interval": {"type": "categorical", "choices": [0, 4]}}, "positive integer k"),
        ({"hyperparams.learning_rate": {"type": "log_float", "low": 0.0, "high": 0.2}}, "a log scale needs low > 0"),
    ],
)
def test_bad_search_spaces_exit_2_and_write_nothing(write_study, tmp_path: Path, space, message) -> None:
    path = write_study(TUNE | {"tune.search_space": space})  # merged into the space, keys as they are
    results = tmp_path / "results"
    proc = run_cli(path, results, command="tune")
    assert proc.returncode == 2
    assert str(path) in proc.stderr and "search_space" in proc.stderr and message in proc.stderr, proc.stderr
    assert not results.exists()

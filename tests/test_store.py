"""Results on disk: atomic run folders, skipping complete runs, loading tidy tables."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pandas as pd
import yaml

from study.config import load_study
from study.launch import pending_runs, run_study
from study.run import execute
from study.store import load_results, run_dir, write_run

ROOT = Path(__file__).resolve().parent.parent


def test_smoke_study_end_to_end_through_the_cli(tmp_path: Path) -> None:
    results = tmp_path / "results"
    cmd = [sys.executable, "-m", "study", "run", "ablations/smoke.yaml", "--results", str(results)]
    first = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    assert "4 done, 0 failed, 0 already complete" in first.stdout

    study = load_study(ROOT / "ablations" / "smoke.yaml")
    loaded = load_results(study, results)
    assert len(loaded.runs) == 4 and (loaded.runs["status"] == "done").all()
    assert loaded.factors == ["interval", "layer_norm"]
    assert list(loaded.evaluations["interval"].cat.categories) == ["4", "episode"]
    assert loaded.evaluations.groupby("run_id").size().tolist() == [3, 3, 3, 3]
    assert set(loaded.episodes.columns) >= {"run_id", "env", "seed", "interval", "layer_norm", "return", "sigma"}
    assert len(loaded.adaptations) > 0

    folder = run_dir(results, study.runs[0])
    meta = json.loads((folder / "meta.json").read_text())
    assert meta["status"] == "done" and meta["versions"]["torch"].startswith("2.13.0")
    assert yaml.safe_load((folder / "spec.yaml").read_text())["settings"]["algo"] == "td3"
    assert not list((results / "smoke" / ".staging").iterdir())

    again = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "0 done, 0 failed, 4 already complete" in again.stdout
    dry = subprocess.run([*cmd, "--dry-run"], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert dry.returncode == 0 and "total 4: done 4 · failed 0 · partial 0 · pending 0" in dry.stdout


def test_written_folder_round_trips(write_study, tmp_path: Path) -> None:
    spec = load_study(write_study()).runs[0]
    result = execute(spec)
    folder = write_run(result, tmp_path)
    assert sorted(p.name for p in folder.iterdir()) == [
        "adaptations.parquet",
        "episodes.parquet",
        "evaluations.parquet",
        "meta.json",
        "spec.yaml",
    ]
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "episodes.parquet"), result.episodes)
    assert yaml.safe_load((folder / "spec.yaml").read_text()) == spec.model_dump(mode="json")


def test_incomplete_and_failed_runs_are_pending(write_study, tmp_path: Path) -> None:
    study = load_study(write_study({"seeds": 2}))
    good, bad = study.runs
    # a half-written folder without metadata (a crash mid-write) is not complete
    run_dir(tmp_path, good).mkdir(parents=True)
    (run_dir(tmp_path, good) / "episodes.parquet").write_bytes(b"partial")
    failed = execute(bad)
    failed.status, failed.error, failed.meta["status"] = "failed", "Traceback: boom", "failed"
    write_run(failed, tmp_path)
    assert (run_dir(tmp_path, bad) / "error.txt").read_text() == "Traceback: boom"
    assert pending_runs(study, tmp_path) == [good]  # failed runs rerun only on request
    assert pending_runs(study, tmp_path, retry_failed=True) == [good, bad]
    assert len(load_results(study, tmp_path).runs) == 0
    assert load_results(study, tmp_path, include_failed=True).runs["status"].tolist() == ["failed"]

    summary = run_study(study, tmp_path, workers=2, retry_failed=True)
    assert len(summary.done) == 2 and summary.skipped == 0
    assert pending_runs(study, tmp_path) == []
    assert load_results(study, tmp_path).runs["status"].tolist() == ["done", "done"]


def test_loader_keeps_to_the_study_grid_and_budget(write_study, tmp_path: Path) -> None:
    path = write_study({"budgets.small": 200})
    run_study(load_study(path, budget="small"), tmp_path)
    assert len(load_results(load_study(path, budget="small"), tmp_path).runs) == 1
    assert len(load_results(load_study(path), tmp_path).runs) == 0  # the full budget has not run

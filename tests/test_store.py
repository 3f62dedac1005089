"""Results on disk: atomic, self-verifying run folders, skipping complete runs, loading tidy tables."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pandas as pd
import pytest
import yaml

from study.analysis.report import build_report
from study.config import RunSpec, load_study
from study.launch import failed_result, pending_runs, run_study
from study.result import ADAPTATION_COLUMNS, EPISODE_COLUMNS, EVALUATION_COLUMNS, RunResult, run_meta, table
from study.run import execute
from study.store import (
    DAMAGED,
    DONE,
    MANIFEST,
    DamagedRunError,
    NoResultsError,
    RunCheck,
    check_folder,
    check_run,
    load_results,
    manifest,
    run_dir,
    seal_run,
    seal_runs,
    write_run,
)

ROOT = Path(__file__).resolve().parent.parent
SMOKE = ROOT / "ablations" / "smoke.yaml"


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
        "model.zip",
        "spec.yaml",
        "traces.parquet",
    ]
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "episodes.parquet"), result.episodes)
    pd.testing.assert_frame_equal(pd.read_parquet(folder / "traces.parquet"), result.traces)
    assert yaml.safe_load((folder / "spec.yaml").read_text()) == spec.model_dump(mode="json")


def test_incomplete_and_failed_runs_are_pending(write_study, tmp_path: Path) -> None:
    study = load_study(write_study({"seeds": 2}))
    good, bad = study.runs
    # a folder in place without metadata (written by hand, or half deleted) is no result
    run_dir(tmp_path, good).mkdir(parents=True)
    (run_dir(tmp_path, good) / "episodes.parquet").write_bytes(b"partial")
    failed = execute(bad)
    failed.status, failed.error, failed.meta["status"] = "failed", "Traceback: boom", "failed"
    write_run(failed, tmp_path)
    assert (run_dir(tmp_path, bad) / "error.txt").read_text() == "Traceback: boom"
    assert check_run(tmp_path, good).state == DAMAGED
    assert pending_runs(study, tmp_path) == [good]  # failed runs rerun only on request
    assert pending_runs(study, tmp_path, retry_failed=True) == [good, bad]
    assert len(load_results(study, tmp_path, damaged="skip").runs) == 0
    loaded = load_results(study, tmp_path, include_failed=True, damaged="skip")
    assert loaded.runs["status"].tolist() == ["failed"] and loaded.damaged == {good.run_id: "meta.json missing"}

    summary = run_study(study, tmp_path, workers=2, retry_failed=True)
    assert len(summary.done) == 2 and summary.skipped == 0
    assert pending_runs(study, tmp_path) == []
    assert load_results(study, tmp_path).runs["status"].tolist() == ["done", "done"]


def test_loader_keeps_to_the_study_grid_and_budget(write_study, tmp_path: Path) -> None:
    path = write_study({"budgets.small": 200})
    run_study(load_study(path, budget="small"), tmp_path)
    assert len(load_results(load_study(path, budget="small"), tmp_path).runs) == 1
    with pytest.raises(NoResultsError, match="it holds 1 run of budget 'small'"):  # the full budget has not run
        load_results(load_study(path), tmp_path)


def fake_result(spec: RunSpec, rows: int = 3) -> RunResult:
    """A done record without training: a few rows of ones in each table."""

    def rows_of(columns: dict[str, str]) -> pd.DataFrame:
        return table([dict.fromkeys(columns, 1) for _ in range(rows)], columns)

    meta = run_meta(spec, DONE, started=None) | {"final_return": 1.0, "wall_time_s": 1.0, "steps_per_s": 1.0}
    return RunResult(
        spec=spec,
        status=DONE,
        meta=meta,
        episodes=rows_of(EPISODE_COLUMNS),
        evaluations=rows_of(EVALUATION_COLUMNS),
        adaptations=rows_of(ADAPTATION_COLUMNS),
    )


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[: path.stat().st_size // 2])


def _corrupt(path: Path) -> None:
    """Garbage of the same size: only the checksum tells."""
    path.write_bytes(bytes(b ^ 0x5A for b in path.read_bytes()))


DAMAGE: dict[str, Callable[[Path], None]] = {"deleted": Path.unlink, "truncated": _truncate, "corrupted": _corrupt}
FILES = ["spec.yaml", "episodes.parquet", "evaluations.parquet", "adaptations.parquet", "meta.json", "error.txt"]


@pytest.fixture
def fake_smoke(tmp_path: Path) -> tuple:
    """The smoke study with a done record for each run, written without training."""
    study = load_study(SMOKE)
    results = tmp_path / "results"
    for spec in study.runs:
        write_run(fake_result(spec), results)
    return study, results


def test_a_record_carries_the_manifest_of_its_files(fake_smoke) -> None:
    study, results = fake_smoke
    folder = run_dir(results, study.runs[0])
    meta = json.loads((folder / "meta.json").read_text())
    assert sorted(meta[MANIFEST]) == [
        "adaptations.parquet",
        "episodes.parquet",
        "evaluations.parquet",
        "spec.yaml",
        "traces.parquet",
    ]
    assert meta[MANIFEST] == manifest(folder)
    assert meta[MANIFEST]["spec.yaml"]["size"] == (folder / "spec.yaml").stat().st_size
    assert check_folder(folder) == (meta, [])
    assert check_run(results, study.runs[0]).state == DONE and check_run(results, study.runs[0]).sealed


@pytest.mark.parametrize("how", DAMAGE)
@pytest.mark.parametrize("name", FILES)
def test_a_damaged_file_is_seen_by_status_run_and_load_results(fake_smoke, name: str, how: str) -> None:
    study, results = fake_smoke
    spec = study.runs[1]
    if name == "error.txt":
        write_run(failed_result(spec, "Traceback (most recent call last):\nFloatingPointError: boom\n"), results)
    folder = run_dir(results, spec)
    DAMAGE[how](folder / name)

    check = check_run(results, spec)  # status
    assert check.state == DAMAGED and name in check.problem, check
    assert pending_runs(study, results) == [spec]  # run redoes it, failed or not
    with pytest.raises(DamagedRunError, match=f"run {spec.run_id} is damaged .*{name}") as raised:
        load_results(study, results)
    assert raised.value.run_id == spec.run_id and raised.value.folder == folder
    loaded = load_results(study, results, damaged="skip")
    assert spec.run_id not in set(loaded.runs["run_id"]) and len(loaded.runs) == len(study.runs) - 1
    assert list(loaded.damaged) == [spec.run_id] and name in loaded.damaged[spec.run_id]
    assert loaded.states()[spec.run_id] == DAMAGED
    assert sorted(p.name for p in folder.parent.iterdir() if p.name.startswith(".")) == [".staging"]


def test_a_redo_replaces_a_damaged_folder_when_its_new_record_is_written(fake_smoke) -> None:
    study, results = fake_smoke
    spec = study.runs[0]
    folder = run_dir(results, spec)
    (folder / "episodes.parquet").unlink()
    before = sorted(p.name for p in folder.iterdir())
    pending_runs(study, results)
    assert sorted(p.name for p in folder.iterdir()) == before  # checking touches nothing
    write_run(fake_result(spec, rows=5), results)
    assert check_run(results, spec).state == DONE
    assert len(pd.read_parquet(folder / "episodes.parquet")) == 5
    assert not list((results / study.name / ".staging").iterdir())


def test_a_report_leaves_damaged_runs_out_and_names_them(smoke_results: Path, tmp_path: Path) -> None:
    results = tmp_path / "results"
    shutil.copytree(smoke_results, results)
    study = load_study(SMOKE)
    first, second = (run_dir(results, spec) for spec in study.runs[:2])
    _truncate(first / "meta.json")
    _corrupt(second / "spec.yaml")
    report = build_report(study, results, reps=100)
    assert sorted(report.damaged) == sorted(spec.run_id for spec in study.runs[:2])
    assert "spec.yaml does not match its checksum" in report.damaged[study.runs[1].run_id]
    text = report.markdown.read_text()
    assert "2 of 4 runs complete, 2 damaged (left out)" in text
    assert f"`{study.runs[0].run_id}` (damaged: meta.json unreadable" in text
    assert (pd.read_csv(report.folder / "metrics.csv")["run_id"].isin([s.run_id for s in study.runs[2:]])).all()


def unseal(folder: Path) -> dict:
    """Make a record look written before manifests; returns its metadata."""
    meta = json.loads((folder / "meta.json").read_text())
    del meta[MANIFEST]
    (folder / "meta.json").write_text(json.dumps(meta, indent=2, default=str))
    return meta


def test_a_record_without_manifest_is_checked_readable_and_can_be_sealed(fake_smoke) -> None:
    study, results = fake_smoke
    folders = [run_dir(results, spec) for spec in study.runs]
    metas = [unseal(folder) for folder in folders]
    assert all(check_run(results, spec) == RunCheck(DONE, sealed=False) for spec in study.runs)
    assert len(load_results(study, results).runs) == 4

    (folders[0] / "episodes.parquet").unlink()
    _corrupt(folders[1] / "evaluations.parquet")
    (folders[2] / "spec.yaml").write_text("study: [unclosed")
    problems = {spec.run_id: check_run(results, spec).problem for spec in study.runs[:3]}
    assert problems == {
        study.runs[0].run_id: "episodes.parquet missing",
        study.runs[1].run_id: problems[study.runs[1].run_id],
        study.runs[2].run_id: problems[study.runs[2].run_id],
    }
    assert problems[study.runs[1].run_id].startswith("evaluations.parquet unreadable")
    assert problems[study.runs[2].run_id].startswith("spec.yaml unreadable")
    with pytest.raises(DamagedRunError, match="episodes.parquet missing"):
        seal_run(folders[0])
    with pytest.raises(DamagedRunError):
        seal_runs(results / study.name)  # checks them all first: seals none
    assert MANIFEST not in json.loads((folders[3] / "meta.json").read_text())

    assert seal_run(folders[3]) is True
    sealed = json.loads((folders[3] / "meta.json").read_text())
    assert sealed == metas[3] | {MANIFEST: manifest(folders[3])}
    assert check_run(results, study.runs[3]) == RunCheck(DONE)
    assert seal_run(folders[3]) is False  # sealed already, and it verifies
    _corrupt(folders[3] / "adaptations.parquet")
    with pytest.raises(DamagedRunError, match="adaptations.parquet does not match its checksum"):
        seal_run(folders[3])


def test_seal_runs_seals_every_record_of_a_study_folder_once(fake_smoke) -> None:
    study, results = fake_smoke
    for spec in study.runs:
        unseal(run_dir(results, spec))
    (results / study.name / "report").mkdir()  # not a run: no meta.json
    sealed = seal_runs(results / study.name, pattern="*layer_norm=true*")
    assert len(sealed) == 2 and all("layer_norm=true" in folder.name for folder in sealed)
    assert len(seal_runs(results / study.name)) == 2 and seal_runs(results / study.name) == []
    assert all(check_run(results, spec).sealed for spec in study.runs)


@pytest.mark.slow  # the same, per file and kind of damage, in the tests above
def test_status_run_and_report_on_a_damaged_study_through_the_cli(smoke_results: Path, tmp_path: Path) -> None:
    """One run's episodes deleted, another's evaluations overwritten with garbage."""
    results = tmp_path / "results"
    shutil.copytree(smoke_results, results)
    study = load_study(SMOKE)
    first, second, *others = study.runs
    (run_dir(results, first) / "episodes.parquet").unlink()
    (run_dir(results, second) / "evaluations.parquet").write_bytes(b"garbage")
    started = {spec.run_id: json.loads((run_dir(results, spec) / "meta.json").read_text()) for spec in others}

    def cli(command: str) -> subprocess.CompletedProcess:
        cmd = [sys.executable, "-m", "study", command, str(SMOKE), "--results", str(results)]
        return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)

    status = cli("status")
    assert status.returncode == 0, status.stderr
    assert "total 4: done 2 · failed 0 · partial 0 · pending 0 · damaged 2" in status.stdout
    assert f"{first.run_id}: episodes.parquet missing" in status.stdout
    assert f"{second.run_id}: evaluations.parquet is 7 bytes, the manifest says" in status.stdout

    report = cli("report")
    assert report.returncode == 0, report.stderr
    assert "warning: 2 damaged runs left out" in report.stdout and first.run_id in report.stdout
    assert "2 of 4 runs complete, 2 damaged (left out)" in (results / "smoke" / "report" / "report.md").read_text()

    run = cli("run")
    assert run.returncode == 0, run.stderr
    assert "redoing 2 damaged runs" in run.stdout and f"{second.run_id}: evaluations.parquet" in run.stdout
    assert "2 done, 0 failed, 2 already complete" in run.stdout
    assert all(json.loads((run_dir(results, s) / "meta.json").read_text()) == started[s.run_id] for s in others)
    assert "total 4: done 4 · failed 0 · partial 0 · pending 0 · damaged 0" in cli("status").stdout
    assert len(load_results(study, results).runs) == 4

"""The committed reference results still load with today's code and study file."""

from __future__ import annotations

from pathlib import Path

from study.analysis.metrics import run_metrics
from study.config import load_study
from study.store import load_results

ROOT = Path(__file__).resolve().parent.parent
REFERENCE = ROOT / "results" / "reference"


def test_reference_sampling_interval_study_loads_complete() -> None:
    study = load_study(ROOT / "ablations" / "sampling_interval.yaml", budget="reduced")
    results = load_results(study, REFERENCE)
    assert len(results.runs) == len(study.runs) == 40
    metrics = run_metrics(results)
    assert metrics["final_return"].notna().all() and metrics["c_train"].notna().all()
    assert (metrics.groupby("interval", observed=True).size() == 5).all()
    assert (REFERENCE / "sampling_interval" / "report-reduced" / "report.md").is_file()

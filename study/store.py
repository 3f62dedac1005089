"""The results/ layout: atomic per-run folders, and loading a study into tidy DataFrames."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import pandas as pd
import yaml

from study.config import RunSpec, Study
from study.run import RunResult

TABLES = ("episodes", "evaluations", "adaptations")
META = "meta.json"
SPEC = "spec.yaml"
ERROR = "error.txt"
DONE, FAILED, PARTIAL, PENDING = "done", "failed", "partial", "pending"
STAGING = ".staging"
CHECKPOINTS = ".checkpoints"


def study_dir(results: Path, study: str) -> Path:
    return Path(results) / study


def run_dir(results: Path, spec: RunSpec) -> Path:
    return study_dir(results, spec.study) / spec.run_id


def checkpoint_dir(results: Path, spec: RunSpec) -> Path:
    """Where a run in progress keeps its checkpoint (on the machine that runs it)."""
    return study_dir(results, spec.study) / CHECKPOINTS / spec.run_id


def clear_staging(folder: Path) -> None:
    """Remove what interrupted writes left behind."""
    shutil.rmtree(folder / STAGING, ignore_errors=True)


def read_meta(folder: Path) -> dict | None:
    """A run folder's metadata, or None if the folder holds no complete record."""
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None


def run_status(results: Path, spec: RunSpec) -> str:
    """done / failed (a complete record) / partial (a checkpoint, no record) / pending."""
    meta = read_meta(run_dir(results, spec))
    if meta:
        return meta["status"]
    return PARTIAL if checkpoint_dir(results, spec).is_dir() else PENDING


def write_run(result: RunResult, results: Path) -> Path:
    """Write a run's folder under a temporary name and rename it into place when complete."""
    final = run_dir(results, result.spec)
    staging = final.parent / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{final.name}.{uuid.uuid4().hex[:8]}"
    tmp.mkdir()
    spec_doc = result.spec.model_dump(mode="json")
    (tmp / SPEC).write_text(yaml.safe_dump(spec_doc, sort_keys=False))
    for name, frame in result.tables().items():
        frame.to_parquet(tmp / f"{name}.parquet", index=False)
    if result.error:
        (tmp / ERROR).write_text(result.error)
    (tmp / META).write_text(json.dumps(result.meta, indent=2, default=str))
    for path in tmp.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    if final.exists():  # an earlier failed attempt: move it aside, then replace it
        old = staging / f"{final.name}.old.{uuid.uuid4().hex[:8]}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    return final


@dataclass
class StudyResults:
    """All runs of a study as tidy tables; every table carries the run's env, seed and factors."""

    runs: pd.DataFrame
    episodes: pd.DataFrame
    evaluations: pd.DataFrame
    adaptations: pd.DataFrame
    factors: list[str]


def load_results(study: Study, results: Path | str = "results", include_failed: bool = False) -> StudyResults:
    """Load the runs of `study` (its current grid and budget) found under `results`."""
    run_rows, tables = [], {name: [] for name in TABLES}
    factors = list(study.factor_levels)
    for spec in study.runs:
        folder = run_dir(Path(results), spec)
        meta = read_meta(folder)
        if meta is None or (meta["status"] != DONE and not include_failed):
            continue
        keys = {"run_id": spec.run_id, "env": spec.env, "seed": spec.seed, **spec.factors}
        run_rows.append(
            keys
            | {
                "status": meta["status"],
                "final_return": meta.get("final_return"),
                "wall_time_s": meta.get("wall_time_s"),
                "steps_per_s": meta.get("steps_per_s"),
            }
        )
        if meta["status"] != DONE:
            continue
        for name in TABLES:
            frame = pd.read_parquet(folder / f"{name}.parquet")
            tables[name].append(frame.assign(**keys))

    key_columns = ["run_id", "env", "seed", *factors]

    def tidy(frames: list[pd.DataFrame]) -> pd.DataFrame:
        frame = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=key_columns)
        for factor, levels in study.factor_levels.items():
            frame[factor] = pd.Categorical(frame[factor], categories=levels, ordered=True)
        return frame[key_columns + [c for c in frame.columns if c not in key_columns]]

    return StudyResults(
        runs=tidy([pd.DataFrame(run_rows)] if run_rows else []),
        episodes=tidy(tables["episodes"]),
        evaluations=tidy(tables["evaluations"]),
        adaptations=tidy(tables["adaptations"]),
        factors=factors,
    )

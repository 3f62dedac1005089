"""The results/ layout: atomic per-run folders, and loading a study into tidy DataFrames."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from dataclasses import dataclass
from pathlib import Path

import numpy as np
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
        frame.to_parquet(tmp / f"{name}.parquet", index=False, compression="zstd")
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
    """The complete runs of a study as tidy tables; every row carries its run's id, env,
    seed and factor levels (ordered categoricals in YAML order)."""

    study: Study
    runs: pd.DataFrame
    episodes: pd.DataFrame
    evaluations: pd.DataFrame
    adaptations: pd.DataFrame
    results: Path

    @property
    def factors(self) -> list[str]:
        return list(self.study.factor_levels)

    @property
    def specs(self) -> dict[str, RunSpec]:
        return {spec.run_id: spec for spec in self.study.runs}

    def states(self) -> pd.Series:
        """Each run of the study's grid (not only loaded ones) and its state, by run id."""
        return pd.Series({spec.run_id: run_status(self.results, spec) for spec in self.study.runs}, name="state")


def load_results(study: Study, results: Path | str = "results", include_failed: bool = False) -> StudyResults:
    """Load the runs of `study` (its current grid and budget) found under `results`."""
    results = Path(results)
    run_rows: list[dict] = []
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in TABLES}
    owners: dict[str, list[int]] = {name: [] for name in TABLES}
    for spec in study.runs:
        folder = run_dir(results, spec)
        meta = read_meta(folder)
        if meta is None or (meta["status"] != DONE and not include_failed):
            continue
        run_rows.append(
            {
                "run_id": spec.run_id,
                "env": spec.env,
                "seed": spec.seed,
                **spec.factors,
                "status": meta["status"],
                "total_steps": spec.settings.total_steps,
                "max_episodes": spec.settings.max_episodes,
                "solved_window": spec.settings.eval.solved_window,
                "final_return": meta.get("final_return"),
                "wall_time_s": meta.get("wall_time_s"),
                "steps_per_s": meta.get("steps_per_s"),
            }
        )
        if meta["status"] != DONE:
            continue
        for name in TABLES:
            frame = pd.read_parquet(folder / f"{name}.parquet")
            frames[name].append(frame)
            owners[name].append(len(run_rows) - 1)

    key_columns = ["run_id", "env", "seed", *study.factor_levels]
    runs = (
        pd.DataFrame(run_rows, columns=[*key_columns, "status", "total_steps"])
        if not run_rows
        else pd.DataFrame(run_rows)
    )
    for factor, levels in study.factor_levels.items():
        runs[factor] = pd.Categorical(runs[factor], categories=levels, ordered=True)

    def tidy(name: str) -> pd.DataFrame:
        """The runs' tables stacked, with the run's key columns repeated on each row."""
        if not frames[name]:
            return pd.DataFrame(columns=key_columns)
        body = pd.concat(frames[name], ignore_index=True)
        index = np.repeat(owners[name], [len(f) for f in frames[name]])
        keys = runs[key_columns].iloc[index].reset_index(drop=True)
        return pd.concat([keys, body], axis=1)

    return StudyResults(
        study=study,
        runs=runs,
        episodes=tidy("episodes"),
        evaluations=tidy("evaluations"),
        adaptations=tidy("adaptations"),
        results=results,
    )

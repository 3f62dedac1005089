"""Give a study's existing runs the ids of its changed grid (a factor added, a level relabelled)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from collections.abc import Collection
from pathlib import Path

import yaml

from study.config import RunSpec, Study, StudyError
from study.store import CHECKPOINTS, MANIFEST, META, SPEC, STAGING, DamagedRunError, check_folder, manifest, study_dir
from study.studylock import StudyLock


def _key(run_id: str) -> str:
    """What a run id keeps when its factors change: `s<seed>_<settings hash>`."""
    return "_".join(run_id.rsplit("_", 2)[-2:])


def rename_runs(study: Study, results: Path | str = "results", dry_run: bool = False) -> dict[str, str]:
    """Rename each run folder (and checkpoint) of `study` whose seed and settings are those of a
    planned run but whose id is not, to that run's id; returns old id → new id.

    A run's id is its env, its factor levels, its seed and the hash of its settings; only the
    factor levels may differ, and a renamed record must hold exactly the planned run's settings.
    A record's spec.yaml and meta.json take the new factors and id (its budget and everything
    else stay as recorded) and its manifest is renewed; each run is written whole under a
    temporary name before it replaces the old folder. Holds the study's lock.
    """
    folder = study_dir(Path(results), study.name)
    planned = {spec.run_id: spec for spec in study.runs}
    with StudyLock(folder):
        renames = _renames(folder, planned)
        if dry_run:
            return renames
        records = {
            old: _checked(folder / old, planned[new]) for old, new in renames.items() if (folder / old / META).is_file()
        }
        for old, new in renames.items():  # every record checked before any is renamed
            if old in records:
                _rename_record(folder, old, planned[new], *records[old], renames)
            if (folder / CHECKPOINTS / old).is_dir():
                os.replace(folder / CHECKPOINTS / old, folder / CHECKPOINTS / new)
    return renames


def _renames(folder: Path, planned: Collection[str]) -> dict[str, str]:
    """Old id → new id for each folder or checkpoint outside the grid that one planned run without
    a folder of its own matches by seed and settings hash."""
    found = {p.name for p in folder.iterdir() if (p / META).is_file()} if folder.is_dir() else set()
    found |= (
        {p.name for p in (folder / CHECKPOINTS).iterdir() if p.is_dir()} if (folder / CHECKPOINTS).is_dir() else set()
    )
    orphans: dict[str, list[str]] = {}
    for name in sorted(found - set(planned)):
        orphans.setdefault(_key(name), []).append(name)
    renames: dict[str, str] = {}
    for run_id in planned:
        if run_id in found:
            continue
        same = orphans.get(_key(run_id), [])
        if len(same) > 1:
            raise StudyError(f"{folder}: {run_id} matches several runs ({', '.join(same)}); rename them by hand")
        if same:
            renames[same[0]] = run_id
    return renames


def _checked(run: Path, spec: RunSpec) -> tuple[dict, dict]:
    """A record's meta.json and spec.yaml, once its files are whole and its settings are `spec`'s."""
    meta, problems = check_folder(run)
    if problems:
        raise DamagedRunError(run.name, run, "; ".join(problems))
    recorded = yaml.safe_load((run / SPEC).read_text())
    try:
        same = RunSpec.model_validate(recorded | {"factors": spec.factors}).spec_hash == spec.spec_hash
    except ValueError:
        same = False
    if not same:
        raise DamagedRunError(run.name, run, f"its {SPEC} does not hold the settings of run {spec.run_id}")
    return meta, recorded


def _rename_record(folder: Path, old: str, spec: RunSpec, meta: dict, recorded: dict, renames: dict[str, str]) -> None:
    """Write the record of `old` under `spec`'s id, whole, then remove the old folder."""
    staging = folder / STAGING
    staging.mkdir(exist_ok=True)
    tmp = staging / f"{spec.run_id}.{uuid.uuid4().hex[:8]}"
    shutil.copytree(folder / old, tmp)
    recorded["factors"] = dict(spec.factors)
    (tmp / SPEC).write_text(yaml.safe_dump(recorded, sort_keys=False))
    meta |= {"run_id": spec.run_id, "factors": dict(spec.factors)}
    if "group" in meta:
        meta["group"] = [renames.get(member, member) for member in meta["group"]]
    if MANIFEST in meta:  # the old folder's files were verified against it above
        meta[MANIFEST] = manifest(tmp)
    (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
    for path in (tmp / SPEC, tmp / META):
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, folder / spec.run_id)
    shutil.rmtree(folder / old)

"""Give existing runs a study's ids: its own runs after its grid changed (a factor added, a level
relabelled), or another study's finished runs that are runs of this one (the same env, seed and
settings)."""

from __future__ import annotations

import json
import os
import shutil
import uuid
from pathlib import Path

import yaml

from study.config import RunSpec, Study, StudyError
from study.store import (
    CHECKPOINTS,
    DONE,
    MANIFEST,
    META,
    SPEC,
    STAGING,
    DamagedRunError,
    check_folder,
    clear_staging,
    manifest,
    study_dir,
    sync_files,
)
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
    temporary name before it replaces the old folder. Every record is checked before any is
    renamed (also with `dry_run`, which changes nothing). An old folder left beside its renamed
    copy (an interrupted rename) is removed once the copy verifies. Holds the study's lock.
    """
    folder = study_dir(Path(results), study.name)
    planned = {spec.run_id: spec for spec in study.runs}
    if dry_run:
        return _plan(folder, planned)[0]
    with StudyLock(folder):
        clear_staging(folder)
        renames, records = _plan(folder, planned)
        for old, new in renames.items():
            if (folder / new / META).is_file():  # renamed before, its old folder left behind
                shutil.rmtree(folder / old)
            elif old in records:
                _rename_record(folder, old, planned[new], *records[old], planned)
            if (folder / CHECKPOINTS / old).is_dir():
                os.replace(folder / CHECKPOINTS / old, folder / CHECKPOINTS / new)
    return renames


def _plan(folder: Path, planned: dict[str, RunSpec]) -> tuple[dict[str, str], dict[str, tuple[dict, dict]]]:
    """Old id → new id for each record or checkpoint outside the grid that one planned run matches
    by seed and settings hash, and the checked meta.json and spec.yaml of each record to move."""
    records = {p.name for p in folder.iterdir() if (p / META).is_file()} if folder.is_dir() else set()
    saved = folder / CHECKPOINTS
    checkpoints = {p.name for p in saved.iterdir() if p.is_dir()} if saved.is_dir() else set()
    by_key: dict[str, list[str]] = {}
    for run_id in planned:
        by_key.setdefault(_key(run_id), []).append(run_id)
    renames: dict[str, str] = {}
    for old in sorted((records | checkpoints) - set(planned)):
        claims = by_key.get(_key(old), [])
        if len(claims) > 1:
            raise StudyError(
                f"{folder / old}: the runs {', '.join(claims)} have its seed and settings; rename it by hand"
            )
        if claims:
            renames[old] = claims[0]
    for new in set(renames.values()):
        if len(olds := [old for old, n in renames.items() if n == new]) > 1:
            raise StudyError(f"{folder}: {new} matches several runs ({', '.join(olds)}); rename them by hand")
    checked = {}
    for old, new in renames.items():
        if (folder / new / META).is_file():  # the copy an interrupted rename made, or a rerun
            status = _whole(folder / new)["status"]  # it must verify before the old folder goes
            if old in records and status != DONE and _whole(folder / old)["status"] == DONE:
                raise StudyError(f"{folder}: {old} is done and {new}, the same run, is not; keep one by hand")
        elif old in records:
            checked[old] = _checked(folder / old, planned[new])
    return renames, checked


def _whole(run: Path) -> dict:
    """A record's meta.json, once its files verify; DamagedRunError otherwise."""
    meta, problems = check_folder(run)
    if problems:
        raise DamagedRunError(run.name, run, "; ".join(problems))
    return meta


def _checked(run: Path, spec: RunSpec) -> tuple[dict, dict]:
    """A record's meta.json and spec.yaml, once its files are whole and its settings are `spec`'s."""
    meta = _whole(run)
    recorded = yaml.safe_load((run / SPEC).read_text())
    try:
        same = RunSpec.model_validate(recorded | {"factors": spec.factors}).spec_hash == spec.spec_hash
    except ValueError:
        same = False
    if not same:
        raise StudyError(f"{run}: its {SPEC} does not hold the settings of run {spec.run_id}; nothing renamed")
    return meta, recorded


def _rename_record(
    folder: Path, old: str, spec: RunSpec, meta: dict, recorded: dict, planned: dict[str, RunSpec]
) -> None:
    """Write the record of `old` under `spec`'s id, whole, then remove the old folder."""
    if "group" in meta:  # the stacked group it was trained in, by the members' planned ids
        ids = {_key(run_id): run_id for run_id in planned}
        meta["group"] = [ids.get(_key(member), member) for member in meta["group"]]
    _write_record(folder / old, folder, spec, meta, recorded)
    shutil.rmtree(folder / old)


def _write_record(source: Path, folder: Path, spec: RunSpec, meta: dict, recorded: dict) -> None:
    """Copy the verified record `source` into `folder` under `spec`'s id and factors, whole: staged,
    its manifest renewed, then moved into place."""
    staging = folder / STAGING
    staging.mkdir(parents=True, exist_ok=True)
    tmp = staging / f"{spec.run_id}.{uuid.uuid4().hex[:8]}"
    shutil.copytree(source, tmp)
    recorded["factors"] = dict(spec.factors)
    (tmp / SPEC).write_text(yaml.safe_dump(recorded, sort_keys=False))
    meta |= {"run_id": spec.run_id, "factors": dict(spec.factors)}
    if MANIFEST in meta:  # the source's files were verified against it
        meta[MANIFEST] = manifest(tmp)
    (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
    sync_files(tmp)
    os.replace(tmp, folder / spec.run_id)


def reuse_runs(study: Study, source: str, results: Path | str = "results", dry_run: bool = False) -> dict[str, str]:
    """Copy each finished run of the study `source` (its folder beside `study`'s) whose seed and
    settings (its env among them) are those of a planned run of `study` that has no record yet,
    under that run's id; returns new id → source id.

    A run's results follow from its settings and seed alone, so the copy is the run `study` would
    train. Its spec.yaml and meta.json take `study`'s name, budget, factors and id, meta.json
    records where it was trained (`reused_from`: study, budget and id), and its manifest is renewed;
    each is written whole under a temporary name first. Every source record is checked before
    any is copied (also with `dry_run`, which changes nothing). Holds `study`'s lock.
    """
    results = Path(results)
    folder, origin = study_dir(results, study.name), study_dir(results, source)
    if origin == folder:
        raise StudyError(f"{origin}: runs are reused from another study's folder, not the study's own")
    if not origin.is_dir():
        raise StudyError(f"{origin}: no such study folder")
    planned = {spec.run_id: spec for spec in study.runs}
    if dry_run:
        return {new: old for new, (old, _, _) in _reusable(folder, origin, planned).items()}
    folder.mkdir(parents=True, exist_ok=True)
    with StudyLock(folder):
        clear_staging(folder)
        copies = _reusable(folder, origin, planned)
        for new, (old, meta, recorded) in copies.items():
            spec = planned[new]
            renamed = {"study": study.name, "budget": spec.budget}
            # where the run was trained: a copy of a copy names the study that trained it
            reused_from = meta.get("reused_from") or {"study": meta["study"], "budget": meta["budget"], "run_id": old}
            _write_record(origin / old, folder, spec, meta | renamed | {"reused_from": reused_from}, recorded | renamed)
            shutil.rmtree(folder / CHECKPOINTS / new, ignore_errors=True)  # a partial run of it, superseded
    return {new: old for new, (old, _, _) in copies.items()}


def _reusable(folder: Path, origin: Path, planned: dict[str, RunSpec]) -> dict[str, tuple[str, dict, dict]]:
    """New id → (source id, meta.json, spec.yaml) for each planned run without a record in
    `folder` that a finished record of `origin` matches by seed and settings hash."""
    sources = {_key(p.name): p for p in sorted(origin.iterdir()) if (p / META).is_file()}
    copies: dict[str, tuple[str, dict, dict]] = {}
    for new, spec in planned.items():
        record = sources.get(_key(new))
        if record is None or (folder / new / META).is_file():
            continue
        if json.loads((record / META).read_text()).get("status") == DONE:
            copies[new] = (record.name, *_checked(record, spec))
    return copies

"""The results/ layout: atomic, self-verifying per-run folders, and loading a study into tidy DataFrames."""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import shutil
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import yaml

from study.config import RunSpec, Study, StudyError
from study.result import RunResult

TABLES = ("episodes", "evaluations", "adaptations")
OPTIONAL_TABLES = ("traces",)  # runs recorded before them have none
ALL_TABLES = (*TABLES, *OPTIONAL_TABLES)
META = "meta.json"
SPEC = "spec.yaml"
ERROR = "error.txt"
MODEL = "model.zip"  # the final model, as SB3 saves it (`save_model`)
NORMALIZE = "vecnormalize.pkl"  # with `normalize`: the final VecNormalize, as it saves itself
MANIFEST = "manifest"  # meta.json's record of every other file of the run: {name: {"size": bytes, "sha256": hex}}
DONE, FAILED, PARTIAL, PENDING, DAMAGED = "done", "failed", "partial", "pending", "damaged"
STAGING = ".staging"
CHECKPOINTS = ".checkpoints"
CHECKPOINT_STEPS = "steps.json"  # beside a run's checkpoint: the step it was taken at, read without unpickling it
# what a run folder without a manifest (written before manifests) is checked for: the columns
# every version of `study` recorded, and the keys every spec.yaml has
REQUIRED_COLUMNS = {
    "episodes": ("step", "episode", "return", "length", "continuity_cost", "jerk_cost", "sigma", "warmup"),
    "evaluations": ("step", "return_mean", "return_std", "length_mean", "continuity_cost", "jerk_cost"),
    "adaptations": ("step", "sigma", "distance"),
    "traces": ("kind", "point", "step", "t", "dim", "action"),
}
SPEC_KEYS = ("study", "budget", "seed", "settings")
_YAML_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class DamagedRunError(RuntimeError):
    """A run folder whose files are missing, unreadable or not those its manifest records."""

    def __init__(self, run_id: str, folder: Path, problem: str) -> None:
        self.run_id, self.folder, self.problem = run_id, Path(folder), problem
        super().__init__(
            f"run {run_id} is damaged ({problem}) in {folder}: rerun the study (python -m study run) to redo it, "
            "or load with damaged='skip' to leave it out"
        )


@dataclass(frozen=True)
class RunCheck:
    """A run's state and, for a damaged one, what is wrong with its folder."""

    state: str
    problem: str | None = None
    sealed: bool = True  # False: written before manifests, its files only checked readable
    steps: int | None = None  # a partial run's: the step its checkpoint was taken at, where known


def study_dir(results: Path, study: str) -> Path:
    return Path(results) / study


def run_dir(results: Path, spec: RunSpec) -> Path:
    return study_dir(results, spec.study) / spec.run_id


def checkpoint_dir(results: Path, spec: RunSpec) -> Path:
    """Where a run in progress keeps its checkpoint (on the machine that runs it)."""
    return study_dir(results, spec.study) / CHECKPOINTS / spec.run_id


def checkpoint_steps(folder: Path) -> int | None:
    """The step at which the checkpoint in a run's checkpoint folder was taken; None if not known."""
    try:
        return int(json.loads((Path(folder) / CHECKPOINT_STEPS).read_text())["steps"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def resume_steps(results: Path, specs: Iterable[RunSpec]) -> dict[str, int]:
    """The step each run resumes at: its checkpoint's on this machine, else 0."""
    return {spec.run_id: checkpoint_steps(checkpoint_dir(results, spec)) or 0 for spec in specs}


def clear_staging(folder: Path) -> None:
    """Remove what interrupted writes left behind."""
    shutil.rmtree(folder / STAGING, ignore_errors=True)


def read_meta(folder: Path) -> dict | None:
    """A run folder's metadata, or None if it has none readable (whether the folder is whole: `check_folder`)."""
    try:
        return json.loads((folder / META).read_text())
    except (OSError, ValueError):
        return None


def run_status(results: Path, spec: RunSpec) -> str:
    """done / failed (a whole record) / damaged / partial (a checkpoint, no record) / pending."""
    return check_run(results, spec).state


def check_run(results: Path, spec: RunSpec) -> RunCheck:
    """A run's state, its folder verified against its manifest (sizes and checksums)."""
    folder = run_dir(results, spec)
    if not folder.exists():
        checkpoints = checkpoint_dir(results, spec)
        return RunCheck(PARTIAL, steps=checkpoint_steps(checkpoints)) if checkpoints.is_dir() else RunCheck(PENDING)
    meta, problems = check_folder(folder)
    if problems:
        return RunCheck(DAMAGED, "; ".join(problems))
    return RunCheck(meta["status"], sealed=MANIFEST in meta)


def damaged_runs(study: Study, results: Path) -> dict[str, str]:
    """The study's damaged runs and what is wrong with each, by run id."""
    checks = {spec.run_id: check_run(results, spec) for spec in study.runs}
    return {run_id: check.problem for run_id, check in checks.items() if check.state == DAMAGED}


def check_folder(folder: Path) -> tuple[dict | None, list[str]]:
    """A run folder's metadata and what is wrong with its files (nothing: it is whole).

    A sealed folder (meta.json with a manifest) must hold every file of its manifest with the
    recorded size and sha256; an unsealed one its status's files, readable.
    """
    try:
        meta = json.loads((folder / META).read_bytes())
    except FileNotFoundError:
        return None, [f"{META} missing"]
    except (OSError, ValueError) as err:
        return None, [f"{META} unreadable ({_reason(err)})"]
    if not isinstance(meta, dict) or meta.get("status") not in (DONE, FAILED):
        return None, [f"{META} holds no run record"]
    if meta.get("run_id", folder.name) != folder.name:
        return None, [f"{META} belongs to run {meta['run_id']}"]
    check = _check_manifest if MANIFEST in meta else _check_readable
    return meta, check(folder, meta)


def required_files(status: str) -> list[str]:
    """The files a record of this status must have besides meta.json."""
    return [SPEC, *(f"{name}.parquet" for name in TABLES)] if status == DONE else [SPEC, ERROR]


def _check_manifest(folder: Path, meta: dict) -> list[str]:
    files = meta[MANIFEST]
    if not isinstance(files, dict) or not all(isinstance(entry, dict) for entry in files.values()):
        return [f"{META}: manifest malformed"]
    problems = [f"{name} not in the manifest" for name in required_files(meta["status"]) if name not in files]
    for name, entry in files.items():
        path = folder / name
        if Path(name).name != name or not path.is_file():
            problems.append(f"{name} missing")
        elif (size := path.stat().st_size) != entry.get("size"):
            problems.append(f"{name} is {size} bytes, the manifest says {entry.get('size')}")
        elif name != MODEL and _sha256(path) != entry.get("sha256"):  # a model: by size (`verify_model`)
            problems.append(f"{name} does not match its checksum")
    return problems


def verify_model(folder: Path, name: str = MODEL) -> Path:
    """The run folder's model.zip (or its `name` file), checked against its manifest's checksum
    (which a run's checks leave out for the model, to keep reading results fast); raises
    DamagedRunError where it does not match."""
    path = Path(folder) / name
    entry = json.loads((Path(folder) / META).read_text()).get(MANIFEST, {}).get(name)
    if entry is not None and _sha256(path) != entry.get("sha256"):
        raise DamagedRunError(Path(folder).name, Path(folder), f"{name} does not match its checksum")
    return path


def _check_readable(folder: Path, meta: dict) -> list[str]:
    """An unsealed folder: its files present, spec.yaml and the tables' schemas readable."""
    problems = [f"{name} missing" for name in required_files(meta["status"]) if not (folder / name).is_file()]
    if (folder / SPEC).is_file():
        problems += _check_spec(folder / SPEC, meta)
    for name in ALL_TABLES:
        path = folder / f"{name}.parquet"
        if path.is_file():
            problems += _check_schema(path, REQUIRED_COLUMNS[name])
    if meta["status"] == FAILED and (folder / ERROR).is_file() and not (folder / ERROR).stat().st_size:
        problems.append(f"{ERROR} empty")
    return problems


def _check_spec(path: Path, meta: dict) -> list[str]:
    try:
        spec = yaml.load(path.read_bytes(), Loader=_YAML_LOADER)
    except (OSError, yaml.YAMLError) as err:
        return [f"{SPEC} unreadable ({_reason(err)})"]
    if not isinstance(spec, dict) or any(key not in spec for key in SPEC_KEYS):
        return [f"{SPEC} incomplete"]
    if (spec["study"], spec["seed"]) != (meta.get("study", spec["study"]), meta.get("seed", spec["seed"])):
        return [f"{SPEC} describes another run"]
    return []


def _check_schema(path: Path, columns: Iterable[str]) -> list[str]:
    try:
        names = pq.read_schema(path).names
    except (OSError, pa.ArrowException) as err:
        return [f"{path.name} unreadable ({_reason(err)})"]
    missing = [c for c in columns if c not in names]
    return [f"{path.name} lacks columns {', '.join(missing)}"] if missing else []


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()
    return f"{type(err).__name__}: {text[0][:120]}" if text else type(err).__name__


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def manifest(folder: Path) -> dict[str, dict]:
    """Size and sha256 of every file of a run folder but meta.json (and hidden leftovers)."""
    paths = sorted(p for p in folder.iterdir() if p.is_file() and p.name != META and not p.name.startswith("."))
    return {p.name: {"size": p.stat().st_size, "sha256": _sha256(p)} for p in paths}


def write_run(result: RunResult, results: Path) -> Path:
    """Write a run's folder under a temporary name, meta.json with the manifest of the other files
    last, and rename it into place when complete; an earlier record is replaced only then."""
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
    if result.model is not None:
        (tmp / MODEL).write_bytes(result.model)
    if result.normalize is not None:
        (tmp / NORMALIZE).write_bytes(result.normalize)
    meta = {**result.meta, MANIFEST: manifest(tmp)}
    (tmp / META).write_text(json.dumps(meta, indent=2, default=str))
    sync_files(tmp)
    if final.exists():  # a failed or damaged earlier record
        if not _exchange(tmp, final):
            old = staging / f"{final.name}.old.{uuid.uuid4().hex[:8]}"
            os.replace(final, old)
            os.replace(tmp, final)
            tmp = old
        shutil.rmtree(tmp, ignore_errors=True)  # the earlier record, now out of place
    else:
        os.replace(tmp, final)
    return final


def sync_files(folder: Path) -> None:
    """Flush every file of a folder to disk, before the folder is renamed into place."""
    for path in folder.iterdir():
        with open(path, "rb") as fh:
            os.fsync(fh.fileno())


def _exchange(a: Path, b: Path) -> bool:
    """Swap two paths in one step (Linux's renameat2 RENAME_EXCHANGE); False where unsupported."""
    renameat2 = getattr(ctypes.CDLL(None, use_errno=True), "renameat2", None)
    if renameat2 is None:
        return False
    at_fdcwd, rename_exchange = -100, 2
    return renameat2(at_fdcwd, os.fsencode(a), at_fdcwd, os.fsencode(b), rename_exchange) == 0


def seal_run(folder: Path | str) -> bool:
    """Add the manifest to a run folder written before manifests, after checking its files:
    spec.yaml parses, every table reads in full with the required columns. False if it was
    sealed already (and verifies); raises DamagedRunError if a file is missing or unreadable."""
    folder = Path(folder)
    meta = _sealable(folder)
    if MANIFEST in meta:
        return False
    meta[MANIFEST] = manifest(folder)
    tmp = folder / f".{META}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "w") as fh:
        fh.write(json.dumps(meta, indent=2, default=str))
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, folder / META)
    return True


def seal_runs(study_folder: Path | str, pattern: str = "*") -> list[Path]:
    """Seal every run folder (a folder with a meta.json) under `study_folder` whose name
    matches `pattern`; returns the folders sealed now. Raises DamagedRunError at the first
    damaged one, leaving the rest as they were."""
    folders = sorted(p.parent for p in Path(study_folder).glob(f"{pattern}/{META}"))
    for folder in folders:  # check them all before sealing any
        _sealable(folder)
    return [folder for folder in folders if seal_run(folder)]


def _sealable(folder: Path) -> dict:
    """A run folder's metadata if it is whole (an unsealed one: its tables read in full);
    raises DamagedRunError otherwise."""
    meta, problems = check_folder(folder)
    if not problems and MANIFEST not in meta:
        problems = _check_tables_read(folder)
    if problems:
        raise DamagedRunError(folder.name, folder, "; ".join(problems))
    return meta


def _check_tables_read(folder: Path) -> list[str]:
    """Every table present reads in full."""
    problems = []
    for name in ALL_TABLES:
        path = folder / f"{name}.parquet"
        if path.is_file():
            try:
                pq.read_table(path)
            except (OSError, pa.ArrowException) as err:
                problems.append(f"{path.name} unreadable ({_reason(err)})")
    return problems


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
    damaged: dict[str, str] = field(default_factory=dict)  # runs left out as damaged: what is wrong
    traces: pd.DataFrame = field(default_factory=pd.DataFrame)  # action traces, where the runs recorded them

    @property
    def factors(self) -> list[str]:
        return list(self.study.factor_levels)

    @property
    def specs(self) -> dict[str, RunSpec]:
        return {spec.run_id: spec for spec in self.study.runs}

    def states(self) -> pd.Series:
        """Each run of the study's grid (not only loaded ones) and its state, by run id."""
        states = {spec.run_id: run_status(self.results, spec) for spec in self.study.runs}
        return pd.Series(states | dict.fromkeys(self.damaged, DAMAGED), name="state")


class NoResultsError(StudyError):
    """No run of a study's grid has a record under a results folder; `found` counts the runs
    of each budget that the study's folder does hold."""

    def __init__(self, message: str, folder: Path, found: dict[str, int]) -> None:
        super().__init__(message)
        self.folder, self.found = folder, found


def load_results(
    study: Study,
    results: Path | str = "results",
    include_failed: bool = False,
    damaged: Literal["raise", "skip"] = "raise",
) -> StudyResults:
    """Load the runs of `study` (its current grid and budget) found under `results`; raises
    NoResultsError, naming the folder and the budgets it holds, if none of them has a record.

    A damaged run (see `check_folder`) raises DamagedRunError, or with `damaged="skip"` is left
    out and listed in `StudyResults.damaged`.
    """
    results = Path(results)
    left_out: dict[str, str] = {}
    run_rows: list[dict] = []
    frames: dict[str, list[pd.DataFrame]] = {name: [] for name in ALL_TABLES}
    owners: dict[str, list[int]] = {name: [] for name in ALL_TABLES}
    for spec in study.runs:
        folder = run_dir(results, spec)
        meta, tables, problem = _read_run(folder)
        if problem and damaged == "raise":
            raise DamagedRunError(spec.run_id, folder, problem)
        if problem:
            left_out[spec.run_id] = problem
            continue
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
                "cpus": meta.get("cpus"),
                "resumed_at": meta.get("resumed_at"),
                "process": min(meta.get("group") or [spec.run_id]),  # the run or stacked group that trained it
                "cpu": (meta.get("host") or {}).get("cpu") or None,
            }
        )
        if meta["status"] != DONE:
            continue
        for name, frame in tables.items():
            frames[name].append(frame)
            owners[name].append(len(run_rows) - 1)

    if not run_rows and not left_out and not any(read_meta(run_dir(results, spec)) for spec in study.runs):
        raise _no_results(study, study_dir(results, study.name))

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
        traces=tidy("traces"),
        results=results,
        damaged=left_out,
    )


def _read_run(folder: Path) -> tuple[dict | None, dict[str, pd.DataFrame], str | None]:
    """A run folder's metadata, its tables if it is done, and what is wrong with it, if anything."""
    if not folder.exists():
        return None, {}, None
    meta, problems = check_folder(folder)
    if problems:
        return meta, {}, "; ".join(problems)
    if meta["status"] != DONE:
        return meta, {}, None
    try:
        optional = [name for name in OPTIONAL_TABLES if (folder / f"{name}.parquet").is_file()]
        return meta, {name: pd.read_parquet(folder / f"{name}.parquet") for name in (*TABLES, *optional)}, None
    except (OSError, pa.ArrowException) as err:  # an unsealed run whose data is damaged past its schema
        return meta, {}, f"a table unreadable ({_reason(err)})"


def _no_results(study: Study, folder: Path) -> NoResultsError:
    """The error for a study without records in `folder`, counting the runs there by budget
    (from each run's meta.json, or its spec.yaml)."""
    found: dict[str, int] = {}
    for child in sorted(folder.iterdir()) if folder.is_dir() else []:
        if child.name.startswith(".") or not child.is_dir():
            continue
        budget = (read_meta(child) or {}).get("budget")
        if budget is None:
            try:
                budget = (yaml.safe_load((child / SPEC).read_text()) or {}).get("budget")
            except (OSError, yaml.YAMLError, AttributeError):
                continue
        if budget is not None:
            found[str(budget)] = found.get(str(budget), 0) + 1
    message = f"no complete runs of study {study.name!r} (budget {study.budget!r}) under {folder}"
    if not folder.is_dir():
        message += ": no such folder"
    elif not found:
        message += ": it holds no runs"
    else:
        held = (f"{n} run{'s' * (n != 1)} of budget {b!r}" for b, n in sorted(found.items()))
        message += "; it holds " + ", ".join(held)
        if study.budget in found:
            message += (
                f" (those of budget {study.budget!r} were run with other settings than this grid's: "
                "another --steps or --overlay, or an older code version)"
            )
    return NoResultsError(message, folder, found)

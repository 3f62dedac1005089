"""Renaming a study's runs after its grid changed: matched by seed and settings, records kept whole."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import yaml

from study.__main__ import main
from study.config import StudyError, load_study
from study.rename import rename_runs, reuse_runs
from study.store import CHECKPOINTS, DONE, MANIFEST, META, SPEC, DamagedRunError, check_run, load_results, manifest
from study.studylock import StudyLock, StudyLocked

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def results(smoke_results, tmp_path) -> Path:
    """A copy of the smoke study's results, free to change."""
    return Path(shutil.copytree(smoke_results, tmp_path / "results"))


@pytest.fixture
def grown(tmp_path) -> Path:
    """The smoke study with an algorithm factor in front and a level relabelled."""
    doc = yaml.safe_load((ROOT / "ablations" / "smoke.yaml").read_text())
    interval = doc["grid"].pop("exploration.param_noise.interval")
    levels = {"k=4" if v == 4 else str(v): {"exploration.param_noise.interval": v} for v in interval}
    doc["grid"] = {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg"}}, "interval": levels, **doc["grid"]}
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_runs_take_their_new_ids_and_stay_whole(results, grown) -> None:
    old = load_study(ROOT / "ablations" / "smoke.yaml")
    new = load_study(grown)
    before = load_results(old, results)
    renames = rename_runs(new, results)
    by_old = {spec.run_id: spec for spec in old.runs}
    assert len(renames) == len(old.runs) == 4
    for old_id, new_id in renames.items():
        assert new_id.startswith("Pendulum-v1_algo=TD3_interval=")
        assert old_id.rsplit("_", 2)[1:] == new_id.rsplit("_", 2)[1:]  # seed and settings hash
        assert not (results / "smoke" / old_id).exists()
        spec = next(s for s in new.runs if s.run_id == new_id)
        assert check_run(results, spec).state == DONE  # its manifest verifies
        meta = json.loads((results / "smoke" / new_id / META).read_text())
        assert meta["run_id"] == new_id and meta["factors"] == spec.factors and MANIFEST in meta
        recorded = yaml.safe_load((results / "smoke" / new_id / SPEC).read_text())
        assert recorded["factors"] == spec.factors
        assert recorded["settings"] == by_old[old_id].settings.model_dump(mode="json")
    assert {r.run_id for r in new.runs} - set(renames.values()) == {r.run_id for r in new.runs if "DDPG" in r.run_id}
    after = load_results(new, results)
    assert after.runs["final_return"].tolist() == before.runs["final_return"].tolist()
    assert after.evaluations["return_mean"].tolist() == before.evaluations["return_mean"].tolist()
    assert rename_runs(new, results) == {}  # nothing left to rename


def test_a_dry_run_and_a_checkpoint(results, grown) -> None:
    old = load_study(ROOT / "ablations" / "smoke.yaml").runs[0]
    (results / "smoke" / CHECKPOINTS / old.run_id).mkdir(parents=True)
    shutil.rmtree(results / "smoke" / old.run_id)  # a run in progress: only its checkpoint
    listed = rename_runs(load_study(grown), results, dry_run=True)
    assert len(listed) == 4 and (results / "smoke" / CHECKPOINTS / old.run_id).is_dir()
    renames = rename_runs(load_study(grown), results)
    assert renames == listed
    assert (results / "smoke" / CHECKPOINTS / renames[old.run_id]).is_dir()


def test_a_record_with_other_settings_stops_every_rename(results, grown) -> None:
    victim = results / "smoke" / load_study(ROOT / "ablations" / "smoke.yaml").runs[-1].run_id
    spec = yaml.safe_load((victim / SPEC).read_text())
    spec["settings"]["hyperparams"]["batch_size"] = 7
    (victim / SPEC).write_text(yaml.safe_dump(spec, sort_keys=False))
    meta = json.loads((victim / META).read_text())
    (victim / META).write_text(json.dumps(meta | {MANIFEST: manifest(victim)}))  # whole, but not that run
    folders = sorted(p.name for p in (results / "smoke").glob("Pendulum*"))
    for dry_run in (True, False):
        with pytest.raises(StudyError, match="does not hold the settings of run .*; nothing renamed"):
            rename_runs(load_study(grown), results, dry_run=dry_run)
    assert sorted(p.name for p in (results / "smoke").glob("Pendulum*")) == folders


def test_a_damaged_record_stops_every_rename(results, grown) -> None:
    victim = results / "smoke" / load_study(ROOT / "ablations" / "smoke.yaml").runs[-1].run_id
    (victim / "episodes.parquet").write_bytes(b"not a table")
    with pytest.raises(DamagedRunError):
        rename_runs(load_study(grown), results)
    assert victim.is_dir()


def test_an_interrupted_rename_is_completed(results, grown, tmp_path) -> None:
    old = load_study(ROOT / "ablations" / "smoke.yaml").runs[0].run_id
    shutil.copytree(results / "smoke" / old, tmp_path / "kept")
    first = rename_runs(load_study(grown), results)
    shutil.copytree(tmp_path / "kept", results / "smoke" / old)  # as if the old folder's removal never happened
    assert rename_runs(load_study(grown), results) == {old: first[old]}
    assert not (results / "smoke" / old).exists() and (results / "smoke" / first[old]).is_dir()


def test_a_record_two_planned_runs_claim_is_left_to_the_user(results, tmp_path) -> None:
    doc = yaml.safe_load((ROOT / "ablations" / "smoke.yaml").read_text())
    doc["grid"]["alias"] = {"a": {}, "b": {}}  # two cells with the same settings
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    with pytest.raises(StudyError, match="have its seed and settings; rename it by hand"):
        rename_runs(load_study(path), results)


def test_group_members_and_the_lock(results, grown) -> None:
    runs = [spec.run_id for spec in load_study(ROOT / "ablations" / "smoke.yaml").runs]
    record = results / "smoke" / runs[0]
    meta = json.loads((record / META).read_text())
    (record / META).write_text(json.dumps(meta | {"group": runs[:2]}))  # trained together (meta is not in the manifest)
    assert rename_runs(load_study(grown), results, dry_run=True) and not (results / "smoke" / ".lock").exists()
    with StudyLock(results / "smoke"), pytest.raises(StudyLocked):
        rename_runs(load_study(grown), results)
    renames = rename_runs(load_study(grown), results)
    assert json.loads((results / "smoke" / renames[runs[0]] / META).read_text())["group"] == [
        renames[r] for r in runs[:2]
    ]


def test_the_command_line(results, grown, capsys) -> None:
    assert main(["rename", str(grown), "--results", str(results), "--dry-run"]) == 0
    assert "would rename 4 runs of smoke" in capsys.readouterr().out
    assert main(["rename", str(grown), "--results", str(results)]) == 0
    out = capsys.readouterr().out
    assert "renamed 4 runs of smoke" in out and "→ Pendulum-v1_algo=TD3_interval=k=4_layer_norm=true_s0_" in out


@pytest.fixture
def other(grown) -> Path:
    """The grown smoke grid as a study of its own, whose TD3 runs are the smoke study's."""
    doc = yaml.safe_load(grown.read_text())
    doc["name"] = "other"
    path = grown.with_name("other.yaml")
    path.write_text(yaml.safe_dump(doc, sort_keys=False))
    return path


def test_another_studys_runs_are_copied_under_this_studys_ids(results, other) -> None:
    smoke = load_study(ROOT / "ablations" / "smoke.yaml")
    study = load_study(other)
    source = {spec.run_id for spec in smoke.runs}
    assert reuse_runs(study, "smoke", results, dry_run=True) and not (results / "other").exists()
    copies = reuse_runs(study, "smoke", results)
    assert len(copies) == 4 and set(copies.values()) == source
    assert {p.name for p in (results / "smoke").glob("Pendulum*")} == source  # the originals stay
    for new, old in copies.items():
        spec = next(s for s in study.runs if s.run_id == new)
        assert "algo=TD3" in new and new.rsplit("_", 2)[1:] == old.rsplit("_", 2)[1:]  # seed and settings hash
        assert check_run(results, spec).state == DONE
        meta = json.loads((results / "other" / new / META).read_text())
        assert (meta["study"], meta["run_id"], meta["factors"]) == ("other", new, spec.factors)
        assert meta["reused_from"] == {"study": "smoke", "budget": "full", "run_id": old}
        recorded = yaml.safe_load((results / "other" / new / SPEC).read_text())
        assert (recorded["study"], recorded["factors"]) == ("other", spec.factors)
    before, after = load_results(smoke, results), load_results(study, results)
    assert sorted(after.runs["final_return"]) == sorted(before.runs["final_return"])
    assert reuse_runs(study, "smoke", results) == {}  # nothing left to copy
    third = other.with_name("third.yaml")
    third.write_text(other.read_text().replace("name: other", "name: third"))
    for new, old in reuse_runs(load_study(third), "other", results).items():  # a copy of a copy
        meta = json.loads((results / "third" / new / META).read_text())
        assert meta["reused_from"] == {"study": "smoke", "budget": "full", "run_id": copies[old]}


def test_only_finished_runs_missing_here_are_copied(results, other) -> None:
    runs = [spec.run_id for spec in load_study(ROOT / "ablations" / "smoke.yaml").runs]
    failed = results / "smoke" / runs[0]
    meta = json.loads((failed / META).read_text())
    (failed / META).write_text(json.dumps(meta | {"status": "failed"}))  # meta is not in the manifest
    study = load_study(other)
    first = reuse_runs(study, "smoke", results)
    assert runs[0] not in first.values() and len(first) == 3
    kept = results / "other" / next(iter(first))
    (kept / "mark").write_text("x")  # a record here is never replaced
    checkpoint = next(s for s in study.runs if s.run_id.endswith(runs[1][-11:]))  # its seed and hash
    assert reuse_runs(study, "smoke", results) == {} and (kept / "mark").exists()
    (results / "other" / CHECKPOINTS / checkpoint.run_id).mkdir(parents=True)
    shutil.rmtree(results / "other" / checkpoint.run_id)  # a partial run here: its checkpoint goes
    assert reuse_runs(study, "smoke", results) == {checkpoint.run_id: runs[1]}
    assert not (results / "other" / CHECKPOINTS / checkpoint.run_id).exists()


def test_a_damaged_source_stops_every_copy(results, other) -> None:
    victim = results / "smoke" / load_study(ROOT / "ablations" / "smoke.yaml").runs[-1].run_id
    (victim / "episodes.parquet").write_bytes(b"not a table")
    with pytest.raises(DamagedRunError):
        reuse_runs(load_study(other), "smoke", results)
    assert not list((results / "other").glob("Pendulum*"))


def test_reuse_on_the_command_line(results, other, capsys) -> None:
    assert main(["reuse", str(other), "--from", "smoke", "--results", str(results), "--dry-run"]) == 0
    assert "would copy 4 runs of smoke" in capsys.readouterr().out
    assert main(["reuse", str(other), "--from", "other", "--results", str(results)]) == 2
    assert "another study's folder, not the study's own" in capsys.readouterr().err
    assert main(["reuse", str(other), "--from", "nothing", "--results", str(results)]) == 2
    assert "nothing: no such study folder" in capsys.readouterr().err
    with StudyLock(results / "other"):
        assert main(["reuse", str(other), "--from", "smoke", "--results", str(results)]) != 0
    assert main(["reuse", str(other), "--from", "smoke", "--results", str(results)]) == 0
    assert "copied 4 runs of smoke" in capsys.readouterr().out

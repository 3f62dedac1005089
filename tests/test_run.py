"""One run: seeding, recorded tables, metadata, failures."""

from __future__ import annotations

import subprocess
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import torch

from study.config import load_study
from study.run import execute, run_result

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture
def spec(write_study):
    return load_study(write_study({"exploration.param_noise.interval": 5})).runs[0]


def test_same_seed_identical_results_other_seed_differs(spec) -> None:
    a, b = execute(spec), execute(spec)
    assert a.status == b.status == "done", a.error
    for name in ("episodes", "evaluations", "adaptations"):
        pd.testing.assert_frame_equal(a.tables()[name], b.tables()[name])
    other = execute(spec.model_copy(update={"seed": 1}))
    assert not np.array_equal(other.evaluations["return_mean"], a.evaluations["return_mean"])
    assert not np.array_equal(other.episodes["return"], a.episodes["return"])


def test_tables_record_what_the_run_did(spec) -> None:
    result = execute(spec)
    episodes, evaluations, adaptations = result.episodes, result.evaluations, result.adaptations
    assert list(evaluations["step"]) == [150, 300]
    assert (evaluations["length_mean"] == 200).all()
    assert evaluations["continuity_cost"].between(0, 100).all()
    assert evaluations["jerk_cost"].between(0, 100).all()
    # Pendulum episodes last 200 steps; 300 steps complete one
    assert list(episodes["step"]) == [200] and list(episodes["length"]) == [200]
    assert episodes["warmup"].tolist() == [True]
    assert episodes["sigma"].iloc[0] == pytest.approx(0.2)
    # adapting every 50 steps once the buffer holds a batch of 32
    assert list(adaptations["step"]) == [50, 100, 150, 200, 250, 300]
    assert (adaptations["distance"] > 0).all()
    ratios = adaptations["sigma"].iloc[1:].to_numpy() / adaptations["sigma"].iloc[:-1].to_numpy()
    assert set(np.round(ratios, 6)) <= {round(1.01, 6), round(1 / 1.01, 6)}


def test_metadata(spec) -> None:
    meta = execute(spec, cpus=1).meta
    assert meta["status"] == "done" and meta["steps"] == 300
    assert meta["torch_threads"] == 1
    assert meta["versions"]["stable-baselines3"] and meta["versions"]["torch"].startswith("2.13.0")
    assert set(meta["code"]) == {"commit", "dirty", "source_sha256"} and len(meta["code"]["source_sha256"]) == 64
    assert set(meta["host"]) == {"hostname", "python", "platform", "cpu"} and isinstance(meta["host"]["cpu"], str)
    assert meta["steps_per_s"] > 0 and meta["wall_time_s"] > 0
    assert meta["final_return"] < 0


def test_the_code_version_is_read_when_the_run_is_built_not_when_it_ends(spec, monkeypatch) -> None:
    """A source tree that changes while a run trains (a pull in the checkout a long study runs
    from) does not change the commit the run records: that of the code the process runs."""
    from study import provenance
    from study.run import build_run

    provenance.code_version.cache_clear()
    monkeypatch.setattr(provenance.subprocess, "run", fake_git("aaaa"))
    parts = build_run(spec)
    monkeypatch.setattr(provenance.subprocess, "run", fake_git("bbbb"))
    parts.model.learn(spec.settings.total_steps, callback=parts.callbacks)
    meta = run_result(spec, parts, None, datetime.now(UTC), 1.0, None, 1).meta
    provenance.code_version.cache_clear()
    assert meta["code"] == {"commit": "aaaa", "dirty": False, "source_sha256": provenance.source_sha256(ROOT)}


def test_the_source_hash_identifies_the_package_source_without_git(tmp_path) -> None:
    from study.provenance import source_sha256

    def tree(name: str, files: dict[str, str]) -> str:
        for path, text in files.items():
            (tmp_path / name / path).parent.mkdir(parents=True, exist_ok=True)
            (tmp_path / name / path).write_text(text)
        return source_sha256(tmp_path / name)

    files = {"study/__init__.py": "", "study/run.py": "x = 1\n", "pyproject.toml": "[project]\n"}
    same = tree("a", files)
    assert tree("b", files) == same  # where it lies does not matter
    assert tree("c", files | {"README.md": "notes", "study/data.csv": "1"}) == same  # nor files outside the source
    assert tree("d", files | {"study/run.py": "x = 2\n"}) != same
    assert tree("e", files | {"pyproject.toml": "[project]\nversion = 2\n"}) != same
    moved = {"study/__init__.py": "", "study/runs.py": "x = 1\n", "pyproject.toml": "[project]\n"}
    assert tree("f", moved) != same


def fake_git(commit: str):
    """`subprocess.run` for `git rev-parse HEAD` (`commit`) and `git status` (clean)."""

    def run(args, **kwargs):
        out = commit if "rev-parse" in args else ""
        return subprocess.CompletedProcess(args, 0, stdout=out + "\n", stderr="")

    return run


def test_action_noise_and_ddpg(write_study) -> None:
    for overrides in (
        {"algo": "ddpg", "exploration.param_noise": None, "exploration.action_noise": {"type": "ou", "sigma": 0.3}},
        {"algo": "ddpg", "exploration.action_noise": {"type": "normal", "sigma": 0.1}, "layer_norm": True},
    ):
        result = execute(load_study(write_study(overrides)).runs[0])
        assert result.status == "done", result.error
        assert len(result.evaluations) == 2


def test_a_raising_run_is_a_failed_result(spec, monkeypatch) -> None:
    def boom(*args, **kwargs):
        raise FloatingPointError("loss is NaN")

    monkeypatch.setattr("study.algos.build", boom)
    result = execute(spec)
    assert result.status == "failed"
    assert "FloatingPointError: loss is NaN" in result.error
    assert result.meta["status"] == "failed"


def test_a_diverged_policy_fails_the_run(spec, monkeypatch) -> None:
    from study.recording import Evaluator

    original = Evaluator.evaluate

    def poison_then_evaluate(self):
        with torch.no_grad():
            next(self.model.policy.actor.parameters()).fill_(float("nan"))
        return original(self)

    monkeypatch.setattr(Evaluator, "evaluate", poison_then_evaluate)
    result = execute(spec)
    assert result.status == "failed"
    assert "FloatingPointError: non-finite policy parameters at step 150" in result.error

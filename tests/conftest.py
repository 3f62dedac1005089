"""Shared helpers: tiny study files and tiny models."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import gymnasium as gym
import pytest
import yaml
from stable_baselines3 import TD3

from study.config import apply_overrides
from study.policies import ParamNoiseTD3Policy

TINY_STUDY: dict[str, Any] = {
    "name": "tiny",
    "algo": "td3",
    "envs": ["Pendulum-v1"],
    "seeds": 1,
    "total_steps": 300,
    "eval": {"freq": 150, "episodes": 1},
    "net_arch": [16, 16],
    "hyperparams": {"learning_starts": 100, "batch_size": 32, "buffer_size": 1000},
    "exploration": {"param_noise": {"interval": "episode", "adapt_every": 50}},
    "budgets": {"full": 300},
}


@pytest.fixture
def write_study(tmp_path: Path):
    """Write TINY_STUDY with dotted-path overrides to a YAML file; returns its path."""

    def write(overrides: dict[str, Any] | None = None, name: str = "study.yaml", text: str | None = None) -> Path:
        path = tmp_path / name
        doc = apply_overrides(TINY_STUDY, overrides or {})
        path.write_text(text if text is not None else yaml.safe_dump(doc, sort_keys=False))
        return path

    return write


def tiny_td3(max_episode_steps: int = 10, layer_norm: bool = False, **kwargs: Any) -> TD3:
    """TD3 with our policy on a short-episode Pendulum."""
    env = gym.make("Pendulum-v1", max_episode_steps=max_episode_steps)
    params = {"learning_starts": 5, "batch_size": 8, "buffer_size": 1000, "seed": 0} | kwargs
    return TD3(
        ParamNoiseTD3Policy,
        env,
        policy_kwargs={"net_arch": [8, 8], "layer_norm": layer_norm},
        **params,
    )


@pytest.fixture(scope="session")
def smoke_results(tmp_path_factory) -> Path:
    """The smoke study, run once in-process; returns its results folder."""
    from study.config import load_study
    from study.run import execute
    from study.store import write_run

    results = tmp_path_factory.mktemp("smoke") / "results"
    for spec in load_study(ROOT / "ablations" / "smoke.yaml").runs:
        result = execute(spec)
        assert result.status == "done", result.error
        write_run(result, results)
    return results


ROOT = Path(__file__).resolve().parent.parent

"""Synthetic results for a study's runs, written like real ones: for trying the analysis and
report without training, and for its tests and benchmarks."""

from __future__ import annotations

import zlib

import numpy as np

from study.config import RunSpec
from study.result import ADAPTATION_COLUMNS, EPISODE_COLUMNS, EVALUATION_COLUMNS, RunResult, run_meta, table


def fake_result(spec: RunSpec, n_evaluations: int = 10, n_episodes: int = 20, status: str = "done") -> RunResult:
    """A plausible RunResult for `spec`: returns improve over training, costs vary by run."""
    rng = np.random.default_rng(zlib.crc32(spec.run_id.encode()))
    total = spec.settings.total_steps
    quality = rng.normal(0.0, 1.0)
    eval_steps = np.linspace(total / n_evaluations, total, n_evaluations).astype(np.int64)
    progress = eval_steps / total
    learning_starts = spec.settings.hyperparams.learning_starts or 0
    evaluations = {
        "step": eval_steps,
        "return_mean": -1000 + 800 * progress + 50 * quality + rng.normal(0, 20, n_evaluations),
        "return_std": rng.uniform(0, 50, n_evaluations),
        "length_mean": np.full(n_evaluations, 200.0),
        "continuity_cost": rng.uniform(0.1, 2.0, n_evaluations),
        "jerk_cost": rng.uniform(0.01, 0.5, n_evaluations),
        "gradient_steps": np.maximum(eval_steps - learning_starts, 0),
    }
    episode_steps = np.linspace(total / n_episodes, total, n_episodes).astype(np.int64)
    episodes = {
        "step": episode_steps,
        "episode": np.arange(n_episodes),
        "return": -1200 + 900 * episode_steps / total + rng.normal(0, 50, n_episodes),
        "length": np.full(n_episodes, 200),
        "continuity_cost": rng.uniform(0.5, 5.0, n_episodes) + quality,
        "jerk_cost": rng.uniform(0.1, 1.0, n_episodes),
        "sigma": np.full(n_episodes, 0.2),
        "warmup": episode_steps - 200 < learning_starts,
    }
    adapt_steps = np.linspace(100, total, max(1, n_episodes)).astype(np.int64)
    adaptations = {
        "step": adapt_steps,
        "sigma": 0.2 * 1.01 ** np.cumsum(rng.choice([-1, 1], len(adapt_steps))),
        "distance": rng.lognormal(np.log(0.2), 0.3, len(adapt_steps)),
    }
    meta = run_meta(spec, status, started=None) | {"wall_time_s": 1.0, "steps": total, "synthetic": True}
    result = RunResult(
        spec=spec,
        status=status,
        meta=meta,
        episodes=table(episodes, EPISODE_COLUMNS),
        evaluations=table(evaluations, EVALUATION_COLUMNS),
        adaptations=table(adaptations, ADAPTATION_COLUMNS),
        error="Traceback: synthetic failure" if status != "done" else None,
    )
    result.meta["final_return"] = result.final_return
    return result

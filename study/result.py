"""What one run produced (RunResult) and the columns of its tables: the data engines hand to the driver."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Literal

import pandas as pd

from study import provenance
from study.config import RunSpec

EPISODE_COLUMNS = {
    "step": "int64",
    "episode": "int64",
    "return": "float64",
    "length": "int64",
    "continuity_cost": "float64",
    "jerk_cost": "float64",
    "sigma": "float64",
    "warmup": "bool",
    "switch_rate": "float64",
}
EVALUATION_COLUMNS = {
    "step": "int64",
    "return_mean": "float64",
    "return_std": "float64",
    "length_mean": "float64",
    "continuity_cost": "float64",
    "jerk_cost": "float64",
    "optimal": "boolean",  # reached the env's `optimal_return`; NA for envs without one
    "gradient_steps": "int64",  # the gradient steps the evaluated policy has had (0: untrained)
}
ADAPTATION_COLUMNS = {"step": "int64", "sigma": "float64", "distance": "float64"}
#: action traces, one row per step and action dimension: `kind` "train" (the first training
#: episode after warm-up) or "eval" (the first episode of the evaluation at training fraction
#: `point`); `step` is the run's step where the episode began, `t` the step within it, `sigma`
#: the parameter-noise σ acting in it (NaN without one)
TRACE_COLUMNS = {
    "kind": "string",
    "point": "float64",
    "step": "int64",
    "t": "int64",
    "dim": "int64",
    "action": "float64",
    "sigma": "float64",
}


def table(data: list[dict[str, Any]] | dict[str, Any], columns: dict[str, str]) -> pd.DataFrame:
    """Rows (or a mapping of columns) as a DataFrame with fixed columns and dtypes, also when empty."""
    return pd.DataFrame(data, columns=list(columns)).astype(columns)


@dataclass
class RunResult:
    """Everything one run produced, to be written by the driver."""

    spec: RunSpec
    status: Literal["done", "failed"]
    meta: dict[str, Any]
    episodes: pd.DataFrame = field(default_factory=lambda: table([], EPISODE_COLUMNS))
    evaluations: pd.DataFrame = field(default_factory=lambda: table([], EVALUATION_COLUMNS))
    adaptations: pd.DataFrame = field(default_factory=lambda: table([], ADAPTATION_COLUMNS))
    traces: pd.DataFrame = field(default_factory=lambda: table([], TRACE_COLUMNS))
    error: str | None = None
    model: bytes | None = None  # the final model, as SB3's `save` writes it (model.zip)
    normalize: bytes | None = None  # with `normalize`: its final VecNormalize, as its `save` writes it

    def tables(self) -> dict[str, pd.DataFrame]:
        return {
            "episodes": self.episodes,
            "evaluations": self.evaluations,
            "adaptations": self.adaptations,
            "traces": self.traces,
        }

    @property
    def final_return(self) -> float:
        return float(self.evaluations["return_mean"].iloc[-1]) if len(self.evaluations) else float("nan")


def run_meta(spec: RunSpec, status: str, started: str | None) -> dict[str, Any]:
    """The metadata every run record carries: what ran, its state, and what produced it."""
    return {
        "run_id": spec.run_id,
        "study": spec.study,
        "budget": spec.budget,
        "env": spec.env,
        "seed": spec.seed,
        "factors": dict(spec.factors),
        "status": status,
        "started": started,
        "ended": datetime.now(UTC).isoformat(),
        "versions": provenance.package_versions(),
        "code": provenance.code_version(),
        "host": provenance.host(),
    }

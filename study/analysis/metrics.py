"""Per-run metrics from a study's tidy tables (DESIGN.md §5), vectorized over runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

from study.config import RunSpec
from study.store import StudyResults

# the direction of each metric: True = higher is better, False = lower is better
HIGHER_IS_BETTER: dict[str, bool] = {
    "final_return": True,
    "auc": True,
    "c_train": False,
    "c_train_last10": False,
    "c_eval": False,
    "jerk_train": False,
    "jerk_eval": False,
    "switch_rate": False,
    "episodes_to_solve": False,
}

LABELS: dict[str, str] = {
    "final_return": "final return",
    "auc": "mean evaluation return (AUC)",
    "c_train": "continuity cost C_train",
    "c_train_last10": "continuity cost C_train (last 10%)",
    "c_eval": "continuity cost C_eval",
    "jerk_train": "jerk cost (training)",
    "jerk_eval": "jerk cost (evaluation)",
    "switch_rate": "action switch rate",
    "episodes_to_solve": "episodes to solve",
    "optimal_at_init": "optimal at initialization",
    "final_sigma": "final σ",
}

SOLVED_WINDOW = 100  # consecutive optimal evaluations that count as solved (chain MDP)


def run_metrics(results: StudyResults, include_warmup: bool = False) -> pd.DataFrame:
    """One row per complete run: its keys, then each metric.

    - final_return / auc: last / mean evaluation return;
    - c_eval / jerk_eval: continuity / jerk cost of the last evaluation's episodes;
    - c_train / jerk_train: mean over training episodes, c_train_last10 over those ending in the
      last 10% of the run's steps; episodes begun during warm-up (random actions) are left out
      unless `include_warmup`;
    - switch_rate (discrete actions), final_sigma / mean_distance (adaptive parameter noise),
      episodes_to_solve and optimal_at_init (runs that record per-episode `optimal`
      evaluations), where recorded.
    """
    keys = ["run_id", "env", "seed", *results.factors]
    out = results.runs[[*keys, "total_steps"]].set_index("run_id")

    evaluations = results.evaluations.sort_values(["run_id", "step"], kind="stable")
    by_run = evaluations.groupby("run_id", sort=False)
    last = by_run[["return_mean", "continuity_cost", "jerk_cost"]].last()
    out["final_return"] = last["return_mean"]
    out["auc"] = by_run["return_mean"].mean()
    out["c_eval"] = last["continuity_cost"]
    out["jerk_eval"] = last["jerk_cost"]

    episodes = results.episodes
    if not include_warmup and len(episodes):
        episodes = episodes[~episodes["warmup"].astype(bool)]
    train = episodes.groupby("run_id", sort=False)
    out["c_train"] = train["continuity_cost"].mean()
    out["jerk_train"] = train["jerk_cost"].mean()
    total = out["total_steps"].reindex(episodes["run_id"]).to_numpy()
    late = episodes[episodes["step"].to_numpy() > 0.9 * total]
    out["c_train_last10"] = late.groupby("run_id", sort=False)["continuity_cost"].mean()
    if "switch_rate" in episodes and episodes["switch_rate"].notna().any():
        out["switch_rate"] = train["switch_rate"].mean()

    if len(results.adaptations):
        adaptations = results.adaptations.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=False)
        out["final_sigma"] = adaptations["sigma"].last()
        out["mean_distance"] = adaptations["distance"].mean()
    if "optimal" in evaluations and evaluations["optimal"].notna().any():
        windows = results.runs.set_index("run_id").get("solved_window")
        solving = with_gradient_steps(evaluations[evaluations["optimal"].notna()], results)
        out["episodes_to_solve"] = episodes_to_solve(solving, windows)
        out["optimal_at_init"] = optimal_at_init(solving)
    return out.reset_index()


def with_gradient_steps(evaluations: pd.DataFrame, results: StudyResults) -> pd.DataFrame:
    """Evaluations with `gradient_steps` filled in where a table predates the column: there, a
    policy counts as trained when evaluated after the first training call, which SB3 makes after
    the first rollout that ends past `learning_starts` (every `train_freq` steps; for episodic
    training, after `learning_starts`)."""
    frame = evaluations.copy()
    recorded = frame["gradient_steps"] if "gradient_steps" in frame else pd.Series(pd.NA, index=frame.index)
    if recorded.notna().all():
        return frame

    def first_training(spec: RunSpec) -> int:
        starts, freq = spec.settings.hyperparams.learning_starts or 0, spec.settings.hyperparams.train_freq
        return (starts // freq + 1) * freq if isinstance(freq, int) else starts

    specs = results.specs
    first = {run_id: first_training(specs[run_id]) for run_id in frame["run_id"].unique()}
    trained = frame["step"] > frame["run_id"].map(first)
    frame["gradient_steps"] = recorded.astype("Int64").fillna(trained.astype("int64"))
    return frame


def optimal_at_init(evaluations: pd.DataFrame) -> pd.Series:
    """Per run: whether the untrained greedy policy was optimal at the first evaluation
    (NA where the first evaluation came after learning had begun)."""
    first = evaluations.sort_values(["run_id", "step"], kind="stable").groupby("run_id", sort=False).first()
    untrained = first["gradient_steps"].astype("int64") == 0
    return first["optimal"].astype("boolean").where(untrained, pd.NA)


def episodes_to_solve(evaluations: pd.DataFrame, window: int | pd.Series = SOLVED_WINDOW) -> pd.Series:
    """Per run: the number of training episodes after which the greedy policy's evaluations
    had been optimal `window` times in a row after learning had begun (NaN if never: censored
    at the run's length). An evaluation of the untrained policy never counts.

    Expects one evaluation per training episode, with columns run_id, step, optimal, gradient_steps.
    `window` may differ per run (a Series by run id; missing runs use SOLVED_WINDOW).
    """
    frame = evaluations.sort_values(["run_id", "step"], kind="stable")
    optimal = frame["optimal"].astype(bool).to_numpy() & (frame["gradient_steps"].to_numpy(dtype=np.int64) > 0)
    run = frame["run_id"].to_numpy()
    new_run = np.r_[True, run[1:] != run[:-1]]
    # the streak of optimal evaluations ending at each row: restart at every miss and every new run
    streak = pd.Series(optimal.astype(int)).groupby(np.cumsum(~optimal | new_run)).cumsum().to_numpy()
    episodes = frame.groupby("run_id", sort=False).cumcount().to_numpy() + 1
    if isinstance(window, pd.Series):
        window = window.reindex(run).fillna(SOLVED_WINDOW).to_numpy()
    solved = pd.Series(np.where(streak >= window, episodes, np.nan), index=run)
    return solved.groupby(level=0, sort=False).min()

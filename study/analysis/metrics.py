"""Per-run metrics from a study's tidy tables (DESIGN.md §5), vectorized over runs."""

from __future__ import annotations

import numpy as np
import pandas as pd

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
      episodes_to_solve (runs that record per-episode `optimal` evaluations), where recorded.
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
        out["episodes_to_solve"] = episodes_to_solve(evaluations[evaluations["optimal"].notna()], windows)
    return out.reset_index()


def episodes_to_solve(evaluations: pd.DataFrame, window: int | pd.Series = SOLVED_WINDOW) -> pd.Series:
    """Per run: the number of training episodes after which the greedy policy's evaluations
    had been optimal `window` times in a row (NaN if never: censored at the run's length).

    Expects one evaluation per training episode, with columns run_id, step, optimal.
    `window` may differ per run (a Series by run id; missing runs use SOLVED_WINDOW).
    """
    frame = evaluations.sort_values(["run_id", "step"], kind="stable")
    optimal = frame["optimal"].astype(bool).to_numpy()
    run = frame["run_id"].to_numpy()
    new_run = np.r_[True, run[1:] != run[:-1]]
    # the streak of optimal evaluations ending at each row: restart at every miss and every new run
    streak = pd.Series(optimal.astype(int)).groupby(np.cumsum(~optimal | new_run)).cumsum().to_numpy()
    episodes = frame.groupby("run_id", sort=False).cumcount().to_numpy() + 1
    if isinstance(window, pd.Series):
        window = window.reindex(run).fillna(SOLVED_WINDOW).to_numpy()
    solved = pd.Series(np.where(streak >= window, episodes, np.nan), index=run)
    return solved.groupby(level=0, sort=False).min()

"""Metrics and aggregates against hand-computed values on small synthetic tables."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from study.analysis.aggregates import (
    cell_stats,
    censored_quantiles,
    iqm,
    probability_of_improvement,
    score_distribution,
    stratified_bootstrap,
)
from study.analysis.metrics import episodes_to_solve, optimal_at_init, run_metrics
from study.config import load_study
from study.store import StudyResults


@pytest.fixture
def two_runs(write_study) -> StudyResults:
    """Two hand-written runs (seeds 0 and 1) of a 1000-step study with 100 warm-up steps."""
    study = load_study(write_study({"seeds": 2, "total_steps": 1000, "budgets.full": 1000}))
    keys = [{"run_id": spec.run_id, "env": spec.env, "seed": spec.seed} for spec in study.runs]
    runs = pd.DataFrame([k | {"status": "done", "total_steps": 1000} for k in keys])
    evaluations = pd.DataFrame(
        [
            keys[0] | {"step": 500, "return_mean": -300.0, "continuity_cost": 2.0, "jerk_cost": 0.5},
            keys[0] | {"step": 1000, "return_mean": -100.0, "continuity_cost": 1.0, "jerk_cost": 0.2},
            keys[1] | {"step": 500, "return_mean": -500.0, "continuity_cost": 4.0, "jerk_cost": 0.7},
            keys[1] | {"step": 1000, "return_mean": -200.0, "continuity_cost": 3.0, "jerk_cost": 0.4},
        ]
    )
    episodes = pd.DataFrame(
        [
            keys[0] | {"step": 200, "continuity_cost": 50.0, "jerk_cost": 40.0, "warmup": True},
            keys[0] | {"step": 400, "continuity_cost": 4.0, "jerk_cost": 1.0, "warmup": False},
            keys[0] | {"step": 950, "continuity_cost": 2.0, "jerk_cost": 0.5, "warmup": False},
            keys[0] | {"step": 1000, "continuity_cost": 1.0, "jerk_cost": 0.5, "warmup": False},
            keys[1] | {"step": 200, "continuity_cost": 60.0, "jerk_cost": 30.0, "warmup": True},
            keys[1] | {"step": 600, "continuity_cost": 8.0, "jerk_cost": 2.0, "warmup": False},
        ]
    )
    adaptations = pd.DataFrame(
        [
            keys[0] | {"step": 100, "sigma": 0.2, "distance": 0.1},
            keys[0] | {"step": 200, "sigma": 0.202, "distance": 0.3},
            keys[1] | {"step": 100, "sigma": 0.2, "distance": 0.5},
        ]
    )
    return StudyResults(study, runs, episodes, evaluations, adaptations, Path("unused"))


def test_run_metrics_by_hand(two_runs: StudyResults) -> None:
    m = run_metrics(two_runs).set_index("seed")
    assert m.loc[0, "final_return"] == -100.0 and m.loc[1, "final_return"] == -200.0
    assert m.loc[0, "auc"] == -200.0 and m.loc[1, "auc"] == -350.0
    assert m.loc[0, "c_eval"] == 1.0 and m.loc[0, "jerk_eval"] == 0.2
    # warm-up episodes are left out by default
    assert m.loc[0, "c_train"] == pytest.approx((4 + 2 + 1) / 3)
    assert m.loc[1, "c_train"] == 8.0
    assert m.loc[0, "jerk_train"] == pytest.approx(2 / 3)
    # last 10% of 1000 steps: episodes ending after step 900
    assert m.loc[0, "c_train_last10"] == pytest.approx(1.5)
    assert np.isnan(m.loc[1, "c_train_last10"])
    assert m.loc[0, "final_sigma"] == 0.202 and m.loc[0, "mean_distance"] == pytest.approx(0.2)
    with_warmup = run_metrics(two_runs, include_warmup=True).set_index("seed")
    assert with_warmup.loc[1, "c_train"] == 34.0


def test_iqm_by_hand() -> None:
    assert iqm(np.arange(1, 9)) == 4.5  # middle four of 1..8: 3, 4, 5, 6
    assert iqm(np.array([0.0, 0.0, 0.0, 100.0])) == 0.0  # the outlier is trimmed
    np.testing.assert_allclose(iqm(np.array([[1, 2, 3, 4], [10, 20, 30, 40]]), axis=1), [2.5, 25.0])


def test_bootstrap_ci_matches_a_plain_loop_with_the_same_draws() -> None:
    a, b = np.array([1.0, 2.0, 3.0, 10.0]), np.array([5.0, 6.0, 7.0])
    point, low, high = stratified_bootstrap([a, b], iqm, reps=300, seed=7)
    rng = np.random.default_rng(7)
    ia, ib = rng.integers(0, 4, (300, 4)), rng.integers(0, 3, (300, 3))
    estimates = [iqm(np.concatenate([a[ia[r]], b[ib[r]]])) for r in range(300)]
    assert point == pytest.approx(iqm(np.concatenate([a, b])))
    assert (low, high) == pytest.approx(tuple(np.percentile(estimates, [2.5, 97.5])))
    assert low <= point <= high
    # each resample keeps 4 values of a and 3 of b: stratified, not pooled
    assert stratified_bootstrap([np.full(5, 2.0)], iqm, reps=50)[1:] == (2.0, 2.0)


def test_score_distribution_by_hand_and_its_band_matches_a_plain_loop() -> None:
    values, thresholds = np.array([1.0, 2.0, 3.0, 4.0]), np.array([0.0, 1.0, 2.5, 4.0])
    point, low, high = score_distribution(values, thresholds, reps=300, seed=3)
    np.testing.assert_array_equal(point, [1.0, 0.75, 0.5, 0.0])  # strictly above τ: a run at τ = 1 is not
    rng = np.random.default_rng(3)
    draws = values[rng.integers(0, 4, (300, 4))]
    fractions = (draws[:, :, None] > thresholds).mean(axis=1)
    np.testing.assert_allclose(low, np.percentile(fractions, 2.5, axis=0))
    np.testing.assert_allclose(high, np.percentile(fractions, 97.5, axis=0))
    assert (low <= point).all() and (point <= high).all() and low[1] < high[1]
    # every run alike: no spread, the band is the point
    same = score_distribution(np.full(5, 2.0), [1.0, 2.0], reps=50)
    np.testing.assert_array_equal(same, [[1.0, 0.0]] * 3)


def test_cell_stats_mean_and_standard_error(two_runs: StudyResults) -> None:
    m = run_metrics(two_runs)
    stats = cell_stats(m, "final_return", ["env"], reps=200)
    row = stats.iloc[0]
    assert row["seeds"] == 2 and row["mean"] == -150.0
    assert row["se"] == pytest.approx(np.std([-100, -200], ddof=1) / np.sqrt(2))
    assert row["iqm_low"] <= row["iqm"] <= row["iqm_high"]


def _pairs(x: list[float], y: list[float], metric: str) -> pd.DataFrame:
    frame = pd.DataFrame({"env": "E", "k": ["x"] * len(x) + ["y"] * len(y), metric: x + y})
    frame["k"] = pd.Categorical(frame["k"], categories=["x", "y"], ordered=True)
    return frame


def test_probability_of_improvement_by_hand_and_cost_direction() -> None:
    # pairs (x, y): 9 in all; x > y in 4, ties in 1 → (4 + 0.5) / 9
    returns = _pairs([1, 2, 3], [0, 2, 4], "final_return")
    assert probability_of_improvement(returns, "k", "x", "y", "final_return")["p"] == pytest.approx(4.5 / 9)
    # for a cost lower is better: x = [1, 2] is always smoother than y = [3, 4]
    costs = _pairs([1, 2], [3, 4], "c_train")
    assert probability_of_improvement(costs, "k", "x", "y", "c_train")["p"] == 1.0
    assert (
        probability_of_improvement(costs.rename(columns={"c_train": "final_return"}), "k", "x", "y", "final_return")[
            "p"
        ]
        == 0.0
    )
    p = probability_of_improvement(_pairs([5, 6, 7, 8], [1, 2, 3, 9], "final_return"), "k", "x", "y", "final_return")
    assert p["low"] <= p["p"] <= p["high"] and p["tasks"] == 1


def test_episodes_to_solve_counts_only_evaluations_after_learning_began() -> None:
    optimal = [1, 1, 0, 1, 1, 1, 0, 1] + [1, 1, 0, 1, 0] + [1, 1, 1, 1, 0]
    trained = [0] + [1] * 7 + [0] + [1] * 4 + [0, 0, 0, 1, 1]
    frame = pd.DataFrame(
        {
            "run_id": ["a"] * 8 + ["b"] * 5 + ["c"] * 5,
            "step": list(range(8)) + list(range(5)) + list(range(5)),
            "optimal": optimal,
            "gradient_steps": trained,
        }
    )
    solved = episodes_to_solve(frame, window=3)
    assert solved["a"] == 6.0  # three optimal in a row first at the 6th episode
    assert np.isnan(solved["b"])  # never: censored
    assert np.isnan(solved["c"])  # optimal four times in a row, but three of them untrained
    assert optimal_at_init(frame).tolist() == [True, True, True]
    frame.loc[13, "optimal"] = 0
    frame.loc[0, "gradient_steps"] = 5  # first evaluation after learning began: no initial evaluation
    assert optimal_at_init(frame).astype(object).tolist() == [pd.NA, True, False]


def test_censored_quantiles_count_unsolved_runs_at_the_budget_and_flag_lower_bounds() -> None:
    q = censored_quantiles([300.0, np.nan, 100.0, 200.0, np.nan], budget=1000)
    # sorted: 100, 200, 300, 1000*, 1000*; linear positions 1, 2, 3
    assert q["value"].tolist() == [200.0, 300.0, 1000.0]
    assert q["censored"].tolist() == [False, False, True]
    between = censored_quantiles([100.0, 200.0, np.nan, np.nan], budget=1000, quantiles=[0.5])
    assert between["value"].item() == 600.0 and between["censored"].item()  # halfway to an unsolved run
    solved = censored_quantiles([100.0, 200.0, 300.0, 400.0], budget=1000)
    assert solved["value"].tolist() == list(np.quantile([100, 200, 300, 400], [0.25, 0.5, 0.75]))
    assert not solved["censored"].any()

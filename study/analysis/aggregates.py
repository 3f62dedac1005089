"""Aggregates over seeds: mean ± standard error, IQM with stratified bootstrap CIs, and the
probability of improvement — the methods of rliable (Agarwal et al., 2021), on numpy/scipy."""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import pandas as pd
from scipy import stats

from study.analysis.metrics import HIGHER_IS_BETTER

REPS = 2000  # bootstrap resamples
CONFIDENCE = 0.95
MIN_SEEDS = 2  # seeds per level and task for a probability of improvement


def iqm(values: np.ndarray, axis: int | None = None) -> np.ndarray | float:
    """Interquartile mean: the mean of the middle 50% (25% trimmed from each end)."""
    return stats.trim_mean(values, 0.25, axis=axis)


def stratified_bootstrap(
    strata: Sequence[np.ndarray],
    statistic: Callable[..., np.ndarray] = iqm,
    reps: int = REPS,
    confidence: float = CONFIDENCE,
    seed: int = 0,
) -> tuple[float, float, float]:
    """(point, low, high): `statistic` of all values, and its percentile bootstrap CI where
    each resample draws, with replacement, within each stratum (task) separately."""
    rng = np.random.default_rng(seed)
    strata = [np.asarray(s, dtype=float) for s in strata if len(s)]
    point = float(statistic(np.concatenate(strata), axis=None))
    samples = np.concatenate([s[rng.integers(0, len(s), size=(reps, len(s)))] for s in strata], axis=1)
    estimates = statistic(samples, axis=1)
    alpha = (1 - confidence) / 2
    low, high = np.percentile(estimates, [100 * alpha, 100 * (1 - alpha)])
    return point, float(low), float(high)


def cell_stats(metrics: pd.DataFrame, metric: str, by: Sequence[str], reps: int = REPS, seed: int = 0) -> pd.DataFrame:
    """Per cell (rows sharing `by`): number of seeds, mean, standard error, IQM and its 95% bootstrap CI."""
    rows = []
    for key, group in metrics.dropna(subset=[metric]).groupby(list(by), observed=True, sort=True):
        values = group[metric].to_numpy(dtype=float)
        point, low, high = stratified_bootstrap([values], iqm, reps=reps, seed=seed)
        se = values.std(ddof=1) / np.sqrt(len(values)) if len(values) > 1 else np.nan
        key = key if isinstance(key, tuple) else (key,)
        rows.append(
            dict(zip(by, key, strict=True))
            | {"seeds": len(values), "mean": values.mean(), "se": se, "iqm": point, "iqm_low": low, "iqm_high": high}
        )
    columns = [*by, "seeds", "mean", "se", "iqm", "iqm_low", "iqm_high"]
    frame = pd.DataFrame(rows, columns=columns)
    for column in by:  # keep the YAML order of factor levels
        if isinstance(metrics[column].dtype, pd.CategoricalDtype):
            frame[column] = pd.Categorical(frame[column], dtype=metrics[column].dtype)
    return frame


def score_distribution(
    values: Sequence[float] | np.ndarray, thresholds: Sequence[float] | np.ndarray, reps: int = REPS, seed: int = 0
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Run-score distribution (rliable's performance profile): the fraction of runs whose score
    exceeds each threshold τ, and its 95% percentile-bootstrap band over runs."""
    values, thresholds = np.asarray(values, dtype=float), np.asarray(thresholds, dtype=float)
    point = (values[:, None] > thresholds).mean(axis=0)
    rng = np.random.default_rng(seed)
    samples = np.sort(values[rng.integers(0, len(values), size=(reps, len(values)))], axis=1)
    # runs above τ in each resample: those after the last one at or below it
    above = len(values) - np.stack([np.searchsorted(row, thresholds, side="right") for row in samples])
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.percentile(above / len(values), [100 * alpha, 100 * (1 - alpha)], axis=0)
    return point, low, high


def censored_quantiles(
    values: pd.Series | np.ndarray, budget: float, quantiles: Sequence[float] = (0.25, 0.5, 0.75)
) -> pd.DataFrame:
    """Quantiles (linear interpolation) of a time to an event where NaN marks runs that never got
    there: those count at `budget`, and `censored` marks a quantile that depends on one of them,
    so it is only a lower bound. One row per quantile: value, censored."""
    values = np.asarray(values, dtype=float)
    solved = int(np.isfinite(values).sum())
    x = np.sort(np.where(np.isfinite(values), values, budget))
    rows = []
    for q in quantiles:
        pos = q * (len(x) - 1)
        lo, hi = int(np.floor(pos)), int(np.ceil(pos))
        value = x[lo] + (x[hi] - x[lo]) * (pos - lo)
        rows.append({"value": value, "censored": lo >= solved or (hi >= solved and pos > lo)})
    return pd.DataFrame(rows, index=pd.Index(quantiles, name="quantile"))


def _p_better(x: np.ndarray, y: np.ndarray, higher_is_better: bool) -> np.ndarray:
    """P(X better than Y) over all pairs, ties counting half; x, y: (..., n) arrays."""
    diff = x[..., :, None] - y[..., None, :]
    if not higher_is_better:
        diff = -diff
    return (diff > 0).mean(axis=(-2, -1)) + 0.5 * (diff == 0).mean(axis=(-2, -1))


def probability_of_improvement(
    metrics: pd.DataFrame,
    factor: str,
    x: str,
    y: str,
    metric: str,
    reps: int = REPS,
    seed: int = 0,
) -> dict[str, float]:
    """P(level `x` of `factor` beats level `y` on `metric`), the mean over tasks — each env and
    combination of the other factors — of P(X > Y) across seeds (P(X < Y) for costs),
    with a stratified bootstrap 95% CI. Tasks with fewer than MIN_SEEDS seeds of either level
    are left out (one seed says nothing of a distribution)."""
    higher = HIGHER_IS_BETTER.get(metric, True)
    others = ["env", *[c for c in _factor_columns(metrics) if c != factor]]
    pairs = []
    for _, task in metrics.dropna(subset=[metric]).groupby(others, observed=True):
        xs = task.loc[task[factor] == x, metric].to_numpy(dtype=float)
        ys = task.loc[task[factor] == y, metric].to_numpy(dtype=float)
        if len(xs) >= MIN_SEEDS and len(ys) >= MIN_SEEDS:
            pairs.append((xs, ys))
    if not pairs:
        return {"p": np.nan, "low": np.nan, "high": np.nan, "tasks": 0}
    rng = np.random.default_rng(seed)
    point = float(np.mean([_p_better(xs, ys, higher) for xs, ys in pairs]))
    boot = np.mean(
        [
            _p_better(
                xs[rng.integers(0, len(xs), (reps, len(xs)))], ys[rng.integers(0, len(ys), (reps, len(ys)))], higher
            )
            for xs, ys in pairs
        ],
        axis=0,
    )
    alpha = (1 - CONFIDENCE) / 2
    low, high = np.percentile(boot, [100 * alpha, 100 * (1 - alpha)])
    return {"p": point, "low": float(low), "high": float(high), "tasks": len(pairs)}


def _factor_columns(metrics: pd.DataFrame) -> list[str]:
    """Factor columns are the categorical ones (as the loader makes them)."""
    return [c for c in metrics.columns if isinstance(metrics[c].dtype, pd.CategoricalDtype)]

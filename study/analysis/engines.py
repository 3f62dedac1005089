"""Do two engines train the same runs? Per env and metric, the two engines' distributions over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
from scipy import stats

#: the metrics compared: what a study reports (final return, training continuity cost, σ's end)
METRICS = ("final_return", "c_train", "final_sigma")


def compare_engines(
    metrics: pd.DataFrame, metrics_compared: Sequence[str] = METRICS, engines: tuple[str, str] = ("sb3", "stacked")
) -> pd.DataFrame:
    """One row per env and metric: each engine's median over seeds, the two-sided Mann–Whitney U
    and Kolmogorov–Smirnov p-values of "one distribution", and the median over seeds of the
    absolute difference between the two engines' runs of the same seed.

    :param metrics: `run_metrics` of a study with an `engine` factor
    """
    rows = []
    for env, runs in metrics.groupby("env", sort=False):
        by_engine = {engine: runs[runs["engine"] == engine].set_index("seed") for engine in engines}
        a, b = by_engine[engines[0]], by_engine[engines[1]]
        for metric in metrics_compared:
            if metric not in runs or runs[metric].isna().all():
                continue
            x, y = a[metric].dropna().to_numpy(), b[metric].dropna().to_numpy()
            paired = (a[metric] - b[metric]).dropna().abs()
            rows.append(
                {
                    "env": env,
                    "metric": metric,
                    "seeds": f"{len(x)} / {len(y)}",
                    f"median {engines[0]}": float(np.median(x)),
                    f"median {engines[1]}": float(np.median(y)),
                    "Mann-Whitney p": float(stats.mannwhitneyu(x, y, alternative="two-sided").pvalue),
                    "KS p": float(stats.ks_2samp(x, y).pvalue),
                    "median |same-seed difference|": float(paired.median()),
                }
            )
    return pd.DataFrame(rows)

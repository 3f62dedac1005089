"""The blog's figures: one style, panels per env, legends naming the levels as the YAML does."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter

from study.analysis.aggregates import CONFIDENCE, REPS, cell_stats, censored_quantiles
from study.analysis.labels import config_label, config_styles, ordered_configs
from study.analysis.metrics import LABELS

WIDTH = 7.0  # inches: a blog column at 150 dpi
PANEL_HEIGHT = 3.0
STEPS = EngFormatter(sep="")  # step counts as 20k, 1M
EPISODE = "episode"


def set_style() -> None:
    """One look for every figure."""
    sns.set_theme(context="notebook", style="whitegrid", palette="colorblind", font_scale=0.9)
    plt.rcParams.update({"figure.dpi": 150, "savefig.bbox": "tight", "legend.frameon": False})


def save(fig: Figure, path: Path) -> list[Path]:
    """Write `path`.png and `path`.pdf; returns both paths."""
    path.parent.mkdir(parents=True, exist_ok=True)
    out = [path.with_suffix(".png"), path.with_suffix(".pdf")]
    for file in out:
        fig.savefig(file, metadata={"CreationDate": None} if file.suffix == ".pdf" else None)  # reproducible PDFs
    plt.close(fig)
    return out


def _panels(envs: Sequence[str], rows: int = 1, height: float = PANEL_HEIGHT) -> tuple[Figure, np.ndarray]:
    cols = min(len(envs), 3)
    grid_rows = rows * int(np.ceil(len(envs) / cols))
    width = WIDTH if cols > 1 else WIDTH * 0.62
    fig, axes = plt.subplots(grid_rows, cols, figsize=(width, height * grid_rows), squeeze=False)
    return fig, axes


def _hide_unused(axes: np.ndarray, used: int) -> None:
    for ax in axes.flat[used:]:
        ax.set_visible(False)


def _finish(fig: Figure, axes: np.ndarray, used: int, legend: str | None) -> Figure:
    """Hide unused panels, put one shared legend below (if titled), tighten the layout."""
    _hide_unused(axes, used)
    if legend is not None:
        _legend(fig, axes, legend)
    fig.tight_layout()
    return fig


def _legend(fig: Figure, axes: np.ndarray, title: str) -> None:
    handles, labels = axes.flat[0].get_legend_handles_labels()
    for ax in axes.flat:
        if ax.get_legend():
            ax.get_legend().remove()
    if handles:
        fig.legend(
            handles, labels, title=title, loc="upper center", bbox_to_anchor=(0.5, 0.0), ncol=_legend_columns(labels)
        )


def _legend_columns(labels: Sequence[str]) -> int:
    """As many columns as fit the figure's width."""
    return max(1, min(len(labels), 4, 64 // max(len(label) for label in labels)))


def _bootstrap_mean_band(matrix: np.ndarray, reps: int = REPS, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """95% percentile-bootstrap CI of the mean over rows, per column (NaNs ignored)."""
    rng = np.random.default_rng(seed)
    idx = rng.integers(0, len(matrix), size=(reps, len(matrix)))
    with warnings.catch_warnings():  # columns some resamples have no value in (runs that stopped early)
        warnings.simplefilter("ignore", RuntimeWarning)
        means = np.nanmean(matrix[idx], axis=1)
    alpha = (1 - CONFIDENCE) / 2
    return np.nanpercentile(means, 100 * alpha, axis=0), np.nanpercentile(means, 100 * (1 - alpha), axis=0)


def learning_curves(evaluations: pd.DataFrame, factors: Sequence[str], reps: int = 500) -> Figure:
    """Evaluation return over training steps per configuration: mean over seeds, 95% CI band."""
    frame = evaluations.assign(config=config_label(evaluations, factors))
    envs = list(dict.fromkeys(frame["env"]))
    styles = config_styles(frame, factors)
    fig, axes = _panels(envs)
    for ax, env in zip(axes.flat, envs, strict=False):
        for config, group in frame[frame["env"] == env].groupby("config", sort=False):
            matrix = group.pivot_table(index="run_id", columns="step", values="return_mean", observed=True)
            steps = matrix.columns.to_numpy()
            mean = np.nanmean(matrix.to_numpy(), axis=0)
            low, high = _bootstrap_mean_band(matrix.to_numpy(), reps=reps)
            style = styles[config]
            ax.plot(steps, mean, color=style["color"], linestyle=style["linestyle"], label=config)
            ax.fill_between(steps, low, high, color=style["color"], alpha=0.15, linewidth=0)
        ax.set_title(env)
        ax.set_xlabel("environment steps")
        ax.xaxis.set_major_formatter(STEPS)
        ax.set_ylabel("evaluation return")
    return _finish(fig, axes, len(envs), " × ".join(factors))


def _interval_position(levels: Sequence[str]) -> dict[str, float]:
    """x positions on a log2 axis: k itself; "episode" one octave-step past the largest k."""
    ks = [int(level) for level in levels if level != EPISODE]
    top = max(ks) if ks else 1
    return {level: (float(level) if level != EPISODE else top * 4.0) for level in levels}


def metric_vs_interval(
    metrics: pd.DataFrame, interval: str, others: Sequence[str], metric: str, reps: int = REPS
) -> Figure:
    """A metric against the sampling interval k (log scale, "episode" as the last tick): IQM
    over seeds with its 95% stratified-bootstrap CI, per env."""
    stats = cell_stats(metrics, metric, ["env", interval, *others], reps=reps)
    levels = [str(level) for level in metrics[interval].cat.categories]
    x = _interval_position(levels)
    stats["x"] = stats[interval].astype(str).map(x)
    stats["config"] = config_label(stats, others)
    envs = list(dict.fromkeys(metrics["env"]))
    styles = config_styles(stats, others)
    fig, axes = _panels(envs)
    for ax, env in zip(axes.flat, envs, strict=False):
        for config, group in stats[stats["env"] == env].groupby("config", sort=False):
            group = group.sort_values("x")
            err = [group["iqm"] - group["iqm_low"], group["iqm_high"] - group["iqm"]]
            ax.errorbar(group["x"], group["iqm"], yerr=err, capsize=3, label=config, **styles[config])
        ax.set_xscale("log", base=2)
        ax.set_xticks(list(x.values()), labels=list(x))
        ax.minorticks_off()
        ax.set_title(env)
        ax.set_xlabel("sampling interval k (steps)")
        ax.set_ylabel(f"{LABELS.get(metric, metric)} (IQM)")
    return _finish(fig, axes, len(envs), " × ".join(others) if others else None)


def factor_comparison(
    metrics: pd.DataFrame, factor: str, others: Sequence[str], metric: str, reps: int = REPS
) -> Figure:
    """A metric per level of one factor (e.g. layer norm on/off), side by side: IQM over
    seeds with 95% bootstrap CIs, per env, one color per combination of the other factors."""
    stats = cell_stats(metrics, metric, ["env", factor, *others], reps=reps)
    stats["config"] = config_label(stats, others)
    present = set(metrics[factor].astype(str))
    levels = [str(level) for level in metrics[factor].cat.categories if str(level) in present]  # runs that ran
    envs = list(dict.fromkeys(metrics["env"]))
    styles = config_styles(stats, others)
    configs = list(styles)
    offsets = np.linspace(-0.15, 0.15, len(configs)) if len(configs) > 1 else [0.0]
    fig, axes = _panels(envs)
    for ax, env in zip(axes.flat, envs, strict=False):
        for offset, config in zip(offsets, configs, strict=True):
            group = stats[(stats["env"] == env) & (stats["config"] == config)]
            xs = [levels.index(str(v)) + offset for v in group[factor]]
            err = [group["iqm"] - group["iqm_low"], group["iqm_high"] - group["iqm"]]
            style = styles[config]
            ax.errorbar(xs, group["iqm"], yerr=err, fmt=style["marker"], capsize=4, color=style["color"], label=config)
        if sum(map(len, levels)) > 40:  # slanted, so that long level names do not run into each other
            ax.set_xticks(range(len(levels)), labels=levels, rotation=30, ha="right")
        else:
            ax.set_xticks(
                range(len(levels)), labels=[textwrap.fill(level, 10, break_long_words=False) for level in levels]
            )
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_title(env)
        ax.set_xlabel(factor)
        ax.set_ylabel(f"{LABELS.get(metric, metric)} (IQM)")
    return _finish(fig, axes, len(envs), " × ".join(others) if others else None)


def tradeoff(metrics: pd.DataFrame, factors: Sequence[str], cost: str = "c_train") -> Figure:
    """Return against smoothness: one point per configuration, mean ± standard error over seeds
    on both axes; up and to the left is better."""
    by = ["env", *factors]
    ret = cell_stats(metrics, "final_return", by, reps=1).set_index(by)
    cst = cell_stats(metrics, cost, by, reps=1).set_index(by)
    stats = ret[["mean", "se"]].join(cst[["mean", "se"]], lsuffix="_return", rsuffix="_cost").reset_index()
    stats["config"] = config_label(stats, factors)
    envs = list(dict.fromkeys(metrics["env"]))
    styles = config_styles(stats, factors)
    fig, axes = _panels(envs)
    for ax, env in zip(axes.flat, envs, strict=False):
        for row in stats[stats["env"] == env].itertuples():
            ax.errorbar(
                row.mean_cost,
                row.mean_return,
                xerr=np.nan_to_num(row.se_cost),
                yerr=np.nan_to_num(row.se_return),
                fmt=styles[row.config]["marker"],
                capsize=3,
                color=styles[row.config]["color"],
                label=row.config,
            )
        ax.set_title(env)
        ax.set_xlabel(f"{LABELS.get(cost, cost)} (lower: smoother)")
        ax.set_ylabel("final return")
    return _finish(fig, axes, len(envs), " × ".join(factors))


DISTANCE_LABELS = {
    "rms": "distance d\n(RMS, actions in [-1, 1])",
    "kl": "distance d\n(KL of softmax Q-values)",
    "mixed": "distance d\n(RMS or KL)",
}


def sigma_trajectories(
    adaptations: pd.DataFrame, factors: Sequence[str], targets: pd.Series, distance: str = "rms"
) -> Figure:
    """σ and the measured distance d over training (median over seeds, IQR band), per
    configuration; dashed lines: the target distance δ of each configuration where fixed.
    `distance` names the measure (a key of DISTANCE_LABELS); NoisyNet's σ is its mean |σ|."""
    frame = adaptations.assign(config=config_label(adaptations, factors))
    frame["delta"] = frame["run_id"].map(targets)
    envs = list(dict.fromkeys(frame["env"]))
    styles = config_styles(frame, factors)
    cols = len(envs)
    fig, axes = plt.subplots(2, cols, figsize=(WIDTH if cols > 1 else WIDTH * 0.62, 2 * PANEL_HEIGHT), squeeze=False)
    for col, env in enumerate(envs):
        for config, group in frame[frame["env"] == env].groupby("config", sort=False):
            for row, value in enumerate(("sigma", "distance")):
                q = group.groupby("step")[value].quantile([0.25, 0.5, 0.75]).unstack()
                ax = axes[row, col]
                color, linestyle = styles[config]["color"], styles[config]["linestyle"]
                ax.plot(q.index, q[0.5], color=color, linestyle=linestyle, label=config)
                ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, linewidth=0)
            for delta in group["delta"].dropna().unique():
                color = "grey" if frame["delta"].nunique() == 1 else styles[config]["color"]
                axes[1, col].axhline(delta, color=color, linestyle="--", linewidth=1)
        axes[0, col].set_title(env)
        noisy_net = frame.loc[frame["env"] == env, "distance"].isna().any()
        axes[0, col].set_ylabel("σ (parameter noise std)" + ("\nNoisyNet: mean |σ|" if noisy_net else ""))
        axes[1, col].set_ylabel(DISTANCE_LABELS[distance])
        axes[1, col].set_xlabel("environment steps")
        axes[1, col].set_yscale("log")
        for ax in axes[:, col]:
            ax.xaxis.set_major_formatter(STEPS)
    drawn = frame["delta"].notna().any()
    _legend(fig, axes, " × ".join(factors) + ("   (dashed: target distance δ)" if drawn else ""))
    fig.tight_layout()
    return fig


def episodes_to_solve_vs_n(
    metrics: pd.DataFrame, n: str, factors: Sequence[str], budget: float, panel: str | None = None
) -> Figure:
    """Episodes until solved against chain length N: median and IQR over seeds; unsolved runs
    count as censored at the budget (hollow markers where the median depends on one, so it is
    only a lower bound). With `panel`, one panel per level of that factor, side by side."""
    lines = [f for f in factors if f != panel]
    frame = metrics.assign(config=config_label(metrics, lines))
    frame["N"] = frame[n].astype(str).astype(float)
    styles = config_styles(frame, lines)
    levels = list(dict.fromkeys(frame.sort_values(panel)[panel])) if panel else [None]
    fig, axes = plt.subplots(
        1, len(levels), figsize=(WIDTH * (1.0 if len(levels) > 1 else 0.8), PANEL_HEIGHT * 1.5), squeeze=False
    )
    for ax, level in zip(axes.flat, levels, strict=True):
        subset = frame if level is None else frame[frame[panel] == level]
        for config, group in subset.groupby("config", sort=False):
            q = (
                group.groupby("N")["episodes_to_solve"]
                .apply(lambda values: censored_quantiles(values, budget))
                .unstack("quantile")
                .sort_index()
            )
            median, censored = q["value"][0.5], q["censored"][0.5].astype(bool)
            style = styles[config]
            ax.plot(q.index, median, color=style["color"], linestyle=style["linestyle"], marker="o", label=config)
            ax.fill_between(q.index, q["value"][0.25], q["value"][0.75], color=style["color"], alpha=0.15, lw=0)
            ax.scatter(
                q.index[censored], median[censored], facecolors="white", edgecolors=style["color"], zorder=3, s=40
            )
        ax.axhline(budget, color="grey", linestyle=":", linewidth=1)
        ax.set_ylim(0, budget * 1.12)
        ax.text(
            0.01, budget * 1.01, "budget", transform=ax.get_yaxis_transform(), va="bottom", fontsize=8, color="grey"
        )
        ax.set_xlabel("chain length N")
        ax.set_ylabel("episodes to solve")
        if level is not None:
            ax.set_title(f"{panel} = {level}")
    title = " × ".join(lines) + "   (hollow marker: the median is only a lower bound)" if lines else None
    return _finish(fig, axes, len(levels), title)


def solved_fraction(metrics: pd.DataFrame, n: str, factors: Sequence[str], budget: float) -> Figure:
    """Fraction of seeds solved by each training episode, one panel per chain length N, one
    line per configuration (runs never solved stay unsolved up to the budget)."""
    frame = metrics.assign(config=config_label(metrics, factors))
    levels = [str(level) for level in dict.fromkeys(frame.sort_values(n)[n])]
    styles = config_styles(frame, factors)
    episodes = np.arange(0, int(budget) + 1)
    fig, axes = _panels([f"N = {level}" for level in levels], height=PANEL_HEIGHT * 0.8)
    for ax, level in zip(axes.flat, levels, strict=False):
        for config, group in frame[frame[n].astype(str) == level].groupby("config", sort=False):
            solved = group["episodes_to_solve"].to_numpy(dtype=float)
            fraction = (solved[None, :] <= episodes[:, None]).mean(axis=1)
            style = styles[config]
            ax.step(episodes, fraction, where="post", color=style["color"], linestyle=style["linestyle"], label=config)
        ax.set_title(f"N = {level}")
        ax.set_ylim(-0.03, 1.03)
        ax.set_xlabel("training episodes")
        ax.set_ylabel("fraction of seeds solved")
    return _finish(fig, axes, len(levels), " × ".join(factors) if factors else None)


def action_traces(traces: pd.DataFrame, factors: Sequence[str], env: str, dim: int = 0) -> Figure:
    """One panel per configuration of `env`: action dimension `dim` over the first training
    episode after warm-up (colored; σ in the title where parameter noise acts) and over the first
    episode of the final evaluation (grey, dashed), for the lowest seed that has both."""
    frame = traces[(traces["env"] == env) & (traces["dim"] == dim)]
    frame = frame.assign(config=config_label(frame, factors))
    configs = [c for c in ordered_configs(frame, factors) if c in set(frame["config"])]
    styles = config_styles(frame, factors)
    cols = min(len(configs), 4)
    rows = int(np.ceil(len(configs) / cols))
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH, 0.8 * PANEL_HEIGHT * rows), squeeze=False, sharey=True)
    for ax, config in zip(axes.flat, configs, strict=False):
        group = frame[frame["config"] == config]
        kinds = group.groupby("seed")["kind"].nunique()
        seed = kinds[kinds == 2].index.min() if (kinds == 2).any() else group["seed"].min()
        train = group[(group["seed"] == seed) & (group["kind"] == "train")].sort_values("t")
        final = group[(group["seed"] == seed) & (group["kind"] == "eval") & (group["point"] == 1.0)].sort_values("t")
        ax.plot(final["t"], final["action"], color="grey", linestyle="--", linewidth=0.9, label="final evaluation")
        ax.plot(train["t"], train["action"], color=styles[config]["color"], linewidth=1.1, label="training")
        sigma = train["sigma"].iloc[0] if len(train) else float("nan")
        title = config.replace(", ", "\n")  # one factor per line
        ax.set_title(title + ("" if np.isnan(sigma) else f"\nσ = {sigma:.3g}"), fontsize="small")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"action[{dim}]")
    for ax in axes.flat[max(0, len(configs) - cols) : len(configs)]:  # the lowest panel of each column
        ax.set_xlabel("step in the episode")
    fig.suptitle(f"{env}: the first training episode after warm-up and the final evaluation episode")
    return _finish(fig, axes, len(configs), "episode")

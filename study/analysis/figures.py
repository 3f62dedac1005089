"""The blog's figures: one style, panels per env, legends naming the levels as the YAML does."""

from __future__ import annotations

import textwrap
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import seaborn as sns
from matplotlib.figure import Figure
from matplotlib.ticker import EngFormatter
from matplotlib.transforms import blended_transform_factory

from study.analysis.aggregates import CONFIDENCE, REPS, cell_stats, censored_quantiles, iqm, score_distribution
from study.analysis.labels import (
    MARKERS,
    config_label,
    config_styles,
    factor_name,
    legend_title,
    level_label,
    ordered_configs,
    palette,
)
from study.analysis.metrics import LABELS

WIDTH = 7.0  # inches: a blog column at 150 dpi
PANEL_HEIGHT = 3.0
STEPS = EngFormatter(sep="")  # step counts as 20k, 1M
EPISODE = "episode"
#: how far apart (in octaves of k, either side) the configurations of an interval figure are drawn
DODGE_OCTAVES = 0.12


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


MANY_CONFIGS = 10  # past this, learning curves are small multiples: one panel per configuration
TITLE_CHARS = 26  # a small multiple's title wraps past this


def _mean_curves(evaluations: pd.DataFrame, reps: int) -> dict[str, tuple[np.ndarray, ...]]:
    """Per configuration: steps, mean over seeds and its 95% bootstrap band."""
    curves = {}
    for config, group in evaluations.groupby("config", sort=False):
        matrix = group.pivot_table(index="run_id", columns="step", values="return_mean", observed=True)
        with warnings.catch_warnings():  # steps some runs never reached (they stopped early)
            warnings.simplefilter("ignore", RuntimeWarning)
            mean = np.nanmean(matrix.to_numpy(), axis=0)
        curves[config] = (matrix.columns.to_numpy(), mean, *_bootstrap_mean_band(matrix.to_numpy(), reps=reps))
    return curves


def coinciding_curves(evaluations: pd.DataFrame, factors: Sequence[str]) -> dict[str, list[list[str]]]:
    """Per env, the sets of configurations whose mean learning curves lie on top of each other
    (equal to 1% of the env's return range at every evaluation): lines a reader cannot tell apart."""
    frame = evaluations.assign(config=config_label(evaluations, factors))
    out = {}
    for env, rows in frame.groupby("env", sort=False):
        curves = {c: pd.Series(mean, index=steps) for c, (steps, mean, *_) in _mean_curves(rows, reps=1).items()}
        span = max(np.nanmax(c.to_numpy()) - np.nanmin(c.to_numpy()) for c in curves.values()) or 1.0
        sets = _equal_sets(
            curves,
            lambda a, b, span=span: a.index.equals(b.index) and np.allclose(a, b, atol=0.01 * span, equal_nan=True),
        )
        if sets:
            out[env] = sets
    return out


def _warmup(ax: plt.Axes, steps: float | None) -> None:
    """Shade the warm-up (random actions, no training) at the left of a learning-curve panel."""
    if steps:
        ax.axvspan(0, steps, color="grey", alpha=0.12, linewidth=0)
        share = steps / ax.get_xlim()[1]
        if share >= 0.03:  # named across where it fits, upright in a narrow band
            upright = share < 0.12
            ax.text(
                steps / 2,
                0.04 if upright else 0.02,
                "warm-up",
                transform=ax.get_xaxis_transform(),
                ha="center",
                va="bottom",
                rotation=90 if upright else 0,
                fontsize=7,
                color="dimgrey",
            )


def _trained_range(curves: dict[str, tuple[np.ndarray, ...]], warmup: float | None) -> tuple[float, float] | None:
    """A y-range that shows the mean curves and their bands after the warm-up (an untrained
    policy's first evaluations may lie far below and would flatten everything else)."""
    values = [band[steps > (warmup or 0)] for steps, *bands in curves.values() for band in bands]
    values = np.concatenate(values) if values else np.array([])
    values = values[np.isfinite(values)]
    if not len(values):
        return None
    low, high = values.min(), values.max()
    pad = 0.08 * (high - low) or max(abs(high), 1.0) * 0.1
    return low - pad, high + pad


def learning_curves(
    evaluations: pd.DataFrame, factors: Sequence[str], reps: int = 500, warmup: dict[str, float] | None = None
) -> Figure:
    """Evaluation return over training steps per configuration: mean over seeds, 95% CI band,
    the warm-up (`warmup`: its steps per env) shaded. Past MANY_CONFIGS configurations, one
    panel per configuration (the others in grey behind it), one row of panels per env."""
    frame = evaluations.assign(config=config_label(evaluations, factors))
    curves = {env: _mean_curves(frame[frame["env"] == env], reps) for env in dict.fromkeys(frame["env"])}
    return _curve_figure(
        curves, config_styles(frame, factors), legend_title(factors), "environment steps", "evaluation return", warmup
    )


PROFILE_POINTS = 400  # thresholds τ per panel
MANY_PROFILES = 4  # past this, one panel per configuration: step functions of a few levels overlap


def _score_profiles(metrics: pd.DataFrame, reps: int) -> dict[str, tuple[np.ndarray, ...]]:
    """Per configuration: thresholds τ spanning the env's final returns, the fraction of runs
    above each and its 95% bootstrap band."""
    returns = metrics["final_return"].to_numpy(dtype=float)
    low, high = returns.min(), returns.max()
    pad = 0.05 * (high - low) or max(abs(high), 1.0) * 0.05
    thresholds = np.linspace(low - pad, high + pad, PROFILE_POINTS)
    return {
        config: (thresholds, *score_distribution(group["final_return"].to_numpy(dtype=float), thresholds, reps))
        for config, group in metrics.groupby("config", sort=False)
    }


def score_distributions(metrics: pd.DataFrame, factors: Sequence[str], reps: int = REPS) -> Figure:
    """Run-score distributions of the final return (rliable's performance profiles): per env, the
    fraction of runs whose final return exceeds τ against τ, one line per configuration with its
    95% bootstrap band; past MANY_PROFILES configurations, one panel per configuration."""
    frame = metrics.dropna(subset=["final_return"])
    frame = frame.assign(config=config_label(frame, factors))
    profiles = {env: _score_profiles(frame[frame["env"] == env], reps) for env in dict.fromkeys(frame["env"])}
    return _curve_figure(
        profiles,
        config_styles(frame, factors),
        legend_title(factors),
        "final return τ",
        "fraction > τ",
        steps=True,
        ylim=(-0.03, 1.03),
        many=MANY_PROFILES,
    )


def coinciding_scores(metrics: pd.DataFrame, factors: Sequence[str]) -> dict[str, list[list[str]]]:
    """Per env, the sets of configurations whose score distributions lie on top of each other:
    as many runs, their sorted final returns equal to 1% of the env's return range."""
    frame = metrics.dropna(subset=["final_return"])
    frame = frame.assign(config=config_label(frame, factors))
    out = {}
    for env, rows in frame.groupby("env", sort=False):
        span = float(np.ptp(rows["final_return"].to_numpy(dtype=float))) or 1.0
        scores = {c: np.sort(g["final_return"].to_numpy(dtype=float)) for c, g in rows.groupby("config", sort=False)}
        sets = _equal_sets(
            scores, lambda a, b, span=span: a.shape == b.shape and np.allclose(a, b, rtol=0, atol=0.01 * span)
        )
        if sets:
            out[env] = sets
    return out


def coinciding_levels(
    runs: pd.DataFrame, factors: Sequence[str], metric: str, scale: pd.DataFrame | None = None
) -> dict[str, list[list[str]]]:
    """Per env, the sets of configurations whose IQM of `metric` is equal to 1% of the env's range
    of it (over `scale`'s runs, `runs` by default): horizontal lines drawn on top of each other."""
    frame = runs.dropna(subset=[metric]).assign(config=lambda f: config_label(f, factors))
    scale = frame if scale is None else scale.dropna(subset=[metric])
    out = {}
    for env, rows in frame.groupby("env", sort=False):
        span = float(np.ptp(scale.loc[scale["env"] == env, metric].to_numpy(dtype=float))) or 1.0
        levels = {c: iqm(g[metric].to_numpy(dtype=float)) for c, g in rows.groupby("config", sort=False)}
        sets = _equal_sets(levels, lambda a, b, span=span: abs(a - b) <= 0.01 * span)
        if sets:
            out[env] = sets
    return out


def _equal_sets(items: dict[str, Any], equal: Callable[[Any, Any], bool]) -> list[list[str]]:
    """Groups of two or more keys whose values are `equal` to the group's first."""
    sets: list[list[str]] = []
    for key, value in items.items():
        for members in sets:
            if equal(value, items[members[0]]):
                members.append(key)
                break
        else:
            sets.append([key])
    return [members for members in sets if len(members) > 1]


def _curve_figure(
    curves: dict[str, dict[str, tuple[np.ndarray, ...]]],
    styles: dict[str, dict[str, object]],
    legend: str,
    xlabel: str,
    ylabel: str,
    warmup: dict[str, float] | None = None,
    steps: bool = False,
    ylim: tuple[float, float] | None = None,
    many: int = MANY_CONFIGS,
) -> Figure:
    """One panel per env of (x, y, band low, band high) curves per configuration, or past
    `many` configurations, one panel per configuration; `steps`: step functions."""
    warmup = warmup or {}
    if max(len(c) for c in curves.values()) > many:
        return _curve_multiples(curves, warmup, xlabel, ylabel, steps, ylim)
    envs = list(curves)
    fig, axes = _panels(envs)
    for ax, env in zip(axes.flat, envs, strict=False):
        for config, (x, mean, low, high) in curves[env].items():
            style = styles[config]
            ax.plot(
                x,
                mean,
                color=style["color"],
                linestyle=style["linestyle"],
                label=config,
                drawstyle="steps-post" if steps else "default",
            )
            ax.fill_between(x, low, high, color=style["color"], alpha=0.15, linewidth=0, step="post" if steps else None)
        _warmup(ax, warmup.get(env))
        limits = ylim or _trained_range(curves[env], warmup.get(env))
        if limits:
            ax.set_ylim(*limits)
        ax.set_title(env)
        ax.set_xlabel(xlabel)
        ax.xaxis.set_major_formatter(STEPS)
        ax.set_ylabel(ylabel)
    return _finish(fig, axes, len(envs), legend)


def _curve_multiples(
    curves: dict[str, dict[str, tuple[np.ndarray, ...]]],
    warmup: dict[str, float],
    xlabel: str,
    ylabel: str,
    steps: bool,
    ylim: tuple[float, float] | None,
) -> Figure:
    cols = 4
    rows_per_env = {env: int(np.ceil(len(c) / cols)) for env, c in curves.items()}
    titles = {
        (env, config): textwrap.fill(config if len(curves) == 1 else f"{env}: {config}", TITLE_CHARS)
        for env, configs in curves.items()
        for config in configs
    }
    height = 1.6 + 0.15 * max(title.count("\n") for title in titles.values())  # inches per row
    rows = sum(rows_per_env.values())
    fig, axes = plt.subplots(rows, cols, figsize=(WIDTH * 1.2, height * rows), squeeze=False)
    drawstyle, step = ("steps-post", "post") if steps else ("default", None)
    row = 0
    for env, configs in curves.items():
        block = list(axes[row : row + rows_per_env[env]].flat)
        limits = ylim or _trained_range(configs, warmup.get(env))
        for ax, (config, (x, mean, low, high)) in zip(block, configs.items(), strict=False):
            for other, (o_x, o_mean, *_) in configs.items():
                if other != config:
                    ax.plot(o_x, o_mean, color="lightgrey", linewidth=0.8, drawstyle=drawstyle)
            ax.plot(x, mean, color="C0", linewidth=1.4, drawstyle=drawstyle)
            ax.fill_between(x, low, high, color="C0", alpha=0.2, linewidth=0, step=step)
            _warmup(ax, warmup.get(env))
            if limits:
                ax.set_ylim(*limits)
            ax.set_title(titles[env, config], fontsize="small")
            ax.xaxis.set_major_formatter(STEPS)
            ax.tick_params(labelsize=7)
        for ax in block[len(configs) :]:
            ax.set_visible(False)
        axes[row, 0].set_ylabel(ylabel, fontsize="small")
        row += rows_per_env[env]
    flat = list(axes.flat)
    for i, ax in enumerate(flat):  # the lowest visible panel of each column
        if ax.get_visible() and (i + cols >= len(flat) or not flat[i + cols].get_visible()):
            ax.set_xlabel(xlabel, fontsize="small")
    fig.tight_layout()
    return fig


def _interval_position(levels: Sequence[str]) -> dict[str, float]:
    """x positions on a log2 axis: k itself; "episode" two octaves past the largest k, apart."""
    ks = [int(level) for level in levels if level != EPISODE]
    top = max(ks) if ks else 1
    return {level: (float(level) if level != EPISODE else top * 4.0) for level in levels}


def metric_vs_interval(
    metrics: pd.DataFrame,
    interval: str,
    others: Sequence[str],
    metric: str,
    reps: int = REPS,
    episode_length: dict[str, str] | None = None,
    baselines: pd.DataFrame | None = None,
    baseline_factors: Sequence[str] = (),
) -> Figure:
    """A metric against the sampling interval k (log scale): IQM over seeds with its 95%
    stratified-bootstrap CI, per env. `episode` (resampling at episode starts only) is drawn
    apart, not joined to the numbers, and labelled with `episode_length` (per env). Configurations
    are drawn side by side at each k, a fraction of an octave apart.
    `baselines`: runs without a sampling interval (rows of `metrics`' layout), drawn as
    horizontal lines at their IQM with its CI as a band, one per combination of `baseline_factors`."""
    stats = cell_stats(metrics, metric, ["env", interval, *others], reps=reps)
    levels = [str(level) for level in metrics[interval].cat.categories]
    x = _interval_position(levels)
    stats["x"] = stats[interval].astype(str).map(x)
    stats["config"] = config_label(stats, others)
    envs = list(dict.fromkeys(metrics["env"]))
    styles = config_styles(stats, others)
    numbers = [level for level in levels if level != EPISODE]
    # configurations side by side at each k (a fraction of an octave apart), so that equal ones stay visible
    offsets = np.linspace(-DODGE_OCTAVES, DODGE_OCTAVES, len(styles)) if len(styles) > 1 else np.zeros(1)
    dodge = dict(zip(styles, offsets, strict=True))
    fig, axes = _panels(envs)
    for ax, env in zip(axes.flat, envs, strict=False):
        for config, group in stats[stats["env"] == env].groupby("config", sort=False):
            group = group.sort_values("x").assign(x=lambda g, c=config: g["x"] * 2.0 ** dodge[c])
            style = styles[config]
            for part, line in (
                (group[group[interval].astype(str) != EPISODE], True),
                (group[group[interval].astype(str) == EPISODE], False),
            ):
                if len(part):
                    err = [part["iqm"] - part["iqm_low"], part["iqm_high"] - part["iqm"]]
                    ax.errorbar(
                        part["x"],
                        part["iqm"],
                        yerr=err,
                        capsize=3,
                        marker=style["marker"],
                        color=style["color"],
                        linestyle=style["linestyle"] if line else "none",
                        label=config if line or not len(numbers) else None,
                    )
        if baselines is not None and len(baselines):
            _baseline_levels(ax, baselines[baselines["env"] == env], baseline_factors, metric, reps, len(styles))
        ax.set_xscale("log", base=2)
        labels = list(x)
        if EPISODE in x:
            length = (episode_length or {}).get(env)
            labels[labels.index(EPISODE)] = EPISODE + (f"\n({length})" if length else "")
            if numbers:
                ax.axvline(x[numbers[-1]] * 2.0, color="grey", linewidth=0.8, linestyle=":")
        ax.set_xticks(list(x.values()), labels=labels)
        ax.minorticks_off()
        ax.set_title(env)
        ax.set_xlabel("sampling interval k (steps)")
        ax.set_ylabel(f"{LABELS.get(metric, metric)} (IQM)")
    return _finish(fig, axes, len(envs), legend_title(others) if others else None)


def _baseline_levels(
    ax: plt.Axes, runs: pd.DataFrame, factors: Sequence[str], metric: str, reps: int, offset: int
) -> None:
    """Each baseline configuration's IQM as a horizontal line, its 95% CI as a bar just right of
    the panel (bands across it would cover each other and the curves)."""
    stats = cell_stats(runs, metric, list(factors), reps=reps) if len(runs) else pd.DataFrame()
    if not len(stats):
        return
    stats["config"] = config_label(stats, factors)
    colors = [_legible(color) for color in palette(offset + len(stats))[offset:]]
    right = blended_transform_factory(ax.transAxes, ax.transData)  # x in the panel's width, y in data
    for i, (color, linestyle, row) in enumerate(
        zip(colors, [":", "-.", (0, (1, 3)), (0, (5, 2))] * 8, stats.itertuples(), strict=False)
    ):
        ax.axhline(row.iqm, color=color, linestyle=linestyle, linewidth=1.6, label=row.config)
        x = 1.02 + 0.018 * i
        ax.plot([x, x], [row.iqm_low, row.iqm_high], color=color, linewidth=2, transform=right, clip_on=False)


def _legible(color: tuple[float, float, float], luminance: float = 0.6) -> tuple[float, float, float]:
    """A color darkened until a thin dotted line of it stands out on white (the palette's yellow)."""
    r, g, b = color
    light = 0.2126 * r + 0.7152 * g + 0.0722 * b
    scale = min(1.0, luminance / light) if light else 1.0
    return (r * scale, g * scale, b * scale)


#: from this many levels on, `factor_comparison` lists the levels down the y axis
MANY_LEVELS = 13
LEVEL_HEIGHT = 0.24  # inches per level, listed down the y axis


def factor_comparison(
    metrics: pd.DataFrame, factor: str, others: Sequence[str], metric: str, reps: int = REPS
) -> Figure:
    """A metric per level of one factor (e.g. layer norm on/off), side by side: IQM over
    seeds with 95% bootstrap CIs, per env, one color per combination of the other factors.
    Many levels (`MANY_LEVELS`) are listed down the y axis, in order, so that their names stay legible."""
    stats = cell_stats(metrics, metric, ["env", factor, *others], reps=reps)
    stats["config"] = config_label(stats, others)
    present = set(metrics[factor].astype(str))
    levels = [str(level) for level in metrics[factor].cat.categories if str(level) in present]  # runs that ran
    envs = list(dict.fromkeys(metrics["env"]))
    styles = config_styles(stats, others)
    configs = list(styles)
    offsets = np.linspace(-0.15, 0.15, len(configs)) if len(configs) > 1 else [0.0]
    down = len(levels) >= MANY_LEVELS
    fig, axes = _panels(envs, height=max(PANEL_HEIGHT, LEVEL_HEIGHT * len(levels) + 1.2) if down else PANEL_HEIGHT)
    names = [level_label(factor, level) for level in levels]
    for ax, env in zip(axes.flat, envs, strict=False):
        for offset, config in zip(offsets, configs, strict=True):
            group = stats[(stats["env"] == env) & (stats["config"] == config)]
            at = [levels.index(str(v)) + offset for v in group[factor]]
            err = [group["iqm"] - group["iqm_low"], group["iqm_high"] - group["iqm"]]
            style = styles[config]
            ax.errorbar(
                group["iqm"] if down else at,
                at if down else group["iqm"],
                **{"xerr" if down else "yerr": err},
                fmt=style["marker"],
                capsize=4,
                color=style["color"],
                label=config,
            )
        ax.set_title(env)
        value = f"{LABELS.get(metric, metric)} (IQM)"
        if down:
            ax.set_yticks(range(len(levels)), labels=names)
            ax.set_ylim(len(levels) - 0.5, -0.5)  # the first level on top
            ax.set_xlabel(value)
            ax.set_ylabel(factor_name(factor))
            continue
        if sum(map(len, names)) > 40:  # slanted, so that long level names do not run into each other
            ax.set_xticks(range(len(levels)), labels=names, rotation=30, ha="right")
        else:
            ax.set_xticks(
                range(len(levels)), labels=[textwrap.fill(name, 10, break_long_words=False) for name in names]
            )
        ax.set_xlim(-0.5, len(levels) - 0.5)
        ax.set_xlabel(factor_name(factor))
        ax.set_ylabel(value)
    return _finish(fig, axes, len(envs), legend_title(others) if others else None)


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
        rows = stats[stats["env"] == env]
        for i, row in enumerate(rows.itertuples()):
            ax.errorbar(
                row.mean_cost,
                row.mean_return,
                xerr=np.nan_to_num(row.se_cost),
                yerr=np.nan_to_num(row.se_return),
                fmt=styles[row.config]["marker"],
                markersize=9 - 3 * i / max(len(rows) - 1, 1),  # later points smaller: a point on top of another
                markerfacecolor="none",  # stays visible inside it
                markeredgewidth=1.6,
                elinewidth=0.8,  # thinner than the marker's edge, which stays visible on its bars
                capsize=3,
                color=styles[row.config]["color"],
                label=row.config,
            )
        log = _cost_scale(ax, rows["mean_cost"])
        ax.set_title(env)
        ax.set_xlabel(f"{LABELS.get(cost, cost)} (mean; lower: smoother)" + (", log scale" if log else ""))
        ax.set_ylabel("final return (mean)")
    return _finish(fig, axes, len(envs), legend_title(factors))


def _cost_scale(ax: plt.Axes, costs: pd.Series) -> bool:
    """A log-scaled cost axis where the costs span more than two decades (symlog where one is 0)."""
    positive = costs[costs > 0]
    if not (len(positive) > 1 and positive.max() / positive.min() > 100):
        return False
    if len(positive) == len(costs):
        ax.set_xscale("log")
    else:  # a cost of exactly 0 (no noise at all) stays on the axis
        ax.set_xscale("symlog", linthresh=float(positive.min()))
    return True


def tradeoff_by_interval(
    k_metrics: pd.DataFrame,
    interval: str,
    lines: Sequence[str],
    baselines: pd.DataFrame,
    baseline_factors: Sequence[str],
    cost: str = "c_train",
    joined: bool = True,
) -> Figure:
    """Return against smoothness with each noise's sampling intervals (each point labelled with
    its k; `joined`: by a line in order of k), and the runs without a k as single points: mean ±
    standard error over seeds on both axes; up and to the left is better."""

    def cells(frame: pd.DataFrame, by: list[str]) -> pd.DataFrame:
        ret = cell_stats(frame, "final_return", by, reps=1).set_index(by)
        cst = cell_stats(frame, cost, by, reps=1).set_index(by)
        return ret[["mean", "se"]].join(cst[["mean", "se"]], lsuffix="_return", rsuffix="_cost").reset_index()

    curves = cells(k_metrics, ["env", *lines, interval])
    curves["config"] = config_label(curves, lines)
    points = cells(baselines, ["env", *baseline_factors]) if len(baselines) else pd.DataFrame()
    if len(points):
        points["config"] = config_label(points, baseline_factors)
    envs = list(dict.fromkeys(k_metrics["env"]))
    styles = config_styles(curves, lines)
    colors = palette(len(styles) + len(points["config"].unique()) if len(points) else len(styles))[len(styles) :]
    fig, axes = _panels(envs)
    placing = []
    for ax, env in zip(axes.flat, envs, strict=False):
        configs = curves[curves["env"] == env].groupby("config", sort=False)
        labels: list[tuple[str, tuple[float, float], Any, int]] = []
        for i, (config, group) in enumerate(configs):
            group = group.sort_values(interval)
            style = styles[config]
            ax.errorbar(
                group["mean_cost"],
                group["mean_return"],
                xerr=group["se_cost"].fillna(0),
                yerr=group["se_return"].fillna(0),
                color=style["color"],
                marker=style["marker"],
                markersize=9 - 3 * i / max(len(configs) - 1, 1),  # as in `tradeoff`: points on top of
                markerfacecolor="none",  # each other stay visible
                markeredgewidth=1.6,
                elinewidth=0.8,
                linestyle=style["linestyle"] if joined else "none",
                capsize=2,
                label=config,
            )
            for row in group.itertuples():
                text = "ep" if str(getattr(row, interval)) == EPISODE else str(getattr(row, interval))
                labels.append((text, (row.mean_cost, row.mean_return), style["color"], i % 2))
        env_points = points[points["env"] == env] if len(points) else points
        for color, marker, row in zip(colors, MARKERS * 4, env_points.itertuples(), strict=False):
            ax.errorbar(
                row.mean_cost,
                row.mean_return,
                xerr=np.nan_to_num(row.se_cost),
                yerr=np.nan_to_num(row.se_return),
                fmt=marker,
                markerfacecolor="none",
                markeredgewidth=1.6,
                elinewidth=0.8,
                capsize=3,
                color=color,
                label=row.config,
            )
        costs = pd.concat([curves.loc[curves["env"] == env, "mean_cost"], env_points.get("mean_cost", pd.Series())])
        log = _cost_scale(ax, costs)
        ax.set_title(env)
        ax.set_xlabel(f"{LABELS.get(cost, cost)} (mean; lower: smoother)" + (", log scale" if log else ""))
        ax.set_ylabel("final return (mean)")
        shown = pd.concat([curves[curves["env"] == env], env_points])
        drawn = shown[["mean_cost", "mean_return", "se_cost", "se_return"]].fillna(0)
        placing.append((ax, labels, list(drawn.itertuples(index=False, name=None))))
    fig = _finish(fig, axes, len(envs), legend_title(lines) + "   (numbers: the sampling interval k)")
    for ax, labels, drawn_points in placing:  # in the final layout
        place_labels(ax, labels, drawn_points)
    return fig


#: where a point's label may go, in points from the point (its lower left corner; a negative x
#: puts its right end there, 0 centres it): right above, right below, left above, left below,
#: centred above, centred below
LABEL_SPOTS = ((4, 4), (4, -10), (-4, 4), (-4, -10), (0, 7), (0, -14))
LABEL_SIZE = 7  # points
MARKER_RADIUS = 5  # points, with the error bars' caps


Box = tuple[float, float, float, float]


def _label_box(x: float, y: float, spot: tuple[float, float], width: float) -> Box:
    """The box (in points) of a label of `width` at `spot` from the point (x, y)."""
    left = x + (spot[0] - width if spot[0] < 0 else spot[0] - width / 2 if spot[0] == 0 else spot[0])
    return left, y + spot[1], left + width, y + spot[1] + LABEL_SIZE


def _obstacle_boxes(ax: plt.Axes, x: float, y: float, xerr: float, yerr: float, scale: float) -> list[Box]:
    """The boxes (in points) a point's marker and error bars cover."""

    def at(px: float, py: float) -> np.ndarray:
        xy = ax.transData.transform((px, py)) * scale
        return xy if np.isfinite(xy).all() else ax.transData.transform((x, y)) * scale

    cx, cy = at(x, y)
    left, right = at(x - xerr, y)[0], at(x + xerr, y)[0]
    low, high = at(x, y - yerr)[1], at(x, y + yerr)[1]
    r, bar = MARKER_RADIUS, 1.5
    return [(cx - r, cy - r, cx + r, cy + r), (cx - bar, low, cx + bar, high), (left, cy - bar, right, cy + bar)]


def place_labels(
    ax: plt.Axes,
    labels: Sequence[tuple[str, tuple[float, float], Any, int]],
    points: Sequence[tuple[float, float, float, float]],
) -> list[Box]:
    """Annotate points with small labels (text, (x, y), color, index of the spot to try first),
    each at the first of `LABEL_SPOTS` where it covers the fewest markers and error bars of
    `points` ((x, y, x error, y error); its own marker aside) and labels placed before; returns
    the labels' boxes, in points."""
    ax.autoscale_view()
    scale = 72 / ax.figure.dpi
    obstacles = [_obstacle_boxes(ax, *point, scale) for point in points]
    boxes: list[Box] = []
    for text, xy, color, first in labels:
        x, y = ax.transData.transform(xy) * scale
        covered = [
            box
            for boxes_of_point in obstacles
            for j, box in enumerate(boxes_of_point)
            if j or abs((box[0] + box[2]) / 2 - x) > 1e-6 or abs((box[1] + box[3]) / 2 - y) > 1e-6
        ]

        def clashes(b: Box, covered: list[Box] = covered) -> int:
            return sum(b[0] < o[2] and o[0] < b[2] and b[1] < o[3] and o[1] < b[3] for o in covered + boxes)

        spots = [LABEL_SPOTS[first], *(spot for spot in LABEL_SPOTS if spot != LABEL_SPOTS[first])]
        candidates = [_label_box(x, y, spot, 0.65 * LABEL_SIZE * len(text)) for spot in spots]
        chosen = min(candidates, key=clashes)  # the first of the least covered
        boxes.append(chosen)
        offset = (chosen[0] - x, chosen[1] - y)
        ax.annotate(text, xy, textcoords="offset points", xytext=offset, fontsize=LABEL_SIZE, color=color)
    return boxes


DISTANCE_LABELS = {
    "rms": "distance d\n(RMS, actions in [-1, 1])",
    "kl": "distance d\n(KL of softmax Q-values)",
    "policy-kl": "distance d\n(KL of the Gaussian policies)",
    "policy-rms": "distance d\n(RMS of the policy means)",
    "mixed": "distance d\n(RMS or KL)",
}


def _smooth(values: pd.Series, points: int = 40) -> pd.Series:
    """A centered running mean over about 1/points of the series (the measured distance of one
    adaptation is one batch's: noisy)."""
    window = max(1, len(values) // points)
    return values.rolling(window, center=True, min_periods=1).mean()


def sigma_trajectories(
    adaptations: pd.DataFrame,
    factors: Sequence[str],
    targets: pd.Series,
    distance: str = "rms",
    columns: str | None = None,
) -> Figure:
    """σ and the measured distance d over training (median over seeds, IQR band; d smoothed
    by a running mean), per configuration; wide pale lines: the target distance δ of each
    configuration where fixed; σ on a log scale where it spans more than a decade. One column
    of panels per env, or with `columns` per level of that factor (e.g. the chain length).
    `distance` names the measure (a key of DISTANCE_LABELS); NoisyNet's σ is its mean |σ|."""
    lines = [f for f in factors if f != columns]
    frame = adaptations.assign(config=config_label(adaptations, lines))
    frame["delta"] = frame["run_id"].map(targets)
    frame["panel"] = (
        frame["env"] if columns is None else frame["env"].astype(str) + "\n" + config_label(frame, [columns])
    )
    if columns is not None and frame["env"].nunique() == 1:
        frame["panel"] = config_label(frame, [columns])
    ordered = frame if columns is None else frame.sort_values(columns, kind="stable")  # YAML order of the levels
    panels = list(dict.fromkeys(ordered["panel"]))
    styles = config_styles(frame, lines)
    cols = len(panels)
    width = WIDTH * (1.5 if cols > 4 else 1.0 if cols > 1 else 0.62)
    fig, axes = plt.subplots(
        2, cols, figsize=(width, 2 * PANEL_HEIGHT), squeeze=False, sharey="row" if columns else False
    )
    for col, panel in enumerate(panels):
        for config, group in frame[frame["panel"] == panel].groupby("config", sort=False):
            for row, value in enumerate(("sigma", "distance")):
                q = group.groupby("step")[value].quantile([0.25, 0.5, 0.75]).unstack()
                if value == "distance":
                    q = q.apply(_smooth)
                ax = axes[row, col]
                color, linestyle = styles[config]["color"], styles[config]["linestyle"]
                ax.plot(q.index, q[0.5], color=color, linestyle=linestyle, label=config)
                ax.fill_between(q.index, q[0.25], q[0.75], color=color, alpha=0.15, linewidth=0)
            for delta in group["delta"].dropna().unique():
                color = "grey" if frame["delta"].nunique() == 1 else styles[config]["color"]
                axes[1, col].axhline(delta, color=color, linewidth=5, alpha=0.25, solid_capstyle="butt")
        axes[0, col].set_title(panel)
        if cols <= 4:
            axes[1, col].set_xlabel("environment steps")
        axes[1, col].set_yscale("log")
        sigmas = frame.loc[frame["panel"] == panel, "sigma"]
        if (sigmas > 0).any() and sigmas.max() > 10 * sigmas[sigmas > 0].min():  # σ adapted over decades
            axes[0, col].set_yscale("log")
        for ax in axes[:, col]:
            ax.xaxis.set_major_formatter(STEPS)
            if cols > 4:
                ax.tick_params(labelsize=7)
    noisy_net = frame["distance"].isna().any()
    axes[0, 0].set_ylabel("σ (parameter noise std)" + ("\nNoisyNet: mean |σ|" if noisy_net else ""))
    axes[1, 0].set_ylabel(DISTANCE_LABELS[distance] + "\n(running mean)")
    if cols > 4:
        fig.supxlabel("environment steps", y=0.0, fontsize="medium")
    drawn = frame["delta"].notna().any()
    _legend(fig, axes, legend_title(lines) + ("   (wide pale line: target distance δ)" if drawn else ""))
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
            ax.set_title(level_label(panel, level, first=False))
    title = legend_title(lines) + "   (hollow marker: the median is only a lower bound)" if lines else None
    return _finish(fig, axes, len(levels), title)


def solved_fraction(
    metrics: pd.DataFrame, n: str, factors: Sequence[str], budget: float, panel: str | None = None
) -> Figure:
    """Fraction of seeds solved by each training episode, one panel per chain length N, one
    line per configuration (runs never solved stay unsolved up to the budget). With `panel`,
    one row of panels per level of that factor."""
    lines = [f for f in factors if f != panel]
    frame = metrics.assign(config=config_label(metrics, lines))
    levels = [str(level) for level in dict.fromkeys(frame.sort_values(n)[n])]
    rows = list(dict.fromkeys(frame.sort_values(panel)[panel])) if panel else [None]
    styles = config_styles(frame, lines)
    episodes = np.arange(0, int(budget) + 1)
    if panel:
        fig, axes = plt.subplots(
            len(rows), len(levels), figsize=(WIDTH * 1.5, PANEL_HEIGHT * 0.8 * len(rows)), squeeze=False, sharey=True
        )
    else:
        fig, axes = _panels([f"N = {level}" for level in levels], height=PANEL_HEIGHT * 0.8)
    for r, row in enumerate(rows):
        subset = frame if row is None else frame[frame[panel] == row]
        for c, level in enumerate(levels):
            ax = axes[r, c] if panel else axes.flat[c]
            for config, group in subset[subset[n].astype(str) == level].groupby("config", sort=False):
                solved = group["episodes_to_solve"].to_numpy(dtype=float)
                fraction = (solved[None, :] <= episodes[:, None]).mean(axis=1)
                style = styles[config]
                ax.step(
                    episodes, fraction, where="post", color=style["color"], linestyle=style["linestyle"], label=config
                )
            if r == 0:
                ax.set_title(f"N = {level}", fontsize="small")
            ax.set_ylim(-0.03, 1.03)
            ax.xaxis.set_major_formatter(STEPS)
            if panel is None:
                ax.set_xlabel("training episodes")
                ax.set_ylabel("fraction of seeds solved")
    if panel:
        for ax, row in zip(axes[:, 0], rows, strict=True):
            ax.set_ylabel(f"{level_label(panel, row, first=False)}\nfraction solved")
        for ax in axes.flat:
            ax.tick_params(labelsize=7)
        fig.supxlabel("training episodes", y=0.0, fontsize="medium")
    return _finish(fig, axes, len(levels) * len(rows), legend_title(lines) if lines else None)


def action_traces(traces: pd.DataFrame, factors: Sequence[str], env: str, dim: int = 0) -> Figure:
    """One panel per configuration of `env`: action dimension `dim` over the first training
    episode after warm-up (in one strong color, as the small multiples of learning curves draw
    theirs; σ in the title where parameter noise acts) and over the first episode of the final
    evaluation (grey, dashed), for the lowest seed that has both."""
    frame = traces[(traces["env"] == env) & (traces["dim"] == dim)]
    frame = frame.assign(config=config_label(frame, factors))
    configs = [c for c in ordered_configs(frame, factors) if c in set(frame["config"])]
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
        ax.plot(train["t"], train["action"], color="C0", linewidth=1.1, label="training")
        sigma = train["sigma"].iloc[0] if len(train) else float("nan")
        title = config.replace(", ", "\n")  # one factor per line
        ax.set_title(title + ("" if np.isnan(sigma) else f"\nσ = {sigma:.3g}"), fontsize="small")
    for ax in axes[:, 0]:
        ax.set_ylabel(f"action[{dim}]")
    for ax in axes.flat[max(0, len(configs) - cols) : len(configs)]:  # the lowest panel of each column
        ax.set_xlabel("step in the episode")
    fig.suptitle(f"{env}: the first training episode after warm-up and the final evaluation episode")
    _finish(fig, axes, len(configs), "episode")
    fig.tight_layout(rect=(0, 0, 1, 1 - 0.4 / fig.get_figheight()))  # the title's 0.4 inch above the panels
    return fig

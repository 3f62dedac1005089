"""Names for the configurations of a study: a row's combination of factor levels."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

ALL_RUNS = "all runs"


def config_label(frame: pd.DataFrame, factors: Sequence[str]) -> pd.Series:
    """A readable label per row for its combination of factor levels, as the YAML names them."""
    if not factors:
        return pd.Series(ALL_RUNS, index=frame.index)
    if len(factors) == 1:
        return frame[factors[0]].astype(str)
    label = f"{factors[0]}=" + frame[factors[0]].astype(str)
    for factor in factors[1:]:
        label = label + f", {factor}=" + frame[factor].astype(str)
    return label


def ordered_configs(frame: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """The configuration labels present in `frame`, in the YAML order of the factor levels."""
    if not factors:
        return [ALL_RUNS]
    return list(config_label(_combinations(frame, factors), factors))


def _combinations(frame: pd.DataFrame, factors: Sequence[str]) -> pd.DataFrame:
    """The distinct combinations of factor levels in `frame`, in YAML order."""
    return frame[list(factors)].drop_duplicates().sort_values(list(factors))


LINESTYLES = ["-", "--", ":", "-."]
MARKERS = ["o", "s", "D", "^", "v", "P", "X", "*"]


def palette(n: int) -> list[tuple[float, float, float]]:
    """Distinct colors for n levels: the colorblind palette, or an ordered one past six."""
    import seaborn as sns

    return sns.color_palette("colorblind", n) if n <= 6 else sns.color_palette("viridis", n)


def config_styles(frame: pd.DataFrame, factors: Sequence[str]) -> dict[str, dict[str, object]]:
    """Matplotlib style per configuration label: color from the first factor's level, line
    style and marker from the second's, and the color's shade (dark to light) from the
    remaining factors' levels (or one color per configuration when the second factor has
    more levels than there are line styles)."""
    configs = ordered_configs(frame, factors)
    if len(factors) < 2:
        colors = palette(len(configs))
        return {
            c: {"color": colors[i], "linestyle": "-", "marker": MARKERS[i % len(MARKERS)]}
            for i, c in enumerate(configs)
        }
    ordered = _combinations(frame, factors)
    first = list(dict.fromkeys(ordered[factors[0]].astype(str)))
    second = list(dict.fromkeys(ordered[factors[1]].astype(str)))
    if len(second) > len(LINESTYLES):
        colors = palette(len(configs))
        return {
            c: {"color": colors[i], "linestyle": "-", "marker": MARKERS[i % len(MARKERS)]}
            for i, c in enumerate(configs)
        }
    colors = palette(len(first))
    rest = config_label(ordered, factors[2:]).tolist() if len(factors) > 2 else [""] * len(ordered)
    shades = list(dict.fromkeys(rest))
    styles = {}
    for label, (_, row), level in zip(config_label(ordered, factors), ordered.iterrows(), rest, strict=True):
        a, b = first.index(str(row[factors[0]])), second.index(str(row[factors[1]]))
        color = shade(colors[a], shades.index(level), len(shades))
        styles[label] = {"color": color, "linestyle": LINESTYLES[b], "marker": MARKERS[b]}
    return styles


def shade(color: tuple[float, float, float], i: int, n: int) -> tuple[float, float, float]:
    """The i-th of n shades of `color`, from darker (i = 0) to lighter (i = n - 1)."""
    if n == 1:
        return color
    t = i / (n - 1)
    rgb = np.asarray(color, dtype=float)
    dark, light = 0.5 * rgb, rgb + 0.6 * (1 - rgb)
    return tuple(float(v) for v in (1 - t) * dark + t * light)

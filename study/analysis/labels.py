"""Names for the configurations of a study: a row's combination of factor levels."""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from contextvars import ContextVar

import numpy as np
import pandas as pd

ALL_RUNS = "all runs"


SYMBOLS = {"interval": "k", "n": "N", "chain_length": "N", "target_distance": "δ", "initial_sigma": "σ₀", "beta": "β"}
NAMING_FACTORS = ("method", "noise", "algo", "exploration")  # factors whose levels name themselves


def factor_name(factor: str) -> str:
    """How a reader names a factor: its symbol (k, N, δ) or its words."""
    short = factor.rsplit(".", 1)[-1]
    return SYMBOLS.get(short, short.replace("_", " "))


_NAMES: ContextVar[Mapping[str, Mapping[str, str]] | None] = ContextVar("level_names", default=None)


@contextmanager
def level_names(names: Mapping[str, Mapping[str, str]]) -> Iterator[None]:
    """Within the block, levels that `names` lists (factor → level → name) are called by that
    name in every label, legend and table (a study file's `labels`)."""
    token = _NAMES.set(names)
    try:
        yield
    finally:
        _NAMES.reset(token)


GREEK = {"sigma": "σ", "delta": "δ", "beta": "β", "alpha": "α", "epsilon": "ε"}


def _spelled(text: str) -> str:
    """A label's `name=value` parts, Greek names and abbreviations as readers write them: "fixed
    sigma=0.05" → "fixed σ = 0.05", "epsilon-greedy" → "ε-greedy", "ez-greedy" → "εz-greedy",
    "param noise" → "parameter noise"."""
    text = re.sub(r"\b(\w+)=(?=\S)", lambda m: f"{GREEK.get(m[1], m[1])} = ", text)
    text = re.sub(r"\bparam noise\b", "parameter noise", text)
    return re.sub(r"\b(epsilon|ez)-", lambda m: "ε-" if m[1] == "epsilon" else "εz-", text)


def level_label(factor: str, level: object, first: bool = True) -> str:
    """A level as readers name it: "k = 8", "layer norm on", "uniform replay", "ε-greedy", "δ = 0.2";
    or as the `level_names` in force name it."""
    if (given := (_NAMES.get() or {}).get(factor, {}).get(str(level))) is not None:
        return given
    text, name = _spelled(str(level)), factor_name(factor)
    if text.lower() in ("true", "false"):
        return f"{name} {'on' if text.lower() == 'true' else 'off'}"
    if _numeric(text) or name in SYMBOLS.values():
        return f"{name} = {text}"
    if first or factor.rsplit(".", 1)[-1] in NAMING_FACTORS or " = " in text:  # "δ = 0.2" names itself
        return text
    return f"{text} {name}"


def _numeric(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


def config_label(frame: pd.DataFrame, factors: Sequence[str]) -> pd.Series:
    """A readable label per row for its combination of factor levels ("ε-greedy, uniform replay, N = 20")."""
    if not factors:
        return pd.Series(ALL_RUNS, index=frame.index)
    parts = [
        frame[factor].astype(str).map(lambda level, f=factor, i=i: level_label(f, level, first=i == 0))
        for i, factor in enumerate(factors)
    ]
    label = parts[0]
    for part in parts[1:]:
        label = label + ", " + part
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
    """Distinct colors for n levels: the colorblind palette's ten, then tab20's lighter ones, cycled
    (styles past ten also change the line style and marker)."""
    import seaborn as sns

    blind = sns.color_palette("colorblind", 10)
    blind = [blind[i] for i in (0, 1, 2, 4, 3, 5, 6, 7, 8, 9)]  # vermillion fifth: it is hard to tell from orange
    colors = blind + sns.color_palette("tab20", 20)[1::2]
    return [colors[i % len(colors)] for i in range(n)]


def config_styles(frame: pd.DataFrame, factors: Sequence[str]) -> dict[str, dict[str, object]]:
    """Matplotlib style per configuration label: color from the first factor's level, line
    style and marker from the second's, and the color's shade (dark to light) from the
    remaining factors' levels (or one color per configuration when the second factor has
    more levels than there are line styles)."""
    if len(factors) == 1:  # every level of the study, so that a level has one color in every figure
        return _one_style_each([level_label(factors[0], level) for level in _levels(frame, factors[0])])
    if not factors:
        return _one_style_each([ALL_RUNS])
    configs = ordered_configs(frame, factors)
    ordered = _combinations(frame, factors)
    first, second = _levels(frame, factors[0]), _levels(frame, factors[1])
    if len(second) > len(LINESTYLES):
        return _one_style_each(configs)
    colors = palette(len(first))
    rest = config_label(ordered, factors[2:]).tolist() if len(factors) > 2 else [""] * len(ordered)
    shades = list(dict.fromkeys(rest))
    styles = {}
    for label, (_, row), level in zip(config_label(ordered, factors), ordered.iterrows(), rest, strict=True):
        a, b = first.index(str(row[factors[0]])), second.index(str(row[factors[1]]))
        color = shade(colors[a], shades.index(level), len(shades))
        styles[label] = {"color": color, "linestyle": LINESTYLES[b], "marker": MARKERS[b]}
    return styles


def _levels(frame: pd.DataFrame, factor: str) -> list[str]:
    """A factor's levels in YAML order: all of the study's where the column is categorical (as the
    run table's factors are), else those present."""
    column = frame[factor]
    levels = column.cat.categories if isinstance(column.dtype, pd.CategoricalDtype) else column.drop_duplicates()
    return [str(level) for level in levels]


def _one_style_each(configs: Sequence[str]) -> dict[str, dict[str, object]]:
    """A color per configuration; past ten, the line style changes with each round of colors."""
    colors = palette(len(configs))
    return {
        c: {
            "color": colors[i],
            "linestyle": LINESTYLES[(i // 10) % len(LINESTYLES)],
            "marker": MARKERS[i % len(MARKERS)],
        }
        for i, c in enumerate(configs)
    }


def legend_title(factors: Sequence[str]) -> str:
    """The legend's title: the factors, as readers name them."""
    return " × ".join(factor_name(f) for f in factors)


def shade(color: tuple[float, float, float], i: int, n: int) -> tuple[float, float, float]:
    """The i-th of n shades of `color`, from darker (i = 0) to lighter (i = n - 1)."""
    if n == 1:
        return color
    t = i / (n - 1)
    rgb = np.asarray(color, dtype=float)
    dark, light = 0.5 * rgb, rgb + 0.6 * (1 - rgb)
    return tuple(float(v) for v in (1 - t) * dark + t * light)

"""Results tables in the layout of the gSDE paper's Table 1: rows = exploration configurations,
columns = envs, cells "return ± s.e. / C", the best return of each column in bold; and the
episodes-to-solve table of chain studies (rows = configurations, columns = chain length N)."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from study.analysis.aggregates import cell_stats, censored_quantiles
from study.analysis.labels import config_label, ordered_configs


def _cells(metrics: pd.DataFrame, factors: Sequence[str], cost: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    by = ["env", *factors]
    ret = cell_stats(metrics, "final_return", by, reps=1).set_index(by)
    cst = cell_stats(metrics, cost, by, reps=1).set_index(by)["mean"].rename("cost")
    cells = ret.join(cst).reset_index()
    cells["config"] = config_label(cells, factors)
    return cells, ordered_configs(cells, factors), list(dict.fromkeys(metrics["env"]))


def fmt(value: float, digits: int = 0) -> str:
    """`value` to `digits` decimals: "–" where missing, never "-0"."""
    return "–" if pd.isna(value) else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0"


def decimals(se: float, mean: float) -> int:
    """Decimals that show a standard error to two significant digits (a mean without one, or
    with one too small to show beside it, to three)."""
    shown = pd.notna(se) and se > 0 and (pd.isna(mean) or se > 1e-6 * abs(mean))
    scale = se if shown else abs(mean) / 10 if pd.notna(mean) and mean != 0 else 10.0
    return int(min(6, max(0, 1 - np.floor(np.log10(scale)))))


def fmt_se(se: float, digits: int) -> str:
    """A standard error at `digits` decimals; "0" where it rounds to nothing (every seed alike)."""
    return fmt(se, digits) if pd.isna(se) or round(se, digits) != 0 else "0"


def mean_se(mean: float, se: float) -> str:
    """ "mean ± se" at the standard error's precision: −116 ± 15, 94.49 ± 0.05, −0.0025 ± 0.0015."""
    digits = decimals(se, mean)
    return fmt(mean, digits) + ("" if pd.isna(se) else f" ± {fmt_se(se, digits)}")


def significant(value: float, digits: int = 3) -> str:
    """A value to `digits` significant digits, trailing zeros kept: 22.1, 20.0, 0.360, 8.00e-09 (and 0)."""
    if pd.isna(value):
        return "–"
    return "0" if value == 0 else f"{value + 0.0:#.{digits}g}".rstrip(".")


def tied_best(mean: pd.Series, se: pd.Series, z: float = 1.96) -> pd.Series:
    """The configurations whose mean ± z·se interval overlaps the best one's: bests that cannot be
    told apart. None when every configuration is tied (the column distinguishes nothing)."""
    top = mean.idxmax()
    spread = se.fillna(0.0) * z
    tied = mean + spread >= mean[top] - spread[top]
    return tied if len(mean) > 1 and not tied.all() else pd.Series(False, index=mean.index)


def results_table(metrics: pd.DataFrame, factors: Sequence[str], cost: str = "c_train") -> pd.DataFrame:
    """The table as strings (config × env): "return ± s.e. / C", with a `best` mask for the
    returns to set in bold (the tied bests of each column, `tied_best`)."""
    cells, configs, envs = _cells(metrics, factors, cost)
    table = pd.DataFrame("", index=configs, columns=envs)
    best = pd.DataFrame(False, index=configs, columns=envs)
    for env in envs:
        column = cells[cells["env"] == env].set_index("config")
        for config, row in column.iterrows():
            table.loc[config, env] = f"{mean_se(row['mean'], row['se'])} / {significant(row['cost'])}"
        best.loc[column.index, env] = tied_best(column["mean"], column["se"])
    table.attrs["best"] = best
    return table


def solve_table(metrics: pd.DataFrame, n: str, factors: Sequence[str], budget: float) -> pd.DataFrame:
    """Episodes to solve as strings (config × N): "median [q1, q3] (solved/seeds · k init)" over
    seeds, with unsolved runs censored at `budget` and "≥" on a quantile that depends on one, and
    k the runs whose untrained greedy policy was already optimal at the first evaluation (where
    recorded). In bold, per N: the lowest median and each median whose interquartile range
    overlaps its own (none where every configuration's does, or where one alone is listed)."""
    keys = ["env", *factors] if metrics["env"].nunique() > 1 else list(factors)
    frame = metrics.assign(config=config_label(metrics, keys))
    configs = ordered_configs(frame, keys)
    levels = [str(level) for level in dict.fromkeys(frame.sort_values(n)[n])]
    columns = [f"N = {level}" for level in levels]
    table = pd.DataFrame("", index=configs, columns=columns)
    medians = pd.DataFrame(float("nan"), index=configs, columns=columns)
    lows, highs = medians.copy(), medians.copy()
    for (config, level), group in frame.groupby(["config", frame[n].astype(str)], observed=True):
        q = censored_quantiles(group["episodes_to_solve"], budget)
        value = [("≥ " if row.censored else "") + f"{row.value:.0f}" for row in q.itertuples()]
        solved = int(group["episodes_to_solve"].notna().sum())
        column = f"N = {level}"
        init = ""
        if "optimal_at_init" in group and group["optimal_at_init"].notna().any():
            init = f" · {int(group['optimal_at_init'].fillna(False).astype(bool).sum())} init"
        table.loc[config, column] = f"{value[1]} [{value[0]}, {value[2]}] ({solved}/{len(group)}{init})"
        if not q["censored"][0.5]:
            medians.loc[config, column] = q["value"][0.5]
            lows.loc[config, column] = q["value"][0.25]
            highs.loc[config, column] = np.inf if q["censored"][0.75] else q["value"][0.75]
    tied = pd.DataFrame(False, index=configs, columns=columns)
    for column in columns:
        known = medians[column].dropna()
        if known.empty:  # no configuration solves half its runs
            continue
        best = known.idxmin()
        overlap = (lows[column] <= highs.loc[best, column]) & (highs[column] >= lows.loc[best, column])
        if overlap.sum() < len(configs):  # some configuration is told apart from the best
            tied[column] = overlap
    table.attrs["best"] = tied
    return table


def to_markdown(table: pd.DataFrame, corner: str = "configuration") -> str:
    best = table.attrs["best"]
    lines = [
        "| " + " | ".join([corner, *table.columns]) + " |",
        "|" + "---|" * (len(table.columns) + 1),
    ]
    for config, row in table.iterrows():
        cells = [_bold(v, "**{}**") if best.loc[config, env] and v else (v or "–") for env, v in row.items()]
        lines.append("| " + " | ".join([str(config), *cells]) + " |")
    return "\n".join(lines) + "\n"


def _bold(cell: str, style: str) -> str:
    """`cell` in bold, but for a cost after " / " (bold is for the return's rule alone)."""
    value, sep, cost = cell.partition(" / ")
    return style.format(value) + sep + cost


def _tex(text: str) -> str:
    for char, escaped in (("\\", r"\textbackslash{}"), ("_", r"\_"), ("%", r"\%"), ("&", r"\&"), ("#", r"\#")):
        text = text.replace(char, escaped)
    return (
        text.replace("±", r"$\pm$")
        .replace("–", "--")
        .replace("σ", r"$\sigma$")
        .replace("≥", r"$\geq$")
        .replace("δ", r"$\delta$")
    )


def to_latex(table: pd.DataFrame, caption: str, corner: str = "configuration") -> str:
    best = table.attrs["best"]
    lines = [
        r"\begin{table}[t]",
        r"\centering",
        rf"\caption{{{_tex(caption)}}}",
        r"\begin{tabular}{l" + "c" * len(table.columns) + "}",
        r"\toprule",
        " & ".join([_tex(corner), *map(_tex, table.columns)]) + r" \\",
        r"\midrule",
    ]
    for config, row in table.iterrows():
        cells = [
            _bold(_tex(v), r"\textbf{{{}}}") if best.loc[config, env] and v else _tex(v or "–")
            for env, v in row.items()
        ]
        lines.append(" & ".join([_tex(str(config)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"

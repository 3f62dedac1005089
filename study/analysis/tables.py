"""Results tables in the layout of the gSDE paper's Table 1: rows = exploration configurations,
columns = envs, cells "return ± s.e. / C", the best return of each column in bold; and the
episodes-to-solve table of chain studies (rows = configurations, columns = chain length N)."""

from __future__ import annotations

from collections.abc import Sequence

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


def _fmt(value: float, digits: int = 0) -> str:
    return "–" if pd.isna(value) else f"{round(value, digits) + 0.0:.{digits}f}"  # + 0.0: no "-0"


def results_table(metrics: pd.DataFrame, factors: Sequence[str], cost: str = "c_train") -> pd.DataFrame:
    """The table as strings (config × env), with a `best` mask for the bold cells."""
    cells, configs, envs = _cells(metrics, factors, cost)
    table = pd.DataFrame("", index=configs, columns=envs)
    best = pd.DataFrame(False, index=configs, columns=envs)
    for env in envs:
        column = cells[cells["env"] == env]
        top = column["mean"].max()
        for row in column.itertuples():
            table.loc[row.config, env] = f"{_fmt(row.mean)} ± {_fmt(row.se)} / {_fmt(row.cost, 2)}"
            best.loc[row.config, env] = row.mean == top
    table.attrs["best"] = best
    return table


def solve_table(metrics: pd.DataFrame, n: str, factors: Sequence[str], budget: float) -> pd.DataFrame:
    """Episodes to solve as strings (config × N): "median [q1, q3] (solved/seeds · k init)" over
    seeds, with unsolved runs censored at `budget` and "≥" on a quantile that depends on one, and
    k the runs whose untrained greedy policy was already optimal at the first evaluation (where
    recorded); the lowest median of each N in bold."""
    keys = ["env", *factors] if metrics["env"].nunique() > 1 else list(factors)
    frame = metrics.assign(config=config_label(metrics, keys))
    configs = ordered_configs(frame, keys)
    levels = [str(level) for level in dict.fromkeys(frame.sort_values(n)[n])]
    columns = [f"N = {level}" for level in levels]
    table = pd.DataFrame("", index=configs, columns=columns)
    medians = pd.DataFrame(float("nan"), index=configs, columns=columns)
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
    table.attrs["best"] = medians.eq(medians.min()) & medians.notna()
    return table


def to_markdown(table: pd.DataFrame, corner: str = "configuration") -> str:
    best = table.attrs["best"]
    lines = [
        "| " + " | ".join([corner, *table.columns]) + " |",
        "|" + "---|" * (len(table.columns) + 1),
    ]
    for config, row in table.iterrows():
        cells = [f"**{v}**" if best.loc[config, env] and v else (v or "–") for env, v in row.items()]
        lines.append("| " + " | ".join([str(config), *cells]) + " |")
    return "\n".join(lines) + "\n"


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
        cells = [rf"\textbf{{{_tex(v)}}}" if best.loc[config, env] and v else _tex(v or "–") for env, v in row.items()]
        lines.append(" & ".join([_tex(str(config)), *cells]) + r" \\")
    lines += [r"\bottomrule", r"\end{tabular}", r"\end{table}"]
    return "\n".join(lines) + "\n"

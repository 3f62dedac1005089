"""Results tables in the layout of the gSDE paper's Table 1: rows = exploration configurations,
columns = envs, cells "return ± s.e. / C", the best return of each column in bold."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

from study.analysis.aggregates import cell_stats
from study.analysis.labels import config_label, ordered_configs


def _cells(metrics: pd.DataFrame, factors: Sequence[str], cost: str) -> tuple[pd.DataFrame, list[str], list[str]]:
    by = ["env", *factors]
    ret = cell_stats(metrics, "final_return", by, reps=1).set_index(by)
    cst = cell_stats(metrics, cost, by, reps=1).set_index(by)["mean"].rename("cost")
    cells = ret.join(cst).reset_index()
    cells["config"] = config_label(cells, factors)
    return cells, ordered_configs(cells, factors), list(dict.fromkeys(metrics["env"]))


def _fmt(value: float, digits: int = 0) -> str:
    return "–" if pd.isna(value) else f"{value:.{digits}f}"


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
    return text.replace("±", r"$\pm$").replace("–", "--").replace("σ", r"$\sigma$").replace("δ", r"$\delta$")


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

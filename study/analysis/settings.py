"""The settings a study's runs train with, as a report lists them: those every run shares, then
each setting under what decides it (a factor, the env, both, or the whole configuration)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import pandas as pd

from study.analysis.labels import config_label, factor_name
from study.config import RunSpec

#: settings that change no result: where the run's model is kept
UNSCORED = ("save_model",)
OFF = "none"  # a noise component whose `type` says it is off
UNSET = "–"  # a setting a run leaves at its default


def flat_settings(spec: RunSpec) -> dict[str, str]:
    """The run's settings as dotted keys (`hyperparams.batch_size`) and display values; unset
    ones (None, empty) left out, and a component whose `type` is none shown as none alone."""
    out: dict[str, str] = {}

    def walk(prefix: str, value: Any) -> None:
        if isinstance(value, dict):
            if value.get("type") == OFF:
                out[prefix] = OFF
                return
            for key, item in value.items():
                walk(f"{prefix}.{key}" if prefix else key, item)
        elif value is not None and value != [] and prefix not in UNSCORED:
            out[prefix] = _display(value)

    walk("", spec.settings.model_dump(mode="json", exclude={"env"}))
    return out


def _display(value: Any) -> str:
    if isinstance(value, bool):
        return str(value).lower()
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:g}"
    if isinstance(value, list):
        return "[" + ", ".join(_display(v) for v in value) + "]"
    return str(value)


def settings_tables(specs: Sequence[RunSpec], factors: Sequence[str]) -> dict[str, dict[str, str]]:
    """The settings by what sets them: "every run" (key → value), then, each setting under the
    first that decides it alone, "<factor>", "env", "<factor> and env" and "configuration"
    (row label → `prefix: key value · …` text)."""
    frame = pd.DataFrame([flat_settings(spec) for spec in specs]).fillna(UNSET)
    labels = pd.DataFrame([{"env": spec.env, **spec.factors} for spec in specs])
    alike = [key for key in frame if frame[key].nunique() == 1]
    sections: dict[str, dict[str, str]] = {"every run": {key: frame[key].iloc[0] for key in alike}}
    left = [key for key in frame if key not in alike]
    deciders = [[f] for f in factors] + [["env"]] + [[f, "env"] for f in factors] + [[*factors, "env"]]
    for by in deciders:
        names = [f for f in by if f != "env"]
        row = config_label(labels, names) if names else pd.Series("", index=labels.index)
        if "env" in by:
            row = (row + " · ").where(row != "", "") + labels["env"]
        decided = [key for key in left if (frame[key].groupby(row.to_numpy()).nunique() == 1).all()]
        if not decided:
            continue
        left = [key for key in left if key not in decided]
        title = " and ".join(factor_name(f) if f != "env" else "env" for f in by) if len(by) <= 2 else "configuration"
        sections[title] = {
            label: _grouped(group[decided].iloc[0].loc[lambda v: v != UNSET])
            for label, group in frame.groupby(row.to_numpy(), sort=False)
        }
    return sections


def _by_prefix(values: pd.Series | dict[str, str]) -> dict[str, list[str]]:
    """`key value` texts, grouped by the dotted prefix of their keys ("" for top-level keys)."""
    groups: dict[str, list[str]] = {}
    for key, value in dict(values).items():
        head, _, tail = str(key).rpartition(".")
        groups.setdefault(head, []).append(f"{tail} {value}")
    return groups


def _grouped(values: pd.Series) -> str:
    return "; ".join(f"{head}: " * bool(head) + " · ".join(items) for head, items in _by_prefix(values).items())


def settings_markdown(specs: Sequence[RunSpec], factors: Sequence[str]) -> str:
    """The report's settings section: every run's settings, a row per group, then a table per
    factor (env, combination) that sets the others."""
    sections = settings_tables(specs, factors)
    lines = ["| every run | |", "|---|---|"]
    lines += [
        f"| {head or 'run'} | {' · '.join(items)} |" for head, items in _by_prefix(sections.pop("every run")).items()
    ]
    for title, rows in sections.items():
        lines += ["", f"| per {title} | |", "|---|---|"]
        lines += [f"| {label} | {text or UNSET} |" for label, text in rows.items()]
    return "\n".join(lines) + "\n"

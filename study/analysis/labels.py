"""Names for the configurations of a study: a row's combination of factor levels."""

from __future__ import annotations

from collections.abc import Sequence

import pandas as pd

ALL_RUNS = "all runs"


def config_label(frame: pd.DataFrame, factors: Sequence[str]) -> pd.Series:
    """A readable label per row for its combination of factor levels, as the YAML names them."""
    if not factors:
        return pd.Series(ALL_RUNS, index=frame.index)
    if len(factors) == 1:
        return frame[factors[0]].astype(str)
    levels = frame[list(factors)].astype(str)
    return levels.apply(lambda row: ", ".join(f"{f}={v}" for f, v in row.items()), axis=1)


def ordered_configs(frame: pd.DataFrame, factors: Sequence[str]) -> list[str]:
    """The configuration labels present in `frame`, in the YAML order of the factor levels."""
    if not factors:
        return [ALL_RUNS]
    return list(dict.fromkeys(config_label(frame.sort_values(list(factors)), factors)))

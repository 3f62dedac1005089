"""Learning-rate schedules named as rl-baselines3-zoo names them (`lin_7.3e-4`)."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass

#: a linear schedule: "lin_" and the initial value, a positive decimal number
LINEAR = r"^lin_(\d+\.?\d*|\.\d+)([eE][-+]?\d+)?$"


@dataclass(frozen=True)
class LinearSchedule:
    """A rate that falls linearly from `initial` at the start of training to 0 at its end
    (rl-zoo3's `linear_schedule`); SB3 calls it with the progress remaining, 1 → 0."""

    initial: float

    def __call__(self, progress_remaining: float) -> float:
        return progress_remaining * self.initial


def schedule(value: float | str) -> float | LinearSchedule:
    """A constant rate as it is, `lin_<initial>` as its LinearSchedule."""
    if isinstance(value, str):
        if not re.match(LINEAR, value):
            raise ValueError(f"{value!r} is not a schedule (lin_<initial rate>, e.g. lin_7.3e-4)")
        initial = float(value.removeprefix("lin_"))
        if not 0 < initial < math.inf:
            raise ValueError(f"{value!r}: the initial rate must be positive and finite")
        return LinearSchedule(initial)
    return value


def canonical(value: float | str) -> float | str:
    """A rate as a study records it: a number, or `lin_` and the initial rate as Python writes it
    (`lin_1e-3` and `lin_0.001` are one schedule, one run). YAML reads `3e-4` as a string: a
    string that is a number is that number; any other string must name a schedule."""
    if not isinstance(value, str):
        return value
    try:
        return float(value)
    except ValueError:
        return f"lin_{schedule(value).initial!r}"

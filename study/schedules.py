"""Learning-rate schedules named as rl-baselines3-zoo names them (`lin_7.3e-4`)."""

from __future__ import annotations

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
        return LinearSchedule(float(value.removeprefix("lin_")))
    return value

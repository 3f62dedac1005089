"""Action-space noise baselines, built from their YAML names."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise, OrnsteinUhlenbeckActionNoise

from study.config import ActionNoiseSettings

ACTION_NOISE: dict[str, Callable[[ActionNoiseSettings, int], ActionNoise | None]] = {
    "none": lambda s, dim: None,
    "normal": lambda s, dim: NormalActionNoise(np.zeros(dim), s.sigma * np.ones(dim)),
    "ou": lambda s, dim: OrnsteinUhlenbeckActionNoise(np.zeros(dim), s.sigma * np.ones(dim), theta=s.theta),
}


def make_action_noise(settings: ActionNoiseSettings, action_dim: int) -> ActionNoise | None:
    """SB3 `ActionNoise` for the settings (None for `type: none`)."""
    return ACTION_NOISE[settings.type](settings, action_dim)

"""Action-space noise baselines, built from their YAML names."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise, OrnsteinUhlenbeckActionNoise

ACTION_NOISE: dict[str, Callable[[int, float, float], ActionNoise | None]] = {
    "none": lambda dim, sigma, theta: None,
    "normal": lambda dim, sigma, theta: NormalActionNoise(np.zeros(dim), sigma * np.ones(dim)),
    "ou": lambda dim, sigma, theta: OrnsteinUhlenbeckActionNoise(np.zeros(dim), sigma * np.ones(dim), theta=theta),
}


def make_action_noise(kind: str, action_dim: int, sigma: float = 0.1, theta: float = 0.15) -> ActionNoise | None:
    """SB3 `ActionNoise` of type `kind` ("none", "normal", "ou") with scale σ and OU's θ (None for "none")."""
    return ACTION_NOISE[kind](action_dim, sigma, theta)

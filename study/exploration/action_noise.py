"""Action-space noise baselines, built from their YAML names."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise, OrnsteinUhlenbeckActionNoise

from study.exploration.colored import ColoredActionNoise

#: name → (action_dim, σ, θ, β, sequence length, seed) → the noise
ACTION_NOISE: dict[str, Callable[[int, float, float, float, int, int], ActionNoise | None]] = {
    "none": lambda dim, sigma, theta, beta, seq_len, seed: None,
    "normal": lambda dim, sigma, theta, beta, seq_len, seed: NormalActionNoise(np.zeros(dim), sigma * np.ones(dim)),
    "ou": lambda dim, sigma, theta, beta, seq_len, seed: OrnsteinUhlenbeckActionNoise(
        np.zeros(dim), sigma * np.ones(dim), theta=theta
    ),
    "colored": lambda dim, sigma, theta, beta, seq_len, seed: ColoredActionNoise(beta, sigma, dim, seq_len, seed),
}


def make_action_noise(
    kind: str,
    action_dim: int,
    sigma: float = 0.1,
    theta: float = 0.15,
    beta: float = 1.0,
    seq_len: int = 1000,
    seed: int = 0,
) -> ActionNoise | None:
    """SB3 `ActionNoise` of type `kind` ("none", "normal", "ou", "colored") with scale σ, OU's θ,
    and colored noise's β, sequence length and seed of its own stream (None for "none")."""
    return ACTION_NOISE[kind](action_dim, sigma, theta, beta, seq_len, seed)

"""Colored action noise (Eberhard et al., "Pink Noise Is All You Need", ICLR 2023).

Gaussian noise whose power spectrum over time falls as 1/f^β: β = 0 is white noise, β = 1 pink,
β = 2 red (Brownian-like). Each action dimension draws one unit-variance sequence of `seq_len`
steps at a time (Timmer & König's algorithm, as the `pink-noise-rl` package draws it), and a
new sequence at every episode start. β is the action-space analogue of the sampling interval k.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch as th
from numpy.fft import irfft, rfftfreq
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.noise import ActionNoise


def powerlaw_psd_gaussian(beta: float, size: tuple[int, ...], rng: np.random.Generator) -> np.ndarray:
    """Unit-variance Gaussian noise with power spectrum ∝ 1/f^β along the last axis of `size`
    (Timmer & König, 1995; the lowest frequency 1/size[-1] also scales the constant term)."""
    samples = size[-1]
    frequencies = rfftfreq(samples)
    frequencies[0] = frequencies[1]  # below the lowest finite frequency the spectrum is flat
    scale = frequencies ** (-beta / 2.0)
    weights = scale[1:].copy()
    weights[-1] *= (1 + samples % 2) / 2.0  # f = ±1/2 is one component when `samples` is even
    sigma = 2 * np.sqrt(np.sum(weights**2)) / samples
    shape = (*size[:-1], len(frequencies))
    real = rng.normal(scale=scale, size=shape)
    imaginary = rng.normal(scale=scale, size=shape)
    if samples % 2 == 0:  # the Nyquist component is real
        imaginary[..., -1] = 0
        real[..., -1] *= np.sqrt(2)
    imaginary[..., 0] = 0  # so is the constant one
    real[..., 0] *= np.sqrt(2)
    return irfft(real + 1j * imaginary, n=samples, axis=-1) / sigma


class ColoredNoiseProcess:
    """Colored noise for `action_dim` dimensions, one step at a time: a sequence of `seq_len`
    steps per dimension, the next one drawn when it runs out or at `reset()`."""

    def __init__(self, beta: float, action_dim: int, seq_len: int, rng: np.random.Generator) -> None:
        self.beta, self.action_dim, self.seq_len, self.rng = beta, action_dim, seq_len, rng
        self.reset()

    def reset(self) -> None:
        """Start a new sequence."""
        self.buffer = powerlaw_psd_gaussian(self.beta, (self.action_dim, self.seq_len), self.rng)
        self.index = 0

    def sample(self) -> np.ndarray:
        """The next step's noise, [action_dim]."""
        if self.index >= self.seq_len:
            self.reset()
        value = self.buffer[:, self.index]
        self.index += 1
        return value

    def state_dict(self) -> dict[str, Any]:
        return {"buffer": self.buffer.copy(), "index": self.index, "rng": self.rng.bit_generator.state}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.buffer, self.index = state["buffer"].copy(), state["index"]
        self.rng.bit_generator.state = state["rng"]


class ColoredActionNoise(ActionNoise):
    """SB3 action noise σ·x_t with x colored (1/f^β); SB3 resets it at every episode end, so each
    episode starts a new sequence."""

    def __init__(self, beta: float, sigma: float, action_dim: int, seq_len: int, seed: int) -> None:
        super().__init__()
        self.beta, self.sigma = beta, sigma
        self.process = ColoredNoiseProcess(beta, action_dim, seq_len, np.random.default_rng(seed))

    def __call__(self) -> np.ndarray:
        return (self.sigma * self.process.sample()).astype(np.float32)

    def reset(self) -> None:
        self.process.reset()

    def __repr__(self) -> str:
        return f"ColoredActionNoise(beta={self.beta}, sigma={self.sigma})"


class ColoredSamplingCallback(BaseCallback):
    """SAC's exploring actions tanh(μ(s) + σ(s)·x_t) with colored x in place of its white Gaussian
    sample (the paper's SAC variant: the policy's own scale, colored samples), a new sequence at
    every episode start. Training and evaluation are unchanged."""

    def __init__(self, beta: float, action_dim: int, seq_len: int, seed: int) -> None:
        super().__init__()
        self.process = ColoredNoiseProcess(beta, action_dim, seq_len, np.random.default_rng(seed))

    def _init_callback(self) -> None:
        self.model.policy.colored_noise = self.process

    def _on_step(self) -> bool:
        if self.locals["dones"][0]:
            self.process.reset()
        return True

    def state_dict(self) -> dict[str, Any]:
        """The sequence and its random stream (for checkpoints)."""
        return self.process.state_dict()

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.process.load_state_dict(state)


def colored_sample(noise: ColoredNoiseProcess, like: th.Tensor) -> th.Tensor:
    """The process's next step as a tensor of `like`'s dtype and device."""
    return th.as_tensor(noise.sample(), dtype=like.dtype, device=like.device)

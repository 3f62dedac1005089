"""NoisyNet (Fortunato et al., 2018): linear layers with learned Gaussian noise on their weights."""

from __future__ import annotations

import math
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Literal, TypeVar

import numpy as np
import torch as th
from torch import nn
from torch.nn import functional as F

from study.exploration.param_noise import derived_seed
from study.exploration.schedule import ResamplingCallback

ModuleT = TypeVar("ModuleT", bound=nn.Module)


def _signed_sqrt(x: th.Tensor) -> th.Tensor:
    """f(x) = sgn(x)·√|x|, the factorised-noise transform."""
    return x.sign() * x.abs().sqrt()


class NoisyLinear(nn.Module):
    """y = (μ_w + σ_w ⊙ ε_w) x + μ_b + σ_b ⊙ ε_b; with the noise off, y = μ_w x + μ_b.

    Factorised noise: ε_w = f(ε_out) ⊗ f(ε_in), ε_b = f(ε_out), μ ~ U[−1/√p, 1/√p],
    σ = σ₀/√p (σ₀ = 0.5). Independent noise: every ε drawn on its own, μ ~ U[−√(3/p), √(3/p)],
    σ = σ₀ (0.017). p is the number of inputs.
    """

    def __init__(
        self,
        in_features: int,
        out_features: int,
        factorised: bool = True,
        sigma0: float | None = None,
        device: th.device | str | None = None,
    ) -> None:
        super().__init__()
        self.in_features, self.out_features, self.factorised = in_features, out_features, factorised
        self.sigma0 = sigma0 if sigma0 is not None else (0.5 if factorised else 0.017)
        self.weight_mu = nn.Parameter(th.empty(out_features, in_features, device=device))
        self.weight_sigma = nn.Parameter(th.empty(out_features, in_features, device=device))
        self.bias_mu = nn.Parameter(th.empty(out_features, device=device))
        self.bias_sigma = nn.Parameter(th.empty(out_features, device=device))
        self.register_buffer("weight_epsilon", th.zeros(out_features, in_features, device=device))
        self.register_buffer("bias_epsilon", th.zeros(out_features, device=device))
        self.noise_on = True
        self.reset_parameters()

    def reset_parameters(self) -> None:
        p = self.in_features
        bound = 1 / math.sqrt(p) if self.factorised else math.sqrt(3 / p)
        sigma = self.sigma0 / math.sqrt(p) if self.factorised else self.sigma0
        with th.no_grad():
            for mu in (self.weight_mu, self.bias_mu):
                mu.uniform_(-bound, bound)
            for s in (self.weight_sigma, self.bias_sigma):
                s.fill_(sigma)

    @th.no_grad()
    def sample_noise(self, generator: th.Generator | None = None) -> None:
        """Draw new ε (factorised: ε_in first, then ε_out); `generator` must be on the layer's device."""
        device = self.weight_mu.device
        if self.factorised:
            eps_in = _signed_sqrt(th.randn(self.in_features, generator=generator, device=device))
            eps_out = _signed_sqrt(th.randn(self.out_features, generator=generator, device=device))
            self.weight_epsilon.copy_(th.outer(eps_out, eps_in))
            self.bias_epsilon.copy_(eps_out)
        else:
            self.weight_epsilon.normal_(generator=generator)
            self.bias_epsilon.normal_(generator=generator)

    def forward(self, x: th.Tensor) -> th.Tensor:
        if not self.noise_on:
            return F.linear(x, self.weight_mu, self.bias_mu)
        weight = self.weight_mu + self.weight_sigma * self.weight_epsilon
        return F.linear(x, weight, self.bias_mu + self.bias_sigma * self.bias_epsilon)

    def extra_repr(self) -> str:
        kind = "factorised" if self.factorised else "independent"
        return f"in_features={self.in_features}, out_features={self.out_features}, {kind}, sigma0={self.sigma0}"


def noisy_layers(net: nn.Module) -> list[NoisyLinear]:
    return [m for m in net.modules() if isinstance(m, NoisyLinear)]


def make_noisy(net: ModuleT, layers: int | Literal["all"] = "all", **noisy_kwargs: Any) -> ModuleT:
    """`net` with its last `layers` Linear layers (or all) replaced in place by NoisyLinear on
    their device. Layers count in module order (a Q-network: its features extractor, then its
    head); convolutions are never replaced."""
    names = [name for name, module in net.named_modules() if isinstance(module, nn.Linear)]
    if layers != "all" and layers > len(names):
        raise ValueError(f"{layers} noisy layers asked for, but the network has {len(names)} fully connected layers")
    for name in names if layers == "all" else names[len(names) - layers :]:
        linear = net.get_submodule(name)
        parent, _, child = name.rpartition(".")
        noisy = NoisyLinear(linear.in_features, linear.out_features, device=linear.weight.device, **noisy_kwargs)
        setattr(net.get_submodule(parent), child, noisy)
    return net


def moved_generator(generator: th.Generator, device: th.device | str) -> th.Generator:
    """A generator on `device` whose stream follows deterministically from `generator`'s."""
    seed = int(th.randint(0, 2**62, (), generator=generator, device=generator.device))
    return th.Generator(device=device).manual_seed(seed)


@contextmanager
def noise_off(net: nn.Module) -> Iterator[None]:
    """Use the mean weights μ only (evaluation)."""
    layers = noisy_layers(net)
    states = [layer.noise_on for layer in layers]
    for layer in layers:
        layer.noise_on = False
    try:
        yield
    finally:
        for layer, state in zip(layers, states, strict=True):
            layer.noise_on = state


def mean_abs_sigma(net: nn.Module) -> float:
    """Mean |σ| over all noisy weights and biases."""
    sigmas = [s.detach().abs().flatten() for layer in noisy_layers(net) for s in (layer.weight_sigma, layer.bias_sigma)]
    return float(th.cat(sigmas).mean()) if sigmas else float("nan")


class NoisyNetCallback(ResamplingCallback):
    """Redraws the acting network's noise on its schedule and logs the mean |σ|.

    Works with a policy from `study.policies` that has noisy layers (`NoisyDQNPolicy`).

    :param resample: "step" (before every action), "gradient_step" (the noise of the last
        gradient step), or k (every k steps and every episode start)
    :param epsilon: ε-greedy rate on top (0: none)
    :param log_every: steps between records of the mean |σ|
    :param seed: seed of the noise's own random stream
    """

    def __init__(
        self,
        resample: int | Literal["step", "gradient_step"] = "step",
        epsilon: float = 0.0,
        log_every: int = 1_000,
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__({"step": 1, "gradient_step": "episode"}.get(resample, resample), verbose)
        self.resample_mode = resample
        self.epsilon = epsilon
        self.log_every = log_every
        self.seed = seed
        self.adaptations: list[dict[str, float]] = []
        self._pending_state: dict[str, Any] | None = None

    @property
    def sigma(self) -> float:
        return mean_abs_sigma(self.model.policy.q_net)

    def _init_callback(self) -> None:
        policy = self.model.policy
        if not hasattr(policy, "sample_training_noise"):
            raise TypeError(f"{type(policy).__name__} has no noisy layers: use NoisyDQNPolicy")
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        policy.noise_generator.manual_seed(derived_seed(seed, "noisy-net"))
        policy.keep_acting_noise = self.resample_mode != "gradient_step"
        self.model.fixed_exploration_rate = self.epsilon
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def _on_training_start(self) -> None:
        if self.model.num_timesteps == 0:
            self._steps_in_episode = 0
            self.model.policy.sample_acting_noise()

    def _on_step(self) -> bool:
        # with "gradient_step", the acting network keeps the noise of the last gradient step
        if self._resample_due() and self.resample_mode != "gradient_step":
            self.model.policy.sample_acting_noise()
        if self.num_timesteps % self.log_every == 0:
            sigma = self.sigma
            self.adaptations.append({"step": self.num_timesteps, "sigma": sigma, "distance": float("nan")})
            self.logger.record("noisy_net/mean_abs_sigma", sigma)
        return True

    def state_dict(self) -> dict[str, Any]:
        policy = self.model.policy
        return {
            "steps_in_episode": self._steps_in_episode,
            "adaptations": list(self.adaptations),
            "generator": policy.noise_generator.get_state(),
            "generator_device": policy.noise_generator.device.type,
            "noise": policy.noise_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`; takes effect when training starts."""
        self._pending_state = state

    def _restore(self, state: dict[str, Any]) -> None:
        policy = self.model.policy
        self._steps_in_episode = state["steps_in_episode"]
        self.adaptations = list(state["adaptations"])
        if state.get("generator_device", "cpu") == policy.noise_generator.device.type:
            policy.noise_generator.set_state(state["generator"])
        else:  # another kind of device draws another stream: continue with one the saved state fixes
            entropy = np.random.SeedSequence(state["generator"].numpy().astype(np.uint32).tolist())
            policy.noise_generator.manual_seed(int(entropy.generate_state(1, np.uint64)[0] >> 1))
        policy.load_noise_state(state["noise"])

"""Perturbing a copy of a network: θ̃ = θ + ε, ε ~ N(0, σ²I) on Linear layers only."""

from __future__ import annotations

from collections.abc import Callable

import torch as th
from torch import nn


def perturbable_parameters(net: nn.Module) -> list[nn.Parameter]:
    """Weights and biases of the fully connected layers (never LayerNorm, never conv)."""
    return [p for m in net.modules() if isinstance(m, nn.Linear) for p in m.parameters(recurse=False)]


class Perturbation:
    """A drawn perturbation ε for one network, re-appliable to any θ of the same shape.

    :param parts: the parts of a network to perturb (default: all of it)
    """

    def __init__(
        self, source: nn.Module, target: nn.Module, parts: Callable[[nn.Module], list[nn.Module]] = lambda net: [net]
    ) -> None:
        self.source, self.target = source, target
        self._src = [p for part in parts(source) for p in perturbable_parameters(part)]
        self._dst = [p for part in parts(target) for p in perturbable_parameters(part)]
        self._all_src = [*source.parameters(), *source.buffers()]
        self._all_dst = [*target.parameters(), *target.buffers()]
        self.noise: list[th.Tensor] = [th.zeros_like(p) for p in self._src]

    @th.no_grad()
    def sample(self, sigma: float, generator: th.Generator) -> None:
        """Draw a new ε with standard deviation σ and apply it."""
        for eps in self.noise:
            eps.normal_(0.0, sigma, generator=generator)
        self.apply()

    @th.no_grad()
    def apply(self) -> None:
        """target ← source + ε (everything else, LayerNorm included, copied unchanged)."""
        th._foreach_copy_(self._all_dst, self._all_src)
        th._foreach_add_(self._dst, self.noise)

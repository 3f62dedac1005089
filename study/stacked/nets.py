"""E networks of one architecture as one module on [E, batch, features] inputs.

The stacked parameters own the memory; each member network's parameters are views of its slice,
so the members' SB3 modules (acting, evaluation, perturbed copies, checkpoints) always see the
weights the stacked update writes, with nothing to copy back.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch as th
from torch import nn
from torch.nn import functional as F

#: modules without parameters that act elementwise, the same for every member
ELEMENTWISE = (nn.ReLU, nn.Tanh, nn.Identity, nn.LeakyReLU, nn.ELU, nn.SiLU, nn.Sigmoid, nn.Hardtanh)


class Unsupported(ValueError):
    """A setting the stacked engine cannot stack (e.g. a layer other than Linear, LayerNorm, activations)."""


def stack_parameters(tensors: Sequence[nn.Parameter]) -> nn.Parameter:
    """One parameter holding the given ones along a new first axis; each given one becomes a view of it."""
    stacked = nn.Parameter(th.stack([t.detach() for t in tensors]), requires_grad=tensors[0].requires_grad)
    for i, tensor in enumerate(tensors):
        tensor.data = stacked.data[i]
    return stacked


class StackedLinear(nn.Module):
    """E `nn.Linear` layers: y[e] = x[e] W[e]ᵀ + b[e]."""

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        super().__init__()
        self.weight = stack_parameters([layer.weight for layer in layers])  # [E, out, in]
        self.bias = stack_parameters([layer.bias for layer in layers]) if layers[0].bias is not None else None

    def forward(self, x: th.Tensor) -> th.Tensor:
        if self.bias is None:
            return th.bmm(x, self.weight.transpose(1, 2))
        return th.baddbmm(self.bias.unsqueeze(1), x, self.weight.transpose(1, 2))


class StackedLayerNorm(nn.Module):
    """E `nn.LayerNorm` layers over the last axis, each with its own affine parameters."""

    def __init__(self, layers: Sequence[nn.LayerNorm]) -> None:
        super().__init__()
        first = layers[0]
        if len(first.normalized_shape) != 1 or not first.elementwise_affine:
            raise Unsupported("LayerNorm: only over the last axis, with affine parameters")
        self.normalized_shape, self.eps = first.normalized_shape, first.eps
        self.weight = stack_parameters([layer.weight for layer in layers])  # [E, d]
        self.bias = stack_parameters([layer.bias for layer in layers]) if first.bias is not None else None

    def forward(self, x: th.Tensor) -> th.Tensor:
        normed = F.layer_norm(x, self.normalized_shape, eps=self.eps)
        if self.bias is None:
            return normed * self.weight.unsqueeze(1)
        return th.addcmul(self.bias.unsqueeze(1), normed, self.weight.unsqueeze(1))


def stack_sequential(nets: Sequence[nn.Module]) -> nn.Sequential:
    """The stacked form of E networks of one architecture (Sequentials of Linear, LayerNorm and
    elementwise activations); the members' parameters become views of it."""
    flat = [list(net) if isinstance(net, nn.Sequential) else [net] for net in nets]
    if len({len(modules) for modules in flat}) != 1:
        raise Unsupported("the members' networks differ in depth")
    stacked: list[nn.Module] = []
    for parts in zip(*flat, strict=True):
        first = parts[0]
        if any(type(part) is not type(first) for part in parts):
            raise Unsupported("the members' networks differ in their layers")
        if isinstance(first, nn.Sequential):
            stacked.append(stack_sequential(parts))
        elif isinstance(first, nn.Linear):
            stacked.append(StackedLinear(parts))
        elif isinstance(first, nn.LayerNorm):
            stacked.append(StackedLayerNorm(parts))
        elif isinstance(first, ELEMENTWISE):
            if any(repr(part) != repr(first) for part in parts):
                raise Unsupported(f"the members' {type(first).__name__} layers differ")
            stacked.append(first)
        else:
            raise Unsupported(f"{type(first).__name__} layers cannot be stacked")
    return nn.Sequential(*stacked)

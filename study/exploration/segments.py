"""On-policy parameter noise: the perturbation of each segment of a rollout, applied row by row.

A segment is the stretch of steps between two resamples of ε. The policy's update evaluates every
step under the ε that chose its action (Plappert et al.'s reparameterised estimator): the store
keeps each segment's ε of the current rollout, the rollout buffer records each step's segment, and
forward hooks on the perturbed Linear layers add row i's own perturbation,
y_i = W x_i + b + ε_W[s_i] x_i + ε_b[s_i], batched over the rows.
"""

from __future__ import annotations

from collections.abc import Callable, Generator, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch as th
from stable_baselines3.common.buffers import RolloutBuffer
from stable_baselines3.common.type_aliases import RolloutBufferSamples
from stable_baselines3.common.vec_env import VecNormalize
from torch import nn
from torch.nn import functional as F

FEW_SEGMENTS = 16  # up to this many segments in a rollout, a batch goes through all of them at once


class SegmentNoise:
    """The ε of each segment of the current rollout for `layers`, and the forward hooks that
    apply them: while `rows` is set (a segment index per row of the batch, or one index for all
    rows), each row's output of a perturbed layer gets its segment's ε; while it is None the
    layers are untouched.

    :param layers: the Linear layers to perturb (weights and biases)
    """

    def __init__(self, layers: Sequence[nn.Linear]) -> None:
        self.layers = list(layers)
        self.segments: list[list[th.Tensor]] = []  # per segment: [ε_W, ε_b] of each layer, in order
        self.rows: th.Tensor | int | None = None  # a segment per row, or one for all rows
        self._stacked: list[th.Tensor] | None = None  # per tensor: [S, *shape], built on first use
        for i, layer in enumerate(self.layers):
            layer.register_forward_hook(partial(self._perturb, i))

    @property
    def current(self) -> int:
        """The index of the segment acting now."""
        return len(self.segments) - 1

    @th.no_grad()
    def draw(self, sigma: float, generator: th.Generator) -> list[th.Tensor]:
        """A new ε ~ N(0, σ²I) for every weight and bias (not yet a segment)."""
        return [
            th.empty_like(p).normal_(0.0, sigma, generator=generator)
            for layer in self.layers
            for p in (layer.weight, layer.bias)
        ]

    def add(self, noise: list[th.Tensor]) -> int:
        """Start a new segment with `noise`; its index."""
        self.segments.append(noise)
        self._stacked = None
        return self.current

    def drop_last(self) -> None:
        """Forget the newest segment (one drawn for a measurement, never acted with)."""
        self.segments.pop()
        self._stacked = None

    def start_rollout(self) -> None:
        """Forget the segments of the last rollout but the one still acting, which becomes segment 0."""
        self.segments = self.segments[-1:]
        self._stacked = None

    def _perturb(self, i: int, module: nn.Linear, inputs: tuple[th.Tensor, ...], output: th.Tensor) -> th.Tensor | None:
        rows, x = self.rows, inputs[0]
        if rows is None:
            return None
        if isinstance(rows, int):  # every row in one segment (collection, or a batch of one segment)
            return output + F.linear(x, self.segments[rows][2 * i], self.segments[rows][2 * i + 1])
        if len(rows) != len(x):
            raise ValueError(
                f"segments given for {len(rows)} rows, a batch of {len(x)}: the batch must be the "
                "rollout buffer's (TRPO's sub_sampling_factor is not supported)"
            )
        if self._stacked is None:
            self._stacked = [th.stack(tensors) for tensors in zip(*self.segments, strict=True)]
        weights, biases = self._stacked[2 * i], self._stacked[2 * i + 1]
        if len(self.segments) <= FEW_SEGMENTS:  # x through every segment's ε, then each row's own
            every = th.einsum("bi,soi->bso", x, weights)
            return output + every[th.arange(len(x), device=x.device), rows] + biases[rows]
        return output + th.einsum("bi,boi->bo", x, weights[rows]) + biases[rows]

    def state_dict(self) -> dict[str, Any]:
        """The acting segment's ε: what a rollout start keeps (checkpoints are taken there)."""
        return {"segments": [[eps.clone() for eps in noise] for noise in self.segments[-1:]]}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.segments = [[eps.clone() for eps in noise] for noise in state["segments"]]
        self._stacked = None


class SegmentRolloutBuffer(RolloutBuffer):
    """SB3's rollout buffer, with the segment of each step (`segments`, written by the noise
    callback) handed to `on_sample` with every batch it yields, in the batch's row order."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.on_sample: Callable[[np.ndarray], None] | None = None

    def reset(self) -> None:
        super().reset()
        self.segments = np.zeros((self.buffer_size, self.n_envs), dtype=np.int64)
        self._flat_segments: np.ndarray | None = None

    def get(self, batch_size: int | None = None) -> Generator[RolloutBufferSamples, None, None]:
        if not self.generator_ready:  # flattened in the order SB3 flattens the other arrays
            self._flat_segments = self.swap_and_flatten(self.segments).reshape(-1)
        yield from super().get(batch_size)

    def _get_samples(self, batch_inds: np.ndarray, env: VecNormalize | None = None) -> RolloutBufferSamples:
        if self.on_sample is not None:
            self.on_sample(self._flat_segments[batch_inds])
        return super()._get_samples(batch_inds, env)

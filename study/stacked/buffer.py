"""E replay buffers as one array per field, each member's SB3 buffer a view of its slice.

Uniform buffers are sampled here for all members at once; prioritized buffers keep their own
priorities (sum-tree or rank order) per member and draw their indices from the member's stream.
On a GPU the arrays also have a copy on the device, written with each step's transitions, from
which a batch is gathered in one indexing op per field instead of being gathered on the host.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer

from study.buffers import TRANSITIONS, PrioritizedReplayBuffer, RankReplayBuffer
from study.stacked.common import StackedBatch
from study.stacked.nets import Unsupported

STACKABLE = (ReplayBuffer, PrioritizedReplayBuffer, RankReplayBuffer)
FIELDS = TRANSITIONS


class StackedReplayBuffer:
    """The members' replay buffers (SB3's uniform one, or prioritized) as [E, size, 1, ·] arrays.

    Each member writes its own transitions at its own position (members that stepped together
    share one). The members' buffers keep working (parameter-noise adaptation, priorities and
    checkpoints read them): their arrays become views of their slices, and their `pos`/`full`
    follow each write.
    """

    def __init__(self, buffers: Sequence[ReplayBuffer], on_device: bool | None = None) -> None:
        """:param on_device: keep a copy of the arrays on the buffers' device and sample from it
        (default: on a CUDA device)"""
        first = buffers[0]
        kind = type(first)
        if kind not in STACKABLE:
            raise Unsupported(f"replay: {kind.__name__} is not stacked")
        self.prioritized = issubclass(kind, PrioritizedReplayBuffer)
        for buffer in buffers:
            if type(buffer) is not kind:
                raise ValueError("replay: the members of a stacked group must share their replay buffer's kind")
            if buffer.optimize_memory_usage or not buffer.handle_timeout_termination or buffer.n_envs != 1:
                raise Unsupported("replay: only SB3's default uniform buffer of one environment is stacked")
            if buffer.buffer_size != first.buffer_size:
                raise ValueError("the members' replay buffers must have one size")
        self.buffers = list(buffers)
        self.buffer_size = first.buffer_size
        self.pos = np.array([buffer.pos for buffer in buffers])
        self.full = np.array([buffer.full for buffer in buffers])
        self.device = first.device
        for name in FIELDS:
            own = getattr(first, name)
            stacked = np.zeros((len(buffers), *own.shape), dtype=own.dtype)  # pages are touched as they fill
            setattr(self, name, stacked)
            for i, buffer in enumerate(buffers):
                if buffer.pos or buffer.full:
                    stacked[i] = getattr(buffer, name)
                setattr(buffer, name, stacked[i])
        on_device = self.device.type == "cuda" if on_device is None else on_device
        self.copy: dict[str, th.Tensor] | None = None
        if on_device:
            self.copy = {name: th.as_tensor(getattr(self, name), device=self.device) for name in FIELDS}
            self._members = th.arange(len(buffers), device=self.device)[:, None]

    def refresh(self) -> None:
        """Take up what was written into the members' buffers in place (a checkpoint's
        transitions, positions)."""
        self.pos = np.array([buffer.pos for buffer in self.buffers])
        self.full = np.array([buffer.full for buffer in self.buffers])
        if self.copy is not None:
            for name in FIELDS:
                self.copy[name].copy_(th.as_tensor(getattr(self, name)))

    def size(self) -> np.ndarray:
        """Each member's number of stored transitions, [E]."""
        return np.where(self.full, self.buffer_size, self.pos)

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        timeouts: np.ndarray,
        mask: np.ndarray | None = None,
    ) -> None:
        """One transition of each member in `mask` ([E] bool; all without it) from the [E, ·]
        arrays, as each member's `ReplayBuffer.add`."""
        rows = np.arange(len(self.buffers)) if mask is None else np.flatnonzero(mask)
        pos = self.pos[rows]
        self.observations[rows, pos, 0] = obs[rows]
        self.next_observations[rows, pos, 0] = next_obs[rows]
        self.actions[rows, pos, 0] = actions.reshape(len(self.buffers), -1)[rows]
        self.rewards[rows, pos, 0] = rewards[rows]
        self.dones[rows, pos, 0] = dones[rows]
        self.timeouts[rows, pos, 0] = timeouts[rows]
        if self.copy is not None:
            where = (th.as_tensor(rows, device=self.device), th.as_tensor(pos, device=self.device), 0)
            for name in FIELDS:
                self.copy[name][where] = th.as_tensor(getattr(self, name)[rows, pos, 0], device=self.device)
        self.pos[rows] += 1
        wrapped = rows[self.pos[rows] == self.buffer_size]
        self.full[wrapped], self.pos[wrapped] = True, 0
        for row, written in zip(rows, pos, strict=True):
            buffer = self.buffers[row]
            buffer.pos, buffer.full = int(self.pos[row]), bool(self.full[row])
            if self.prioritized:
                buffer._set_new(np.array([written]))  # a new transition's priority: the largest so far

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray, mask: th.Tensor | None = None) -> None:
        """`update_priorities` of each member in `mask` (all without it) with its [batch] slice
        of `indices` and `td_errors`."""
        taken = [True] * len(self.buffers) if mask is None else mask.tolist()
        for buffer, idx, errors, take in zip(self.buffers, indices, td_errors, taken, strict=True):
            if take:
                buffer.update_priorities(idx, errors)

    def sample(
        self, batch_size: int, rngs: Sequence[np.random.RandomState], mask: np.ndarray | None = None
    ) -> StackedBatch:
        """Each member's `sample(batch_size)`, its indices drawn from its stream as the buffer
        draws them from the global one; the members `mask` leaves out draw nothing (and get
        their first transition, weighted 1)."""
        taken = np.ones(len(self.buffers), dtype=bool) if mask is None else mask
        batch_inds = np.zeros((len(self.buffers), batch_size), dtype=np.int64)
        weights = np.ones((len(self.buffers), batch_size))
        sizes = self.size()
        for i in np.flatnonzero(taken):
            buffer, rng = self.buffers[i], rngs[i]
            if self.prioritized:
                batch_inds[i], probabilities = buffer.sample_indices(batch_size, rng)
                weights[i] = (probabilities / buffer.min_probability()) ** -buffer.beta
            else:
                batch_inds[i] = rng.randint(0, sizes[i], size=batch_size)
            rng.randint(0, 1, size=batch_size)  # SB3's env indices: with one env, nothing is drawn
        if self.copy is None:
            arrays, members, inds = (
                {name: getattr(self, name) for name in FIELDS},
                np.arange(len(rngs))[:, None],
                batch_inds,
            )
        else:
            arrays, members, inds = self.copy, self._members, th.as_tensor(batch_inds, device=self.device)
        field = {name: arrays[name][members, inds, 0] for name in FIELDS}
        dones = field["dones"] * (1 - field["timeouts"])
        data = (field["observations"], field["actions"], field["next_observations"], dones[..., None])
        data += (field["rewards"][..., None],)
        batch = StackedBatch(*(th.as_tensor(array, device=self.device) for array in data))
        if mask is not None:
            batch = batch._replace(mask=th.as_tensor(mask, device=self.device))
        if self.prioritized:
            weights = th.tensor(weights.astype(np.float32)[..., None], device=self.device)
            batch = batch._replace(weights=weights, indices=batch_inds)
        return batch

"""E replay buffers written in lockstep: one array per field, each member's SB3 buffer a view of its slice.

Uniform buffers are sampled here for all members at once; prioritized buffers keep their own
priorities (sum-tree or rank order) per member and draw their indices from the member's stream.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer

from study.buffers import PrioritizedReplayBuffer, RankReplayBuffer
from study.stacked.common import StackedBatch
from study.stacked.nets import Unsupported

STACKABLE = (ReplayBuffer, PrioritizedReplayBuffer, RankReplayBuffer)
FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class StackedReplayBuffer:
    """The members' replay buffers (SB3's uniform one, or prioritized) as [E, size, 1, ·] arrays.

    Every member adds one transition per step, so all share one write position. The members'
    buffers keep working (parameter-noise adaptation, priorities and checkpoints read them):
    their arrays become views of their slices, and their `pos`/`full` follow each write.
    """

    def __init__(self, buffers: Sequence[ReplayBuffer]) -> None:
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
            if (buffer.buffer_size, buffer.pos, buffer.full) != (first.buffer_size, first.pos, first.full):
                raise ValueError("the members' replay buffers must have one size and position")
        self.buffers = list(buffers)
        self.buffer_size, self.pos, self.full = first.buffer_size, first.pos, first.full
        self.device = first.device
        for name in FIELDS:
            own = getattr(first, name)
            stacked = np.zeros((len(buffers), *own.shape), dtype=own.dtype)  # pages are touched as they fill
            setattr(self, name, stacked)
            for i, buffer in enumerate(buffers):
                if self.size():
                    stacked[i] = getattr(buffer, name)
                setattr(buffer, name, stacked[i])

    def size(self) -> int:
        return self.buffer_size if self.full else self.pos

    def add(
        self,
        obs: np.ndarray,
        next_obs: np.ndarray,
        actions: np.ndarray,
        rewards: np.ndarray,
        dones: np.ndarray,
        timeouts: np.ndarray,
    ) -> None:
        """One transition per member ([E, ·] each), as each member's `ReplayBuffer.add`."""
        pos = self.pos
        self.observations[:, pos, 0] = obs
        self.next_observations[:, pos, 0] = next_obs
        self.actions[:, pos, 0] = actions.reshape(len(self.buffers), -1)
        self.rewards[:, pos, 0] = rewards
        self.dones[:, pos, 0] = dones
        self.timeouts[:, pos, 0] = timeouts
        self.pos += 1
        if self.pos == self.buffer_size:
            self.full, self.pos = True, 0
        for buffer in self.buffers:
            buffer.pos, buffer.full = self.pos, self.full
            if self.prioritized:
                buffer._set_new(np.array([pos]))  # a new transition's priority: the largest so far

    def update_priorities(self, indices: np.ndarray, td_errors: np.ndarray) -> None:
        """Each member's `update_priorities` with its [batch] slice of `indices` and `td_errors`."""
        for buffer, idx, errors in zip(self.buffers, indices, td_errors, strict=True):
            buffer.update_priorities(idx, errors)

    def sample(self, batch_size: int, rngs: Sequence[np.random.RandomState]) -> StackedBatch:
        """Each member's `sample(batch_size)`, its indices drawn from its stream as the buffer
        draws them from the global one."""
        if self.prioritized:
            drawn = [buffer.sample_indices(batch_size, rng) for buffer, rng in zip(self.buffers, rngs, strict=True)]
            batch_inds = np.stack([idx for idx, _ in drawn])
            weights = np.stack(
                [
                    (probabilities / buffer.min_probability()) ** -buffer.beta
                    for buffer, (_, probabilities) in zip(self.buffers, drawn, strict=True)
                ]
            )
        else:
            upper = self.size()
            batch_inds = np.stack([rng.randint(0, upper, size=batch_size) for rng in rngs])
        for rng in rngs:
            rng.randint(0, 1, size=batch_size)  # SB3's env indices: with one env, nothing is drawn
        members = np.arange(len(rngs))[:, None]
        dones = self.dones[members, batch_inds, 0] * (1 - self.timeouts[members, batch_inds, 0])
        data = (
            self.observations[members, batch_inds, 0],
            self.actions[members, batch_inds, 0],
            self.next_observations[members, batch_inds, 0],
            dones[..., None],
            self.rewards[members, batch_inds, 0][..., None],
        )
        batch = StackedBatch(*(th.tensor(array, device=self.device) for array in data))
        if self.prioritized:
            weights = th.tensor(weights.astype(np.float32)[..., None], device=self.device)
            batch = batch._replace(weights=weights, indices=batch_inds)
        return batch

"""E replay buffers written in lockstep: one array per field, each member's SB3 buffer a view of its slice."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer

from study.stacked.common import StackedBatch
from study.stacked.nets import Unsupported

FIELDS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class StackedReplayBuffer:
    """The members' uniform replay buffers as [E, size, 1, ·] arrays.

    Every member adds one transition per step, so all share one write position. The members'
    `ReplayBuffer`s keep working (parameter-noise adaptation and checkpoints read them): their
    arrays become views of their slices, and their `pos`/`full` follow each write.
    """

    def __init__(self, buffers: Sequence[ReplayBuffer]) -> None:
        first = buffers[0]
        for buffer in buffers:
            if type(buffer) is not ReplayBuffer:
                raise Unsupported(f"replay: {type(buffer).__name__} is not stacked yet (uniform replay is)")
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

    def sample(self, batch_size: int, rngs: Sequence[np.random.RandomState]) -> StackedBatch:
        """Each member's `ReplayBuffer.sample(batch_size)`, its indices drawn from its stream as SB3
        draws them from the global one."""
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
        return StackedBatch(*(th.tensor(array, device=self.device) for array in data))

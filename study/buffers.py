"""Prioritized experience replay (Schaul et al., 2016) as SB3 replay buffer classes."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import VecNormalize

# the arrays of SB3's ReplayBuffer with one row per stored step
TRANSITIONS = ("observations", "next_observations", "actions", "rewards", "dones", "timeouts")


class SumTree:
    """A binary tree whose internal nodes hold the sums of their leaves.

    A batch update adds each changed leaf's difference to all its ancestors in one
    vectorized call; a batch search descends the O(log n) levels for all values at once.
    The sums are recomputed from the leaves every `rebuild_every` updates, so rounding
    never accumulates.
    """

    def __init__(self, capacity: int, rebuild_every: int = 10_000) -> None:
        self.capacity = capacity
        self._leaves = 1 << max(capacity - 1, 0).bit_length()  # a power of two ≥ capacity
        self._depth = self._leaves.bit_length() - 1
        self._shifts = np.arange(1, self._depth + 1, dtype=np.int64)[:, None]
        self.nodes = np.zeros(2 * self._leaves, dtype=np.float64)  # root at 1, leaves at [L, 2L)
        self.rebuild_every = rebuild_every
        self._updates = 0

    @property
    def total(self) -> float:
        return float(self.nodes[1])

    @property
    def leaves(self) -> np.ndarray:
        """All leaves, as a view."""
        return self.nodes[self._leaves :]

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(idx) + self._leaves]

    def update(self, idx: np.ndarray, values: np.ndarray | float) -> None:
        """Set the leaves `idx` to `values` (the last one wins for repeated indices)."""
        leaf = np.asarray(idx, dtype=np.int64).ravel() + self._leaves
        values = np.broadcast_to(np.asarray(values, dtype=np.float64), leaf.shape)
        if len(leaf) > 1:  # one change per leaf: the last (stratified batches come sorted)
            if np.all(leaf[1:] >= leaf[:-1]):
                keep = np.append(leaf[1:] != leaf[:-1], True)
            else:
                _, last = np.unique(leaf[::-1], return_index=True)
                keep = len(leaf) - 1 - last
            leaf, values = leaf[keep], values[keep]
        delta = values - self.nodes[leaf]
        self.nodes[leaf] = values
        np.add.at(self.nodes, (leaf[None, :] >> self._shifts).ravel(), np.tile(delta, self._depth))
        self._updates += 1
        if self._updates % self.rebuild_every == 0:
            self.rebuild()

    def rebuild(self) -> None:
        """Recompute every internal node from the leaves."""
        for level in range(self._depth - 1, -1, -1):
            lo = 1 << level
            self.nodes[lo : 2 * lo] = self.nodes[2 * lo : 4 * lo : 2] + self.nodes[2 * lo + 1 : 4 * lo : 2]

    def find(self, prefix_sums: np.ndarray, size: int) -> np.ndarray:
        """For each value v in [0, total): the leaf i with sum(leaves[:i]) <= v < sum(leaves[:i+1])."""
        value = np.array(prefix_sums, dtype=np.float64)
        # jump to a middle level with one binary search over its cumulative sums, then descend
        jump = min(10, self._depth)
        level = self.nodes[1 << jump : 2 << jump]
        cumulative = np.cumsum(level)
        node = np.minimum(np.searchsorted(cumulative, value, side="right"), len(level) - 1)
        value -= cumulative[node] - level[node]
        node += 1 << jump
        for _ in range(self._depth - jump):
            left = 2 * node
            left_sum = self.nodes[left]
            go_right = value >= left_sum
            value -= left_sum * go_right
            node = left + go_right
        # rounding can step past the last filled leaf: those leaves are empty
        return np.minimum(node - self._leaves, size - 1)


class PrioritizedReplayBufferSamples(NamedTuple):
    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None
    weights: th.Tensor  # importance-sampling weights, normalized by their maximum
    indices: np.ndarray  # to write the new priorities back


class PrioritizedReplayBuffer(ReplayBuffer):
    """Proportional prioritization: P(i) = p_i^α / Σ p^α with p = |δ| + ε, on a sum-tree.

    New transitions get the largest priority seen so far. Batches are stratified: one draw
    from each of `batch_size` equal segments of the total priority. The importance-sampling
    weights w = (N·P(i))^−β / max w use `beta`, which the learner anneals to 1.
    """

    def __init__(
        self,
        buffer_size: int,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        device: th.device | str = "auto",
        n_envs: int = 1,
        optimize_memory_usage: bool = False,
        handle_timeout_termination: bool = True,
        alpha: float = 0.6,
        beta0: float = 0.4,
        eps: float = 1e-6,
    ) -> None:
        if n_envs != 1 or optimize_memory_usage:
            raise ValueError("prioritized replay supports one environment and no optimize_memory_usage")
        super().__init__(buffer_size, observation_space, action_space, device, 1, False, handle_timeout_termination)
        self.alpha, self.beta0, self.beta, self.eps = alpha, beta0, beta0, eps
        self.max_priority = 1.0
        self._init_priorities()

    def _init_priorities(self) -> None:
        self.tree = SumTree(self.buffer_size)
        self._min = (np.inf, -1)  # the smallest leaf (for the largest weight) and where it is

    def add(self, *args: Any, **kwargs: Any) -> None:
        idx = self.pos
        super().add(*args, **kwargs)
        self._set_new(np.array([idx]))

    def _set_new(self, idx: np.ndarray) -> None:
        self._set(idx, self.max_priority**self.alpha)

    def _set(self, idx: np.ndarray, values: np.ndarray | float) -> None:
        self.tree.update(idx, values)
        if np.any(idx == self._min[1]):  # the smallest leaf changed: search again (rarely sampled, so rare)
            leaves = self.tree.leaves[: self.size()]
            self._min = (float(leaves.min()), int(leaves.argmin()))
        else:
            values = self.tree[idx]  # as set: the last value of a repeated index
            smallest = int(np.argmin(values))
            if values[smallest] < self._min[0]:
                self._min = (float(values[smallest]), int(idx[smallest]))

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> PrioritizedReplayBufferSamples:
        idx, probabilities = self.sample_indices(batch_size)
        weights = (probabilities / self.min_probability()) ** -self.beta  # = (N·P)^−β / max (N·P)^−β
        data = self._get_samples(idx, env=env)
        weights = self.to_torch(weights.astype(np.float32).reshape(-1, 1), copy=False)  # a new array already
        return PrioritizedReplayBufferSamples(*data, weights=weights, indices=idx)

    def sample_indices(
        self, batch_size: int, rng: np.random.RandomState | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """Indices drawn with P(i) ∝ p_i^α, and their probabilities (drawn from `rng`, else the
        global numpy stream)."""
        total = self.tree.total
        uniform = (rng or np.random).uniform(size=batch_size)
        bounds = (np.arange(batch_size) + uniform) * (total / batch_size)
        idx = self.tree.find(bounds, self.size())
        return idx, self.tree[idx] / total

    def min_probability(self) -> float:
        return self._min[0] / self.tree.total

    def update_priorities(self, idx: np.ndarray, td_errors: np.ndarray) -> None:
        """p_i ← |δ_i| + ε."""
        priorities = np.abs(td_errors) + self.eps
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self._set(idx, priorities**self.alpha)


class RankReplayBuffer(PrioritizedReplayBuffer):
    """Rank-based prioritization: P(i) ∝ (1 / rank(i))^α, rank by |δ| (largest first).

    The order is re-sorted every `sort_every` samples (Schaul et al. re-sort their heap
    periodically too); new transitions go to the top, as they get the largest priority.
    """

    def __init__(self, *args: Any, alpha: float = 0.7, beta0: float = 0.5, sort_every: int = 1_000, **kw: Any) -> None:
        self.sort_every = sort_every
        super().__init__(*args, alpha=alpha, beta0=beta0, eps=0.0, **kw)

    def _init_priorities(self) -> None:
        self.priorities = np.zeros(self.buffer_size, dtype=np.float64)
        self._order = np.zeros(0, dtype=np.int64)  # buffer indices, highest priority first
        self._new: list[int] = []
        self._samples = 0
        # cumulative rank probabilities, for every possible size
        self._cdf = np.cumsum(np.arange(1, self.buffer_size + 1, dtype=np.float64) ** -self.alpha)

    def _set_new(self, idx: np.ndarray) -> None:
        self.priorities[idx] = self.max_priority
        self._new.extend(int(i) for i in idx)

    def _refresh_order(self) -> None:
        size = self.size()
        if self._samples % self.sort_every == 0:
            self._order = np.argsort(-self.priorities[:size], kind="stable")
        elif self._new:
            new = np.array(self._new[::-1], dtype=np.int64)
            self._order = np.concatenate([new, self._order[~np.isin(self._order, new)]])
        self._new.clear()
        self._samples += 1

    def sample_indices(
        self, batch_size: int, rng: np.random.RandomState | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._refresh_order()
        size = self.size()
        total = self._cdf[size - 1]
        uniform = (rng or np.random).uniform(size=batch_size)
        bounds = (np.arange(batch_size) + uniform) * (total / batch_size)
        ranks = np.minimum(np.searchsorted(self._cdf[:size], bounds, side="right"), size - 1)
        return self._order[ranks], (ranks + 1.0) ** -self.alpha / total

    def min_probability(self) -> float:
        size = self.size()
        return float(size**-self.alpha / self._cdf[size - 1])

    def update_priorities(self, idx: np.ndarray, td_errors: np.ndarray) -> None:
        priorities = np.abs(td_errors)
        self.max_priority = max(self.max_priority, float(priorities.max()))
        self.priorities[idx] = priorities


REPLAY_BUFFERS: dict[str, type[ReplayBuffer] | None] = {
    "uniform": None,  # SB3's own choice
    "proportional": PrioritizedReplayBuffer,
    "rank": RankReplayBuffer,
}

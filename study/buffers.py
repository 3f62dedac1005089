"""Prioritized experience replay (Schaul et al., 2016) as SB3 replay buffer classes."""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer
from stable_baselines3.common.vec_env import VecNormalize


class SegmentTree:
    """A binary tree whose internal nodes hold `op` (add, minimum, ...) of their leaves;
    a batch update costs O(log n) vector operations.

    :param neutral: the value of empty leaves (0 for sums, +inf for minima)
    """

    def __init__(self, capacity: int, op: np.ufunc = np.add, neutral: float = 0.0) -> None:
        self.capacity, self.op = capacity, op
        self._leaves = 1 << max(capacity - 1, 0).bit_length()  # a power of two ≥ capacity
        self._depth = self._leaves.bit_length() - 1
        self.nodes = np.full(2 * self._leaves, neutral, dtype=np.float64)  # root at 1, leaves at [L, 2L)

    @property
    def root(self) -> float:
        """`op` over all leaves."""
        return float(self.nodes[1])

    def __getitem__(self, idx: np.ndarray) -> np.ndarray:
        return self.nodes[np.asarray(idx) + self._leaves]

    def ancestors(self, idx: np.ndarray) -> list[np.ndarray]:
        """The internal nodes above the leaves `idx`, level by level, bottom up (repeats are
        harmless: a node recomputed twice gets the same value)."""
        leaf = np.asarray(idx, dtype=np.int64) + self._leaves
        return [leaf >> level for level in range(1, self._depth + 1)]

    def update(self, idx: np.ndarray, values: np.ndarray | float, ancestors: list[np.ndarray] | None = None) -> None:
        """Set the leaves `idx` to `values` (the last one wins for repeated indices).

        :param ancestors: `ancestors(idx)`, when already computed (trees of one capacity share them)
        """
        self.nodes[np.asarray(idx, dtype=np.int64) + self._leaves] = values
        for node in ancestors if ancestors is not None else self.ancestors(idx):
            self.nodes[node] = self.op(self.nodes[2 * node], self.nodes[2 * node + 1])


class SumTree(SegmentTree):
    """A segment tree of sums, searchable by prefix sum."""

    @property
    def total(self) -> float:
        return self.root

    def find(self, prefix_sums: np.ndarray, size: int) -> np.ndarray:
        """For each value v in [0, total): the leaf i with sum(leaves[:i]) <= v < sum(leaves[:i+1])."""
        value = np.array(prefix_sums, dtype=np.float64)
        node = np.ones(len(value), dtype=np.int64)
        for _ in range(self._depth):
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
        self.min_tree = SegmentTree(self.buffer_size, np.minimum, np.inf)

    def add(self, *args: Any, **kwargs: Any) -> None:
        idx = self.pos
        super().add(*args, **kwargs)
        self._set_new(np.array([idx]))

    def _set_new(self, idx: np.ndarray) -> None:
        self._set(idx, self.max_priority**self.alpha)

    def _set(self, idx: np.ndarray, values: np.ndarray | float) -> None:
        ancestors = self.tree.ancestors(idx)
        self.tree.update(idx, values, ancestors)
        self.min_tree.update(idx, values, ancestors)

    def sample(self, batch_size: int, env: VecNormalize | None = None) -> PrioritizedReplayBufferSamples:
        idx, probabilities = self.sample_indices(batch_size)
        weights = (self.size() * probabilities) ** -self.beta
        weights /= (self.size() * self.min_probability()) ** -self.beta
        data = self._get_samples(idx, env=env)
        return PrioritizedReplayBufferSamples(*data, weights=self.to_torch(weights.reshape(-1, 1)), indices=idx)

    def sample_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        """Indices drawn with P(i) ∝ p_i^α, and their probabilities."""
        total = self.tree.total
        bounds = (np.arange(batch_size) + np.random.uniform(size=batch_size)) * (total / batch_size)
        idx = self.tree.find(bounds, self.size())
        return idx, self.tree[idx] / total

    def min_probability(self) -> float:
        return self.min_tree.root / self.tree.total

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

    def sample_indices(self, batch_size: int) -> tuple[np.ndarray, np.ndarray]:
        self._refresh_order()
        size = self.size()
        total = self._cdf[size - 1]
        bounds = (np.arange(batch_size) + np.random.uniform(size=batch_size)) * (total / batch_size)
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

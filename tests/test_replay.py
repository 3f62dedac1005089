"""Prioritized replay: the sum-tree, proportional and rank-based sampling, IS weights, DQN with PER."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from scipy import stats
from stable_baselines3.common.callbacks import BaseCallback

from study.buffers import PrioritizedReplayBuffer, RankReplayBuffer, SumTree
from study.dqn import DQN
from study.policies import ParamNoiseDQNPolicy

OBS = gym.spaces.Box(-1, 1, shape=(2,))
ACTIONS = gym.spaces.Discrete(2)


def filled(cls, size: int, capacity: int | None = None, **kwargs) -> PrioritizedReplayBuffer:
    buffer = cls(capacity or size, OBS, ACTIONS, device="cpu", **kwargs)
    for i in range(size):
        obs = np.full((1, 2), i, dtype=np.float32)
        buffer.add(obs, obs, np.array([[0]]), np.array([float(i)]), np.array([False]), [{}])
    return buffer


def draw(buffer, n: int, batch: int = 250) -> np.ndarray:
    return np.concatenate([buffer.sample_indices(batch)[0] for _ in range(n // batch)])


def test_sum_tree_update_keeps_the_total_and_finds_prefix_sums() -> None:
    rng = np.random.default_rng(0)
    tree = SumTree(37)
    values = rng.uniform(size=37)
    tree.update(np.arange(37), values)
    for _ in range(20):
        idx = rng.integers(0, 37, size=5)
        new = rng.uniform(size=5)
        tree.update(idx, new)
        values[idx] = new
        assert tree.total == pytest.approx(values.sum())
    cumulative = np.cumsum(values)
    probes = rng.uniform(0, values.sum(), size=1000)
    assert np.array_equal(tree.find(probes, 37), np.searchsorted(cumulative, probes, side="right"))


def reference_levels(leaves: np.ndarray) -> list[np.ndarray]:
    """Every level of a sum-tree over `leaves`, root first, by pairwise sums."""
    levels = [leaves]
    while len(levels[0]) > 1:
        levels.insert(0, levels[0][0::2] + levels[0][1::2])
    return levels


def reference_find(values: np.ndarray, probes: np.ndarray) -> np.ndarray:
    """The leaf each probe falls into, by cumulative sums."""
    return np.searchsorted(np.cumsum(values), probes, side="right")


@pytest.mark.parametrize("capacity", [3000, 2049, 5000])
def test_sum_tree_descends_below_the_searched_level(capacity: int) -> None:
    """Deeper than the level that is binary-searched (2^10 nodes), so the descent runs; not a power
    of two, so the last leaves stay empty. Priorities on a 1/64 grid: every sum is exact."""
    rng = np.random.default_rng(capacity)
    tree = SumTree(capacity)
    assert tree._depth > 10
    values = rng.integers(1, 4096, size=capacity) / 64
    tree.update(np.arange(capacity), values)
    for _ in range(300):  # batches with repeated indices, sorted or not: the last value wins
        idx = rng.integers(0, capacity, size=32)
        new = rng.integers(0, 4096, size=32) / 64
        if rng.uniform() < 0.5:
            order = np.argsort(idx, kind="stable")
            idx, new = idx[order], new[order]
        tree.update(idx, new)
        for i, v in zip(idx, new, strict=True):
            values[i] = v
        assert tree.total == values.sum()
    assert np.array_equal(tree[np.arange(capacity)], values)
    assert np.array_equal(tree.leaves[capacity:], np.zeros(len(tree.leaves) - capacity))
    probes = rng.uniform(0, values.sum(), size=20_000)
    assert np.array_equal(tree.find(probes, capacity), reference_find(values, probes))
    # the ends of every leaf's interval (zero-priority leaves are never found)
    edges = np.cumsum(values)[values > 0][:-1]
    assert np.array_equal(tree.find(edges, capacity), reference_find(values, edges))


def test_sum_tree_rebuild_recomputes_every_level_from_the_leaves() -> None:
    rng = np.random.default_rng(0)
    tree = SumTree(3000, rebuild_every=50)
    values = rng.uniform(size=3000)
    tree.update(np.arange(3000), values)
    for step in range(2, 211):
        idx = rng.choice(3000, size=64, replace=False)
        values[idx] = rng.uniform(size=64) ** 3
        tree.update(idx, values[idx])
        exact = [
            np.array_equal(tree.nodes[1 << d : 2 << d], level) for d, level in enumerate(reference_levels(tree.leaves))
        ]
        if step % 50 == 0:  # just rebuilt: every internal node is the sum of its children, bit for bit
            assert all(exact), step
        else:
            assert tree.total == pytest.approx(values.sum(), rel=1e-12)
    assert not all(exact)  # between rebuilds the incremental sums drift by rounding


def test_stratified_sampling_matches_a_brute_force_reference_after_wrap_around() -> None:
    """Capacity 1500 (deeper than the searched level, not a power of two), 2300 transitions: the
    oldest 800 overwritten; priorities updated in batches with repeated indices."""
    rng = np.random.default_rng(1)
    buffer = filled(PrioritizedReplayBuffer, 2300, capacity=1500, alpha=0.6)
    assert buffer.full and buffer.pos == 800 and buffer.size() == 1500
    priority, largest = np.ones(1500), 1.0  # p, before the power α; new transitions get the largest so far
    for _ in range(200):
        idx = np.sort(rng.integers(0, 1500, size=64))
        td = rng.exponential(size=64) * rng.choice([1e-3, 1.0, 10.0])
        td = td[np.searchsorted(idx, idx)]  # repeated indices carry one TD error, as within a batch
        buffer.update_priorities(idx, td)
        priority[idx] = np.abs(td) + buffer.eps
        largest = max(largest, priority[idx].max())
        if rng.uniform() < 0.2:  # new transitions overwrite the oldest, at the largest priority
            pos = buffer.pos
            obs = np.zeros((1, 2), dtype=np.float32)
            buffer.add(obs, obs, np.array([[0]]), np.array([0.0]), np.array([False]), [{}])
            priority[pos] = largest
        p = priority**0.6
        assert buffer.tree.total == pytest.approx(p.sum(), rel=1e-9)
        assert buffer.min_probability() == pytest.approx(p.min() / p.sum(), rel=1e-9)
    assert buffer.max_priority == largest
    np.testing.assert_allclose(buffer.tree[np.arange(1500)], p, rtol=1e-12)
    for seed in range(20):
        np.random.seed(seed)
        idx, probabilities = buffer.sample_indices(64)
        np.random.seed(seed)
        bounds = (np.arange(64) + np.random.uniform(size=64)) * p.sum() / 64  # one draw per segment
        assert np.array_equal(idx, reference_find(p, bounds))
        np.testing.assert_allclose(probabilities, p[idx] / p.sum(), rtol=1e-9)
    np.random.seed(0)
    samples = buffer.sample(64)
    w = (1500 * p / p.sum()) ** -buffer.beta
    np.testing.assert_allclose(samples.weights.numpy().ravel(), w[samples.indices] / w.max(), rtol=1e-5)


def test_smallest_priority_follows_the_last_of_repeated_indices() -> None:
    buffer = filled(PrioritizedReplayBuffer, 10, alpha=1.0, eps=0.0)
    buffer.update_priorities(np.arange(10), np.arange(1.0, 11.0))
    buffer.update_priorities(np.array([4, 4]), np.array([0.01, 20.0]))  # leaf 4 ends at 20
    assert buffer.tree[np.array([4])][0] == 20.0
    assert buffer.min_probability() == pytest.approx(1.0 / buffer.tree.total)


def test_proportional_sampling_matches_priorities_to_the_alpha() -> None:
    np.random.seed(0)
    buffer = filled(PrioritizedReplayBuffer, 50, alpha=0.6)
    td_errors = np.linspace(0.1, 5.0, 50)
    buffer.update_priorities(np.arange(50), td_errors)
    expected = (td_errors + buffer.eps) ** 0.6
    counts = np.bincount(draw(buffer, 100_000), minlength=50)
    assert stats.chisquare(counts, expected / expected.sum() * counts.sum()).pvalue > 0.01


def test_rank_based_sampling_matches_rank_to_the_minus_alpha() -> None:
    np.random.seed(0)
    buffer = filled(RankReplayBuffer, 40, alpha=0.7)
    td_errors = np.random.permutation(np.arange(1.0, 41.0))
    buffer.update_priorities(np.arange(40), td_errors)
    buffer._samples = 0  # re-sort on the next sample
    ranks = np.argsort(np.argsort(-td_errors)) + 1
    expected = ranks**-0.7
    counts = np.bincount(draw(buffer, 100_000), minlength=40)
    assert stats.chisquare(counts, expected / expected.sum() * counts.sum()).pvalue > 0.01


def test_importance_sampling_weights_by_hand() -> None:
    np.random.seed(1)
    buffer = filled(PrioritizedReplayBuffer, 4, alpha=1.0, beta0=0.5, eps=0.0)
    buffer.update_priorities(np.arange(4), np.array([1.0, 2.0, 3.0, 4.0]))
    samples = buffer.sample(64)
    p = np.array([1.0, 2.0, 3.0, 4.0]) / 10.0
    w = (4 * p) ** -0.5
    assert np.allclose(samples.weights.numpy().ravel(), (w / w.max())[samples.indices])
    assert samples.weights.max() <= 1.0


def test_new_transitions_get_the_max_priority_and_overwrite_the_oldest() -> None:
    buffer = filled(PrioritizedReplayBuffer, 5, alpha=1.0, eps=0.0)
    buffer.update_priorities(np.arange(5), np.array([0.5, 7.0, 0.5, 0.5, 0.5]))
    obs = np.full((1, 2), 99, dtype=np.float32)
    buffer.add(obs, obs, np.array([[1]]), np.array([99.0]), np.array([False]), [{}])
    assert buffer.pos == 1 and buffer.full
    assert buffer.tree[np.array([0])][0] == 7.0  # the oldest slot, now the newest transition, at max priority
    assert buffer.rewards[0, 0] == 99.0
    assert buffer.tree.total == pytest.approx(7.0 + 7.0 + 4 * 0.5 - 0.5)


def test_rank_based_new_transitions_go_to_the_top() -> None:
    buffer = filled(RankReplayBuffer, 6, sort_every=1_000)
    buffer.update_priorities(np.arange(6), np.arange(6, dtype=float))
    buffer.sample_indices(8)
    obs = np.zeros((1, 2), dtype=np.float32)
    buffer.add(obs, obs, np.array([[1]]), np.array([0.0]), np.array([False]), [{}])  # overwrites slot 0
    buffer.sample_indices(8)
    assert buffer._order[0] == 0 and sorted(buffer._order.tolist()) == list(range(6))


@pytest.mark.parametrize("cls", [PrioritizedReplayBuffer, RankReplayBuffer])
def test_dqn_writes_priorities_back_and_anneals_beta(cls) -> None:
    model = DQN(
        ParamNoiseDQNPolicy,
        gym.make("study/Chain-v0", n=5),
        learning_starts=20,
        batch_size=8,
        buffer_size=500,
        train_freq=1,
        replay_buffer_class=cls,
        seed=0,
        policy_kwargs={"net_arch": [8]},
    )
    buffer = model.replay_buffer
    betas: dict[int, float] = {}

    class Beta(BaseCallback):
        def _on_step(self) -> bool:
            betas[self.num_timesteps] = buffer.beta
            return True

    model.learn(200, callback=Beta())
    priorities = buffer.tree[np.arange(buffer.size())] if cls is PrioritizedReplayBuffer else buffer.priorities
    assert len(np.unique(priorities[: buffer.size()])) > 20  # written back from TD errors
    assert betas[20] == buffer.beta0  # before the first gradient step
    assert betas[100] == pytest.approx(buffer.beta0 + (1 - buffer.beta0) * 99 / 200)  # as of the last gradient step
    assert buffer.beta == pytest.approx(1.0)

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

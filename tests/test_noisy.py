"""NoisyNet: the noisy layer, its initial values, deterministic evaluation and the resampling schedule."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from test_param_noise import changed, in_episode_index

from study.config import RunSettings, RunSpec
from study.dqn import DQN
from study.exploration.noisy import NoisyLinear, NoisyNetCallback, mean_abs_sigma, noise_off
from study.policies import NoisyDQNPolicy
from study.run import execute


def test_factorised_noise_is_the_outer_product_of_f_eps() -> None:
    layer = NoisyLinear(5, 3, factorised=True)
    layer.sample_noise(th.Generator().manual_seed(7))
    gen = th.Generator().manual_seed(7)
    eps_in, eps_out = th.randn(5, generator=gen), th.randn(3, generator=gen)

    def f(x: th.Tensor) -> th.Tensor:
        return x.sign() * x.abs().sqrt()

    assert th.allclose(layer.weight_epsilon, th.outer(f(eps_out), f(eps_in)))
    assert th.allclose(layer.bias_epsilon, f(eps_out))


def test_independent_noise_draws_every_entry() -> None:
    layer = NoisyLinear(50, 40, factorised=False)
    layer.sample_noise(th.Generator().manual_seed(0))
    assert th.linalg.matrix_rank(layer.weight_epsilon) == 40  # an outer product would have rank 1
    assert abs(float(layer.weight_epsilon.std()) - 1.0) < 0.05


@pytest.mark.parametrize("factorised", [True, False])
def test_initial_values(factorised: bool) -> None:
    p = 64
    layer = NoisyLinear(p, 32, factorised=factorised)
    bound = 1 / math.sqrt(p) if factorised else math.sqrt(3 / p)
    sigma = 0.5 / math.sqrt(p) if factorised else 0.017
    weights, biases = layer.weight_mu.detach().abs(), layer.bias_mu.detach().abs()
    assert bound >= float(weights.max()) > 0.99 * bound and float(biases.max()) <= bound  # 2,048 weights fill the range
    for s in (layer.weight_sigma, layer.bias_sigma):
        assert th.allclose(s, th.full_like(s, sigma))


def test_noise_off_uses_the_means_and_gradients_reach_sigma() -> None:
    layer = NoisyLinear(4, 2)
    layer.sample_noise()
    x = th.randn(3, 4)
    with noise_off(layer):
        assert th.allclose(layer(x), x @ layer.weight_mu.T + layer.bias_mu)
    assert not th.allclose(layer(x), x @ layer.weight_mu.T + layer.bias_mu)
    layer(x).pow(2).sum().backward()
    assert float(layer.weight_sigma.grad.abs().sum()) > 0 and float(layer.bias_sigma.grad.abs().sum()) > 0


def noisy_dqn(**kwargs) -> DQN:
    params = {"learning_starts": 5, "batch_size": 8, "buffer_size": 1000, "seed": 0, "train_freq": 2} | kwargs
    return DQN(NoisyDQNPolicy, gym.make("study/Chain-v0", n=5), policy_kwargs={"net_arch": [8, 8]}, **params)


def test_evaluation_is_deterministic_and_noise_free() -> None:
    model = noisy_dqn()
    policy = model.policy
    obs = np.eye(5, dtype=np.float32)
    first = model.predict(obs, deterministic=True)[0]
    for _ in range(5):
        policy.sample_acting_noise()
        assert np.array_equal(model.predict(obs, deterministic=True)[0], first)
    with th.no_grad(), noise_off(policy.q_net):
        means_only = policy.q_net(th.as_tensor(obs)).argmax(dim=1).numpy()
    assert np.array_equal(first, means_only)


class NoiseProbe(BaseCallback):
    def __init__(self) -> None:
        super().__init__()
        self.noise: list[np.ndarray] = []
        self.dones: list[bool] = []

    def _on_step(self) -> bool:
        self.noise.append(th.cat([e.flatten() for e in self.model.policy.noise_state()]).numpy().copy())
        self.dones.append(bool(self.locals["dones"][0]))
        return True


@pytest.mark.parametrize("resample", ["step", 3])
def test_acting_noise_follows_its_schedule_not_the_gradient_steps(resample) -> None:
    model = noisy_dqn()
    probe = NoiseProbe()
    model.learn(40, callback=CallbackList([probe, NoisyNetCallback(resample=resample, seed=0)]))
    k = 1 if resample == "step" else resample
    expected = [j == 1 or (j - 1) % k == 0 for j in in_episode_index(probe.dones)]
    assert changed(probe.noise) == expected


def test_gradient_step_resampling_acts_with_the_last_training_noise() -> None:
    model = noisy_dqn(train_freq=4, learning_starts=8)
    probe = NoiseProbe()
    model.learn(40, callback=CallbackList([probe, NoisyNetCallback(resample="gradient_step", seed=0)]))
    changes = [i for i, c in enumerate(changed(probe.noise)) if c][1:]
    # new noise only after each round of gradient steps (every 4 steps once training started)
    assert changes and all((i + 1) % 4 == 1 for i in changes)


def test_training_draws_independent_noise_for_online_and_target() -> None:
    model = noisy_dqn()
    model.policy.sample_training_noise()
    online = model.policy.q_net.q_net[0].weight_epsilon
    target = model.policy.q_net_target.q_net[0].weight_epsilon
    assert not th.equal(online, target)


def test_noisy_runs_log_mean_abs_sigma() -> None:
    settings = RunSettings(
        algo="dqn",
        env="study/Chain-v0",
        total_steps=300,
        net_arch=[8],
        eval={"freq": 150, "episodes": 1},
        hyperparams={"learning_starts": 50, "batch_size": 8, "learning_rate": 0.01},
        exploration={"noisy_net": {"log_every": 50}},
    )
    result = execute(RunSpec(study="noisy", budget="full", seed=0, settings=settings))
    assert result.status == "done", result.error
    assert result.adaptations["step"].tolist() == [50, 100, 150, 200, 250, 300]
    sigma = result.adaptations["sigma"]
    initial = (88 * 0.5 / math.sqrt(10) + 18 * 0.5 / math.sqrt(8)) / 106  # 10→8 and 8→2 factorised layers
    assert sigma.iloc[0] == pytest.approx(initial, rel=1e-3) and sigma.nunique() > 1  # σ is learned
    assert result.episodes["sigma"].notna().all()


def test_mean_abs_sigma_of_a_network() -> None:
    net = th.nn.Sequential(NoisyLinear(4, 4), th.nn.ReLU(), NoisyLinear(4, 2))
    assert mean_abs_sigma(net) == pytest.approx(0.25)

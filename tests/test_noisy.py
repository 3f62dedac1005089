"""NoisyNet: the noisy layer, its initial values, deterministic evaluation and the resampling schedule."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from test_param_noise import changed, in_episode_index
from torch import nn
from torch.nn import functional as F

import study.policies
from study.config import RunSettings, RunSpec
from study.dqn import DQN
from study.exploration.noisy import (
    NoisyLinear,
    NoisyNetCallback,
    make_noisy,
    mean_abs_sigma,
    moved_generator,
    noise_off,
    noisy_layers,
)
from study.exploration.perturb import perturbable_parameters
from study.features import FEATURES
from study.policies import NoisyDQNPolicy, ParamNoiseDQNPolicy
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


# CNN features extractors: their fully connected layer is part of the Q-network


IMAGES = {
    "minatar_cnn": gym.spaces.Box(0.0, 1.0, (5, 5, 2), np.float32),  # channel-last, as MinAtar
    "nature_cnn": gym.spaces.Box(0, 255, (1, 36, 36), np.uint8),  # the smallest image it takes
}


def cnn_policy(
    features: str = "minatar_cnn", net_arch: list[int] | None = None, cls: type = NoisyDQNPolicy, **kwargs
) -> ParamNoiseDQNPolicy:
    return cls(
        IMAGES[features],
        gym.spaces.Discrete(3),
        lambda _: 1e-3,
        net_arch=net_arch if net_arch is not None else [],
        features_extractor_class=FEATURES[features],
        features_extractor_kwargs={"features_dim": 8},
        **kwargs,
    )


def observations(features: str, n: int = 16) -> th.Tensor:
    space = IMAGES[features]
    space.seed(0)
    return th.as_tensor(np.stack([space.sample() for _ in range(n)]))


def layer_kinds(net: nn.Module) -> list[str]:
    """The fully connected layers in module order (features extractor, then head), noisy or not."""
    return [type(m).__name__ for m in net.modules() if isinstance(m, nn.Linear | NoisyLinear)]


@pytest.mark.parametrize("features", ["minatar_cnn", "nature_cnn"])
@pytest.mark.parametrize("net_arch", [[], [4]])
def test_all_makes_every_fully_connected_layer_noisy_features_extractor_included(features, net_arch) -> None:
    policy = cnn_policy(features, net_arch)
    for net in (policy.q_net, policy.q_net_target):
        assert not [m for m in net.modules() if isinstance(m, nn.Linear)]
        assert len(noisy_layers(net)) == 2 + len(net_arch)
        assert len(noisy_layers(net.features_extractor)) == 1
        assert [m for m in net.modules() if isinstance(m, nn.Conv2d)]  # convolutions stay
    assert {id(p) for p in policy.q_net.parameters()} == {
        id(p) for g in policy.optimizer.param_groups for p in g["params"]
    }


@pytest.mark.parametrize(
    ("net_arch", "layers", "kinds"),
    [
        ([], 1, ["Linear", "NoisyLinear"]),
        ([], 2, ["NoisyLinear", "NoisyLinear"]),
        ([4], 1, ["Linear", "Linear", "NoisyLinear"]),
        ([4], 2, ["Linear", "NoisyLinear", "NoisyLinear"]),
        ([4], 3, ["NoisyLinear", "NoisyLinear", "NoisyLinear"]),
    ],
)
def test_layers_count_over_the_whole_network(net_arch, layers, kinds) -> None:
    policy = cnn_policy(net_arch=net_arch, noisy_layers=layers)
    assert layer_kinds(policy.q_net) == layer_kinds(policy.q_net_target) == kinds


def test_more_layers_than_the_network_has_is_an_error() -> None:
    with pytest.raises(ValueError, match="2 fully connected layers"):
        cnn_policy(noisy_layers=3)


def test_noisy_layers_are_the_layers_parameter_noise_perturbs() -> None:
    """Like for like: NoisyNet (all layers) and parameter noise explore with the same weights."""
    noisy = cnn_policy(net_arch=[4])
    perturbed = cnn_policy(net_arch=[4], cls=ParamNoiseDQNPolicy)
    noisy_names = [name for name, m in noisy.q_net.named_modules() if isinstance(m, NoisyLinear)]
    owners = {id(p): name for name, m in perturbed.q_net.named_modules() for p in m.parameters(recurse=False)}
    perturbed_names = list(dict.fromkeys(owners[id(p)] for p in perturbable_parameters(perturbed.q_net)))
    assert noisy_names == perturbed_names == ["features_extractor.linear.0", "q_net.0", "q_net.2"]


def test_deterministic_prediction_uses_the_means_in_the_features_extractor_too() -> None:
    policy = cnn_policy(noisy_kwargs={"sigma0": 50.0})  # noise that changes the greedy actions
    layer = policy.q_net.features_extractor.linear[0]
    seen: list[bool] = []
    layer.register_forward_hook(
        lambda module, args, out: seen.append(th.allclose(out, F.linear(args[0], module.weight_mu, module.bias_mu)))
    )
    obs = observations("minatar_cnn")
    first = policy.predict(obs.numpy(), deterministic=True)[0]
    noisy = []
    for _ in range(5):
        policy.sample_acting_noise()
        assert np.array_equal(policy.predict(obs.numpy(), deterministic=True)[0], first)
        noisy.append(policy.predict(obs.numpy(), deterministic=False)[0])
    assert seen == [True] + [True, False] * 5
    assert any(not np.array_equal(actions, first) for actions in noisy)


def test_acting_and_training_noise_reach_the_features_extractor() -> None:
    policy = cnn_policy(net_arch=[4], noisy_kwargs={"factorised": False})
    online, target = noisy_layers(policy.q_net), noisy_layers(policy.q_net_target)
    before = [layer.weight_epsilon.clone() for layer in online]
    policy.sample_acting_noise()
    assert all(not th.equal(b, layer.weight_epsilon) for b, layer in zip(before, online, strict=True))
    policy.sample_training_noise()
    for mine, theirs in zip(online, target, strict=True):
        assert not th.equal(mine.weight_epsilon, theirs.weight_epsilon)
        assert not th.equal(mine.bias_epsilon, theirs.bias_epsilon)
    assert len(policy.noise_state()) == 2 * len(online) == 6


def test_mean_abs_sigma_covers_the_features_extractor() -> None:
    policy = cnn_policy()  # 16·3·3 = 144 → 8 and 8 → 3, factorised
    expected = (144 * 8 + 8) * 0.5 / math.sqrt(144) + (8 * 3 + 3) * 0.5 / math.sqrt(8)
    assert mean_abs_sigma(policy.q_net) == pytest.approx(expected / (144 * 8 + 8 + 8 * 3 + 3))


def test_make_noisy_keeps_module_order_in_nested_networks() -> None:
    net = nn.Sequential(nn.Sequential(nn.Linear(2, 3), nn.ReLU()), nn.Linear(3, 4))
    make_noisy(net, 1)
    assert layer_kinds(net) == ["Linear", "NoisyLinear"]


# the noise lives on the policy's device


def test_noise_generator_and_buffers_are_on_the_policy_device() -> None:
    policy = cnn_policy()
    assert policy.noise_generator.device == policy.device
    for layer in [*noisy_layers(policy.q_net), *noisy_layers(policy.q_net_target)]:
        assert layer.weight_epsilon.device == layer.bias_epsilon.device == layer.weight_mu.device


def test_noise_generator_follows_the_policy_to_another_device(monkeypatch) -> None:
    policy = cnn_policy()
    moves: list[th.device] = []

    def record(generator: th.Generator, device: th.device) -> th.Generator:
        moves.append(device)
        return generator  # no accelerator here, and a meta device has no generator

    monkeypatch.setattr(study.policies, "moved_generator", record)
    policy.to(th.float64)  # same device: the same generator
    assert moves == []
    policy.to("meta")
    assert moves == [th.device("meta")]
    assert {b.device.type for b in policy.buffers()} == {"meta"}


def test_a_moved_generator_continues_deterministically() -> None:
    first, second = (moved_generator(th.Generator().manual_seed(3), "cpu") for _ in range(2))
    assert first.device == th.device("cpu")
    assert th.equal(th.randn(5, generator=first), th.randn(5, generator=second))
    other = moved_generator(th.Generator().manual_seed(4), "cpu")
    assert not th.equal(
        th.randn(5, generator=moved_generator(th.Generator().manual_seed(3), "cpu")), th.randn(5, generator=other)
    )


def test_noise_state_restores_across_kinds_of_device() -> None:
    model = noisy_dqn()
    callback = NoisyNetCallback(seed=0)
    callback.init_callback(model)
    state = callback.state_dict()
    assert state["generator_device"] == "cpu"
    draws = []
    for saved_on in ("cpu", "cpu", "cuda", "cuda"):
        callback._restore(state | {"generator_device": saved_on})
        draws.append(th.randn(4, generator=model.policy.noise_generator))
    assert th.equal(draws[0], draws[1]) and th.equal(draws[2], draws[3])  # reproducible either way

"""Parameter-space noise for TD3/DDPG: resampling schedule, what is perturbed, σ adaptation."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from conftest import tiny_td3
from stable_baselines3 import SAC, TD3
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch import nn

from study.config import RunSettings
from study.exploration import ParamNoiseCallback, perturbable_parameters
from study.policies import ParamNoiseSACPolicy, ParamNoiseTD3Policy
from study.registry import PARAM_NOISE_DEFAULTS, param_noise_defaults


def flat(net: nn.Module) -> np.ndarray:
    return th.cat([p.detach().flatten() for p in net.parameters()]).numpy().copy()


class Probe(BaseCallback):
    """Placed before the noise callback: sees the weights that chose the step's action."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[np.ndarray] = []
        self.actor: list[np.ndarray] = []
        self.dones: list[bool] = []
        self.action_errors: list[float] = []
        self.noise_errors: list[float] = []

    def _on_step(self) -> bool:
        policy = self.model.policy
        self.weights.append(flat(policy.perturbed_actor))
        self.actor.append(flat(policy.actor))
        self.dones.append(bool(self.locals["dones"][0]))
        if self.num_timesteps > self.model.learning_starts:
            obs = policy.obs_to_tensor(self.model._last_obs)[0]
            with th.no_grad():
                expected = policy.unscale_action(policy.perturbed_actor(obs).numpy())
            self.action_errors.append(float(np.abs(expected - self.locals["actions"]).max()))
        return True


def learn(model, noise: ParamNoiseCallback, steps: int) -> Probe:
    probe = Probe()
    model.learn(steps, callback=CallbackList([probe, noise]))
    return probe


def in_episode_index(dones: list[bool]) -> list[int]:
    """1-based index of each step within its episode."""
    index, out = 0, []
    for done in dones:
        index += 1
        out.append(index)
        if done:
            index = 0
    return out


def changed(weights: list[np.ndarray]) -> list[bool]:
    """Whether the acting weights differ from the previous step's (first step: True)."""
    return [True] + [not np.array_equal(a, b) for a, b in zip(weights[1:], weights[:-1], strict=True)]


@pytest.mark.parametrize("k", [1, 3, 4, 7])
def test_weights_held_for_k_steps_and_resampled_at_episode_starts(k: int) -> None:
    model = tiny_td3(max_episode_steps=10)
    probe = learn(model, ParamNoiseCallback(interval=k, adaptive=False, seed=1), 45)
    index = in_episode_index(probe.dones)
    expected = [j == 1 or (j - 1) % k == 0 for j in index]
    assert changed(probe.weights) == expected
    # training went on meanwhile: the learner moved while the acting copy was held
    assert not np.array_equal(probe.actor[10], probe.actor[-1])


def test_episode_interval_changes_only_at_episode_starts() -> None:
    model = tiny_td3(max_episode_steps=12)
    probe = learn(model, ParamNoiseCallback(interval="episode", adaptive=False, seed=1), 60)
    assert changed(probe.weights) == [j == 1 for j in in_episode_index(probe.dones)]
    assert sum(probe.dones) == 5


def test_actions_come_from_the_perturbed_copy() -> None:
    model = tiny_td3(learning_starts=0)
    probe = learn(model, ParamNoiseCallback(interval=2, adaptive=False, seed=0), 30)
    assert len(probe.action_errors) == 30
    assert max(probe.action_errors) < 1e-5


def test_learner_is_never_perturbed() -> None:
    model = tiny_td3(learning_starts=1000)  # no gradient step: θ may not move at all
    before = flat(model.policy.actor)
    noise = ParamNoiseCallback(interval=1, adaptive=True, adapt_every=5, seed=0)
    probe = learn(model, noise, 50)
    assert np.array_equal(flat(model.policy.actor), before)
    assert np.array_equal(flat(model.policy.actor_target), before)
    assert not np.array_equal(probe.weights[-1], before)
    assert noise.resamples == 1 + 50 and len(noise.adaptations) > 0


def test_layer_norm_parameters_are_copied_never_perturbed() -> None:
    model = tiny_td3(layer_norm=True)
    policy = model.policy
    norms = [m for m in policy.actor.mu if isinstance(m, nn.LayerNorm)]
    assert len(norms) == 2
    for q_net in policy.critic.q_networks:
        assert sum(isinstance(m, nn.LayerNorm) for m in q_net) == 2
    # LayerNorm sits after each hidden Linear and before its activation
    kinds = [type(m).__name__ for m in policy.actor.mu]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU", "Linear", "Tanh"]
    assert not any(p is n.weight or p is n.bias for n in norms for p in perturbable_parameters(policy.actor))
    with th.no_grad():  # make LayerNorm params distinguishable from their defaults
        for m in policy.actor.modules():
            if isinstance(m, nn.LayerNorm):
                m.weight.uniform_(0.5, 1.5)
                m.bias.uniform_(-0.5, 0.5)
    noise = ParamNoiseCallback(interval=1, adaptive=False, initial_sigma=0.5, seed=0)
    model.learn(1, callback=noise)
    for (name, p), q in zip(policy.actor.named_parameters(), policy.perturbed_actor.parameters(), strict=True):
        if ".1." in name or ".4." in name:  # LayerNorm entries of mu
            assert th.equal(p, q), name
        else:
            assert not th.equal(p, q), name


def test_evaluation_uses_the_unperturbed_actor() -> None:
    model = tiny_td3()
    noise = ParamNoiseCallback(interval="episode", adaptive=False, initial_sigma=1.0, seed=0)
    model.learn(20, callback=noise)
    policy = model.policy
    policy.explore_perturbed = True
    obs = model.env.reset()
    with th.no_grad():
        unperturbed = policy.unscale_action(policy.actor(policy.obs_to_tensor(obs)[0]).numpy())
        perturbed = policy.unscale_action(policy.perturbed_actor(policy.obs_to_tensor(obs)[0]).numpy())
    deterministic, _ = model.predict(obs, deterministic=True)
    exploring, _ = model.predict(obs, deterministic=False)
    np.testing.assert_allclose(deterministic, unperturbed, atol=1e-6)
    np.testing.assert_allclose(exploring, perturbed, atol=1e-6)
    assert not np.allclose(deterministic, exploring)


@pytest.mark.parametrize(("distance", "factor"), [(0.0, 1.01), (1.0, 1 / 1.01)])
def test_sigma_moves_by_alpha_per_adaptation(distance: float, factor: float) -> None:
    model = tiny_td3(batch_size=8)
    noise = ParamNoiseCallback(adaptive=True, initial_sigma=0.2, target_distance=0.5, adapt_every=10, seed=0)
    noise.distance = lambda obs: distance
    model.learn(100, callback=noise)
    # the buffer holds a batch (8) from step 8 on: adaptations at steps 10, 20, ..., 100
    steps = [row["step"] for row in noise.adaptations]
    assert steps == list(range(10, 101, 10))
    sigmas = [row["sigma"] for row in noise.adaptations]
    np.testing.assert_allclose(sigmas, [0.2 * factor**i for i in range(10)])
    assert noise.sigma == pytest.approx(0.2 * factor**10)


def test_measured_distance_drives_sigma_both_ways() -> None:
    large = ParamNoiseCallback(adaptive=True, initial_sigma=5.0, target_distance=0.1, adapt_every=10, seed=0)
    tiny_td3().learn(200, callback=large)
    assert all(row["distance"] > 0.1 for row in large.adaptations)
    assert large.sigma < 5.0
    small = ParamNoiseCallback(adaptive=True, initial_sigma=1e-4, target_distance=0.1, adapt_every=10, seed=0)
    tiny_td3().learn(200, callback=small)
    assert all(0 < row["distance"] < 0.1 for row in small.adaptations)
    assert small.sigma > 1e-4


def test_non_adaptive_keeps_initial_sigma() -> None:
    noise = ParamNoiseCallback(adaptive=False, initial_sigma=0.3, adapt_every=10, seed=0)
    tiny_td3().learn(100, callback=noise)
    assert noise.sigma == 0.3
    assert noise.adaptations == []


def test_perturbation_has_sigma_scale() -> None:
    model = tiny_td3()
    noise = ParamNoiseCallback(interval="episode", adaptive=False, initial_sigma=0.1, seed=0)
    model.learn(1, callback=noise)
    eps = np.concatenate([e.flatten().numpy() for e in noise._acting.noise])
    diff = flat(model.policy.perturbed_actor) - flat(model.policy.actor)
    np.testing.assert_allclose(diff, eps, atol=1e-6)
    assert eps.std() == pytest.approx(0.1, rel=0.15)


@pytest.mark.parametrize("follow", [True, False])
def test_follow_learner_reapplies_noise_to_current_theta(follow: bool) -> None:
    class Offset(BaseCallback):
        def __init__(self) -> None:
            super().__init__()
            self.offsets: list[np.ndarray] = []

        def _on_step(self) -> bool:
            policy = self.model.policy
            self.offsets.append(flat(policy.perturbed_actor) - flat(policy.actor))
            return True

    model = tiny_td3(max_episode_steps=200, learning_starts=5)
    offset = Offset()
    noise = ParamNoiseCallback(interval="episode", adaptive=False, follow_learner=follow, seed=0)
    model.learn(60, callback=CallbackList([offset, noise]))
    eps = np.concatenate([e.flatten().numpy() for e in noise._acting.noise])
    held = [np.allclose(o, eps, atol=1e-6) for o in offset.offsets]
    assert all(held) if follow else not all(held[10:])


def test_same_seed_same_noise_other_seed_other_noise() -> None:
    def weights(seed: int) -> np.ndarray:
        model = tiny_td3()
        return learn(model, ParamNoiseCallback(interval=3, adaptive=True, adapt_every=5, seed=seed), 40).weights

    a, b, c = weights(0), weights(0), weights(1)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not np.array_equal(a[-1], c[-1])


def test_rejects_a_policy_without_perturbed_copy() -> None:
    import gymnasium as gym
    from stable_baselines3 import TD3

    model = TD3("MlpPolicy", gym.make("Pendulum-v1"), learning_starts=5)
    with pytest.raises(TypeError, match="study.policies"):
        model.learn(5, callback=ParamNoiseCallback())


@pytest.mark.parametrize("interval", [0, -3, "sometimes"])
def test_rejects_bad_interval(interval) -> None:
    with pytest.raises(ValueError, match="interval"):
        ParamNoiseCallback(interval=interval)


def study_built(algo: str, env: gym.Env, total: int, **hyperparams):
    """A model and its parameter-noise callback as a study file with `param_noise: {}` builds them."""
    from study.algos import build

    doc = {
        "algo": algo,
        "env": env.spec.id,
        "env_kwargs": env.spec.kwargs,
        "total_steps": total,
        "net_arch": [8],
        "hyperparams": {"learning_starts": 50, "batch_size": 8, "buffer_size": 1000} | hyperparams,
        "exploration": {"param_noise": {}},
    }
    model, callbacks = build(RunSettings.model_validate(doc), env, seed=0)
    return model, callbacks[0]


@pytest.mark.parametrize("algo", ["td3", "sac"])
def test_bare_callback_is_the_study_default_for_continuous_actions(algo: str) -> None:
    study_model, study_noise = study_built(algo, gym.make("Pendulum-v1"), 300, train_freq=10)
    study_model.learn(300, callback=study_noise)
    bare_model, _ = study_built(algo, gym.make("Pendulum-v1"), 300, train_freq=10)
    bare_noise = ParamNoiseCallback(seed=0)
    bare_model.learn(300, callback=bare_noise)
    resolved = (bare_noise.initial_sigma, bare_noise.target_distance, bare_noise.target_epsilon, bare_noise.epsilon)
    assert resolved == (0.2, 0.2, None, None)
    assert resolved == (study_noise.initial_sigma, study_noise.target_distance, None, None)
    assert [a["step"] for a in bare_noise.adaptations] == [100, 200, 300]
    assert bare_noise.adaptations[0]["sigma"] == 0.2 and {a["target"] for a in bare_noise.adaptations} == {0.2}
    assert bare_noise.adaptations == study_noise.adaptations
    assert np.array_equal(flat(bare_model.policy), flat(study_model.policy))


def test_study_files_resolve_the_same_defaults() -> None:
    for algo, env, kind in (("td3", "Pendulum-v1", "continuous"), ("dqn", "CartPole-v1", "discrete")):
        doc = {"algo": algo, "env": env, "total_steps": 10, "exploration": {"param_noise": {}}}
        settings = RunSettings.model_validate(doc).exploration.param_noise
        assert {key: getattr(settings, key) for key in PARAM_NOISE_DEFAULTS[kind]} == PARAM_NOISE_DEFAULTS[kind]


def test_defaults_fill_only_what_is_left_out() -> None:
    assert param_noise_defaults(False) == {
        "initial_sigma": 0.2,
        "target_distance": 0.2,
        "target_epsilon": None,
        "epsilon": None,
    }
    assert param_noise_defaults(True) == {
        "initial_sigma": 0.01,
        "target_distance": None,
        "target_epsilon": "schedule",
        "epsilon": 0.0,
    }
    fixed = param_noise_defaults(True, target_distance=0.05, epsilon=0.02)
    assert fixed == {"initial_sigma": 0.01, "target_distance": 0.05, "target_epsilon": None, "epsilon": 0.02}
    assert param_noise_defaults(True, target_epsilon=0.1)["target_distance"] is None
    assert param_noise_defaults(False, initial_sigma=0.5)["initial_sigma"] == 0.5
    with pytest.raises(ValueError, match="choose one way"):
        ParamNoiseCallback(target_distance=0.1, target_epsilon=0.1)
    with pytest.raises(ValueError, match="epsilon: only for discrete actions"):
        tiny_td3().learn(5, callback=ParamNoiseCallback(epsilon=0.1))


def test_discrete_actions_need_a_fixable_epsilon() -> None:
    from stable_baselines3 import DQN as SB3DQN

    from study.policies import ParamNoiseDQNPolicy

    model = SB3DQN(ParamNoiseDQNPolicy, gym.make("CartPole-v1"), policy_kwargs={"net_arch": [8]})
    with pytest.raises(TypeError, match="study.dqn"):
        model.learn(5, callback=ParamNoiseCallback())


class ScaledEnv(gym.Env):
    """Observations far from N(0, 1); actions in Box([-2, 0], [2, 10]); 10 steps per episode."""

    observation_space = gym.spaces.Box(-np.inf, np.inf, shape=(3,), dtype=np.float32)
    action_space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))

    def __init__(self) -> None:
        self.acted_on: list[np.ndarray] = []  # every observation an action was then chosen for

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        self.acted_on.append(self._obs())
        return self.acted_on[-1], {}

    def step(self, action: np.ndarray):
        self.t += 1
        obs = self._obs()
        if self.t < 10:
            self.acted_on.append(obs)
        return obs, float(-np.sum(np.square(action))), False, self.t >= 10, {}

    def _obs(self) -> np.ndarray:
        return (self.np_random.normal(size=3) * [5.0, 0.1, 20.0] + [3.0, -1.0, 50.0]).astype(np.float32)


@pytest.mark.parametrize("algo", ["td3", "sac"])
@pytest.mark.parametrize("normalize", [True, False])
def test_rms_distance_on_the_sampled_replay_states_by_hand(algo: str, normalize: bool) -> None:
    env = DummyVecEnv([ScaledEnv])
    if normalize:
        env = VecNormalize(env, norm_reward=False)
    cls, policy = (TD3, ParamNoiseTD3Policy) if algo == "td3" else (SAC, ParamNoiseSACPolicy)
    model = cls(policy, env, learning_starts=5, batch_size=8, seed=0, policy_kwargs={"net_arch": [8]})
    noise = ParamNoiseCallback(initial_sigma=0.3, adapt_every=10, seed=0)
    actor = model.policy.actor
    checked = []

    def mean(net: nn.Module, obs: th.Tensor) -> np.ndarray:
        """The deterministic action in [-1, 1]: tanh of the mean head (TD3's mu ends with its tanh)."""
        with th.no_grad():
            return (net.mu(obs) if algo == "td3" else th.tanh(net.mu(net.latent_pi(obs)))).numpy().astype(np.float64)

    adapt = noise.adapt

    def checked_adapt() -> None:
        rng = copy.deepcopy(noise._rng)
        size = model.replay_buffer.size()
        adapt()
        idx = rng.integers(0, size, size=8)
        raw = model.replay_buffer.observations[idx, 0]
        if normalize:
            stats = env.obs_rms
            obs = np.clip((raw - stats.mean) / np.sqrt(stats.var + env.epsilon), -env.clip_obs, env.clip_obs)
        else:
            obs = raw
        obs = th.as_tensor(obs, dtype=th.float32)
        a, b = mean(actor, obs), mean(model.policy.adaptive_actor, obs)
        assert np.abs(a).max() <= 1 and not np.allclose(a, b)
        checked.append((noise.adaptations[-1]["distance"], float(np.sqrt(np.mean((a - b) ** 2)))))

    noise.adapt = checked_adapt
    model.learn(50, callback=noise)
    # the buffer holds the observations as the env gave them (SB3 stores them unnormalized)
    acted_on = env.get_attr("acted_on")[0]
    np.testing.assert_array_equal(model.replay_buffer.observations[:50, 0], np.array(acted_on[:50]))
    assert len(checked) == 5  # steps 10, 20, …, 50
    distances, expected = np.array(checked).T
    np.testing.assert_allclose(distances, expected, rtol=1e-5)

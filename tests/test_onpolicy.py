"""On-policy parameter noise (PPO): σ = 0 is SB3's PPO, each step is evaluated under the ε that acted."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import PPO
from torch.distributions import Normal, kl_divergence

from study.exploration.onpolicy import OnPolicyParamNoiseCallback
from study.exploration.segments import SegmentRolloutBuffer
from study.policies import ParamNoiseActorCriticPolicy

SETTINGS = {"n_steps": 40, "batch_size": 10, "n_epochs": 2, "seed": 3, "policy_kwargs": {"net_arch": [8, 8]}}


def env(max_episode_steps: int = 10) -> gym.Env:
    return gym.make("Pendulum-v1", max_episode_steps=max_episode_steps)


def noisy_ppo(cls: type[PPO] = PPO, **kwargs) -> PPO:
    settings = SETTINGS | kwargs
    return cls(ParamNoiseActorCriticPolicy, env(), rollout_buffer_class=SegmentRolloutBuffer, **settings)


def parameters(model: PPO) -> list[th.Tensor]:
    return [p.detach().clone() for p in model.policy.parameters()]


def test_zero_sigma_trains_exactly_as_sb3_ppo() -> None:
    plain = PPO("MlpPolicy", env(), **SETTINGS).learn(120)
    noisy = noisy_ppo().learn(120, callback=OnPolicyParamNoiseCallback(interval=3, adaptive=False, initial_sigma=0.0))
    assert all(th.equal(a, b) for a, b in zip(parameters(plain), parameters(noisy), strict=True))


class Probe(PPO):
    """PPO that, before each update, evaluates the rollout's steps under their own ε and unperturbed."""

    def _setup_model(self) -> None:
        super()._setup_model()
        self.seen: list[dict[str, np.ndarray]] = []

    def train(self) -> None:
        self.policy.set_training_mode(True)
        with th.no_grad():
            for data in self.rollout_buffer.get(None):
                rows = self.policy.train_rows
                _, own, _ = self.policy.evaluate_actions(data.observations, data.actions)
                self.policy.train_rows = None
                _, plain, _ = self.policy.evaluate_actions(data.observations, data.actions)
                self.seen.append(
                    {"old": data.old_log_prob.numpy(), "own": own.numpy(), "plain": plain.numpy(), "rows": rows.numpy()}
                )
        super().train()


def test_the_update_evaluates_each_step_under_the_perturbation_that_acted() -> None:
    model = noisy_ppo(Probe)
    model.learn(80, callback=OnPolicyParamNoiseCallback(interval=3, adaptive=False, initial_sigma=0.5, seed=1))
    for seen in model.seen:
        assert len(set(seen["rows"])) > 4  # many segments in one rollout
        np.testing.assert_allclose(seen["own"], seen["old"], rtol=1e-5, atol=1e-5)  # ratio 1 at the first step
        assert np.abs(seen["plain"] - seen["old"]).max() > 0.05  # the unperturbed mean would not give it


def test_resamples_at_episode_starts_and_every_k_steps() -> None:
    model = noisy_ppo(n_steps=30)
    callback = OnPolicyParamNoiseCallback(interval=4, adaptive=False, seed=0)
    model.learn(30, callback=callback)
    segments = model.rollout_buffer.segments[:, 0]
    step_in_episode = np.arange(30) % 10  # episodes of 10 steps
    new = np.r_[True, segments[1:] != segments[:-1]]
    assert (new == (step_in_episode % 4 == 0)).all()
    assert segments[0] == 0 and callback.resamples == int(new.sum()) + 1  # + the segment the next rollout starts with


def test_the_next_rollout_continues_the_acting_segment() -> None:
    model = noisy_ppo(n_steps=25, batch_size=5)
    callback = OnPolicyParamNoiseCallback(interval="episode", adaptive=False, seed=0)
    model.learn(50, callback=callback)  # the second rollout starts at step 5 of an episode
    segments = model.rollout_buffer.segments[:, 0]
    assert (segments[:5] == 0).all() and (segments[5:15] == 1).all() and (segments[15:25] == 2).all()


def test_adaptation_measures_the_kl_of_the_two_gaussians() -> None:
    class Measure(OnPolicyParamNoiseCallback):
        def adapt(self) -> None:  # what the measurement saw: the generator and the policy before the update
            self.before = (self._generator.get_state(), copy.deepcopy(self.model.policy.state_dict()))
            super().adapt()

    model = noisy_ppo(n_steps=20)
    callback = Measure(interval=5, initial_sigma=0.3, target_distance=1e-9, seed=2)
    model.learn(20, callback=callback)
    generator_state, weights = callback.before
    policy, noise = model.policy, model.policy.segment_noise
    policy.load_state_dict(weights)
    noise.add(noise.draw(0.3, th.Generator().set_state(generator_state)))  # the ε the adaptation drew
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(20, -1))
    with th.no_grad():
        plain = policy.distribution_under(obs, None).distribution
        moved = policy.distribution_under(obs, th.full((20,), noise.current)).distribution
    expected = kl_divergence(Normal(plain.mean, plain.stddev), Normal(moved.mean, moved.stddev)).sum(-1).mean()
    assert callback.adaptations[0]["distance"] == pytest.approx(float(expected), rel=1e-5)
    assert callback.sigma == pytest.approx(0.3 / 1.01)  # d > δ: σ shrinks


def test_same_seed_same_run() -> None:
    def run() -> tuple[list[th.Tensor], float]:
        callback = OnPolicyParamNoiseCallback(interval=2, initial_sigma=0.3, seed=7)
        return parameters(noisy_ppo().learn(120, callback=callback)), callback.sigma

    (first, sigma1), (second, sigma2) = run(), run()
    assert sigma1 == sigma2 and all(th.equal(a, b) for a, b in zip(first, second, strict=True))


def test_layer_norm_in_policy_and_value_networks_and_evaluation_unperturbed() -> None:
    model = noisy_ppo(policy_kwargs={"net_arch": [8, 8], "layer_norm": True})
    norms = [m for m in model.policy.mlp_extractor.modules() if isinstance(m, th.nn.LayerNorm)]
    assert len(norms) == 4
    model.learn(40, callback=OnPolicyParamNoiseCallback(interval=3, adaptive=False, initial_sigma=1.0, seed=0))
    obs = np.zeros(3, dtype=np.float32)
    action, _ = model.predict(obs, deterministic=True)
    with th.no_grad():
        mean = model.policy.distribution_under(th.zeros(1, 3), None).distribution.mean.numpy()[0]
    np.testing.assert_allclose(action, np.clip(mean, -2, 2), rtol=1e-6)


def test_trpo_with_zero_sigma_trains_exactly_as_sb3_contrib_trpo() -> None:
    from sb3_contrib import TRPO

    settings = {"n_steps": 40, "batch_size": 10, "seed": 3, "policy_kwargs": {"net_arch": [8, 8]}}
    plain = TRPO("MlpPolicy", env(), **settings).learn(120)
    noisy = TRPO(ParamNoiseActorCriticPolicy, env(), rollout_buffer_class=SegmentRolloutBuffer, **settings)
    noisy.learn(120, callback=OnPolicyParamNoiseCallback(interval=3, adaptive=False, initial_sigma=0.0))
    assert all(th.equal(a, b) for a, b in zip(parameters(plain), parameters(noisy), strict=True))
    moved = TRPO(ParamNoiseActorCriticPolicy, env(), rollout_buffer_class=SegmentRolloutBuffer, **settings)
    moved.learn(120, callback=OnPolicyParamNoiseCallback(interval=3, initial_sigma=0.3, seed=0))
    assert not all(th.equal(a, b) for a, b in zip(parameters(plain), parameters(moved), strict=True))


ON_POLICY_STUDY = {
    "algo": "ppo",
    "hyperparams": None,
    "hyperparams.n_steps": 64,
    "hyperparams.batch_size": 32,
    "exploration.param_noise": None,
    "exploration.param_noise.interval": 8,
    "activation": "tanh",
}


@pytest.mark.parametrize("algo", ["ppo", "trpo"])
def test_a_study_runs_ppo_and_trpo_with_parameter_noise(write_study, algo: str) -> None:
    from study.config import load_study
    from study.run import execute

    spec = load_study(write_study(ON_POLICY_STUDY | {"algo": algo, "layer_norm": True})).runs[0]
    result = execute(spec)
    assert result.status == "done", result.error
    adaptations = result.tables()["adaptations"]
    assert list(adaptations["step"]) == [64, 128, 192, 256, 320]  # once per rollout
    assert adaptations["sigma"].iloc[0] == 0.2 and adaptations["distance"].gt(0).all()
    assert result.tables()["episodes"]["sigma"].notna().all()


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exploration.action_noise": {"type": "normal"}}, "exploration.action_noise: not for ppo, which learns on"),
        ({"exploration.param_noise.adapt_every": 10}, "exploration.param_noise.adapt_every: not for ppo"),
        ({"exploration.param_noise.follow_learner": True}, "exploration.param_noise.follow_learner: not for ppo"),
        ({"net_arch": {"pi": [8], "qf": [8]}}, "net_arch: not for ppo"),
        ({"engine": "stacked"}, "algo: ppo has no stacked update yet"),
        ({"algo": "trpo", "hyperparams.sub_sampling_factor": 2}, "hyperparams.sub_sampling_factor: not for trpo"),
        ({"hyperparams.buffer_size": 100}, "hyperparams.buffer_size: not a hyperparameter of ppo"),
        ({"algo": "td3", "hyperparams": None, "exploration.param_noise.distance": "kl"}, "param_noise.distance: td3"),
    ],
)
def test_bad_on_policy_settings(write_study, overrides, message) -> None:
    from study.config import StudyError, load_study

    with pytest.raises(StudyError, match=message):
        load_study(write_study(ON_POLICY_STUDY | overrides))


def test_discrete_actions_are_refused() -> None:
    model = PPO(ParamNoiseActorCriticPolicy, "CartPole-v1", rollout_buffer_class=SegmentRolloutBuffer, n_steps=16)
    with pytest.raises(TypeError, match="continuous"):
        model.learn(16, callback=OnPolicyParamNoiseCallback())


def test_rms_distance_is_measured_in_the_normalized_action_space() -> None:
    class Measure(OnPolicyParamNoiseCallback):
        def adapt(self) -> None:
            self.before = (self._generator.get_state(), copy.deepcopy(self.model.policy.state_dict()))
            super().adapt()

    model = noisy_ppo(n_steps=20)
    callback = Measure(interval=5, initial_sigma=0.3, distance="rms", seed=2)
    model.learn(20, callback=callback)
    generator_state, weights = callback.before
    policy, noise = model.policy, model.policy.segment_noise
    policy.load_state_dict(weights)
    noise.add(noise.draw(0.3, th.Generator().set_state(generator_state)))
    obs = th.as_tensor(model.rollout_buffer.observations.reshape(20, -1))
    with th.no_grad():
        plain = policy.distribution_under(obs, None).distribution.mean
        moved = policy.distribution_under(obs, noise.current).distribution.mean
    expected = th.sqrt((((plain - moved) / 2.0) ** 2).mean())  # Pendulum's actions in [-2, 2]
    assert callback.adaptations[0]["distance"] == pytest.approx(float(expected), rel=1e-5)


def test_explored_evaluation_is_refused_for_on_policy_parameter_noise(write_study) -> None:
    from study.config import StudyError, load_study
    from study.evaluate import evaluate_model

    spec = load_study(write_study(ON_POLICY_STUDY)).runs[0]
    with pytest.raises(StudyError, match="--explore: ppo's parameter noise"):
        evaluate_model(spec, noisy_ppo(), episodes=1, explore=True)

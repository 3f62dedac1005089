"""Parameter-space noise for DQN and QR-DQN: what is perturbed, the interval, the KL distance and δ."""

from __future__ import annotations

import math

import gymnasium as gym
import numpy as np
import pytest
import torch as th
from stable_baselines3 import DQN as SB3DQN
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from test_param_noise import changed, flat, in_episode_index, study_built
from torch import nn

from study.config import ParamNoiseSettings, RunSettings
from study.dqn import DQN, QRDQN
from study.exploration import ParamNoiseCallback
from study.exploration.distances import epsilon_to_kl, softmax_kl_distance
from study.policies import ParamNoiseDQNPolicy, ParamNoiseQRDQNPolicy


def tiny_dqn(n: int = 5, layer_norm: bool = False, cls=DQN, policy=ParamNoiseDQNPolicy, **kwargs) -> DQN:
    params = {"learning_starts": 5, "batch_size": 8, "buffer_size": 1000, "seed": 0, "train_freq": 1} | kwargs
    env = gym.make("study/Chain-v0", n=n)
    return cls(policy, env, policy_kwargs={"net_arch": [8, 8], "layer_norm": layer_norm}, **params)


class Probe(BaseCallback):
    """Placed before the noise callback: sees the Q-network that chose the step's action."""

    def __init__(self) -> None:
        super().__init__()
        self.weights: list[np.ndarray] = []
        self.dones: list[bool] = []
        self.greedy_of_perturbed: list[bool] = []

    def _on_step(self) -> bool:
        policy = self.model.policy
        self.weights.append(flat(policy.perturbed_net))
        self.dones.append(bool(self.locals["dones"][0]))
        if self.num_timesteps > self.model.learning_starts:
            obs = policy.obs_to_tensor(self.model._last_obs)[0]
            q = policy.q_values(policy.perturbed_net, obs)
            self.greedy_of_perturbed.append(int(q.argmax()) == int(self.locals["actions"][0]))
        return True


def learn(model, noise: ParamNoiseCallback, steps: int) -> Probe:
    probe = Probe()
    model.learn(steps, callback=CallbackList([probe, noise]))
    return probe


@pytest.mark.parametrize("k", [1, 3, 5])
def test_q_network_held_for_k_steps_and_acts_greedily(k: int) -> None:
    model = tiny_dqn(n=5)  # 14 steps per episode
    probe = learn(model, ParamNoiseCallback(interval=k, adaptive=False, initial_sigma=0.5, epsilon=0.0, seed=1), 50)
    expected = [j == 1 or (j - 1) % k == 0 for j in in_episode_index(probe.dones)]
    assert changed(probe.weights) == expected
    assert all(probe.greedy_of_perturbed)  # with ε = 0 every action is the perturbed network's greedy one


def test_only_fully_connected_weights_are_perturbed() -> None:
    model = tiny_dqn(layer_norm=True)
    noise = ParamNoiseCallback(adaptive=False, initial_sigma=0.5, target_distance=0.1, seed=0)
    model.learn(20, callback=noise)
    noise.resample()  # the copy takes the learner's θ of this moment, plus ε
    policy = model.policy
    kinds = {name: type(m) for name, m in policy.q_net.named_modules()}
    assert nn.LayerNorm in kinds.values()
    for (name, p), q in zip(policy.q_net.named_parameters(), policy.perturbed_q_net.parameters(), strict=True):
        owner = kinds[name.rsplit(".", 1)[0]]
        assert th.equal(p, q) == (owner is not nn.Linear), name


def test_kl_distance_on_hand_built_q_values() -> None:
    q = th.tensor([[0.0, 0.0], [1.0, 2.0]])
    assert softmax_kl_distance(q, q) == pytest.approx(0.0)
    assert softmax_kl_distance(q, q + 5.0) == pytest.approx(0.0)  # softmax ignores shifts
    perturbed = th.tensor([[math.log(3.0), 0.0], [1.0, 2.0]])
    # row 1: KL([1/2, 1/2] ‖ [3/4, 1/4]) = ½ log(2/3) + ½ log 2; row 2: 0
    expected = 0.5 * (0.5 * math.log(0.5 / 0.75) + 0.5 * math.log(0.5 / 0.25))
    assert softmax_kl_distance(q, perturbed) == pytest.approx(expected)


def test_epsilon_matched_delta() -> None:
    assert epsilon_to_kl(0.1, 4) == pytest.approx(-math.log(1 - 0.1 + 0.1 / 4))
    assert epsilon_to_kl(1.0, 6) == pytest.approx(math.log(6))  # uniform: the largest distance
    # δ is the KL between a greedy policy and its ε-greedy version, for any Q
    eps, n = 0.2, 3
    greedy = th.tensor([1.0, 0.0, 0.0])
    eps_greedy = (1 - eps) * greedy + eps / n
    assert float(greedy[0] * (greedy[0] / eps_greedy[0]).log()) == pytest.approx(epsilon_to_kl(eps, n))


@pytest.mark.parametrize(("target", "grows"), [(10.0, True), (1e-6, False)])
def test_sigma_moves_towards_the_target_distance(target: float, grows: bool) -> None:
    model = tiny_dqn()
    noise = ParamNoiseCallback(adaptive=True, initial_sigma=0.5, target_distance=target, adapt_every=5, seed=0)
    model.learn(120, callback=noise)
    assert len(noise.adaptations) >= 20
    assert (noise.sigma > 0.5) == grows
    sigmas = [a["sigma"] for a in noise.adaptations]
    assert all((b > a) == grows for a, b in zip(sigmas, sigmas[1:], strict=False))


def test_delta_follows_the_dqn_epsilon_schedule() -> None:
    model = tiny_dqn(exploration_initial_eps=1.0, exploration_final_eps=0.1, exploration_fraction=0.5)
    noise = ParamNoiseCallback(target_distance=None, target_epsilon="schedule", epsilon=0.0, adapt_every=5, seed=0)
    model.learn(100, callback=noise)
    eps = model.exploration_schedule(model._current_progress_remaining)
    assert eps == pytest.approx(0.1)
    assert noise.current_target() == pytest.approx(epsilon_to_kl(0.1, 2))
    assert model.exploration_rate == 0.0  # no ε-greedy on top: the schedule only sets δ


def test_small_epsilon_greedy_on_top() -> None:
    model = tiny_dqn()
    model.learn(30, callback=ParamNoiseCallback(target_distance=None, target_epsilon=0.1, epsilon=0.05, seed=0))
    assert model.exploration_rate == 0.05


def test_qrdqn_uses_the_mean_over_quantiles() -> None:
    model = tiny_dqn(cls=QRDQN, policy=ParamNoiseQRDQNPolicy)
    probe = learn(model, ParamNoiseCallback(interval=4, target_distance=0.01, epsilon=0.0, adapt_every=5), 40)
    assert all(probe.greedy_of_perturbed) and changed(probe.weights).count(True) > 5
    policy = model.policy
    obs = th.eye(5)
    assert th.equal(policy.q_values(policy.quantile_net, obs), policy.quantile_net(obs).mean(dim=1))


def test_plain_dqn_trains_exactly_like_sb3() -> None:
    def trained(cls, policy):
        model = cls(policy, gym.make("CartPole-v1"), learning_starts=50, batch_size=16, seed=3,
                    policy_kwargs={"net_arch": [16]}, train_freq=1)  # fmt: skip
        model.learn(200)
        return flat(model.q_net)

    assert np.array_equal(trained(DQN, ParamNoiseDQNPolicy), trained(SB3DQN, "MlpPolicy"))


def test_discrete_defaults() -> None:
    def param_noise(**given) -> ParamNoiseSettings:
        doc = {"algo": "dqn", "env": "CartPole-v1", "total_steps": 10, "exploration": {"param_noise": given}}
        return RunSettings.model_validate(doc).exploration.param_noise

    default = param_noise()
    assert (default.initial_sigma, default.target_distance, default.target_epsilon, default.epsilon) == (
        0.01,
        None,
        "schedule",
        0.0,
    )
    fixed = param_noise(target_distance=0.05)
    assert (fixed.target_distance, fixed.target_epsilon) == (0.05, None)
    assert param_noise(target_epsilon=0.1).target_distance is None
    with pytest.raises(ValueError, match="choose one way"):
        param_noise(target_distance=0.05, target_epsilon=0.1)
    with pytest.raises(ValueError, match="only for discrete actions"):
        RunSettings.model_validate(
            {"algo": "td3", "env": "Pendulum-v1", "total_steps": 10, "exploration": {"param_noise": {"epsilon": 0.1}}}
        )
    # a resolved setting validates again to itself (it travels as data to the workers)
    again = RunSettings.model_validate(RunSettings.model_validate(
        {"algo": "dqn", "env": "CartPole-v1", "total_steps": 10, "exploration": {"param_noise": {}}}
    ).model_dump())  # fmt: skip
    assert again.exploration.param_noise == default


@pytest.mark.parametrize(
    ("doc", "message"),
    [
        ({"algo": "td3", "env": "CartPole-v1"}, "td3 cannot act in CartPole-v1, whose actions are discrete"),
        ({"algo": "dqn", "env": "Pendulum-v1"}, "dqn cannot act in Pendulum-v1, whose actions are continuous"),
        ({"algo": "qrdqn", "env": "CartPole-v1", "replay": {"type": "rank"}}, "qrdqn cannot learn from prioritized"),
        ({"algo": "qrdqn", "env": "CartPole-v1", "exploration": {"noisy_net": {}}}, "qrdqn has no NoisyNet"),
        ({"algo": "dqn", "env": "study/Chain-v0", "env_kwargs": {"n": 1}}, "chain length n must be"),
        (
            {"algo": "dqn", "env": "CartPole-v1", "exploration": {"noisy_net": {}, "param_noise": {}}},
            "param_noise and noisy_net: choose one",
        ),
    ],
)
def test_bad_discrete_settings(doc, message) -> None:
    with pytest.raises(ValueError, match=message):
        RunSettings.model_validate(doc | {"total_steps": 10})


class ActingEpsilon(BaseCallback):
    """The ε-greedy rate each step's action was chosen with (DQN updates it after the callbacks)."""

    def __init__(self) -> None:
        super().__init__()
        self.rates: list[float] = []

    def _on_step(self) -> bool:
        self.rates.append(self.model.exploration_rate)
        return True


SCHEDULE = {"exploration_initial_eps": 1.0, "exploration_final_eps": 0.1, "exploration_fraction": 0.5}


def epsilon_at(step: int, total: int, start: float = 1.0, end: float = 0.1, fraction: float = 0.5) -> float:
    """SB3's linear ε for the action of environment step `step` (1-based): its progress is (step − 1) / total."""
    progress = (step - 1) / total
    return end if progress > fraction else start + progress * (end - start) / fraction


@pytest.mark.parametrize("cls", [DQN, QRDQN])
def test_bare_callback_is_the_study_default_for_discrete_actions(cls) -> None:
    algo, total = ("dqn" if cls is DQN else "qrdqn"), 500
    hyperparams = SCHEDULE | {"train_freq": 25}  # a few gradient steps: QR-DQN's are slow
    study_model, study_noise = study_built(algo, gym.make("study/Chain-v0", n=5), total, **hyperparams)
    study_model.learn(total, callback=study_noise)
    bare_model, _ = study_built(algo, gym.make("study/Chain-v0", n=5), total, **hyperparams)
    bare_noise, acting = ParamNoiseCallback(seed=0), ActingEpsilon()
    bare_model.learn(total, callback=CallbackList([acting, bare_noise]))

    resolved = (bare_noise.initial_sigma, bare_noise.target_distance, bare_noise.target_epsilon, bare_noise.epsilon)
    assert resolved == (0.01, None, "schedule", 0.0)
    assert resolved == (study_noise.initial_sigma, study_noise.target_distance, study_noise.target_epsilon, 0.0)
    assert [a["step"] for a in bare_noise.adaptations] == [100, 200, 300, 400, 500]
    assert bare_noise.adaptations == study_noise.adaptations  # σ, d and δ at every adaptation
    assert bare_noise.adaptations[0]["sigma"] == 0.01
    # δ follows the DQN's ε schedule, while no ε-greedy acts on top
    deltas = [epsilon_to_kl(epsilon_at(a["step"], total), 2) for a in bare_noise.adaptations]
    np.testing.assert_allclose([a["target"] for a in bare_noise.adaptations], deltas, rtol=1e-12)
    assert acting.rates[:2] == [0.0, 0.0] and set(acting.rates) == {0.0}
    assert np.array_equal(flat(bare_model.policy), flat(study_model.policy))


def test_delta_at_each_adaptation_is_matched_to_sb3s_epsilon_at_that_step() -> None:
    total = 300
    model = tiny_dqn(learning_starts=10, train_freq=10, **SCHEDULE)
    noise = ParamNoiseCallback(adapt_every=7, seed=0)
    model.learn(total, callback=noise)
    # the same schedule in a plain SB3 DQN: the ε it acts with at each step
    plain = SB3DQN(
        "MlpPolicy", gym.make("study/Chain-v0", n=5), learning_starts=total, policy_kwargs={"net_arch": [8]}, **SCHEDULE
    )
    rates: dict[int, float] = {}

    class Rate(BaseCallback):
        def _on_step(self) -> bool:
            rates[self.num_timesteps] = self.model.exploration_rate
            return True

    plain.learn(total, callback=Rate())
    steps = [a["step"] for a in noise.adaptations]
    assert steps == list(range(14, total + 1, 7))  # from when the buffer holds a batch (8)
    for i, row in enumerate(noise.adaptations):
        t = row["step"]
        epsilon = epsilon_at(t, total)
        assert rates[t] == pytest.approx(epsilon, abs=1e-12)
        delta = -math.log(1.0 - epsilon + epsilon / 2)
        assert row["target"] == pytest.approx(delta, rel=1e-12)
        if i + 1 < len(noise.adaptations):  # the decision taken against that δ
            factor = 1 / 1.01 if row["distance"] > delta else 1.01
            assert noise.adaptations[i + 1]["sigma"] == pytest.approx(row["sigma"] * factor, rel=1e-12)
    assert epsilon_at(steps[0], total) > 0.9 and epsilon_at(steps[-1], total) == 0.1  # δ moved a long way


def test_kl_distance_on_the_sampled_replay_states_by_hand() -> None:
    import copy

    from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize

    env = VecNormalize(DummyVecEnv([lambda: gym.make("study/Chain-v0", n=5)]), norm_reward=False)
    model = DQN(ParamNoiseDQNPolicy, env, learning_starts=5, batch_size=8, seed=0, policy_kwargs={"net_arch": [8]})
    noise = ParamNoiseCallback(initial_sigma=0.5, adapt_every=10, seed=0)
    checked: list[tuple[float, float]] = []
    adapt = noise.adapt

    def checked_adapt() -> None:
        rng = copy.deepcopy(noise._rng)
        size = model.replay_buffer.size()
        adapt()
        raw = model.replay_buffer.observations[rng.integers(0, size, size=8), 0]
        stats = env.obs_rms
        obs = np.clip((raw - stats.mean) / np.sqrt(stats.var + env.epsilon), -env.clip_obs, env.clip_obs)
        obs = th.as_tensor(obs, dtype=th.float32)
        with th.no_grad():
            p = th.softmax(model.policy.q_net(obs).double(), -1).numpy()
            q = th.softmax(model.policy.adaptive_q_net(obs).double(), -1).numpy()
        checked.append((noise.adaptations[-1]["distance"], float(np.mean(np.sum(p * np.log(p / q), axis=1)))))

    noise.adapt = checked_adapt
    model.learn(60, callback=noise)
    assert len(checked) == 6  # steps 10, 20, …, 60
    # SB3 stores the raw thermometer observations; the policy sees them normalized
    assert set(np.unique(model.replay_buffer.observations[:60])) == {0.0, 1.0}
    distances, expected = np.array(checked).T
    np.testing.assert_allclose(distances, expected, rtol=1e-6)
    assert np.all(expected > 0)

"""SAC: parameter noise on the mean path, gSDE at the same interval k, the exploration catalogue."""

from __future__ import annotations

import json
from pathlib import Path

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from test_param_noise import changed, flat, in_episode_index

from study.config import load_study
from study.exploration import ParamNoiseCallback
from study.policies import ParamNoiseSACPolicy
from study.run import execute
from study.store import run_dir


def tiny_sac(max_episode_steps: int = 10, **kwargs) -> SAC:
    env = gym.make("Pendulum-v1", max_episode_steps=max_episode_steps)
    params = {"learning_starts": 0, "batch_size": 8, "buffer_size": 1000, "seed": 0}
    params |= {"train_freq": (1, "episode"), "gradient_steps": -1} | kwargs
    policy_kwargs = {"net_arch": [8, 8]} | params.pop("policy_kwargs", {})
    return SAC(ParamNoiseSACPolicy, env, policy_kwargs=policy_kwargs, **params)


class Exploration(BaseCallback):
    """Before the noise callback: what chose each step's action (gSDE matrix or perturbed weights)."""

    def __init__(self) -> None:
        super().__init__()
        self.states: list[np.ndarray] = []
        self.dones: list[bool] = []
        self.action_errors: list[float] = []

    def _on_step(self) -> bool:
        policy = self.model.policy
        if self.model.use_sde:
            self.states.append(policy.actor.action_dist.exploration_mat.detach().numpy().copy())
        else:
            self.states.append(flat(policy.perturbed_actor))
            obs = policy.obs_to_tensor(self.model._last_obs)[0]
            with th.no_grad():
                expected = policy.unscale_action(policy.perturbed_actor(obs, deterministic=True).numpy())
            self.action_errors.append(float(np.abs(expected - self.locals["actions"]).max()))
        self.dones.append(bool(self.locals["dones"][0]))
        return True


@pytest.mark.parametrize("k", [1, 3, 4])
@pytest.mark.parametrize("method", ["gsde", "param_noise"])
def test_gsde_and_param_noise_hold_for_k_steps_and_resample_at_episode_starts(method: str, k: int) -> None:
    probe = Exploration()
    if method == "gsde":
        model = tiny_sac(use_sde=True, sde_sample_freq=k)
        model.learn(45, callback=probe)
    else:
        model = tiny_sac()
        model.learn(45, callback=CallbackList([probe, ParamNoiseCallback(interval=k, adaptive=False, seed=0)]))
    expected = [j == 1 or (j - 1) % k == 0 for j in in_episode_index(probe.dones)]
    assert changed(probe.states) == expected


def test_gsde_episode_interval_resamples_only_at_episode_starts() -> None:
    probe = Exploration()
    tiny_sac(max_episode_steps=12, use_sde=True, sde_sample_freq=-1).learn(48, callback=probe)
    assert changed(probe.states) == [j == 1 for j in in_episode_index(probe.dones)]


@pytest.mark.parametrize(("interval", "k"), [(3, 3), ("episode", None)])
def test_gsde_trained_every_step_keeps_its_interval(interval: int | str, k: int | None) -> None:
    from study.exploration.gsde import GSDEScheduleCallback

    probe = Exploration()
    model = tiny_sac(use_sde=True, sde_sample_freq=-1, train_freq=1, gradient_steps=1, learning_starts=5)
    model.learn(45, callback=CallbackList([probe, GSDEScheduleCallback(interval)]))
    expected = [j == 1 or (k is not None and (j - 1) % k == 0) for j in in_episode_index(probe.dones)]
    assert changed(probe.states) == expected
    # SB3 alone redraws at every rollout start and gradient step: with rollouts of one step, new noise every step
    alone = Exploration()
    tiny_sac(use_sde=True, sde_sample_freq=3, train_freq=1, gradient_steps=1, learning_starts=5).learn(
        45, callback=alone
    )
    assert all(changed(alone.states)[6:])


def test_sac_param_noise_acts_with_the_perturbed_mean_and_never_perturbs_the_learner() -> None:
    model = tiny_sac(learning_starts=1000)  # no gradient step: θ may not move at all
    policy = model.policy
    before = flat(policy.actor)
    probe = Exploration()
    model.learn(
        40, callback=CallbackList([probe, ParamNoiseCallback(interval=3, adaptive=True, adapt_every=5, seed=0)])
    )
    assert np.array_equal(flat(policy.actor), before)
    # warm-up: random actions; then acting is the perturbed copy's deterministic output
    model.learning_starts = 0
    probe, noise = Exploration(), ParamNoiseCallback(interval=3, adaptive=False, seed=0)
    model.learn(20, callback=CallbackList([probe, noise]))
    assert max(probe.action_errors) < 1e-5
    # only the mean path is perturbed: the log-std head is the learner's at the resample
    noise.resample()
    assert th.equal(policy.perturbed_actor.log_std.weight, policy.actor.log_std.weight)
    assert not th.equal(policy.perturbed_actor.mu.weight, policy.actor.mu.weight)
    assert not th.equal(policy.perturbed_actor.latent_pi[0].weight, policy.actor.latent_pi[0].weight)


def test_sac_evaluation_is_the_unperturbed_deterministic_mean() -> None:
    model = tiny_sac()
    model.learn(20, callback=ParamNoiseCallback(interval="episode", adaptive=False, initial_sigma=1.0, seed=0))
    policy = model.policy
    policy.explore_perturbed = True
    obs = model.env.reset()
    with th.no_grad():
        mean = policy.unscale_action(policy.actor(policy.obs_to_tensor(obs)[0], deterministic=True).numpy())
    np.testing.assert_allclose(model.predict(obs, deterministic=True)[0], mean, atol=1e-6)
    assert not np.allclose(model.predict(obs, deterministic=False)[0], mean)


def test_sac_mean_actions_explore_without_sampling() -> None:
    model = tiny_sac(policy_kwargs={"explore_mean": True})
    obs = model.env.reset()
    a, b = model.predict(obs, deterministic=False)[0], model.predict(obs, deterministic=False)[0]
    np.testing.assert_array_equal(a, b)
    np.testing.assert_allclose(a, model.predict(obs, deterministic=True)[0])


def test_sac_layer_norm_in_latent_layers_and_critic() -> None:
    model = tiny_sac(policy_kwargs={"layer_norm": True})
    kinds = [type(m).__name__ for m in model.policy.actor.latent_pi]
    assert kinds == ["Linear", "LayerNorm", "ReLU", "Linear", "LayerNorm", "ReLU"]
    assert sum(isinstance(m, th.nn.LayerNorm) for m in model.policy.critic.qf0) == 2


CATALOGUE = {
    "none": {"exploration.mean_actions": True},
    "unstructured": {},
    "OU": {"exploration.mean_actions": True, "exploration.action_noise": {"type": "ou", "sigma": 0.3}},
    "param noise k=4": {"exploration.param_noise": {"interval": 4}},
    "gSDE k=4": {"exploration.gsde": {"interval": 4}},
}


def test_each_catalogue_row_runs_through_the_cli_and_records_continuity(write_study, tmp_path: Path) -> None:
    from test_launch import run_cli

    path = write_study(
        {
            "name": "catalogue",
            "algo": "sac",
            "total_steps": 500,
            "budgets.full": 500,
            "hyperparams": {"learning_starts": 100, "train_freq": "episode", "ent_coef": "auto"},
            "exploration.param_noise": None,
            "grid": {"exploration": CATALOGUE},
        }
    )
    proc = run_cli(path, tmp_path / "results", "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    assert "5 done, 0 failed" in proc.stdout
    for spec in load_study(path).runs:
        folder = run_dir(tmp_path / "results", spec)
        assert json.loads((folder / "meta.json").read_text())["status"] == "done"
        episodes = pd.read_parquet(folder / "episodes.parquet")
        trained = episodes[~episodes["warmup"]]
        assert len(trained) >= 1 and trained["continuity_cost"].between(0, 100).all()
        assert pd.read_parquet(folder / "evaluations.parquet")["continuity_cost"].notna().all()


def test_episodic_training_for_td3(write_study) -> None:
    spec = load_study(write_study({"hyperparams.train_freq": "episode"})).runs[0]
    assert spec.settings.hyperparams.sb3_kwargs()["train_freq"] == (1, "episode")
    assert spec.settings.hyperparams.sb3_kwargs()["gradient_steps"] == -1
    result = execute(spec)
    assert result.status == "done", result.error


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exploration.param_noise": None, "exploration.gsde": {"interval": 8}}, "exploration.gsde: td3 has no gSDE"),
        ({"algo": "sac", "exploration.gsde": {"interval": 8}}, "param_noise and gsde: choose one"),
        ({"exploration.mean_actions": True}, "exploration.mean_actions: td3 always explores"),
        ({"algo": "sac", "exploration.gsde": {"interval": 0}}, "exploration.gsde.interval: must be a positive integer"),
        ({"algo": "sac", "hyperparams.ent_coef": "sometimes"}, "hyperparams.ent_coef"),
    ],
)
def test_bad_sac_exploration_settings(write_study, overrides, message) -> None:
    from study.config import StudyError

    with pytest.raises(StudyError, match=message.replace("(", r"\(")):
        load_study(write_study(overrides))

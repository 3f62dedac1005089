"""RunSettings → the SB3 model and the exploration callbacks of a run (names from `study.registry`)."""

from __future__ import annotations

from typing import Any

import gymnasium as gym
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.monitor import Monitor
from stable_baselines3.common.vec_env import DummyVecEnv, VecNormalize
from torch import nn

from study.buffers import REPLAY_BUFFERS
from study.config import EPISODE_TRAINING, RunSettings
from study.exploration.action_noise import make_action_noise
from study.exploration.colored import ColoredSamplingCallback
from study.exploration.ez_greedy import EzGreedyCallback
from study.exploration.gsde import GSDEScheduleCallback
from study.exploration.noisy import NoisyNetCallback
from study.exploration.onpolicy import OnPolicyParamNoiseCallback
from study.exploration.param_noise import ParamNoiseCallback, derived_seed
from study.exploration.segments import SegmentRolloutBuffer
from study.features import FEATURES
from study.registry import ALGORITHMS, resolve

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}
#: the sequence length of colored noise where the env sets no episode limit
DEFAULT_SEQ_LEN = 1000


def episode_limit(env: gym.Env) -> int:
    """The env's episode limit (its `max_episode_steps`), or DEFAULT_SEQ_LEN without one."""
    return getattr(env.spec, "max_episode_steps", None) or DEFAULT_SEQ_LEN


def normalized(env: gym.Env, settings: RunSettings) -> VecNormalize:
    """The training env as SB3 trains it (Monitor, DummyVecEnv), inside VecNormalize."""
    options = settings.normalize.model_dump()
    if options["gamma"] is None:
        options["gamma"] = settings.hyperparams.gamma or ALGORITHMS[settings.algo].default("gamma")
    return VecNormalize(DummyVecEnv([lambda: Monitor(env)]), **options)


def build(settings: RunSettings, env: gym.Env, seed: int) -> tuple[BaseAlgorithm, list[BaseCallback]]:
    """The SB3 model for the settings and the exploration callbacks it trains with."""
    algo = ALGORITHMS[settings.algo]
    exploration = settings.exploration
    policy = resolve(algo.policy)
    arch = settings.net_arch
    policy_kwargs: dict[str, Any] = dict(settings.policy_kwargs) | {
        "net_arch": list(arch) if isinstance(arch, list) else arch.model_dump(),
        "activation_fn": ACTIVATIONS[settings.activation],
        "layer_norm": settings.layer_norm,
        "features_extractor_class": FEATURES[settings.features_extractor],
    }
    kwargs = settings.hyperparams.sb3_kwargs()
    callbacks: list[BaseCallback] = []
    if algo.on_policy and exploration.param_noise is not None:
        noise = exploration.param_noise
        kwargs["rollout_buffer_class"] = SegmentRolloutBuffer
        options = noise.model_dump(include={"interval", "adaptive", "initial_sigma", "target_distance", "alpha"})
        callbacks.append(OnPolicyParamNoiseCallback(**options, distance=noise.distance or "kl", seed=seed))
    if not algo.discrete and not algo.on_policy:
        policy_kwargs["explore_mean"] = exploration.mean_actions
        noise, dim = exploration.action_noise, env.action_space.shape[0]
        seq_len = noise.seq_len or episode_limit(env)
        seed_of = derived_seed(seed, "action-noise")
        kwargs["action_noise"] = make_action_noise(
            noise.type, dim, noise.sigma, noise.theta, noise.beta, seq_len, seed_of
        )
        sampling = exploration.sampling_noise
        if sampling is not None:
            seq_len, seed_of = sampling.seq_len or episode_limit(env), derived_seed(seed, "sampling-noise")
            callbacks.append(ColoredSamplingCallback(sampling.beta, dim, seq_len, seed_of))
    if exploration.gsde is not None:
        interval = exploration.gsde.interval
        if kwargs.get("train_freq") == EPISODE_TRAINING:  # SB3's own schedule: a rollout is an episode
            kwargs |= {"use_sde": True, "sde_sample_freq": -1 if interval == "episode" else interval}
        else:  # the noise held across the rollouts of single steps
            kwargs |= {"use_sde": True, "sde_sample_freq": -1}
            callbacks.append(GSDEScheduleCallback(interval))
        policy_kwargs["log_std_init"] = exploration.gsde.log_std_init
    noisy = exploration.noisy_net
    if noisy is not None:
        policy = resolve(algo.noisy_policy)
        policy_kwargs |= {
            "noisy_layers": noisy.layers,
            "noisy_kwargs": {"factorised": noisy.factorised, "sigma0": noisy.initial_sigma},
        }
    if settings.replay.type != "uniform":
        kwargs |= {
            "replay_buffer_class": REPLAY_BUFFERS[settings.replay.type],
            "replay_buffer_kwargs": settings.replay.model_dump(exclude={"type"}),
        }
    model = algo.load()(
        policy,
        env if settings.normalize is None else normalized(env, settings),
        seed=seed,
        device="cuda" if settings.resources.gpus > 0 else "cpu",
        policy_kwargs=policy_kwargs,
        **kwargs,
    )
    if exploration.ez_greedy is not None:
        ez = exploration.ez_greedy
        n_actions = int(env.action_space.n)
        callbacks.append(EzGreedyCallback(ez.mu, ez.max_duration, n_actions, derived_seed(seed, "ez-greedy")))
    if exploration.param_noise is not None and not algo.on_policy:
        options = exploration.param_noise.model_dump(exclude={"distance"})
        callbacks.append(ParamNoiseCallback(**options, seed=seed))
    if noisy is not None:
        callbacks.append(
            NoisyNetCallback(resample=noisy.resample, epsilon=noisy.epsilon, log_every=noisy.log_every, seed=seed)
        )
    return model, callbacks

"""One registry from YAML names to SB3 algorithms and policies; RunSettings → model + callbacks."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache
from typing import Any

import gymnasium as gym
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from torch import nn

from study.buffers import REPLAY_BUFFERS
from study.config import RunSettings
from study.dqn import DQN, QRDQN
from study.exploration.action_noise import make_action_noise
from study.exploration.noisy import NoisyNetCallback
from study.exploration.param_noise import ParamNoiseCallback
from study.features import FEATURES
from study.policies import (
    NoisyDQNPolicy,
    ParamNoiseDQNPolicy,
    ParamNoiseQRDQNPolicy,
    ParamNoiseSACPolicy,
    ParamNoiseTD3Policy,
)


@dataclass(frozen=True)
class Algo:
    """An algorithm the studies can name."""

    cls: type[BaseAlgorithm]
    policy: type[BasePolicy]
    stochastic: bool = False  # explores by sampling its own stochastic policy
    discrete: bool = False  # acts in discrete action spaces (value-based)
    noisy_policy: type[BasePolicy] | None = None  # its NoisyNet policy
    prioritized: bool = False  # learns from prioritized replay

    @property
    def noisy(self) -> bool:
        return self.noisy_policy is not None

    @cache  # noqa: B019  (a handful of frozen registry entries)
    def hyperparams(self) -> frozenset[str]:
        """The constructor arguments a study may set under `hyperparams:`."""
        return frozenset(inspect.signature(self.cls.__init__).parameters) - {"self", "policy", "env"}


ALGOS: dict[str, Algo] = {
    "td3": Algo(TD3, ParamNoiseTD3Policy),
    "ddpg": Algo(DDPG, ParamNoiseTD3Policy),
    "sac": Algo(SAC, ParamNoiseSACPolicy, stochastic=True),
    "dqn": Algo(DQN, ParamNoiseDQNPolicy, discrete=True, noisy_policy=NoisyDQNPolicy, prioritized=True),
    "qrdqn": Algo(QRDQN, ParamNoiseQRDQNPolicy, discrete=True),
}

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def build(settings: RunSettings, env: gym.Env, seed: int) -> tuple[BaseAlgorithm, list[BaseCallback]]:
    """The SB3 model for the settings and the exploration callbacks it trains with."""
    algo = ALGOS[settings.algo]
    exploration = settings.exploration
    policy = algo.policy
    policy_kwargs: dict[str, Any] = {
        "net_arch": list(settings.net_arch),
        "activation_fn": ACTIVATIONS[settings.activation],
        "layer_norm": settings.layer_norm,
        "features_extractor_class": FEATURES[settings.features_extractor],
    }
    kwargs = settings.hyperparams.sb3_kwargs()
    if not algo.discrete:
        policy_kwargs["explore_mean"] = exploration.mean_actions
        kwargs["action_noise"] = make_action_noise(exploration.action_noise, env.action_space.shape[0])
    if exploration.gsde is not None:
        interval = exploration.gsde.interval
        kwargs |= {"use_sde": True, "sde_sample_freq": -1 if interval == "episode" else interval}
        policy_kwargs["log_std_init"] = exploration.gsde.log_std_init
    noisy = exploration.noisy_net
    if noisy is not None:
        policy = algo.noisy_policy
        policy_kwargs |= {
            "noisy_layers": noisy.layers,
            "noisy_kwargs": {"factorised": noisy.factorised, "sigma0": noisy.initial_sigma},
        }
    if settings.replay.type != "uniform":
        kwargs |= {
            "replay_buffer_class": REPLAY_BUFFERS[settings.replay.type],
            "replay_buffer_kwargs": settings.replay.model_dump(exclude={"type"}),
        }
    model = algo.cls(
        policy,
        env,
        seed=seed,
        device="cuda" if settings.resources.gpus > 0 else "cpu",
        policy_kwargs=policy_kwargs,
        **kwargs,
    )
    callbacks: list[BaseCallback] = []
    if exploration.param_noise is not None:
        callbacks.append(ParamNoiseCallback(**exploration.param_noise.model_dump(), seed=seed))
    if noisy is not None:
        callbacks.append(
            NoisyNetCallback(resample=noisy.resample, epsilon=noisy.epsilon, log_every=noisy.log_every, seed=seed)
        )
    return model, callbacks

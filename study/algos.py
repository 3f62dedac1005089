"""One registry from YAML names to SB3 algorithms and policies; RunSettings → model + callbacks."""

from __future__ import annotations

import inspect
from dataclasses import dataclass
from functools import cache

import gymnasium as gym
from stable_baselines3 import DDPG, SAC, TD3
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.policies import BasePolicy
from torch import nn

from study.config import RunSettings
from study.exploration.action_noise import make_action_noise
from study.exploration.param_noise import ParamNoiseCallback
from study.policies import ParamNoiseSACPolicy, ParamNoiseTD3Policy


@dataclass(frozen=True)
class Algo:
    """An algorithm the studies can name."""

    cls: type[BaseAlgorithm]
    policy: type[BasePolicy]
    stochastic: bool = False  # explores by sampling its own stochastic policy

    @cache  # noqa: B019  (a handful of frozen registry entries)
    def hyperparams(self) -> frozenset[str]:
        """The constructor arguments a study may set under `hyperparams:`."""
        return frozenset(inspect.signature(self.cls.__init__).parameters) - {"self", "policy", "env"}


ALGOS: dict[str, Algo] = {
    "td3": Algo(TD3, ParamNoiseTD3Policy),
    "ddpg": Algo(DDPG, ParamNoiseTD3Policy),
    "sac": Algo(SAC, ParamNoiseSACPolicy, stochastic=True),
}

ACTIVATIONS: dict[str, type[nn.Module]] = {"relu": nn.ReLU, "tanh": nn.Tanh}


def build(settings: RunSettings, env: gym.Env, seed: int) -> tuple[BaseAlgorithm, list[BaseCallback]]:
    """The SB3 model for the settings and the exploration callbacks it trains with."""
    algo = ALGOS[settings.algo]
    exploration = settings.exploration
    policy_kwargs: dict = {
        "net_arch": list(settings.net_arch),
        "activation_fn": ACTIVATIONS[settings.activation],
        "layer_norm": settings.layer_norm,
        "explore_mean": exploration.mean_actions,
    }
    kwargs = settings.hyperparams.sb3_kwargs()
    if exploration.gsde is not None:
        interval = exploration.gsde.interval
        kwargs |= {"use_sde": True, "sde_sample_freq": -1 if interval == "episode" else interval}
        policy_kwargs["log_std_init"] = exploration.gsde.log_std_init
    model = algo.cls(
        algo.policy,
        env,
        seed=seed,
        device="cuda" if settings.resources.gpus > 0 else "cpu",
        action_noise=make_action_noise(exploration.action_noise, env.action_space.shape[0]),
        policy_kwargs=policy_kwargs,
        **kwargs,
    )
    callbacks: list[BaseCallback] = []
    if exploration.param_noise is not None:
        callbacks.append(ParamNoiseCallback(**exploration.param_noise.model_dump(), seed=seed))
    return model, callbacks

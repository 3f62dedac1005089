"""SB3 policy classes with optional LayerNorm and a perturbed copy of the acting network."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from study.exploration.distances import rms_action_distance


def insert_layer_norm(net: nn.Sequential, output_layer: bool = True) -> nn.Sequential:
    """The same network with a LayerNorm after each hidden Linear, before its activation
    (`output_layer`: the last Linear is the output layer and gets none)."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    hidden = linears[:-1] if output_layer else linears
    modules: list[nn.Module] = []
    for module in net:
        modules.append(module)
        if any(module is layer for layer in hidden):
            modules.append(nn.LayerNorm(module.out_features))
    return nn.Sequential(*modules)


class ParamNoisePolicyMixin:
    """`layer_norm` on/off for actor and critic, and frozen copies of the actor for exploring.

    While `explore_perturbed` is set (by `ParamNoiseCallback`), non-deterministic predictions
    are the deterministic actions of `perturbed_actor`; with `explore_mean`, those of the
    unperturbed actor. Deterministic predictions (evaluation) always come from the
    unperturbed `actor`, the only one the learner trains.
    """

    actor: nn.Module

    def __init__(self, *args: Any, layer_norm: bool = False, explore_mean: bool = False, **kwargs: Any) -> None:
        self.layer_norm = layer_norm
        self.explore_mean = explore_mean
        super().__init__(*args, **kwargs)

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        critic = super().make_critic(features_extractor)
        if self.layer_norm:
            for idx, q_net in enumerate(critic.q_networks):
                critic.q_networks[idx] = insert_layer_norm(q_net).to(self.device)
                critic.add_module(f"qf{idx}", critic.q_networks[idx])
        return critic

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # the copies must not shift the global RNG: same seed, same initial actor as plain SB3
        with th.random.fork_rng(devices=[]):
            self.perturbed_actor = self._frozen_copy()
            self.adaptive_actor = self._frozen_copy()
        self.explore_perturbed = False

    def _frozen_copy(self) -> nn.Module:
        copy = self.make_actor(features_extractor=None)
        copy.load_state_dict(self.actor.state_dict())
        copy.requires_grad_(False)
        copy.set_training_mode(False)
        return copy

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {
            "layer_norm": self.layer_norm,
            "explore_mean": self.explore_mean,
        }

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        if deterministic or self.explore_mean:
            return self.mean_actions(self.actor, observation)
        if self.explore_perturbed:
            return self.mean_actions(self.perturbed_actor, observation)
        return super()._predict(observation, deterministic)

    def mean_actions(self, actor: nn.Module, observation: PyTorchObs) -> th.Tensor:
        """The deterministic actions of `actor`, in the normalized [-1, 1] space."""
        raise NotImplementedError

    def perturbed_parts(self, actor: nn.Module) -> list[nn.Module]:
        """The parts of an actor whose Linear layers parameter noise perturbs."""
        return [actor]

    # -- the seam used by ParamNoiseCallback -------------------------------------------

    @property
    def acting_net(self) -> nn.Module:
        return self.actor

    @property
    def perturbed_net(self) -> nn.Module:
        return self.perturbed_actor

    @property
    def adaptive_net(self) -> nn.Module:
        return self.adaptive_actor

    @th.no_grad()
    def perturbation_distance(self, obs: th.Tensor) -> float:
        """RMS distance between the actor's and the adaptive copy's actions on `obs`."""
        return rms_action_distance(self.mean_actions(self.actor, obs), self.mean_actions(self.adaptive_actor, obs))


class ParamNoiseTD3Policy(ParamNoisePolicyMixin, TD3Policy):
    """TD3/DDPG policy: the whole actor is perturbed, output layer included."""

    def make_actor(self, features_extractor: Any = None) -> TD3Actor:
        actor = super().make_actor(features_extractor)
        if self.layer_norm:
            actor.mu = insert_layer_norm(actor.mu).to(self.device)
        return actor

    def mean_actions(self, actor: nn.Module, observation: PyTorchObs) -> th.Tensor:
        return actor(observation)


class ParamNoiseSACPolicy(ParamNoisePolicyMixin, SACPolicy):
    """SAC policy: the mean path (latent layers and mean head) is perturbed, never the
    log-std head; the perturbed action is the deterministic squashed mean."""

    def make_actor(self, features_extractor: Any = None) -> SACActor:
        actor = super().make_actor(features_extractor)
        if self.layer_norm:
            actor.latent_pi = insert_layer_norm(actor.latent_pi, output_layer=False).to(self.device)
        return actor

    def mean_actions(self, actor: nn.Module, observation: PyTorchObs) -> th.Tensor:
        return actor(observation, deterministic=True)

    def perturbed_parts(self, actor: nn.Module) -> list[nn.Module]:
        return [actor.latent_pi, actor.mu]

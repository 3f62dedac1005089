"""SB3 policy classes with optional LayerNorm and a perturbed copy of the acting network."""

from __future__ import annotations

from typing import Any

import torch as th
from stable_baselines3.common.policies import ContinuousCritic
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.td3.policies import Actor, TD3Policy
from torch import nn

from study.exploration.distances import rms_action_distance


def insert_layer_norm(net: nn.Sequential) -> nn.Sequential:
    """The same network with a LayerNorm after each hidden Linear, before its activation."""
    linears = [m for m in net if isinstance(m, nn.Linear)]
    modules: list[nn.Module] = []
    for module in net:
        modules.append(module)
        if isinstance(module, nn.Linear) and module is not linears[-1]:
            modules.append(nn.LayerNorm(module.out_features))
    return nn.Sequential(*modules)


class ParamNoiseTD3Policy(TD3Policy):
    """TD3/DDPG policy with `layer_norm` on/off and a perturbed actor for exploration.

    While `explore_perturbed` is set (by `ParamNoiseCallback`), non-deterministic
    predictions come from `perturbed_actor`; deterministic ones (evaluation) always
    from the unperturbed `actor`, which is the only one the learner trains.
    """

    def __init__(self, *args: Any, layer_norm: bool = False, **kwargs: Any) -> None:
        self.layer_norm = layer_norm
        super().__init__(*args, **kwargs)

    def make_actor(self, features_extractor: Any = None) -> Actor:
        actor = super().make_actor(features_extractor)
        if self.layer_norm:
            actor.mu = insert_layer_norm(actor.mu).to(self.device)
        return actor

    def make_critic(self, features_extractor: Any = None) -> ContinuousCritic:
        critic = super().make_critic(features_extractor)
        if self.layer_norm:
            for idx, q_net in enumerate(critic.q_networks):
                critic.q_networks[idx] = insert_layer_norm(q_net).to(self.device)
                critic.add_module(f"qf{idx}", critic.q_networks[idx])
        return critic

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        # the copies must not shift the global RNG: same seed, same initial actor as plain TD3
        with th.random.fork_rng(devices=[]):
            self.perturbed_actor = self._frozen_copy(self.actor)
            self.adaptive_actor = self._frozen_copy(self.actor)
        self.explore_perturbed = False

    def _frozen_copy(self, actor: Actor) -> Actor:
        copy = self.make_actor(features_extractor=None)
        copy.load_state_dict(actor.state_dict())
        copy.requires_grad_(False)
        copy.set_training_mode(False)
        return copy

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {"layer_norm": self.layer_norm}

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        if self.explore_perturbed and not deterministic:
            return self.perturbed_actor(observation)
        return self.actor(observation)

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
        return rms_action_distance(self.actor(obs), self.adaptive_actor(obs))

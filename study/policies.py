"""SB3 policy classes with optional LayerNorm and a perturbed copy of the acting network."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import numpy as np
import torch as th
from sb3_contrib.qrdqn.policies import QRDQNPolicy, QuantileNetwork
from stable_baselines3.common.distributions import Distribution
from stable_baselines3.common.policies import ActorCriticPolicy, ContinuousCritic
from stable_baselines3.common.type_aliases import PyTorchObs
from stable_baselines3.dqn.policies import DQNPolicy, QNetwork
from stable_baselines3.sac.policies import Actor as SACActor
from stable_baselines3.sac.policies import SACPolicy
from stable_baselines3.td3.policies import Actor as TD3Actor
from stable_baselines3.td3.policies import TD3Policy
from torch import nn

from study.exploration.colored import ColoredNoiseProcess, colored_sample
from study.exploration.distances import rms_action_distance, softmax_kl_distance
from study.exploration.noisy import make_noisy, moved_generator, noise_off, noisy_layers
from study.exploration.segments import SegmentNoise


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


class PerturbedCopiesMixin:
    """Frozen perturbed and adaptive copies of the acting network (`acting_name`), the seam
    `ParamNoiseCallback` works through. While `explore_perturbed` is set, non-deterministic
    predictions come from the perturbed copy; the learner trains only the original."""

    acting_name: str
    perturbable = True

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self.explore_perturbed = False
        if not self.perturbable:
            return
        # the copies must not shift the global RNG: same seed, same initial network as plain SB3
        with th.random.fork_rng(devices=[]):
            setattr(self, f"perturbed_{self.acting_name}", self._frozen_copy())
            setattr(self, f"adaptive_{self.acting_name}", self._frozen_copy())

    def make_acting_net(self) -> nn.Module:
        """A new, independent network of the acting network's architecture."""
        raise NotImplementedError

    def _frozen_copy(self) -> nn.Module:
        copy = self.make_acting_net()
        copy.load_state_dict(self.acting_net.state_dict())
        copy.requires_grad_(False)
        copy.set_training_mode(False)
        return copy

    def perturbed_parts(self, net: nn.Module) -> list[nn.Module]:
        """The parts of the acting network whose Linear layers parameter noise perturbs."""
        return [net]

    @property
    def acting_net(self) -> nn.Module:
        return getattr(self, self.acting_name)

    @property
    def perturbed_net(self) -> nn.Module:
        return getattr(self, f"perturbed_{self.acting_name}")

    @property
    def adaptive_net(self) -> nn.Module:
        return getattr(self, f"adaptive_{self.acting_name}")

    def perturbation_distance(self, obs: th.Tensor) -> float:
        """The distance d between the acting network and its adaptive copy on `obs`."""
        raise NotImplementedError


class ParamNoisePolicyMixin(PerturbedCopiesMixin):
    """Actor-critic policies: `layer_norm` on/off for actor and critic, and perturbed copies
    of the actor. With `explore_mean`, non-deterministic predictions are the deterministic
    actions of the unperturbed actor. Deterministic predictions (evaluation) always come
    from the unperturbed `actor`."""

    actor: nn.Module
    acting_name = "actor"

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

    def make_acting_net(self) -> nn.Module:
        return self.make_actor(features_extractor=None)

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

    #: colored noise in place of the white Gaussian sample of exploring actions (set by
    #: `study.exploration.colored.ColoredSamplingCallback`)
    colored_noise: ColoredNoiseProcess | None = None

    def _predict(self, observation: PyTorchObs, deterministic: bool = False) -> th.Tensor:
        if deterministic or self.explore_mean or self.explore_perturbed or self.colored_noise is None:
            return super()._predict(observation, deterministic)
        mean_actions, log_std, _ = self.actor.get_action_dist_params(observation)
        return th.tanh(mean_actions + log_std.exp() * colored_sample(self.colored_noise, mean_actions))

    def mean_actions(self, actor: nn.Module, observation: PyTorchObs) -> th.Tensor:
        return actor(observation, deterministic=True)

    def perturbed_parts(self, net: nn.Module) -> list[nn.Module]:
        return [net.latent_pi, net.mu]


class _QPolicyMixin(PerturbedCopiesMixin):
    """Value-based policies: `layer_norm` in the Q-network and perturbed copies of it; only its
    fully connected layers are perturbed. The acting network is `acting_name`, whose head
    is the Sequential `head_name`."""

    head_name: str

    def __init__(self, *args: Any, layer_norm: bool = False, **kwargs: Any) -> None:
        self.layer_norm = layer_norm
        super().__init__(*args, **kwargs)

    def _adapt_head(self, net: nn.Module) -> nn.Module:
        if self.layer_norm:
            setattr(net, self.head_name, insert_layer_norm(getattr(net, self.head_name)).to(self.device))
        return net

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {"layer_norm": self.layer_norm}

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        if self.explore_perturbed and not deterministic:
            return self.perturbed_net._predict(observation, deterministic=True)
        return self.acting_net._predict(observation, deterministic=True)

    def q_values(self, net: nn.Module, obs: th.Tensor) -> th.Tensor:
        """Q(s, ·) of `net`, one row per state."""
        return net(obs)

    @th.no_grad()
    def perturbation_distance(self, obs: th.Tensor) -> float:
        """mean KL(softmax Q ‖ softmax Q̃) between the Q-network and the adaptive copy on `obs`."""
        return softmax_kl_distance(self.q_values(self.acting_net, obs), self.q_values(self.adaptive_net, obs))


class ParamNoiseDQNPolicy(_QPolicyMixin, DQNPolicy):
    """DQN policy with optional LayerNorm after each hidden layer of the Q-network."""

    acting_name, head_name = "q_net", "q_net"

    def make_q_net(self) -> QNetwork:
        return self._adapt_head(super().make_q_net())

    def make_acting_net(self) -> nn.Module:
        return self.make_q_net()


class ParamNoiseQRDQNPolicy(_QPolicyMixin, QRDQNPolicy):
    """QR-DQN policy; its Q-values are the means over quantiles."""

    acting_name, head_name = "quantile_net", "quantile_net"

    def make_quantile_net(self) -> QuantileNetwork:
        return self._adapt_head(super().make_quantile_net())

    def make_acting_net(self) -> nn.Module:
        return self.make_quantile_net()

    def q_values(self, net: nn.Module, obs: th.Tensor) -> th.Tensor:
        return net(obs).mean(dim=1)


class NoisyDQNPolicy(ParamNoiseDQNPolicy):
    """NoisyNet-DQN policy: the last `noisy_layers` fully connected layers of the Q-network
    (default all), counted over its features extractor and its head, are `NoisyLinear`;
    deterministic predictions (evaluation) use the means only. The noise's generator
    `noise_generator` lives on the policy's device and follows it.

    :param noisy_kwargs: `factorised` and `sigma0` of the noisy layers
    """

    perturbable = False

    def __init__(
        self, *args: Any, noisy_layers: int | str = "all", noisy_kwargs: dict[str, Any] | None = None, **kwargs: Any
    ) -> None:
        self.noisy_layers = noisy_layers
        self.noisy_kwargs = dict(noisy_kwargs or {})
        self.noise_generator = th.Generator()
        self.keep_acting_noise = True  # training restores the acting noise after its gradient steps
        super().__init__(*args, **kwargs)

    def make_q_net(self) -> QNetwork:
        return make_noisy(super().make_q_net(), self.noisy_layers, **self.noisy_kwargs)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        self._generator_follows_device()
        self.sample_acting_noise()

    def _apply(self, fn: Any, recurse: bool = True) -> NoisyDQNPolicy:
        super()._apply(fn, recurse)  # .to(), .cuda(), .cpu(), ...
        self._generator_follows_device()
        return self

    def _generator_follows_device(self) -> None:
        """Keep `noise_generator` on the device of the noisy layers."""
        if self.noise_generator.device != self.device:
            self.noise_generator = moved_generator(self.noise_generator, self.device)

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {
            "noisy_layers": self.noisy_layers,
            "noisy_kwargs": self.noisy_kwargs,
        }

    def _predict(self, observation: PyTorchObs, deterministic: bool = True) -> th.Tensor:
        if deterministic:
            with noise_off(self.q_net):
                return self.q_net._predict(observation, deterministic=True)
        return self.q_net._predict(observation, deterministic=True)

    def sample_acting_noise(self) -> None:
        """New noise for the online network, which acts."""
        for layer in noisy_layers(self.q_net):
            layer.sample_noise(self.noise_generator)

    def sample_training_noise(self) -> None:
        """New, independent noise for the online and the target network (one gradient step)."""
        for layer in [*noisy_layers(self.q_net), *noisy_layers(self.q_net_target)]:
            layer.sample_noise(self.noise_generator)

    def noise_state(self) -> list[th.Tensor]:
        return [eps.clone() for layer in noisy_layers(self.q_net) for eps in (layer.weight_epsilon, layer.bias_epsilon)]

    def load_noise_state(self, state: list[th.Tensor]) -> None:
        targets = [eps for layer in noisy_layers(self.q_net) for eps in (layer.weight_epsilon, layer.bias_epsilon)]
        for eps, saved in zip(targets, state, strict=True):
            eps.copy_(saved)


class ParamNoiseActorCriticPolicy(ActorCriticPolicy):
    """PPO/TRPO policy whose mean path (the policy latent network and the action head; never the
    log-std, the value network or LayerNorm) can act perturbed, each row of a batch under the
    perturbation of its own segment (`study.exploration.segments`): collection acts with the
    current segment's ε while `explore_perturbed` is set, and the update evaluates each step of
    the rollout under the ε that chose it (`train_rows`, set by `SegmentRolloutBuffer` with
    every batch). Predictions outside the update (evaluation) use the unperturbed mean.
    `layer_norm`: a LayerNorm after each hidden Linear of the policy and value networks."""

    def __init__(self, *args: Any, layer_norm: bool = False, **kwargs: Any) -> None:
        self.layer_norm = layer_norm
        super().__init__(*args, **kwargs)

    def _build_mlp_extractor(self) -> None:
        super()._build_mlp_extractor()
        if self.layer_norm:
            extractor = self.mlp_extractor
            extractor.policy_net = insert_layer_norm(extractor.policy_net, output_layer=False).to(self.device)
            extractor.value_net = insert_layer_norm(extractor.value_net, output_layer=False).to(self.device)

    def _build(self, lr_schedule: Any) -> None:
        super()._build(lr_schedule)
        layers = [m for net in (self.mlp_extractor.policy_net, self.action_net) for m in net.modules()]
        self.segment_noise = SegmentNoise([m for m in layers if isinstance(m, nn.Linear)])
        self.explore_perturbed = False
        self.train_rows: th.Tensor | int | None = None

    def _get_constructor_parameters(self) -> dict[str, Any]:
        return super()._get_constructor_parameters() | {"layer_norm": self.layer_norm}

    def set_train_rows(self, segments: np.ndarray) -> None:
        """The segment of each row of the batch the update evaluates next (one index where they share one)."""
        one = len(segments) > 0 and (segments == segments[0]).all()
        self.train_rows = int(segments[0]) if one else th.as_tensor(segments, device=self.device)

    @contextmanager
    def _rows(self, rows: th.Tensor | int | None) -> Iterator[None]:
        self.segment_noise.rows = rows
        try:
            yield
        finally:
            self.segment_noise.rows = None

    def _update_rows(self) -> th.Tensor | int | None:
        return self.train_rows if self.training else None

    def forward(self, obs: th.Tensor, deterministic: bool = False) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        rows = self.segment_noise.current if self.explore_perturbed and not deterministic else None
        with self._rows(rows):
            return super().forward(obs, deterministic)

    def evaluate_actions(self, obs: PyTorchObs, actions: th.Tensor) -> tuple[th.Tensor, th.Tensor, th.Tensor | None]:
        with self._rows(self._update_rows()):
            return super().evaluate_actions(obs, actions)

    def get_distribution(self, obs: PyTorchObs) -> Distribution:
        return self.distribution_under(obs, self._update_rows())

    def distribution_under(self, obs: PyTorchObs, rows: th.Tensor | int | None) -> Distribution:
        """The action distribution with row i of `obs` under segment rows[i] (None: unperturbed)."""
        with self._rows(rows):
            return super().get_distribution(obs)

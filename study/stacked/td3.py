"""The TD3/DDPG update of E members at once, line by line SB3's `TD3.train()` on stacked networks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

import torch as th
from gymnasium import spaces
from stable_baselines3 import TD3
from stable_baselines3.common.torch_layers import FlattenExtractor
from stable_baselines3.common.utils import update_learning_rate
from torch import nn

from study.stacked.nets import UnsupportedNetwork, stack_sequential


class StackedBatch(NamedTuple):
    """One replay batch per member, stacked: [E, batch, ·]; `dones` already exclude time-limit ends."""

    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None = None  # n-step replay: γⁿ per transition


#: settings every member of a group must share: they shape the stacked update
SHARED = ("gamma", "tau", "policy_delay", "target_policy_noise", "target_noise_clip", "_n_updates")


def _polyak(params: Iterable[th.Tensor], targets: Iterable[th.Tensor], tau: float) -> None:
    """SB3's `polyak_update` on stacked tensors (elementwise, so the same per member)."""
    with th.no_grad():
        for param, target in zip(params, targets, strict=True):
            target.data.mul_(1 - tau)
            th.add(target.data, param.data, alpha=tau, out=target.data)


def _mse(prediction: th.Tensor, target: th.Tensor) -> th.Tensor:
    """`F.mse_loss` of each member, [E]."""
    return (prediction - target).pow(2).mean(dim=(1, 2))


class StackedTD3:
    """The actors and critics of E TD3 (or DDPG) models trained as one.

    The models' networks become views of the stacked ones, so after `train` each model holds its
    member's weights. `generators` are the members' torch random streams (SB3 draws the target
    policy noise from the global one).
    """

    def __init__(self, models: Sequence[TD3], generators: Sequence[th.Generator]) -> None:
        first = models[0]
        for name in SHARED:
            if any(getattr(model, name) != getattr(first, name) for model in models):
                raise ValueError(f"{name}: the members of a stacked group must share it")
        for model in models:
            for net in (model.actor, model.actor_target, model.critic, model.critic_target):
                if not isinstance(net.features_extractor, FlattenExtractor):
                    raise UnsupportedNetwork("features_extractor: only flat observations can be stacked")
            if not isinstance(model.observation_space, spaces.Box) or len(model.observation_space.shape) != 1:
                raise UnsupportedNetwork("observation space: only flat Box observations can be stacked")
        if len(generators) != len(models):
            raise ValueError("one random stream per member")
        self.models, self.generators = list(models), list(generators)
        self.gamma, self.tau, self.policy_delay = first.gamma, first.tau, first.policy_delay
        self.target_policy_noise, self.target_noise_clip = first.target_policy_noise, first.target_noise_clip
        self.lr_schedule = first.lr_schedule
        self.n_updates = first._n_updates
        self.actor = stack_sequential([model.actor.mu for model in models])
        self.actor_target = stack_sequential([model.actor_target.mu for model in models])
        n_critics = len(first.critic.q_networks)
        self.critics = nn.ModuleList(
            stack_sequential([model.critic.q_networks[j] for model in models]) for j in range(n_critics)
        )
        self.critic_targets = nn.ModuleList(
            stack_sequential([model.critic_target.q_networks[j] for model in models]) for j in range(n_critics)
        )
        self.actor_target.requires_grad_(False)
        self.critic_targets.requires_grad_(False)
        policy = first.policy
        lr = self.lr_schedule(1)
        self.actor_optimizer = policy.optimizer_class(self.actor.parameters(), lr=lr, **policy.optimizer_kwargs)
        self.critic_optimizer = policy.optimizer_class(self.critics.parameters(), lr=lr, **policy.optimizer_kwargs)

    def _q(self, critics: nn.ModuleList, obs: th.Tensor, actions: th.Tensor) -> list[th.Tensor]:
        q_input = th.cat([obs, actions], dim=-1)
        return [q_net(q_input) for q_net in critics]

    def _target_noise(self, actions: th.Tensor) -> th.Tensor:
        """Each member's `actions.clone().data.normal_(0, σ)`, from its own stream."""
        return th.stack(
            [
                member.clone().normal_(0, self.target_policy_noise, generator=generator)
                for member, generator in zip(actions, self.generators, strict=True)
            ]
        )

    def train(self, batches: Iterable[StackedBatch], progress_remaining: float) -> None:
        """One SB3 `train()` call of every member: a gradient step per batch."""
        lr = self.lr_schedule(progress_remaining)
        update_learning_rate(self.actor_optimizer, lr)
        update_learning_rate(self.critic_optimizer, lr)
        for batch in batches:
            batch = batch._replace(  # SB3's preprocess_obs of a flat Box: as float32
                observations=batch.observations.float(), next_observations=batch.next_observations.float()
            )
            self.n_updates += 1
            discounts = batch.discounts if batch.discounts is not None else self.gamma
            with th.no_grad():
                noise = self._target_noise(batch.actions)
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = (self.actor_target(batch.next_observations) + noise).clamp(-1, 1)
                next_q_values = th.cat(self._q(self.critic_targets, batch.next_observations, next_actions), dim=-1)
                next_q_values, _ = th.min(next_q_values, dim=-1, keepdim=True)
                target_q_values = batch.rewards + (1 - batch.dones) * discounts * next_q_values

            current_q_values = self._q(self.critics, batch.observations, batch.actions)
            critic_loss = sum(_mse(current_q, target_q_values) for current_q in current_q_values)
            self.critic_optimizer.zero_grad()
            critic_loss.sum().backward()
            self.critic_optimizer.step()

            if self.n_updates % self.policy_delay == 0:
                q_input = th.cat([batch.observations, self.actor(batch.observations)], dim=-1)
                actor_loss = -self.critics[0](q_input).mean(dim=(1, 2))
                self.actor_optimizer.zero_grad()
                actor_loss.sum().backward()
                self.actor_optimizer.step()

                _polyak(self.critics.parameters(), self.critic_targets.parameters(), self.tau)
                _polyak(self.actor.parameters(), self.actor_target.parameters(), self.tau)
        for model in self.models:
            model._n_updates = self.n_updates

"""The TD3/DDPG update of E members at once, line by line SB3's `TD3.train()` on stacked networks."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import torch as th
from stable_baselines3 import TD3

from study.stacked.common import (
    Acting,
    LossLog,
    StackedBatch,
    check_members,
    make_optimizer,
    member_normal,
    mse,
    polyak,
    q_values,
    stack_critics,
)
from study.stacked.nets import stack_sequential
from study.stacked.optim import set_learning_rates

#: settings every member of a group must share: they shape the stacked update
SHARED = ("gamma", "tau", "policy_delay", "target_policy_noise", "target_noise_clip")


class StackedTD3:
    """The actors and critics of E TD3 (or DDPG) models trained as one.

    The models' networks become views of the stacked ones, so after `train` each model holds its
    member's weights. `generators` are the members' torch random streams (SB3 draws the target
    policy noise from the global one).
    """

    def __init__(self, models: Sequence[TD3], generators: Sequence[th.Generator]) -> None:
        first = models[0]
        check_members(models, generators, SHARED, ("actor", "actor_target", "critic", "critic_target"))
        self.models, self.generators = list(models), list(generators)
        self.gamma, self.tau, self.policy_delay = first.gamma, first.tau, first.policy_delay
        self.target_policy_noise, self.target_noise_clip = first.target_policy_noise, first.target_noise_clip
        self.lr_schedule = first.lr_schedule
        self.n_updates = th.tensor([model._n_updates for model in models])
        self.actor = stack_sequential([model.actor.mu for model in models])
        self.actor_target = stack_sequential([model.actor_target.mu for model in models])
        self.critics, self.critic_targets = stack_critics(models, "critic"), stack_critics(models, "critic_target")
        self.actor_target.requires_grad_(False)
        self.critic_targets.requires_grad_(False)
        self.actor_optimizer = make_optimizer(first, self.actor.parameters(), len(models))
        self.critic_optimizer = make_optimizer(first, self.critics.parameters(), len(models))
        self.optimizers = [self.actor_optimizer, self.critic_optimizer]

    def acting(self) -> Acting:
        """The members' exploring actions in [-1, 1], [E, n, ·] → [E, n, actions] (SB3's
        `policy._predict(obs, deterministic=False)`): the perturbed actors while parameter noise
        acts, else the actors."""
        policy = self.models[0].policy
        actor = self.actor
        if getattr(policy, "explore_perturbed", False):
            actor = stack_sequential([model.policy.perturbed_actor.mu for model in self.models])
        return lambda obs, acts: actor(obs)

    def deterministic(self) -> Acting:
        """The members' deterministic actions in [-1, 1] (SB3's `policy._predict(obs,
        deterministic=True)`, as evaluations act): the actors'."""
        return lambda obs, acts: self.actor(obs)

    def train(self, batches: Iterable[StackedBatch], progress_remaining: float | Sequence[float]) -> None:
        """One SB3 `train()` call of every member: a gradient step per batch (of the members in
        its mask); `progress_remaining` is all members' or each one's."""
        set_learning_rates(self.optimizers, self.lr_schedule, progress_remaining)
        losses = LossLog(self.models)
        for batch in batches:
            batch = batch.preprocessed()
            mask = batch.mask
            self.n_updates += 1 if mask is None else mask.long().cpu()
            discounts = batch.discounts if batch.discounts is not None else self.gamma
            with th.no_grad():
                noise = member_normal(batch.actions[0], self.generators, self.target_policy_noise, mask)
                noise = noise.clamp(-self.target_noise_clip, self.target_noise_clip)
                next_actions = (self.actor_target(batch.next_observations) + noise).clamp(-1, 1)
                next_q_values = th.cat(q_values(self.critic_targets, batch.next_observations, next_actions), dim=-1)
                next_q_values, _ = th.min(next_q_values, dim=-1, keepdim=True)
                target_q_values = batch.rewards + (1 - batch.dones) * discounts * next_q_values

            current_q_values = q_values(self.critics, batch.observations, batch.actions)
            critic_loss = sum(mse(current_q, target_q_values) for current_q in current_q_values)
            self.critic_optimizer.zero_grad()
            critic_loss.sum().backward()
            self.critic_optimizer.step(mask=mask)
            losses.add("critic_loss", critic_loss, mask)

            delayed = self.n_updates % self.policy_delay == 0
            if mask is not None:
                delayed &= mask.cpu()
            if delayed.any():
                actor_mask = None if bool(delayed.all()) else delayed
                q_input = th.cat([batch.observations, self.actor(batch.observations)], dim=-1)
                actor_loss = -self.critics[0](q_input).mean(dim=(1, 2))
                self.actor_optimizer.zero_grad()
                actor_loss.sum().backward()
                self.actor_optimizer.step(mask=actor_mask)
                losses.add("actor_loss", actor_loss, actor_mask)

                polyak(self.critics.parameters(), self.critic_targets.parameters(), self.tau, actor_mask)
                polyak(self.actor.parameters(), self.actor_target.parameters(), self.tau, actor_mask)
        for model, n_updates in zip(self.models, self.n_updates.tolist(), strict=True):
            model._n_updates = n_updates
        losses.record()

"""The SAC update of E members at once, line by line SB3's `SAC.train()` on stacked networks."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch as th
from stable_baselines3 import SAC
from stable_baselines3.common.distributions import TanhBijector
from stable_baselines3.sac.policies import LOG_STD_MAX, LOG_STD_MIN
from torch import nn

from study.exploration.colored import colored_sample
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
from study.stacked.graph import GraphedStep
from study.stacked.nets import stack_parameters, stack_sequential
from study.stacked.optim import StackedAdam, set_learning_rates

#: settings every member of a group must share: they shape the stacked update
SHARED = ("gamma", "tau", "target_update_interval", "target_entropy", "use_sde")
#: gSDE settings every member must share (of the actor's `action_dist`)
SDE_SHARED = ("full_std", "use_expln", "epsilon", "learn_features")


class StackedSAC:
    """The actors, critics and entropy coefficients of E SAC models trained as one.

    The models' networks (and `log_ent_coef`, gSDE's `log_std`) become views of the stacked ones,
    so after `train` each model holds its member's weights. `generators` are the members' torch
    random streams (SB3 samples the policy's actions and gSDE's matrices from the global one).
    """

    def __init__(self, models: Sequence[SAC], generators: Sequence[th.Generator]) -> None:
        first = models[0]
        check_members(models, generators, SHARED, ("actor", "critic", "critic_target"))
        self.models, self.generators = list(models), list(generators)
        self.gamma, self.tau = first.gamma, first.tau
        self.target_update_interval, self.target_entropy = first.target_update_interval, first.target_entropy
        self.lr_schedule = first.lr_schedule
        self.n_updates = th.tensor([model._n_updates for model in models])
        self.use_sde = first.use_sde
        self.latent_pi = stack_sequential([model.actor.latent_pi for model in models])
        self.mu = stack_sequential([model.actor.mu for model in models])
        if self.use_sde:
            self.sde = first.actor.action_dist
            for name in SDE_SHARED:
                if any(getattr(model.actor.action_dist, name) != getattr(self.sde, name) for model in models):
                    raise ValueError(f"gSDE's {name}: the members of a stacked group must share it")
            self.log_std = stack_parameters([model.actor.log_std for model in models])  # [E, latent, ·]
            self.exploration_mat = th.zeros(
                len(models), self.sde.latent_sde_dim, self.sde.action_dim, device=first.device
            )
            log_std_params = [self.log_std]
        else:
            self.log_std = stack_sequential([model.actor.log_std for model in models])
            log_std_params = list(self.log_std.parameters())
        self.critics, self.critic_targets = stack_critics(models, "critic"), stack_critics(models, "critic_target")
        self.critic_targets.requires_grad_(False)
        actor_params = [*self.latent_pi.parameters(), *self.mu.parameters(), *log_std_params]
        self.actor_optimizer = make_optimizer(first, actor_params, len(models))
        self.critic_optimizer = make_optimizer(first, self.critics.parameters(), len(models))
        self.log_ent_coef: nn.Parameter | None = None
        self.ent_coef_optimizer: StackedAdam | None = None
        if first.ent_coef_optimizer is not None:
            self.log_ent_coef = nn.Parameter(th.cat([model.log_ent_coef.detach() for model in models]))  # [E]
            for i, model in enumerate(models):
                model.log_ent_coef.data = self.log_ent_coef.data[i : i + 1]
            self.ent_coef_optimizer = StackedAdam([self.log_ent_coef], len(models), lr=self.lr_schedule(1))  # SB3's
            self.ent_coef_tensor = None
        else:
            self.ent_coef_tensor = th.stack([model.ent_coef_tensor for model in models]).reshape(-1, 1, 1)
        self.optimizers = [self.actor_optimizer, self.critic_optimizer, *filter(None, [self.ent_coef_optimizer])]
        # on a GPU, the lockstep gradient step as a CUDA graph (gSDE's matrices and target updates
        # every few steps vary between steps: those stay eager)
        self.graphed: GraphedStep | None = None
        if first.device.type == "cuda" and not self.use_sde and self.target_update_interval == 1:
            self.graphed = GraphedStep(self._gradient_step, self.optimizers, self.generators)

    def reset_noise(self, mask: th.Tensor | None = None) -> th.Tensor:
        """gSDE's `actor.reset_noise()` of the members in `mask` (all without it), each drawing
        from its stream: their new exploration matrices (the others keep theirs), [E, latent, actions]."""
        std = self.sde.get_std(self.log_std)  # elementwise: [E, latent, actions]
        taken = [True] * len(self.models) if mask is None else mask.tolist()
        matrices = []
        for i, (generator, take) in enumerate(zip(self.generators, taken, strict=True)):
            if not take:
                matrices.append(self.exploration_mat[i].detach().to(std.device))
                continue
            # `Normal(0, std).rsample()`, then `.rsample((1,))` for `exploration_matrices`
            eps = th.empty_like(std[i]).normal_(generator=generator)
            th.empty((1, *std[i].shape), dtype=std.dtype, device=std.device).normal_(generator=generator)
            matrices.append(eps * std[i])
        self.exploration_mat = th.stack(matrices)
        return self.exploration_mat

    def member_matrices(self, i: int) -> MemberMatrices:
        """Member i's gSDE exploration matrices, for its `GSDEScheduleCallback`."""
        return MemberMatrices(self, i)

    def _gaussian(
        self, obs: th.Tensor, mask: th.Tensor | None, colored: bool = False
    ) -> tuple[th.Tensor, th.Tensor, th.Tensor]:
        """Each member's Gaussian mean, standard deviation and sample (its noise from its stream,
        or with `colored` the next step of its colored sequence; gSDE's from the last `reset_noise`)."""
        latent_pi = self.latent_pi(obs)
        mean_actions = self.mu(latent_pi)
        if self.use_sde:  # `proba_distribution` and `sample` with this gradient step's matrices
            variance = th.bmm(latent_pi**2, self.sde.get_std(self.log_std) ** 2)
            std = th.sqrt(variance + self.sde.epsilon)
            return mean_actions, std, mean_actions + th.bmm(latent_pi, self.exploration_mat)
        log_std = th.clamp(self.log_std(latent_pi), LOG_STD_MIN, LOG_STD_MAX)
        std = th.ones_like(mean_actions) * log_std.exp()
        if colored:  # `ParamNoiseSACPolicy._predict` with colored noise
            noise = th.stack(
                [
                    colored_sample(model.policy.colored_noise, mean_actions)
                    if act
                    else th.zeros_like(mean_actions[0, 0])
                    for model, act in zip(self.models, mask.tolist(), strict=True)
                ]
            )[:, None]  # one step of each member's sequence, [E, 1, actions]
        else:
            noise = member_normal(mean_actions[0], self.generators, mask=mask)
        return mean_actions, std, mean_actions + noise * std

    def action_log_prob(self, obs: th.Tensor, mask: th.Tensor | None = None) -> tuple[th.Tensor, th.Tensor]:
        """SB3's `Actor.action_log_prob` of each member: squashed Gaussian actions and their
        log-probabilities ([E, batch, 1]), the noise drawn from each member's stream (gSDE's:
        its current exploration matrix)."""
        mean_actions, std, gaussian_actions = self._gaussian(obs, mask)
        actions = th.tanh(gaussian_actions)
        if self.use_sde:  # gSDE's `log_prob` inverts the squashing of its sample
            gaussian_actions = TanhBijector.inverse(actions)
        var = std**2
        log_prob = -((gaussian_actions - mean_actions) ** 2) / (2 * var) - std.log() - math.log(math.sqrt(2 * math.pi))
        log_prob = log_prob.sum(dim=-1)
        if self.use_sde:
            log_prob -= th.sum(self.sde.bijector.log_prob_correction(gaussian_actions), dim=-1)
        else:
            log_prob -= th.sum(th.log(1 - actions**2 + 1e-6), dim=-1)
        return actions, log_prob.unsqueeze(-1)

    def acting(self) -> Acting:
        """The members' exploring actions in [-1, 1], [E, n, ·] → [E, n, actions] (SB3's
        `policy._predict(obs, deterministic=False)`): the squashed mean of the perturbed actors
        while parameter noise acts, of the actors with `explore_mean`, gSDE's samples with the
        matrices of the last `reset_noise`, samples with colored noise, else squashed samples."""
        policy = self.models[0].policy
        if getattr(policy, "explore_mean", False):
            latent_pi, mu = self.latent_pi, self.mu
        elif getattr(policy, "explore_perturbed", False):
            latent_pi = stack_sequential([model.policy.perturbed_actor.latent_pi for model in self.models])
            mu = stack_sequential([model.policy.perturbed_actor.mu for model in self.models])
        elif self.use_sde:

            def sde_actions(obs: th.Tensor, acts: th.Tensor) -> th.Tensor:
                latent = self.latent_pi(obs)
                return th.tanh(self.mu(latent) + th.bmm(latent, self.exploration_mat.detach()))

            return sde_actions
        elif getattr(policy, "colored_noise", None) is not None:
            return lambda obs, acts: th.tanh(self._gaussian(obs, acts, colored=True)[2])
        else:
            return lambda obs, acts: th.tanh(self._gaussian(obs, acts)[2])
        return lambda obs, acts: th.tanh(mu(latent_pi(obs)))

    def deterministic(self) -> Acting:
        """The members' deterministic actions in [-1, 1] (SB3's `policy._predict(obs,
        deterministic=True)`, as evaluations act): the squashed means of the actors."""
        return lambda obs, acts: th.tanh(self.mu(self.latent_pi(obs)))

    def train(self, batches: Iterable[StackedBatch], progress_remaining: float | Sequence[float]) -> None:
        """One SB3 `train()` call of every member: a gradient step per batch (of the members in
        its mask); `progress_remaining` is all members' or each one's. On a GPU, the steps that
        all members take together at one learning rate replay a CUDA graph of the step."""
        set_learning_rates(self.optimizers, self.lr_schedule, progress_remaining)
        losses = LossLog(self.models)
        for gradient_step, batch in enumerate(batches):
            batch = batch.preprocessed()
            if self.graphed is not None and self._graphable(batch, losses):
                self.graphed(batch)
            else:
                if self.graphed is not None:  # members out of lockstep: eager from now on
                    self.graphed.release()
                    self.graphed = None
                self._gradient_step(batch, gradient_step, losses)
            self.n_updates += 1 if batch.mask is None else batch.mask.long().cpu()
        for model, n_updates in zip(self.models, self.n_updates.tolist(), strict=True):
            model._n_updates = n_updates
        losses.record()

    def _graphable(self, batch: StackedBatch, losses: LossLog) -> bool:
        """Whether this gradient step is the one the graph holds: all members, at one rate and
        one step count (members resumed from different steps count apart), no losses to read back."""
        rates = [group["lr"] for optimizer in self.optimizers for group in optimizer.param_groups]
        counts = [state["step"] for optimizer in self.optimizers for state in optimizer.state.values()]
        return (
            batch.mask is None
            and batch.discounts is None
            and not losses.on
            and not any(isinstance(rate, th.Tensor) for rate in rates)
            and all(count.ndim == 0 for count in counts)
        )

    def _gradient_step(self, batch: StackedBatch, gradient_step: int = 0, losses: LossLog | None = None) -> None:
        """One gradient step of the members in the batch's mask, SB3's `train()` loop body."""
        losses = losses if losses is not None else LossLog([])
        mask = batch.mask
        discounts = batch.discounts if batch.discounts is not None else self.gamma
        if self.use_sde:
            self.reset_noise(mask)
        actions_pi, log_prob = self.action_log_prob(batch.observations, mask)

        ent_coef_loss = None
        if self.ent_coef_optimizer is not None and self.log_ent_coef is not None:
            log_ent_coef = self.log_ent_coef.reshape(-1, 1, 1)
            ent_coef = th.exp(log_ent_coef.detach())
            ent_coef_loss = -(log_ent_coef * (log_prob + self.target_entropy).detach()).mean(dim=(1, 2))
        else:
            ent_coef = self.ent_coef_tensor

        if ent_coef_loss is not None and self.ent_coef_optimizer is not None:
            self.ent_coef_optimizer.zero_grad()
            ent_coef_loss.sum().backward()
            self.ent_coef_optimizer.step(mask=mask)
            losses.add("ent_coef_loss", ent_coef_loss, mask)
        losses.add("ent_coef", ent_coef.reshape(-1).expand(len(self.models)), mask)

        with th.no_grad():
            next_actions, next_log_prob = self.action_log_prob(batch.next_observations, mask)
            next_q_values = th.cat(q_values(self.critic_targets, batch.next_observations, next_actions), dim=-1)
            next_q_values, _ = th.min(next_q_values, dim=-1, keepdim=True)
            next_q_values = next_q_values - ent_coef * next_log_prob
            target_q_values = batch.rewards + (1 - batch.dones) * discounts * next_q_values

        current_q_values = q_values(self.critics, batch.observations, batch.actions)
        critic_loss = 0.5 * sum(mse(current_q, target_q_values) for current_q in current_q_values)
        self.critic_optimizer.zero_grad()
        critic_loss.sum().backward()
        self.critic_optimizer.step(mask=mask)
        losses.add("critic_loss", critic_loss, mask)

        q_values_pi = th.cat(q_values(self.critics, batch.observations, actions_pi), dim=-1)
        min_qf_pi, _ = th.min(q_values_pi, dim=-1, keepdim=True)
        actor_loss = (ent_coef * log_prob - min_qf_pi).mean(dim=(1, 2))
        self.actor_optimizer.zero_grad()
        actor_loss.sum().backward()
        self.actor_optimizer.step(mask=mask)
        losses.add("actor_loss", actor_loss, mask)

        if gradient_step % self.target_update_interval == 0:
            polyak(self.critics.parameters(), self.critic_targets.parameters(), self.tau, mask)


class MemberMatrices:
    """Member i's slice of a stacked SAC's gSDE exploration matrices, drawn from its own stream:
    what `study.exploration.gsde.ActorMatrices` is for an SB3 model."""

    def __init__(self, learner: StackedSAC, i: int) -> None:
        self.learner, self.i = learner, i

    def draw(self) -> None:
        mask = th.zeros(len(self.learner.models), dtype=th.bool)
        mask[self.i] = True
        with th.no_grad():
            self.learner.reset_noise(mask)

    def get(self) -> dict[str, th.Tensor]:
        return {"exploration_mat": self.learner.exploration_mat[self.i].detach().clone()}

    def put(self, held: dict[str, th.Tensor]) -> None:
        matrices = self.learner.exploration_mat.detach().clone()
        matrices[self.i] = held["exploration_mat"].to(matrices.device)
        self.learner.exploration_mat = matrices

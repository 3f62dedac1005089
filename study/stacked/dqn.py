"""The DQN and QR-DQN updates of E members at once, line by line their `train()` on stacked networks."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence

import numpy as np
import torch as th
from torch import nn
from torch.nn import functional as F

from study.dqn import DQN, QRDQN
from study.stacked.common import Acting, LossLog, StackedBatch, check_members, make_optimizer
from study.stacked.nets import stack_sequential
from study.stacked.optim import set_learning_rates

#: settings every member of a group must share: they shape the stacked update
SHARED = ("gamma", "max_grad_norm")


def clip_grad_norms(params: Sequence[nn.Parameter], max_norm: float) -> None:
    """`th.nn.utils.clip_grad_norm_` of each member's own parameters (the slices along axis 0)."""
    grads = [p.grad for p in params if p.grad is not None]
    members = grads[0].shape[0]
    norms = th.stack([g.reshape(members, -1).norm(dim=1) for g in grads])  # [parameters, E]
    total = norms.norm(dim=0)
    scale = th.clamp(max_norm / (total + 1e-6), max=1.0)
    for g in grads:
        g.mul_(scale.reshape(members, *([1] * (g.ndim - 1))))


class _StackedQ:
    """The online and target Q-networks of E models (`net_name`: their acting network, whose
    head is the Sequential of the same name) and one optimizer over the stacked online network."""

    net_name: str

    def __init__(self, models: Sequence[DQN | QRDQN], generators: Sequence[th.Generator]) -> None:
        first = models[0]
        check_members(models, generators, (*SHARED, *self.shared), (self.net_name, f"{self.net_name}_target"))
        self.models = list(models)
        self.gamma, self.max_grad_norm = first.gamma, first.max_grad_norm
        self.lr_schedule = first.lr_schedule
        self.n_updates = th.tensor([model._n_updates for model in models])
        self.net = stack_sequential([self._head(model) for model in models])
        self.target = stack_sequential([self._head(model, "_target") for model in models])
        self.target.requires_grad_(False)
        self.optimizer = make_optimizer(first, self.net.parameters(), len(models))
        self.optimizers = [self.optimizer]
        #: prioritized replay: writes the TD errors of the members in the mask back as their priorities
        self.update_priorities: Callable[[np.ndarray, np.ndarray, th.Tensor | None], None] | None = None

    shared: tuple[str, ...] = ()

    def _head(self, model: DQN | QRDQN, suffix: str = "") -> nn.Module:
        return getattr(getattr(model, f"{self.net_name}{suffix}"), self.net_name)

    def q_values(self, net: nn.Module, obs: th.Tensor) -> th.Tensor:
        """Q(s, ·) of each member, [E, batch, actions]."""
        raise NotImplementedError

    def loss(self, batch: StackedBatch) -> tuple[th.Tensor, th.Tensor | None]:
        """Each member's loss, [E], and with prioritized replay the TD errors, [E, batch, 1]."""
        raise NotImplementedError

    def acting(self) -> Acting:
        """The members' greedy actions, [E, n, ·] → [E, n] (SB3's `policy._predict`): of the
        perturbed networks while parameter noise acts, else of the online networks."""
        policy = self.models[0].policy
        net = self.net
        if getattr(policy, "explore_perturbed", False):
            net = stack_sequential([getattr(model.policy.perturbed_net, self.net_name) for model in self.models])
        return lambda obs, acts: self.q_values(net, obs).argmax(dim=-1)

    def deterministic(self) -> Acting:
        """The members' greedy actions, [E, n, ·] → [E, n] (SB3's `policy._predict(obs,
        deterministic=True)`, as evaluations act): of the online networks."""
        return lambda obs, acts: self.q_values(self.net, obs).argmax(dim=-1)

    def train(self, batches: Iterable[StackedBatch], progress_remaining: float | Sequence[float]) -> None:
        """One `train()` call of every member: a gradient step per batch (of the members in its
        mask); `progress_remaining` is all members' or each one's."""
        set_learning_rates(self.optimizers, self.lr_schedule, progress_remaining)
        losses = LossLog(self.models)
        for batch in batches:
            loss, td_errors = self.loss(batch.preprocessed())
            losses.add("loss", loss, batch.mask)
            self.optimizer.zero_grad()
            loss.sum().backward()
            if self.max_grad_norm is not None:
                clip_grad_norms(list(self.net.parameters()), self.max_grad_norm)
            self.optimizer.step(mask=batch.mask)
            if batch.indices is not None and self.update_priorities is not None:
                errors = td_errors.cpu().numpy().reshape(batch.indices.shape)
                self.update_priorities(batch.indices, errors, batch.mask)
            self.n_updates += 1 if batch.mask is None else batch.mask.long().cpu()
        for model, n_updates in zip(self.models, self.n_updates.tolist(), strict=True):
            model._n_updates = n_updates
        losses.record()


class StackedDQN(_StackedQ):
    """E DQN models (no noisy layers) trained as one, as `study.dqn.DQN.train` (prioritized
    replay's weighted loss included); their Q-networks become views of the stacked ones."""

    net_name = "q_net"

    def q_values(self, net: nn.Module, obs: th.Tensor) -> th.Tensor:
        return net(obs)

    def loss(self, batch: StackedBatch) -> tuple[th.Tensor, th.Tensor | None]:
        discounts = batch.discounts if batch.discounts is not None else self.gamma
        with th.no_grad():
            next_q_values = self.q_values(self.target, batch.next_observations).max(dim=-1)[0].unsqueeze(-1)
            target_q_values = batch.rewards + (1 - batch.dones) * discounts * next_q_values
        current_q_values = th.gather(self.q_values(self.net, batch.observations), -1, batch.actions.long())
        elementwise = F.smooth_l1_loss(current_q_values, target_q_values, reduction="none")
        if batch.weights is None:
            return elementwise.mean(dim=(1, 2)), None
        return (batch.weights * elementwise).mean(dim=(1, 2)), (target_q_values - current_q_values).detach()


class StackedQRDQN(_StackedQ):
    """E QR-DQN models trained as one; their quantile networks become views of the stacked ones."""

    net_name = "quantile_net"
    shared = ("n_quantiles",)

    def __init__(self, models: Sequence[QRDQN], generators: Sequence[th.Generator]) -> None:
        super().__init__(models, generators)
        self.n_quantiles = models[0].n_quantiles

    def quantiles(self, net: nn.Module, obs: th.Tensor) -> th.Tensor:
        """[E, batch, quantiles, actions], as `QuantileNetwork.forward`."""
        out = net(obs)
        return out.view(*out.shape[:2], self.n_quantiles, -1)

    def q_values(self, net: nn.Module, obs: th.Tensor) -> th.Tensor:
        return self.quantiles(net, obs).mean(dim=2)

    def loss(self, batch: StackedBatch) -> tuple[th.Tensor, th.Tensor | None]:
        members, batch_size = batch.observations.shape[:2]
        discounts = batch.discounts if batch.discounts is not None else self.gamma
        with th.no_grad():
            next_quantiles = self.quantiles(self.target, batch.next_observations)
            next_greedy_actions = next_quantiles.mean(dim=2, keepdim=True).argmax(dim=3, keepdim=True)
            next_greedy_actions = next_greedy_actions.expand(members, batch_size, self.n_quantiles, 1)
            next_quantiles = next_quantiles.gather(dim=3, index=next_greedy_actions).squeeze(dim=3)
            target_quantiles = batch.rewards + (1 - batch.dones) * discounts * next_quantiles
        current_quantiles = self.quantiles(self.net, batch.observations)
        actions = batch.actions[..., None].long().expand(members, batch_size, self.n_quantiles, 1)
        current_quantiles = th.gather(current_quantiles, dim=3, index=actions).squeeze(dim=3)
        return quantile_huber_loss(current_quantiles, target_quantiles), None


def quantile_huber_loss(current: th.Tensor, target: th.Tensor) -> th.Tensor:
    """sb3-contrib's `quantile_huber_loss(..., sum_over_quantiles=True)` of each member, [E]."""
    n_quantiles = current.shape[-1]
    cum_prob = ((th.arange(n_quantiles, device=current.device, dtype=th.float) + 0.5) / n_quantiles).view(1, 1, -1, 1)
    pairwise_delta = target.unsqueeze(-2) - current.unsqueeze(-1)
    abs_pairwise_delta = th.abs(pairwise_delta)
    huber_loss = th.where(abs_pairwise_delta > 1, abs_pairwise_delta - 0.5, pairwise_delta**2 * 0.5)
    loss = th.abs(cum_prob - (pairwise_delta.detach() < 0).float()) * huber_loss
    return loss.sum(dim=-2).mean(dim=(1, 2))

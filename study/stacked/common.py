"""What the stacked updates share: the stacked batch, per-member random draws, target updates."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from typing import NamedTuple

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.torch_layers import FlattenExtractor
from torch import nn

from study.stacked.nets import Unsupported, stack_sequential
from study.stacked.optim import StackedAdam

#: the members' exploring actions: observations [E, n, ·] and the members that act ([E] bool,
#: the others' actions are placeholders and draw no noise) → actions [E, n, ·]
Acting = Callable[[th.Tensor, th.Tensor], th.Tensor]


class StackedBatch(NamedTuple):
    """One replay batch per member, stacked: [E, batch, ·]; `dones` already exclude time-limit ends."""

    observations: th.Tensor
    actions: th.Tensor
    next_observations: th.Tensor
    dones: th.Tensor
    rewards: th.Tensor
    discounts: th.Tensor | None = None  # n-step replay: γⁿ per transition
    weights: th.Tensor | None = None  # prioritized replay: importance-sampling weights, [E, batch, 1]
    indices: np.ndarray | None = None  # prioritized replay: where the transitions are, [E, batch]
    mask: th.Tensor | None = None  # the members taking this gradient step, [E] bool (None: all)

    def preprocessed(self) -> StackedBatch:
        """SB3's `preprocess_obs` of flat Box observations: as float32."""
        return self._replace(observations=self.observations.float(), next_observations=self.next_observations.float())


def check_members(
    models: Sequence[OffPolicyAlgorithm], generators: Sequence[th.Generator], shared: Iterable[str], nets: Iterable[str]
) -> None:
    """Refuse members that differ in a `shared` setting, or whose `nets` read other than flat Box
    observations, and a random stream count other than one per member."""
    if len(generators) != len(models):
        raise ValueError("one random stream per member")
    first = models[0]
    for name in shared:
        if any(getattr(model, name) != getattr(first, name) for model in models):
            raise ValueError(f"{name}: the members of a stacked group must share it")
    for model in models:
        if not isinstance(model.observation_space, spaces.Box) or len(model.observation_space.shape) != 1:
            raise Unsupported("observation space: only flat Box observations can be stacked")
        for name in nets:
            if not isinstance(getattr(model, name).features_extractor, FlattenExtractor):
                raise Unsupported("features_extractor: only flat observations can be stacked")


class LossLog:
    """The losses of one `train()` call of the members, each member's mean recorded to its own
    SB3 logger under `train/<name>` as SB3's `train()` records them; kept only for members whose
    logger writes somewhere (`set_logger`), since reading them waits for the device."""

    def __init__(self, models: Sequence[OffPolicyAlgorithm]) -> None:
        self.models = models
        self.on = any(model._custom_logger for model in models)
        self.values: dict[str, list[tuple[th.Tensor, th.Tensor | None]]] = {}

    def add(self, name: str, loss: th.Tensor, mask: th.Tensor | None = None) -> None:
        """One gradient step's per-member `loss` ([E]), of the members in `mask` (all if None)."""
        if self.on:
            self.values.setdefault(name, []).append((loss.detach().cpu(), None if mask is None else mask.cpu()))

    def record(self) -> None:
        for name, steps in self.values.items():
            for e, model in enumerate(self.models):
                taken = [float(loss[e]) for loss, mask in steps if mask is None or bool(mask[e])]
                if taken:
                    model.logger.record(f"train/{name}", float(np.mean(taken)))
        for model in self.models if self.on else []:
            model.logger.record("train/learning_rate", model.lr_schedule(model._current_progress_remaining))
            model.logger.record("train/n_updates", model._n_updates, exclude="tensorboard")
        self.values.clear()


def member_normal(
    like: th.Tensor, generators: Sequence[th.Generator], std: float = 1.0, mask: th.Tensor | None = None
) -> th.Tensor:
    """[E, *like.shape]: member e's `like.clone().normal_(0, std)`, drawn from its own stream
    (zeros, drawing nothing, for the members `mask` leaves out)."""
    taken = [True] * len(generators) if mask is None else mask.tolist()
    drawn = like.new_empty((len(generators), *like.shape))
    for row, generator, take in zip(drawn, generators, taken, strict=True):
        if take:  # a contiguous slice draws what a tensor of its own would
            row.normal_(0, std, generator=generator)
        else:
            row.zero_()
    return drawn


def mse(prediction: th.Tensor, target: th.Tensor) -> th.Tensor:
    """`F.mse_loss` of each member, [E]."""
    return (prediction - target).pow(2).mean(dim=(1, 2))


def polyak(
    params: Iterable[th.Tensor], targets: Iterable[th.Tensor], tau: float, mask: th.Tensor | None = None
) -> None:
    """SB3's `polyak_update` on stacked tensors (elementwise, so the same per member), of the
    members `mask` ([E] bool) selects, or of all."""
    with th.no_grad():
        params, targets = [param.data for param in params], [target.data for target in targets]
        if mask is None:  # `polyak_update`'s two ops, on all members' tensors at once
            th._foreach_mul_(targets, 1 - tau)
            th._foreach_add_(targets, params, alpha=tau)
            return
        for param, target in zip(params, targets, strict=True):
            updated = th.add(target * (1 - tau), param, alpha=tau)
            target.copy_(th.where(mask.to(target.device).view(-1, *([1] * (target.ndim - 1))), updated, target))


def q_values(critics: nn.ModuleList, obs: th.Tensor, actions: th.Tensor) -> list[th.Tensor]:
    """SB3's `ContinuousCritic.forward` on stacked critics: one [E, batch, 1] per Q-network."""
    q_input = th.cat([obs, actions], dim=-1)
    return [q_net(q_input) for q_net in critics]


def stack_critics(models: Sequence[OffPolicyAlgorithm], name: str) -> nn.ModuleList:
    """The Q-networks of the members' `name` ("critic" or "critic_target"), each stacked over the members."""
    n_critics = len(getattr(models[0], name).q_networks)
    return nn.ModuleList(
        stack_sequential([getattr(model, name).q_networks[j] for model in models]) for j in range(n_critics)
    )


def make_optimizer(model: OffPolicyAlgorithm, params: Iterable[nn.Parameter], members: int) -> StackedAdam:
    """The optimizer SB3 gives the model's networks (Adam), over stacked parameters, at the initial
    learning rate."""
    policy = model.policy
    if policy.optimizer_class is not th.optim.Adam:
        raise Unsupported(f"optimizer_class: {policy.optimizer_class.__name__} is not stacked (Adam is)")
    return StackedAdam(params, members, lr=model.lr_schedule(1), **policy.optimizer_kwargs)

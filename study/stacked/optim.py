"""Adam over stacked parameters: each member's slice is one `torch.optim.Adam`, with its own step count.

A group's members may take different numbers of gradient steps (episodic rollouts end at
different times, a run stops early); a masked step leaves the other members' parameters and
moments untouched, and each member's bias correction follows its own step count.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence

import numpy as np
import torch as th
from stable_baselines3.common.type_aliases import Schedule
from torch import nn

from study.stacked.nets import Unsupported


class StackedAdam(th.optim.Optimizer):
    """`torch.optim.Adam` (as SB3 uses it) of E members whose parameters are stacked along axis 0.

    `lr` may be a number or one rate per member ([E] tensor). `state[p]` holds, per parameter,
    `step` (one count until the members' step counts or rates first differ, [E] from then on) and the moments
    `exp_avg`, `exp_avg_sq` (p's shape): member e's slices are its Adam state.
    """

    def __init__(
        self,
        params: Iterable[nn.Parameter],
        members: int,
        lr: float = 1e-3,
        betas: tuple[float, float] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        **others: object,
    ) -> None:
        unsupported = {key: value for key, value in others.items() if value}
        if unsupported:
            raise Unsupported(f"optimizer_kwargs: {sorted(unsupported)} of Adam are not stacked")
        super().__init__(params, {"lr": lr, "betas": betas, "eps": eps, "weight_decay": weight_decay})
        self.members = members

    @th.no_grad()
    def step(self, closure: None = None, mask: th.Tensor | None = None) -> None:  # type: ignore[override]
        """One Adam step of the members where `mask` ([E] bool) is true; of all without it."""
        for group in self.param_groups:
            together: list[th.Tensor] = []  # stepped at one count and rate: one foreach step
            for param in group["params"]:
                if param.grad is None:
                    continue
                state = self.state[param]
                if not state:
                    state["step"] = th.tensor(0.0)  # one count while the members step together, else [E]
                    state["exp_avg"] = th.zeros_like(param, memory_format=th.preserve_format)
                    state["exp_avg_sq"] = th.zeros_like(param, memory_format=th.preserve_format)
                if mask is None and state["step"].ndim == 0 and not isinstance(group["lr"], th.Tensor):
                    state["step"] += 1
                    together.append(param)
                    continue
                taken = None if mask is None else mask.cpu()
                state["step"] = state["step"].expand(self.members) + (1 if taken is None else taken)
                self._member_adam(param, state, group, taken)
            if together:
                self._adam(together, [self.state[param] for param in together], group)

    @staticmethod
    def _adam(params: list[th.Tensor], states: list[dict], group: dict) -> None:
        """`torch.optim.Adam`'s step (multi-tensor, as on a GPU; elementwise the same as its
        single-tensor step on a CPU) of all members at one step count each."""
        beta1, beta2 = group["betas"]
        grads = [param.grad for param in params]
        if group["weight_decay"] != 0:
            grads = th._foreach_add(grads, params, alpha=group["weight_decay"])
        exp_avgs, exp_avg_sqs = [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states]
        th._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        th._foreach_mul_(exp_avg_sqs, beta2)
        th._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        steps = [float(state["step"]) for state in states]
        step_size = [-group["lr"] / (1 - beta1**step) for step in steps]
        bias_correction2_sqrt = [(1 - beta2**step) ** 0.5 for step in steps]
        denom = th._foreach_sqrt(exp_avg_sqs)
        th._foreach_div_(denom, bias_correction2_sqrt)
        th._foreach_add_(denom, group["eps"])
        th._foreach_addcdiv_(params, exp_avgs, denom, step_size)

    def _member_adam(self, param: th.Tensor, state: dict, group: dict, taken: th.Tensor | None) -> None:
        """Adam's step with each member's own step count and rate, of the members `taken` selects."""
        beta1, beta2 = group["betas"]
        shape = (self.members, *([1] * (param.ndim - 1)))
        grad = param.grad if group["weight_decay"] == 0 else param.grad.add(param, alpha=group["weight_decay"])
        exp_avg = state["exp_avg"].lerp(grad, 1 - beta1)
        exp_avg_sq = state["exp_avg_sq"].mul(beta2).addcmul_(grad, grad, value=1 - beta2)
        steps = state["step"].double().clamp(min=1)  # a member that never stepped: left out below
        lr = th.as_tensor(group["lr"], dtype=th.float64).expand(self.members)
        step_size = (lr / (1 - beta1**steps)).to(param.dtype).to(param.device).view(shape)
        bias_correction2_sqrt = ((1 - beta2**steps) ** 0.5).to(param.dtype).to(param.device).view(shape)
        denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(group["eps"])
        updated = param - step_size * exp_avg / denom
        if taken is None:
            state["exp_avg"], state["exp_avg_sq"] = exp_avg, exp_avg_sq
            param.copy_(updated)
            return
        where = taken.to(param.device).view(shape)
        state["exp_avg"] = th.where(where, exp_avg, state["exp_avg"])
        state["exp_avg_sq"] = th.where(where, exp_avg_sq, state["exp_avg_sq"])
        param.copy_(th.where(where, updated, param))


def set_learning_rates(
    optimizers: Iterable[th.optim.Optimizer | None], schedule: Schedule, progress: float | Sequence[float]
) -> None:
    """SB3's `update_learning_rate(optimizer, schedule(progress_remaining))` of stacked optimizers,
    with one progress for all members or one each (a number where all rates are equal)."""
    rates = {schedule(p) for p in np.atleast_1d(progress)}
    rate = rates.pop() if len(rates) == 1 else th.tensor([schedule(p) for p in progress], dtype=th.float64)
    for optimizer in filter(None, optimizers):
        for group in optimizer.param_groups:
            group["lr"] = rate

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
        # captured in a CUDA graph: each group's step size and bias correction, written by `advance`
        self.scalars: list[th.Tensor] | None = None

    def graphed(self) -> None:
        """Make `step()` of all members capturable: from now on it reads each group's −lr / (1 − β₁ᵗ)
        and √(1 − β₂ᵗ) from device tensors, and `advance()` counts the steps before each replay."""
        for group in self.param_groups:
            counts = [self.state[param]["step"] for param in group["params"]]
            if any(count.ndim for count in counts) or len({float(count) for count in counts}) != 1:
                raise ValueError("a graphed Adam steps all members of all its parameters together")
        self.scalars = [th.zeros(2, device=group["params"][0].device) for group in self.param_groups]

    def advance(self) -> None:
        """A replayed step's bookkeeping: every member's step count + 1, and the new count's scalars."""
        for group, scalars in zip(self.param_groups, self.scalars or [], strict=True):
            beta1, beta2 = group["betas"]
            for param in group["params"]:
                self.state[param]["step"] += 1
            step = float(self.state[group["params"][0]]["step"])
            scalars.copy_(th.tensor([-group["lr"] / (1 - beta1**step), (1 - beta2**step) ** 0.5]))

    def ungraphed(self) -> None:
        """Back to eager steps."""
        self.scalars = None

    @th.no_grad()
    def step(self, closure: None = None, mask: th.Tensor | None = None) -> None:  # type: ignore[override]
        """One Adam step of the members where `mask` ([E] bool) is true; of all without it."""
        for index, group in enumerate(self.param_groups):
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
                    if self.scalars is None:  # graphed: `advance` counts
                        state["step"] += 1
                    together.append(param)
                    continue
                if self.scalars is not None:
                    raise ValueError("a graphed Adam steps all members together, at one rate")
                taken = None if mask is None else mask.cpu()
                state["step"] = state["step"].expand(self.members) + (1 if taken is None else taken)
                self._member_adam(param, state, group, taken)
            if together:
                scalars = None if self.scalars is None else self.scalars[index]
                self._adam(together, [self.state[param] for param in together], group, scalars)

    @staticmethod
    def _adam(params: list[th.Tensor], states: list[dict], group: dict, scalars: th.Tensor | None = None) -> None:
        """`torch.optim.Adam`'s step (multi-tensor, as on a GPU; elementwise the same as its
        single-tensor step on a CPU) of all members at one step count each; with `scalars`
        (step size, √(1 − β₂ᵗ) on the device) in a form a CUDA graph can capture, which on a GPU
        all steps take (`addcdiv`'s fused rounding aside, the same arithmetic)."""
        beta1, beta2 = group["betas"]
        grads = [param.grad for param in params]
        if group["weight_decay"] != 0:
            grads = th._foreach_add(grads, params, alpha=group["weight_decay"])
        exp_avgs, exp_avg_sqs = [state["exp_avg"] for state in states], [state["exp_avg_sq"] for state in states]
        th._foreach_lerp_(exp_avgs, grads, 1 - beta1)
        th._foreach_mul_(exp_avg_sqs, beta2)
        th._foreach_addcmul_(exp_avg_sqs, grads, grads, 1 - beta2)
        if scalars is None:
            steps = [float(state["step"]) for state in states]
            step_size: list[float] | th.Tensor = [-group["lr"] / (1 - beta1**step) for step in steps]
            bias_correction2_sqrt: list[float] | th.Tensor = [(1 - beta2**step) ** 0.5 for step in steps]
        else:
            step_size, bias_correction2_sqrt = scalars[0], scalars[1]
        denom = th._foreach_sqrt(exp_avg_sqs)
        th._foreach_div_(denom, bias_correction2_sqrt)
        th._foreach_add_(denom, group["eps"])
        if scalars is None and not params[0].is_cuda:
            th._foreach_addcdiv_(params, exp_avgs, denom, step_size)
            return
        # on a GPU, the arithmetic a graph can capture (the step size a tensor), also in eager
        # steps, so that graphed and eager steps round alike
        updates = th._foreach_div(exp_avgs, denom)
        th._foreach_mul_(updates, step_size)
        th._foreach_add_(params, updates)

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

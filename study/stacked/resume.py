"""Checkpoints of the members of a stacked group: one file per run, in its own checkpoint folder.

Each member's file holds what the SB3 engine's checkpoint holds for its run (algorithm state,
replay buffer, envs, callbacks) with its own random streams and its slice of the stacked
optimizers' state (Adam is elementwise, so a member's moments are its slice). A run therefore
resumes in any group, whatever steps its other members stopped at (or starting fresh).
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch as th

from study.checkpoint import CHECKPOINT, load_run_state, read_checkpoint, run_state, write_checkpoint

if TYPE_CHECKING:
    from study.stacked.group import Group, Member


def checkpoint_path(folder: Path) -> Path:
    return Path(folder) / CHECKPOINT


def read_member_checkpoint(folder: Path | None) -> dict[str, Any] | None:
    """A member's last checkpoint in `folder`, or None (start from scratch)."""
    return read_checkpoint(checkpoint_path(folder)) if folder is not None else None


def optimizer_slice(optimizer: th.optim.Optimizer, i: int) -> list[dict[str, Any]]:
    """Member i's part of a stacked optimizer's state (step count and moments), parameter by parameter."""
    return [
        {key: (value[i] if value.ndim else value).clone() for key, value in optimizer.state[p].items()}
        for group in optimizer.param_groups
        for p in group["params"]
    ]


def load_optimizer_slices(optimizer: th.optim.Optimizer, slices: list[list[dict[str, Any]] | None]) -> None:
    """Stack the members' slices back into a stacked optimizer's state (None: a member that
    starts fresh, with no steps and zero moments)."""
    params = [p for group in optimizer.param_groups for p in group["params"]]
    for j, p in enumerate(params):
        given = [s[j] for s in slices if s is not None and s[j]]
        if not given:
            continue
        fresh = {key: th.zeros_like(value) for key, value in given[0].items()}
        state = {key: th.stack([(s[j] if s is not None and s[j] else fresh)[key] for s in slices]) for key in fresh}
        if bool((state["step"] == state["step"][0]).all()):
            state["step"] = state["step"][0].clone()  # one count: the members step together
        optimizer.state[p] = state


def save_member(group: Group, i: int, folder: Path) -> None:
    """Write member i's checkpoint (between rollouts, after training)."""
    member = group.members[i]
    model = member.model
    state = run_state(model, member.parts.stateful()) | {
        "engine": "stacked",
        "rng": {"numpy": member.rng.get_state(), "torch": member.generator.get_state()},
        "optimizers": [optimizer_slice(optimizer, i) for optimizer in group.learner.optimizers],
    }
    write_checkpoint(checkpoint_path(folder), state)


def restore_members(group: Group, states: list[dict[str, Any] | None]) -> None:
    """Put each member's checkpoint back into a freshly built group (before `learn`); a member
    without one (None) starts from scratch."""
    for member, state in zip(group.members, states, strict=True):
        if state is not None:
            _restore_member(member, state)
    group.buffer.refresh()
    for k, optimizer in enumerate(group.learner.optimizers):
        load_optimizer_slices(optimizer, [state["optimizers"][k] if state else None for state in states])
    group.learner.n_updates = th.tensor([model._n_updates for model in group.models])


def _restore_member(member: Member, state: dict[str, Any]) -> None:
    model = member.model
    load_run_state(model, state, member.parts.stateful())  # parameters and transitions in place: views stay views
    member.resume_noise = copy.deepcopy(state["algorithm"]["attributes"].get("action_noise"))
    member.rng.set_state(state["rng"]["numpy"])
    member.generator.set_state(state["rng"]["torch"])
    member.resumed_at = model.num_timesteps

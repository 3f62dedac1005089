"""gSDE's exploration held across rollouts: its sampling interval, whatever the training schedule."""

from __future__ import annotations

from typing import Any, Literal, Protocol

import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm

from study.exploration.schedule import ResamplingCallback

# the attributes of SB3's StateDependentNoiseDistribution that hold the current exploration
MATRICES = ("exploration_mat", "exploration_matrices")


class ActorMatrices:
    """The current exploration matrices of an SB3 model's gSDE actor: redrawn by SB3's own
    `reset_noise`, read, and put back."""

    def __init__(self, model: BaseAlgorithm) -> None:
        self.model = model

    def draw(self) -> None:
        self.model.actor.reset_noise(self.model.get_env().num_envs)

    def get(self) -> dict[str, th.Tensor]:
        dist = self.model.actor.action_dist
        return {name: getattr(dist, name).detach().clone() for name in MATRICES}

    def put(self, held: dict[str, th.Tensor]) -> None:
        dist = self.model.actor.action_dist
        for name, value in held.items():
            setattr(dist, name, value.clone())


class Matrices(Protocol):
    """Where a run's gSDE exploration matrices live (`ActorMatrices`, or a stacked member's)."""

    def draw(self) -> None: ...
    def get(self) -> dict[str, th.Tensor]: ...
    def put(self, held: dict[str, th.Tensor]) -> None: ...


class GSDEScheduleCallback(ResamplingCallback):
    """Keep gSDE's exploration matrices from one resample to the next: redrawn (by SB3's own
    `reset_noise`) at every episode start and every `interval` steps, whatever the training schedule.

    SB3 redraws them at every rollout start and at every gradient step (SAC's `train()` samples
    them for its loss), so a model trained every step would explore with new noise at every
    step. For training in steps, the model runs with `sde_sample_freq = -1` and this callback puts
    the matrices of the last resample back at every rollout start: between resamples the noise
    function is fixed, as with training at episode ends, while the policy's mean keeps learning.

    :param interval: "episode", or k: also resample every k environment steps
    """

    def __init__(self, interval: int | Literal["episode"] = "episode", verbose: int = 0) -> None:
        super().__init__(interval, verbose)
        self._held: dict[str, th.Tensor] | None = None
        self.matrices: Matrices | None = None  # the model's actor's, unless an engine sets others

    def _init_callback(self) -> None:
        if self.matrices is None:
            self.matrices = ActorMatrices(self.model)

    def _on_training_start(self) -> None:
        if self.model.num_timesteps == 0:  # the env was just reset: SB3's first draw starts the episode
            self._steps_in_episode, self._held = 0, None

    def _on_rollout_start(self) -> None:
        if self._held is None:  # SB3 has just drawn the first matrices
            self._held = self.matrices.get()
        else:
            self.matrices.put(self._held)

    def _on_step(self) -> bool:
        if self._resample_due():
            self.matrices.draw()
            self._held = self.matrices.get()
        return True

    def state_dict(self) -> dict[str, Any]:
        """The held matrices and the step count within the episode (for checkpoints)."""
        held = None if self._held is None else {name: value.clone() for name, value in self._held.items()}
        return {"steps_in_episode": self._steps_in_episode, "held": held}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self._steps_in_episode = state["steps_in_episode"]
        self._held = state["held"]

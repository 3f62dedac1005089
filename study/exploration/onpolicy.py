"""Parameter-space noise for on-policy algorithms (PPO, TRPO) as an SB3 callback."""

from __future__ import annotations

from typing import Any, Literal

import torch as th
from gymnasium import spaces

from study.exploration.param_noise import AdaptedSigmaCallback
from study.exploration.segments import SegmentRolloutBuffer

DISTANCES = ("kl", "rms")


class OnPolicyParamNoiseCallback(AdaptedSigmaCallback):
    """Explore with the Gaussian policy's mean network perturbed, φ + ε, ε redrawn at every
    episode start and every `interval` steps; the policy keeps its own action noise. Each step
    records the segment (the ε) that chose its action, and the update evaluates it under that
    ε (`study.policies.ParamNoiseActorCriticPolicy`, `SegmentRolloutBuffer`).

    With `adaptive`, once per rollout a fresh ε with the current σ perturbs the policy on the
    rollout's states and its distance d to the unperturbed policy is measured: the mean KL
    divergence KL(π_φ ‖ π_φ+ε) of the Gaussians (same std, so Σ_j (μ_j − μ̃_j)² / 2σ_j² per
    state), or the RMS distance of their means in the normalized [-1, 1] action space; σ ← σ/α if
    d > δ else σ·α.

    :param interval: "episode", or k: also resample every k environment steps
    :param adaptive: adapt σ towards the target distance once per rollout
    :param initial_sigma: σ₀
    :param target_distance: δ
    :param distance: "kl" or "rms"
    :param alpha: adaptation factor
    :param seed: seed of the noise's own random stream
    """

    def __init__(
        self,
        interval: int | Literal["episode"] = "episode",
        adaptive: bool = True,
        initial_sigma: float = 0.2,
        target_distance: float = 0.2,
        distance: Literal["kl", "rms"] = "kl",
        alpha: float = 1.01,
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(interval, adaptive, alpha, seed, verbose)
        if distance not in DISTANCES:
            raise ValueError(f"distance must be one of {DISTANCES}, got {distance!r}")
        self.initial_sigma, self.target_distance = initial_sigma, target_distance
        self.distance_kind = distance
        self.sigma = initial_sigma

    def _init_callback(self) -> None:
        policy, buffer = self.model.policy, self.model.rollout_buffer
        if not hasattr(policy, "segment_noise"):
            raise TypeError(
                f"{type(policy).__name__} cannot act perturbed: use study.policies.ParamNoiseActorCriticPolicy"
            )
        if not isinstance(buffer, SegmentRolloutBuffer):
            raise TypeError("on-policy parameter noise needs rollout_buffer_class=SegmentRolloutBuffer")
        if self.model.n_envs != 1:
            raise ValueError("parameter noise supports a single training environment")
        if not isinstance(self.model.action_space, spaces.Box):
            raise TypeError("on-policy parameter noise perturbs a Gaussian policy: continuous (Box) actions only")
        self.noise = policy.segment_noise
        buffer.on_sample = policy.set_train_rows
        if self._generator is None:
            self._seed_streams(policy.device)
        self._restore_pending()

    def _on_training_start(self) -> None:
        self.model.policy.explore_perturbed = True
        if self.model.num_timesteps == 0 or not self.noise.segments:  # the environment was just reset
            self._steps_in_episode = 0
            self.resample()

    def _on_training_end(self) -> None:
        self.model.policy.explore_perturbed = False

    def _on_rollout_start(self) -> None:
        self.noise.start_rollout()
        self.model.policy.train_rows = None

    def _on_step(self) -> bool:
        buffer = self.model.rollout_buffer
        buffer.segments[buffer.pos] = self.noise.current  # the step just taken, which the buffer adds next
        if self._resample_due():
            self.resample()
        return True

    def _on_rollout_end(self) -> None:
        if self.adaptive:
            self.adapt()

    def resample(self) -> None:
        """A new segment with a new ε of the current σ."""
        self.noise.add(self.noise.draw(self.sigma, self._generator))
        self.resamples += 1

    @th.no_grad()
    def adapt(self) -> None:
        """Measure d with a fresh ε on the rollout's states and update σ."""
        policy, buffer = self.model.policy, self.model.rollout_buffer
        obs = policy.obs_to_tensor(buffer.observations.reshape(-1, *buffer.obs_shape))[0]
        self.noise.add(self.noise.draw(self.sigma, self._generator))  # a segment no step acts with
        try:
            unperturbed = policy.distribution_under(obs, None).distribution
            perturbed = policy.distribution_under(obs, self.noise.current).distribution
        finally:
            self.noise.drop_last()
        mean, std, moved = unperturbed.mean, unperturbed.stddev, perturbed.mean
        if self.distance_kind == "kl":
            distance = float((((mean - moved) ** 2) / (2 * std**2)).sum(dim=-1).mean())
        else:  # in the normalized [-1, 1] action space, as off-policy parameter noise measures it
            space = self.model.action_space
            half_range = th.as_tensor((space.high - space.low) / 2, dtype=mean.dtype, device=mean.device)
            distance = float(th.sqrt((((mean - moved) / half_range) ** 2).mean()))
        self._adapted(distance, self.target_distance)

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {"noise": self.noise.state_dict()}

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self.noise.load_state_dict(state["noise"])

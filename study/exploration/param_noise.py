"""Parameter-space noise as an SB3 callback: resampling schedule and σ adaptation."""

from __future__ import annotations

from typing import Any, Literal

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.buffers import ReplayBuffer

from study.exploration.distances import epsilon_to_kl
from study.exploration.perturb import Perturbation
from study.exploration.schedule import ResamplingCallback
from study.registry import param_noise_defaults


def derived_seed(seed: int, stream: str) -> int:
    """A seed for a named random stream, independent of the run's other streams."""
    entropy = [seed, *stream.encode()]
    return int(np.random.SeedSequence(entropy).generate_state(1, dtype=np.uint64)[0] >> 1)


class AdaptedSigmaCallback(ResamplingCallback):
    """Base of the parameter-noise callbacks: the current σ and its adaptations, the count of
    resamples, the perturbations' own seeded random stream, and the checkpoint state they share.

    :param interval: "episode", or k: also resample every k environment steps
    :param adaptive: adapt σ towards the target distance
    :param alpha: adaptation factor
    :param seed: seed of the noise's own random streams
    """

    def __init__(
        self, interval: int | Literal["episode"], adaptive: bool, alpha: float, seed: int | None, verbose: int = 0
    ) -> None:
        super().__init__(interval, verbose)
        self.adaptive, self.alpha, self.seed = adaptive, alpha, seed
        self.sigma: float | None = None  # the current σ
        self.adaptations: list[dict[str, float]] = []
        self.resamples = 0
        self._generator: th.Generator | None = None
        self._pending_state: dict[str, Any] | None = None

    def _seed_streams(self, device: th.device) -> int:
        """Seed the perturbations' generator (from `seed`, or fresh entropy); the seed used."""
        seed = self.seed if self.seed is not None else int(np.random.SeedSequence().generate_state(1)[0])
        self._generator = th.Generator(device=device)
        self._generator.manual_seed(derived_seed(seed, "perturbation"))
        return seed

    def _adapted(self, distance: float, target: float) -> None:
        """Record a measured distance d and move σ: σ/α if d > δ, else σ·α."""
        self.adaptations.append(
            {"step": self.num_timesteps, "sigma": self.sigma, "distance": distance, "target": target}
        )
        self.logger.record("param_noise/distance", distance)
        self.logger.record("param_noise/target_distance", target)
        self.sigma = self.sigma / self.alpha if distance > target else self.sigma * self.alpha
        self.logger.record("param_noise/sigma", self.sigma)

    def state_dict(self) -> dict[str, Any]:
        """Everything needed to continue the noise streams exactly (for checkpoints)."""
        return {
            "sigma": self.sigma,
            "steps_in_episode": self._steps_in_episode,
            "resamples": self.resamples,
            "adaptations": list(self.adaptations),
            "generator": self._generator.get_state(),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Continue from `state_dict()`; takes effect when training starts."""
        self._pending_state = state

    def _restore_pending(self) -> None:
        if self._pending_state is not None:
            self._restore(self._pending_state)
            self._pending_state = None

    def _restore(self, state: dict[str, Any]) -> None:
        self.sigma = state["sigma"]
        self._steps_in_episode = state["steps_in_episode"]
        self.resamples = state["resamples"]
        self.adaptations = list(state["adaptations"])
        self._generator.set_state(state["generator"])


class ParamNoiseCallback(AdaptedSigmaCallback):
    """Explore with θ̃ = θ + ε, resampled at every episode start and every `interval` steps.

    Requires a policy with a perturbed copy of its acting network (see `study.policies`).
    With `adaptive`, every `adapt_every` steps (once the replay buffer holds a batch) a
    second copy is perturbed with the current σ, its distance d to the unperturbed network
    is measured on replay states, and σ ← σ/α if d > δ else σ·α.

    Settings left out (None) take the defaults of the model's action space when training
    starts (`PARAM_NOISE_DEFAULTS`, the same as the study files'): continuous σ₀ = δ = 0.2;
    discrete σ₀ = 0.01, δ from the DQN's ε schedule and no ε-greedy on top.

    :param interval: "episode", or k: also resample every k environment steps
    :param adaptive: adapt σ towards the target distance
    :param initial_sigma: σ₀
    :param target_distance: δ (discrete actions: instead of `target_epsilon`)
    :param target_epsilon: discrete actions: δ = −log(1 − ε + ε/|A|) for this ε-greedy rate,
        or "schedule": the DQN's own ε schedule at the current step
    :param epsilon: discrete actions: ε-greedy rate on top of the perturbed policy
    :param adapt_every: adaptation period, in environment steps
    :param alpha: adaptation factor
    :param follow_learner: keep ε fixed but re-apply it to the learner's θ after training
    :param seed: seed of the noise's own random streams
    """

    def __init__(
        self,
        interval: int | Literal["episode"] = "episode",
        adaptive: bool = True,
        initial_sigma: float | None = None,
        target_distance: float | None = None,
        target_epsilon: float | Literal["schedule"] | None = None,
        epsilon: float | None = None,
        adapt_every: int = 100,
        alpha: float = 1.01,
        follow_learner: bool = False,
        seed: int | None = None,
        verbose: int = 0,
    ) -> None:
        super().__init__(interval, adaptive, alpha, seed, verbose)
        if target_distance is not None and target_epsilon is not None:
            raise ValueError("target_distance and target_epsilon: choose one way to set δ")
        self._given = {
            "initial_sigma": initial_sigma,
            "target_distance": target_distance,
            "target_epsilon": target_epsilon,
            "epsilon": epsilon,
        }
        # resolved for the model's action space when training starts
        self.initial_sigma, self.target_distance = initial_sigma, target_distance
        self.target_epsilon, self.epsilon = target_epsilon, epsilon
        self.adapt_every = adapt_every
        self.follow_learner = follow_learner
        self._acting: Perturbation | None = None

    def _init_callback(self) -> None:
        policy = self.model.policy
        if not hasattr(policy, "perturbed_net"):
            raise TypeError(f"{type(policy).__name__} has no perturbed copy: use a policy from study.policies")
        if self.model.n_envs != 1:
            raise ValueError("parameter noise supports a single training environment")
        if not isinstance(self.model.replay_buffer, ReplayBuffer) or isinstance(
            self.model.replay_buffer.observations, dict
        ):
            raise TypeError("parameter noise needs a replay buffer of array observations")
        discrete = isinstance(self.model.action_space, spaces.Discrete)
        resolved = param_noise_defaults(discrete, **self._given)
        self.initial_sigma, self.target_distance = resolved["initial_sigma"], resolved["target_distance"]
        self.target_epsilon, self.epsilon = resolved["target_epsilon"], resolved["epsilon"]
        if discrete and not hasattr(self.model, "fixed_exploration_rate"):
            raise TypeError(f"{type(self.model).__name__} cannot fix its ε-greedy rate: use study.dqn.DQN or QRDQN")
        if self.sigma is None:
            self.sigma = self.initial_sigma
        if self._acting is None or self._acting.source is not policy.acting_net:
            seed = self._seed_streams(policy.device)
            self._rng = np.random.default_rng(derived_seed(seed, "adaptation-states"))
            self._acting = Perturbation(policy.acting_net, policy.perturbed_net, policy.perturbed_parts)
            self._adaptive = Perturbation(policy.acting_net, policy.adaptive_net, policy.perturbed_parts)
        self._restore_pending()
        if self.epsilon is not None:
            self.model.fixed_exploration_rate = self.epsilon

    def _on_training_start(self) -> None:
        self.model.policy.explore_perturbed = True
        if self.model.num_timesteps == 0:  # the environment was just reset
            self._steps_in_episode = 0
            self.resample()

    def _on_training_end(self) -> None:
        self.model.policy.explore_perturbed = False

    def _on_rollout_start(self) -> None:
        if self.follow_learner:
            self._acting.apply()

    def _on_step(self) -> bool:
        if self._resample_due():
            self.resample()
        if (
            self.adaptive
            and self.num_timesteps % self.adapt_every == 0
            and self.model.replay_buffer.size() >= self.model.batch_size
        ):
            self.adapt()
        return True

    def resample(self) -> None:
        """Draw a new ε and set the acting copy to θ + ε with the current θ."""
        self._acting.sample(self.sigma, self._generator)
        self.resamples += 1

    def adapt(self) -> None:
        """Measure d with a fresh perturbation of the adaptive copy and update σ."""
        obs = self._replay_states()
        self._adaptive.sample(self.sigma, self._generator)
        self._adapted(self.distance(obs), self.current_target())

    def current_target(self) -> float:
        """δ now: fixed, or matched to the target ε-greedy rate."""
        if self.target_distance is not None:
            return self.target_distance
        epsilon = self.target_epsilon
        if epsilon == "schedule":
            epsilon = self.model.exploration_schedule(self.model._current_progress_remaining)
        return epsilon_to_kl(epsilon, int(self.model.action_space.n))

    def distance(self, obs: th.Tensor) -> float:
        """d between the unperturbed and the adaptive copy on `obs`."""
        return self.model.policy.perturbation_distance(obs)

    def _replay_states(self) -> th.Tensor:
        """A batch of states from the replay buffer, drawn with the noise's own RNG."""
        buffer = self.model.replay_buffer
        idx = self._rng.integers(0, buffer.size(), size=self.model.batch_size)
        obs = buffer.observations[idx, 0]
        vec_normalize = self.model.get_vec_normalize_env()
        if vec_normalize is not None:
            obs = vec_normalize.normalize_obs(obs)
        return self.model.policy.obs_to_tensor(obs)[0]

    def state_dict(self) -> dict[str, Any]:
        return super().state_dict() | {
            "rng": self._rng.bit_generator.state,
            "noise": [eps.clone() for eps in self._acting.noise],
        }

    def _restore(self, state: dict[str, Any]) -> None:
        super()._restore(state)
        self._rng.bit_generator.state = state["rng"]
        for eps, saved in zip(self._acting.noise, state["noise"], strict=True):
            eps.copy_(saved)

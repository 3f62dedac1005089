"""SB3's DQN, extended with prioritized replay, noisy networks and an ε that exploration may fix."""

from __future__ import annotations

import numpy as np
import torch as th
from sb3_contrib import QRDQN as SB3QRDQN
from stable_baselines3 import DQN as SB3DQN
from torch.nn import functional as F

from study.buffers import PrioritizedReplayBuffer
from study.exploration.ez_greedy import EzGreedy


class FixedExplorationMixin:
    """`fixed_exploration_rate`, when set, replaces the ε-greedy schedule for acting (the
    schedule stays available as `exploration_schedule`, e.g. for parameter noise's δ);
    `ez_greedy`, when set, acts εz-greedily at the current ε instead of ε-greedily."""

    fixed_exploration_rate: float | None = None
    ez_greedy: EzGreedy | None = None

    def _on_step(self) -> None:
        super()._on_step()
        if self.fixed_exploration_rate is not None:
            self.exploration_rate = self.fixed_exploration_rate

    def predict(
        self,
        observation: np.ndarray,
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        if deterministic or self.ez_greedy is None:
            return super().predict(observation, state, episode_start, deterministic)
        greedy, state = self.policy.predict(observation, state, episode_start, deterministic)
        actions = [self.ez_greedy.act(int(action), self.exploration_rate) for action in np.atleast_1d(greedy)]
        return np.array(actions).reshape(greedy.shape), state


class QRDQN(FixedExplorationMixin, SB3QRDQN):
    """sb3-contrib's QR-DQN with a fixable ε."""


class DQN(FixedExplorationMixin, SB3DQN):
    """DQN whose gradient steps also

    - weight the loss by the importance-sampling weights of a `PrioritizedReplayBuffer`, write
      |TD error| back as priorities and anneal β linearly from β₀ to 1 over training;
    - draw fresh noise for the online and the target network when the policy has noisy layers
      (`policy.sample_training_noise()`), then give the acting network its noise back.

    With a uniform buffer and no noisy layers it trains exactly like SB3's DQN.
    """

    def train(self, gradient_steps: int, batch_size: int = 100) -> None:
        self.policy.set_training_mode(True)
        self._update_learning_rate(self.policy.optimizer)
        buffer = self.replay_buffer
        prioritized = isinstance(buffer, PrioritizedReplayBuffer)
        if prioritized:
            buffer.beta = buffer.beta0 + (1.0 - buffer.beta0) * (1.0 - self._current_progress_remaining)
        noisy = hasattr(self.policy, "sample_training_noise")
        acting_noise = self.policy.noise_state() if noisy else None

        losses = []
        for _ in range(gradient_steps):
            if noisy:
                self.policy.sample_training_noise()
            replay_data = buffer.sample(batch_size, env=self._vec_normalize_env)
            discounts = replay_data.discounts if replay_data.discounts is not None else self.gamma
            with th.no_grad():
                next_q_values = self.q_net_target(replay_data.next_observations).max(dim=1)[0].reshape(-1, 1)
                target_q_values = replay_data.rewards + (1 - replay_data.dones) * discounts * next_q_values
            current_q_values = th.gather(self.q_net(replay_data.observations), dim=1, index=replay_data.actions.long())
            elementwise = F.smooth_l1_loss(current_q_values, target_q_values, reduction="none")
            loss = (replay_data.weights * elementwise).mean() if prioritized else elementwise.mean()
            losses.append(loss.item())
            self.policy.optimizer.zero_grad()
            loss.backward()
            th.nn.utils.clip_grad_norm_(self.policy.parameters(), self.max_grad_norm)
            self.policy.optimizer.step()
            if prioritized:
                td_errors = (target_q_values - current_q_values).detach().cpu().numpy().ravel()
                buffer.update_priorities(replay_data.indices, td_errors)

        if noisy and self.policy.keep_acting_noise:
            self.policy.load_noise_state(acting_noise)
        self._n_updates += gradient_steps
        self.logger.record("train/n_updates", self._n_updates, exclude="tensorboard")
        self.logger.record("train/loss", np.mean(losses))
        if prioritized:
            self.logger.record("train/per_beta", buffer.beta)

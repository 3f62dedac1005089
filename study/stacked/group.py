"""A group of runs that differ only in seed (and exploration scalars) trained in lockstep in one process.

Each member is one SB3 run, built as the SB3 engine builds it (`study.run.build_run`): its own
model, envs, callbacks and random streams. The loop below is SB3's `OffPolicyAlgorithm.learn()`
and `collect_rollouts()` line by line, with the members' action selection, action noise, buffer
writes and updates done once for all; only the env steps and the callbacks stay per member.
"""

from __future__ import annotations

import shutil
import time
import traceback
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch as th
from gymnasium import spaces
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.noise import ActionNoise, NormalActionNoise, OrnsteinUhlenbeckActionNoise
from stable_baselines3.common.off_policy_algorithm import OffPolicyAlgorithm
from stable_baselines3.common.type_aliases import TrainFrequencyUnit

from study.config import RunSpec
from study.registry import ALGORITHMS, resolve
from study.result import RunResult
from study.run import RunParts, build_run, run_result
from study.stacked.buffer import StackedReplayBuffer
from study.stacked.nets import Unsupported
from study.stacked.resume import checkpoint_step, read_member_checkpoint, restore_members, save_member

#: settings every member must share: they time the lockstep loop
LOCKSTEP = ("learning_starts", "batch_size", "gradient_steps", "train_freq", "num_timesteps")


def normal_noise(noise: NormalActionNoise, rng: np.random.RandomState) -> np.ndarray:
    """`NormalActionNoise()` with `rng` as the global numpy stream."""
    return rng.normal(noise._mu, noise._sigma).astype(noise._dtype)


def ou_noise(noise: OrnsteinUhlenbeckActionNoise, rng: np.random.RandomState) -> np.ndarray:
    """`OrnsteinUhlenbeckActionNoise()` with `rng` as the global numpy stream."""
    value = (
        noise.noise_prev
        + noise._theta * (noise._mu - noise.noise_prev) * noise._dt
        + noise._sigma * np.sqrt(noise._dt) * rng.normal(size=noise._mu.shape)
    )
    noise.noise_prev = value
    return value.astype(noise._dtype)


#: the action noises a member may use, drawn from its own stream
ACTION_NOISE: dict[type[ActionNoise], Callable[[Any, np.random.RandomState], np.ndarray]] = {
    NormalActionNoise: normal_noise,
    OrnsteinUhlenbeckActionNoise: ou_noise,
}


class Member:
    """One run of a group: its parts, its random streams, and whether it still trains."""

    def __init__(self, spec: RunSpec, parts: RunParts, checkpoints: Path | None = None) -> None:
        self.spec, self.parts, self.model = spec, parts, parts.model
        self.checkpoints = checkpoints  # the run's checkpoint folder, if it checkpoints
        # the global streams as `build_run` left them: from here on they are this run's own
        self.rng = np.random.RandomState()
        self.rng.set_state(np.random.get_state())
        device = parts.model.device  # SB3 draws on the model's device from that device's global stream
        self.generator = th.Generator(device=device)
        self.generator.set_state(th.cuda.get_rng_state(device) if device.type == "cuda" else th.get_rng_state())
        self.callback: BaseCallback = CallbackList(parts.callbacks)
        self.active = True
        self.error: str | None = None
        self.resumed_at: int | None = None
        self.resume_noise: ActionNoise | None = None  # the action noise's state at the checkpoint

    def fail(self) -> None:
        """Record the exception being handled as this run's failure; the others go on."""
        self.error, self.active = traceback.format_exc(), False

    def stop(self) -> None:
        """End training as SB3's `learn()` does: the callbacks' training end (final evaluation)."""
        self.active = False
        try:
            self.callback.on_training_end()
        except Exception:
            self.fail()


class Group:
    """E members trained in lockstep: SB3's off-policy loop over stacked actors, buffers and updates."""

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)
        models: list[OffPolicyAlgorithm] = [member.model for member in members]
        first = models[0]
        algo = ALGORITHMS[members[0].spec.settings.algo]
        if algo.stacked is None:
            raise Unsupported(f"algo: {members[0].spec.settings.algo} has no stacked update yet")
        for name in LOCKSTEP:
            if any(getattr(model, name) != getattr(first, name) for model in models):
                raise ValueError(f"{name}: the members of a stacked group must share it")
        if len({member.spec.settings.total_steps for member in members}) != 1:
            raise ValueError("total_steps: the members of a stacked group must share it")
        if len({(type(m.model.action_noise), type(m.parts.noise)) for m in members}) != 1:
            raise ValueError("exploration: the members of a stacked group must share their kinds of noise")
        if first.train_freq.unit != TrainFrequencyUnit.STEP:
            raise Unsupported("hyperparams.train_freq: episodes end at different steps in each member")
        if first.use_sde:
            raise Unsupported("exploration.gsde: not stacked yet")
        for model in models:
            if model.env.num_envs != 1 or model.get_vec_normalize_env() is not None:
                raise Unsupported("env: one environment per run, without VecNormalize")
            if model.action_noise is not None and type(model.action_noise) not in ACTION_NOISE:
                raise Unsupported(f"action noise: {type(model.action_noise).__name__} is not stacked")
        self.models = models
        self.learner = resolve(algo.stacked)(models, [member.generator for member in members])
        self.buffer = StackedReplayBuffer([model.replay_buffer for model in models])
        if self.buffer.prioritized:
            self.learner.update_priorities = self.buffer.update_priorities
        self.policy = first.policy
        self.box = isinstance(first.action_space, spaces.Box)
        self._filler = np.zeros((1, *first.action_space.shape), dtype=first.action_space.dtype)
        n = len(members)
        self._obs = np.zeros((n, *first.observation_space.shape), dtype=first.observation_space.dtype)
        self._next_obs = np.zeros_like(self._obs)
        self._rewards, self._dones, self._timeouts = np.zeros(n), np.zeros(n), np.zeros(n)
        self._buffer_actions = np.zeros((n, 1, first.replay_buffer.action_dim), dtype=np.float32)

    @property
    def active(self) -> list[Member]:
        return [member for member in self.members if member.active]

    @property
    def lead(self) -> OffPolicyAlgorithm:
        """An active member's model: its step count and progress are every active member's."""
        return self.active[0].model

    def learn(self, checkpoint_every: int | None = None) -> None:
        """SB3's `learn()` of every member, to its `total_steps`; with `checkpoint_every`, each
        member with a checkpoint folder saves its checkpoint there that often (between rollouts)."""
        for member in self.members:
            model = member.model
            total = member.spec.settings.total_steps - model.num_timesteps
            _, member.callback = model._setup_learn(total, member.callback, member.resumed_at is None)
            member.callback.on_training_start(locals(), globals())
            # SB3 switches it at every rollout and update; no layer the engine stacks behaves differently
            model.policy.set_training_mode(False)
            if member.resume_noise is not None:  # `_setup_learn` reset it
                vars(model.action_noise).update(vars(member.resume_noise))
        self.acting = self.learner.acting()
        self.checkpoint_every, self.saved_at = checkpoint_every, self.lead.num_timesteps
        while self.active and self.lead.num_timesteps < self.lead._total_timesteps:
            collected = self.collect_rollouts()
            if not self.active:
                break
            lead = self.lead
            if lead.num_timesteps > 0 and lead.num_timesteps > lead.learning_starts:
                gradient_steps = lead.gradient_steps if lead.gradient_steps >= 0 else collected
                if gradient_steps > 0:
                    self.train(gradient_steps)
        for member in self.active:
            member.stop()

    def save_checkpoints(self) -> None:
        """Every active member's checkpoint, in its checkpoint folder (at a rollout's start,
        where the SB3 engine's checkpointer saves)."""
        for i, member in enumerate(self.members):
            if member.active and member.checkpoints is not None:
                save_member(self, i, member.checkpoints)
        self.saved_at = self.lead.num_timesteps

    def train(self, gradient_steps: int) -> None:
        """One SB3 `train(gradient_steps, batch_size)` of every member."""
        rngs = [member.rng for member in self.members]
        if self.buffer.prioritized:  # `study.dqn.DQN.train` anneals β from β₀ to 1 over training
            for buffer in self.buffer.buffers:
                buffer.beta = buffer.beta0 + (1.0 - buffer.beta0) * (1.0 - self.lead._current_progress_remaining)
        batches = (self.buffer.sample(self.lead.batch_size, rngs) for _ in range(gradient_steps))
        self.learner.train(batches, self.lead._current_progress_remaining)

    def collect_rollouts(self) -> int:
        """SB3's `collect_rollouts()` of every active member: `train_freq` steps each; the steps collected."""
        if self.checkpoint_every and self.lead.num_timesteps - self.saved_at >= self.checkpoint_every:
            self.save_checkpoints()
        for member in self.active:
            member.callback.on_rollout_start()
        collected = 0
        while collected < self.models[0].train_freq.frequency and self.active:
            self.step()
            collected += 1
        for member in self.active:
            member.callback.on_rollout_end()
        return collected

    def sample_actions(self) -> tuple[np.ndarray, np.ndarray]:
        """SB3's `_sample_action()` of every member: ([E, 1, ·] actions for the envs, for the buffers)."""
        lead, members = self.lead, self.members
        if lead.num_timesteps < lead.learning_starts:
            unscaled = np.stack([[m.model.action_space.sample()] if m.active else self._filler for m in members])
        else:
            obs = th.as_tensor(np.stack([member.model._last_obs for member in members]), device=self.policy.device)
            with th.no_grad():
                actions = self.acting(obs.float()).cpu().numpy()
            # `predict` returns continuous actions in the env's bounds; DQN's adds ε-greedy
            unscaled = self.policy.unscale_action(actions) if self.box else self._epsilon_greedy(actions)
        if not self.box:
            return unscaled, unscaled
        scaled = self.policy.scale_action(unscaled)
        if lead.action_noise is not None:
            draw = ACTION_NOISE[type(lead.action_noise)]
            noise = np.stack([draw(m.model.action_noise, m.rng) if m.active else self._filler[0] for m in members])
            scaled = np.clip(scaled + noise[:, None], -1, 1)
        return self.policy.unscale_action(scaled), scaled

    def _epsilon_greedy(self, greedy: np.ndarray) -> np.ndarray:
        """DQN's `predict`: each active member acts at random with its ε, drawn from its stream."""
        actions = greedy.copy()
        for i, member in enumerate(self.members):
            if member.active and member.rng.rand() < member.model.exploration_rate:
                actions[i, 0] = member.model.action_space.sample()
        return actions

    def step(self) -> None:
        """One environment step of every active member, then one stacked buffer write."""
        actions, buffer_actions = self.sample_actions()
        self._buffer_actions[:] = buffer_actions.reshape(self._buffer_actions.shape)
        for i, member in enumerate(self.members):
            if member.active:
                try:
                    self._step_member(i, member, actions[i], buffer_actions[i])
                except Exception:
                    member.fail()
        self.buffer.add(self._obs, self._next_obs, self._buffer_actions, self._rewards, self._dones, self._timeouts)

    def _step_member(self, i: int, member: Member, actions: np.ndarray, buffer_actions: np.ndarray) -> None:
        """The per-run part of one step of SB3's `collect_rollouts()`: env step, callbacks, bookkeeping."""
        model = member.model
        new_obs, rewards, dones, infos = model.env.step(actions)
        model.num_timesteps += 1
        member.callback.update_locals(
            {
                "actions": actions,
                "buffer_actions": buffer_actions,
                "new_obs": new_obs,
                "rewards": rewards,
                "dones": dones,
                "infos": infos,
            }
        )
        if not member.callback.on_step():
            member.stop()
            return
        model._update_info_buffer(infos, dones)
        # `_store_transition`: the terminal observation is the next one of an episode's last step
        self._obs[i] = model._last_obs[0]
        terminal = infos[0].get("terminal_observation") if dones[0] else None
        self._next_obs[i] = new_obs[0] if terminal is None else terminal
        self._rewards[i], self._dones[i] = rewards[0], dones[0]
        self._timeouts[i] = infos[0].get("TimeLimit.truncated", False)
        model._last_obs = new_obs
        model._update_current_progress_remaining(model.num_timesteps, model._total_timesteps)
        model._on_step()
        if dones[0]:
            model._episode_num += 1
            if model.action_noise is not None:
                model.action_noise.reset()


def run_group(
    specs: Sequence[RunSpec], cpus: int | None = None, checkpoint_dirs: Sequence[Path] | None = None
) -> list[RunResult]:
    """Train the runs of `specs` as stacked groups; one RunResult per run, in order.

    With `checkpoint_dirs` (one per run) and the runs' `checkpoint_every`, each run saves its
    checkpoints in its folder and continues from the last one it finds; runs that stopped at
    different steps train as one group per step, one after another. A run whose env, callbacks
    or evaluation raise is recorded as failed and the others go on; a failure of the group's
    shared computation fails the runs still training.
    """
    cpus = cpus or specs[0].settings.resources.cpus
    th.set_num_threads(cpus)
    folders = list(checkpoint_dirs) if checkpoint_dirs is not None else [None] * len(specs)
    folders = [folder if spec.checkpoint_every else None for spec, folder in zip(specs, folders, strict=True)]
    states = [read_member_checkpoint(folder) for folder in folders]
    by_step: dict[int, list[int]] = {}
    for i, state in enumerate(states):
        by_step.setdefault(checkpoint_step(state), []).append(i)
    results: dict[int, RunResult] = {}
    for indices in by_step.values():
        outcome = _run_one_group(*([seq[i] for i in indices] for seq in (specs, folders, states)), cpus)
        results |= dict(zip(indices, outcome, strict=True))
    return [results[i] for i in range(len(specs))]


def _run_one_group(
    specs: list[RunSpec], folders: list[Path | None], states: list[dict[str, Any] | None], cpus: int
) -> list[RunResult]:
    """Train runs that continue from one step (0, or their checkpoints `states`) as one group."""
    started = datetime.now(UTC)
    clock = time.perf_counter()
    members: list[Member] = []
    kept: list[dict[str, Any] | None] = []
    failures: dict[int, str] = {}
    for i, (spec, folder) in enumerate(zip(specs, folders, strict=True)):
        try:
            members.append(Member(spec, build_run(spec), folder))
            kept.append(states[i])
        except Exception:
            failures[i] = traceback.format_exc()
    try:
        if members:
            group = Group(members)
            if any(kept):
                restore_members(group, kept)
            group.learn(specs[0].checkpoint_every)
    except Exception:
        for member in members:
            if member.active:
                member.fail()
    finally:
        for member in members:
            member.parts.close()
            if member.error is None and member.checkpoints is not None:
                shutil.rmtree(member.checkpoints, ignore_errors=True)
    wall = time.perf_counter() - clock
    by_id = {member.spec.run_id: member for member in members}
    group_ids = [spec.run_id for spec in specs]
    results = []
    for i, spec in enumerate(specs):
        member = by_id.get(spec.run_id)
        parts, error = (member.parts, member.error) if member is not None else (None, failures[i])
        resumed_at = member.resumed_at if member is not None else None
        results.append(
            run_result(spec, parts, error, started, wall, resumed_at, cpus, engine="stacked", group=group_ids)
        )
    return results

"""A group of runs that differ only in seed (and exploration scalars) trained together in one process.

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
from stable_baselines3.common.utils import should_collect_more_steps

from study.config import RunSpec
from study.exploration.colored import ColoredActionNoise
from study.exploration.gsde import GSDEScheduleCallback
from study.recording import Evaluator
from study.registry import ALGORITHMS, resolve
from study.result import RunResult
from study.run import RunParts, Watchers, build_run, run_result
from study.stacked.buffer import StackedReplayBuffer
from study.stacked.nets import Unsupported
from study.stacked.resume import (
    load_optimizer_slices,
    optimizer_slice,
    read_member_checkpoint,
    restore_members,
    save_member,
)

#: settings every member must share: they time the loop and shape the stacked batches
LOCKSTEP = ("learning_starts", "batch_size", "gradient_steps", "train_freq", "use_sde", "use_sde_at_warmup")


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


#: the action noises a member may use, drawn from its own stream (colored noise has its own)
ACTION_NOISE: dict[type[ActionNoise], Callable[[Any, np.random.RandomState], np.ndarray]] = {
    NormalActionNoise: normal_noise,
    OrnsteinUhlenbeckActionNoise: ou_noise,
    ColoredActionNoise: lambda noise, rng: noise(),
}


#: episodes between a member's log dumps, as SB3's off-policy `learn()` has it by default
LOG_INTERVAL = 4
#: a group restacks its members still training once they are at most this share of its stack
RESTACK_AT = 0.5


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
        self.steps = self.episodes = 0  # collected in the current rollout
        self.saved_at = 0  # the step of its last checkpoint
        self.error: str | None = None
        self.resumed_at: int | None = None
        self.resume_noise: ActionNoise | None = None  # the action noise's state at the checkpoint
        self.new_obs = self.rewards = self.dones = self.infos = None  # its env's last step

    @property
    def evaluator(self) -> Evaluator:
        return self.parts.evaluator

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
    """E members trained together: SB3's off-policy loop over stacked actors, buffers and updates.

    Each member keeps its own step count and rollouts: members whose rollouts end at different
    steps (episodes as `train_freq`) or that continue from different checkpoints wait for one
    another between rollouts, and the update steps each member as many times as its own run would.
    """

    def __init__(self, members: Sequence[Member]) -> None:
        self.members = list(members)  # in the stack, in its order
        self.all_members = list(members)  # those that left it (`restack`) too
        models: list[OffPolicyAlgorithm] = [member.model for member in members]
        first = models[0]
        algo = ALGORITHMS[members[0].spec.settings.algo]
        if algo.stacked is None:
            raise Unsupported(f"algo: {members[0].spec.settings.algo} has no stacked update yet")
        for name in LOCKSTEP:
            if any(getattr(model, name) != getattr(first, name) for model in models):
                raise ValueError(f"{name}: the members of a stacked group must share it")
        if len({(type(m.model.action_noise), type(m.parts.noise)) for m in members}) != 1:
            raise ValueError("exploration: the members of a stacked group must share their kinds of noise")
        for model in models:
            if model.env.num_envs != 1 or model.get_vec_normalize_env() is not None:
                raise Unsupported("env: one environment per run, without VecNormalize")
            if model.action_noise is not None and type(model.action_noise) not in ACTION_NOISE:
                raise Unsupported(f"action noise: {type(model.action_noise).__name__} is not stacked")
        self.models = models
        self.position = {id(member): i for i, member in enumerate(members)}
        for member in members:  # the members' evaluations run together (`evaluate`)
            member.evaluator.deferred = True
        self.learner = resolve(algo.stacked)(models, [member.generator for member in members])
        self.buffer = StackedReplayBuffer([model.replay_buffer for model in models])
        if self.buffer.prioritized:
            self.learner.update_priorities = self.buffer.update_priorities
        self.policy = first.policy
        self.box = isinstance(first.action_space, spaces.Box)
        self.use_sde = bool(getattr(first, "use_sde", False))
        for i, member in enumerate(members):  # gSDE held across rollouts: the member's slice of the stacked matrices
            for callback in member.parts.callbacks:
                if isinstance(callback, GSDEScheduleCallback):
                    callback.matrices = self.learner.member_matrices(i)
        self._filler = np.zeros((1, *first.action_space.shape), dtype=first.action_space.dtype)
        n = len(members)
        self._obs = np.zeros((n, *first.observation_space.shape), dtype=first.observation_space.dtype)
        self._next_obs = np.zeros_like(self._obs)
        self._rewards, self._dones, self._timeouts = np.zeros(n), np.zeros(n), np.zeros(n)
        self._stored = np.zeros(n, dtype=bool)  # the members whose transition of this step is stored
        self._buffer_actions = np.zeros((n, 1, first.replay_buffer.action_dim), dtype=np.float32)

    @property
    def active(self) -> list[Member]:
        return [member for member in self.members if member.active]

    def mask(self, members: Sequence[Member]) -> np.ndarray:
        """[E] bool: which of the group's members are among `members`."""
        chosen = np.zeros(len(self.members), dtype=bool)
        chosen[[self.position[id(member)] for member in members]] = True
        return chosen

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
            member.saved_at = model.num_timesteps
        self.acting, self.deterministic = self.learner.acting(), self.learner.deterministic()
        self.checkpoint_every = checkpoint_every
        while True:
            self.stop([m for m in self.active if m.model.num_timesteps >= m.model._total_timesteps])
            rolling = self.active
            if not rolling:
                break
            if len(rolling) <= RESTACK_AT * len(self.members):
                self.restack(rolling)
            self.collect_rollouts(rolling)
            self.train()

    def restack(self, members: list[Member]) -> None:
        """Go on with `members` alone (the others have stopped), stacked anew: a stack's update
        computes every member it holds, masked or not, so the stragglers of a group no longer
        pay for the finished. Each member's parameters, optimizer moments and step counts,
        replay and random streams carry over (between rollouts, where gSDE redraws anyway)."""
        kept = [self.position[id(member)] for member in members]
        moments = [[optimizer_slice(optimizer, i) for i in kept] for optimizer in self.learner.optimizers]
        checkpoint_every, all_members = self.checkpoint_every, self.all_members
        self.__init__(members)
        self.all_members = all_members
        for optimizer, slices in zip(self.learner.optimizers, moments, strict=True):
            load_optimizer_slices(optimizer, slices)
        self.acting, self.deterministic = self.learner.acting(), self.learner.deterministic()
        self.checkpoint_every = checkpoint_every

    def train(self) -> None:
        """One SB3 `train(gradient_steps, batch_size)` of every member still training whose run
        trains after this rollout (past `learning_starts`), as many gradient steps as its run takes."""
        counts = np.zeros(len(self.members), dtype=int)
        for i, member in enumerate(self.members):
            model = member.model
            if member.active and model.num_timesteps > 0 and model.num_timesteps > model.learning_starts:
                counts[i] = model.gradient_steps if model.gradient_steps >= 0 else member.steps
        if counts.max() == 0:
            return
        rngs = [member.rng for member in self.members]
        if self.buffer.prioritized:  # `study.dqn.DQN.train` anneals β from β₀ to 1 over training
            for buffer, model in zip(self.buffer.buffers, self.models, strict=True):
                buffer.beta = buffer.beta0 + (1.0 - buffer.beta0) * (1.0 - model._current_progress_remaining)
        batch_size = self.models[0].batch_size
        lockstep = bool((counts == counts[0]).all())
        batches = (
            self.buffer.sample(batch_size, rngs, None if lockstep else counts > step) for step in range(counts.max())
        )
        self.learner.train(batches, [model._current_progress_remaining for model in self.models])

    def collect_rollouts(self, rolling: Sequence[Member]) -> None:
        """SB3's `collect_rollouts()` of each member in `rolling`: `train_freq` steps or episodes each."""
        for i, member in enumerate(self.members):
            due = self.checkpoint_every and member.model.num_timesteps - member.saved_at >= self.checkpoint_every
            if member in rolling and due:
                self.save_checkpoint(i)
        if self.use_sde:
            self._reset_noise(rolling)
        for member in rolling:
            member.steps = member.episodes = 0
            member.callback.on_rollout_start()
        train_freq = self.models[0].train_freq
        while True:
            collecting = [m for m in rolling if m.active and should_collect_more_steps(train_freq, m.steps, m.episodes)]
            if not collecting:
                break
            if self.use_sde:
                self._reset_noise(
                    [m for m in collecting if 0 < m.model.sde_sample_freq and m.steps % m.model.sde_sample_freq == 0]
                )
            self.step(collecting)
        for member in rolling:
            if member.active:
                member.callback.on_rollout_end()

    def save_checkpoint(self, i: int) -> None:
        """Member i's checkpoint, in its checkpoint folder (at its rollout's start, where the SB3
        engine's checkpointer saves)."""
        member = self.members[i]
        if member.checkpoints is not None:
            save_member(self, i, member.checkpoints)
            member.saved_at = member.model.num_timesteps

    def _reset_noise(self, members: Sequence[Member]) -> None:
        """gSDE's `actor.reset_noise()` of `members`: new exploration matrices from their streams."""
        if members:
            with th.no_grad():
                self.learner.reset_noise(th.as_tensor(self.mask(members)))

    def sample_actions(self, stepping: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """SB3's `_sample_action()` of the members `stepping` ([E] bool) selects: ([E, 1, ·]
        actions for the envs, for the buffers; the others' are placeholders)."""
        members = self.members
        warm = np.array([m.model.num_timesteps < m.model.learning_starts for m in members])
        if self.use_sde and self.models[0].use_sde_at_warmup:
            warm[:] = False
        predicting = stepping & ~warm
        if predicting.any():
            obs = th.as_tensor(np.stack([member.model._last_obs for member in members]), device=self.policy.device)
            with th.no_grad():
                actions = self.acting(obs.float(), th.as_tensor(predicting)).cpu().numpy()
            # `predict` returns continuous actions in the env's bounds; DQN's adds ε-greedy
            unscaled = self.policy.unscale_action(actions) if self.box else self._epsilon_greedy(actions, predicting)
        else:
            unscaled = np.stack([self._filler] * len(members))
        for i in np.flatnonzero(stepping & warm):
            unscaled[i] = [members[i].model.action_space.sample()]
        if not self.box:
            return unscaled, unscaled
        scaled = self.policy.scale_action(unscaled)
        if self.models[0].action_noise is not None:
            draw = ACTION_NOISE[type(self.models[0].action_noise)]
            noise = np.stack(
                [
                    draw(m.model.action_noise, m.rng) if take else self._filler[0]
                    for m, take in zip(members, stepping, strict=True)
                ]
            )
            scaled = np.clip(scaled + noise[:, None], -1, 1)
        return self.policy.unscale_action(scaled), scaled

    def _epsilon_greedy(self, greedy: np.ndarray, acting: np.ndarray) -> np.ndarray:
        """DQN's `predict`: each member `acting` selects acts at random with its ε, drawn from
        its stream (εz-greedily, from the εz-greedy choice's own stream, where it has one)."""
        actions = greedy.copy()
        for i in np.flatnonzero(acting):
            model = self.members[i].model
            if model.ez_greedy is not None:
                actions[i, 0] = model.ez_greedy.act(int(greedy[i, 0]), model.exploration_rate)
            elif self.members[i].rng.rand() < model.exploration_rate:
                actions[i, 0] = model.action_space.sample()
        return actions

    def step(self, stepping: Sequence[Member]) -> None:
        """One environment step of each member in `stepping`, their due evaluations together, then
        one stacked buffer write."""
        mask = self.mask(stepping)
        actions, buffer_actions = self.sample_actions(mask)
        self._buffer_actions[:] = buffer_actions.reshape(self._buffer_actions.shape)
        self._stored[:] = False
        going = {}
        for i in np.flatnonzero(mask):
            try:
                going[i] = self._env_step(self.members[i], actions[i], buffer_actions[i])
            except Exception:
                self.members[i].fail()
        evaluated = [self.members[i] for i in going if self.members[i].active and self.members[i].evaluator.pending]
        for member, row in zip(evaluated, self.evaluate(evaluated), strict=True):
            if row is not None:
                try:
                    going[self.position[id(member)]] &= member.evaluator.conclude(row)
                except Exception:
                    member.fail()
        stopping = []
        for i, goes in going.items():
            member = self.members[i]
            if not member.active:
                continue
            if not goes:
                stopping.append(member)
                continue
            try:
                self._store(i, member)
            except Exception:
                member.fail()
        self.stop(stopping)
        self.buffer.add(
            self._obs, self._next_obs, self._buffer_actions, self._rewards, self._dones, self._timeouts, self._stored
        )

    def _env_step(self, member: Member, actions: np.ndarray, buffer_actions: np.ndarray) -> bool:
        """SB3's `collect_rollouts()` of one step of `member`, to its callbacks: whether it goes on
        (its due evaluation left `pending`)."""
        model = member.model
        member.new_obs, member.rewards, member.dones, member.infos = model.env.step(actions)
        model.num_timesteps += 1
        member.steps += 1
        member.callback.update_locals(
            {
                "actions": actions,
                "buffer_actions": buffer_actions,
                "new_obs": member.new_obs,
                "rewards": member.rewards,
                "dones": member.dones,
                "infos": member.infos,
            }
        )
        return member.callback.on_step()

    def _store(self, i: int, member: Member) -> None:
        """The rest of the step of member i, which goes on: bookkeeping and its transition."""
        model, new_obs, dones, infos = member.model, member.new_obs, member.dones, member.infos
        model._update_info_buffer(infos, dones)
        # `_store_transition`: the terminal observation is the next one of an episode's last step
        self._obs[i] = model._last_obs[0]
        terminal = infos[0].get("terminal_observation") if dones[0] else None
        self._next_obs[i] = new_obs[0] if terminal is None else terminal
        self._rewards[i], self._dones[i] = member.rewards[0], dones[0]
        self._timeouts[i] = infos[0].get("TimeLimit.truncated", False)
        self._stored[i] = True
        model._last_obs = new_obs
        model._update_current_progress_remaining(model.num_timesteps, model._total_timesteps)
        model._on_step()
        if dones[0]:
            member.episodes += 1
            model._episode_num += 1
            if model.action_noise is not None:
                model.action_noise.reset()
            if model._episode_num % LOG_INTERVAL == 0:  # `learn()`'s default log_interval
                model.dump_logs()

    def stop(self, members: Sequence[Member]) -> None:
        """End the training of `members` (`Member.stop`), their final evaluations run together."""
        self.evaluate([member for member in members if member.evaluator.due_at_end])
        for member in members:
            if member.active:
                member.stop()

    def evaluate(self, members: Sequence[Member]) -> list[dict[str, Any] | None]:
        """The evaluations of `members` (each its Evaluator's `evaluate()`, row recorded), stepped
        together: one stacked forward gives every member's deterministic action. A member whose
        evaluation raises fails (its row: None)."""
        rows: dict[int, dict[str, Any] | None] = {}
        dialogues, observations = {}, np.zeros_like(self._obs)
        for member in members:
            i = self.position[id(member)]
            try:
                dialogues[i] = member.evaluator.episodes()
                observations[i] = next(dialogues[i])
            except Exception:
                member.fail()
                rows[i] = None
                dialogues.pop(i, None)
        acting = th.as_tensor(self.mask(members))
        while dialogues:
            obs = th.as_tensor(observations[:, None], device=self.policy.device)
            with th.no_grad():
                actions = self.deterministic(obs.float(), acting).cpu().numpy()
            for i, dialogue in list(dialogues.items()):
                model = self.members[i].model
                # `predict(obs, deterministic=True)` of one observation: in the env's bounds
                action = actions[i].reshape((-1, *model.action_space.shape))
                action = model.policy.unscale_action(action) if self.box else action
                try:
                    observations[i] = dialogue.send(action.squeeze(axis=0))
                except StopIteration as done:
                    rows[i] = done.value
                    del dialogues[i]
                except Exception:
                    self.members[i].fail()
                    rows[i] = None
                    del dialogues[i]
        return [rows[self.position[id(member)]] for member in members]


def run_group(
    specs: Sequence[RunSpec],
    cpus: int | None = None,
    checkpoint_dirs: Sequence[Path] | None = None,
    watchers: Watchers | None = None,
) -> list[RunResult]:
    """Train the runs of `specs` as one stacked group; one RunResult per run, in order.

    With `checkpoint_dirs` (one per run) and the runs' `checkpoint_every`, each run saves its
    checkpoints in its folder and continues from the last one it finds (runs that stopped at
    different steps continue together). A run whose env, callbacks or evaluation raise is
    recorded as failed and the others go on; a failure of the group's shared computation fails
    the runs still training. `watchers` see each run train (live progress, TensorBoard).
    """
    cpus = cpus or specs[0].settings.resources.cpus
    th.set_num_threads(cpus)
    folders = list(checkpoint_dirs) if checkpoint_dirs is not None else [None] * len(specs)
    folders = [folder if spec.checkpoint_every else None for spec, folder in zip(specs, folders, strict=True)]
    started = datetime.now(UTC)
    clock = time.perf_counter()
    members: list[Member] = []
    kept: list[dict[str, Any] | None] = []
    failures: dict[int, str] = {}
    for i, (spec, folder) in enumerate(zip(specs, folders, strict=True)):
        try:
            parts = build_run(spec)
            if watchers is not None:
                watchers.watch(spec, parts)
            members.append(Member(spec, parts, folder))
            kept.append(read_member_checkpoint(folder))
        except Exception:
            failures[i] = traceback.format_exc()
    try:
        if members:
            group = Group(members)
            if any(kept):
                restore_members(group, kept)
            kept.clear()  # the checkpoints are in the members now: their arrays are not held twice
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

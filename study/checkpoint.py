"""Checkpoints of a run in progress, from which it continues exactly as if never stopped."""

from __future__ import annotations

import copy
import json
import os
import pickle
import random
import shutil
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any, BinaryIO, Protocol

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.buffers import BaseBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.save_util import recursive_getattr
from stable_baselines3.common.vec_env import VecEnv, VecNormalize

from study.buffers import TRANSITIONS
from study.store import CHECKPOINT_STEPS

CHECKPOINT = "checkpoint.pkl"
# the algorithms whose resume the tests prove exact (tests/test_checkpoint.py): a run resumed by
# another engine, or by an earlier version of this one, is not a reference result
EXACT_RESUME_ALGOS = frozenset({"td3", "ddpg", "sac", "dqn", "qrdqn", "ppo", "trpo"})
# bumped whenever what a checkpoint holds changes: runs record it when they resume
RESUME_VERSION = 2
# gSDE's current exploration, which SB3 keeps outside the policy's state dict
SDE_STATE = ("weights_dist", "exploration_mat", "exploration_matrices")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def sim_states(venv: VecEnv) -> list[dict[str, Any]]:
    """What pickling a sub-env may lose: its random stream (envs that pickle by their
    constructor arguments come back freshly seeded) and MuJoCo's integration state."""
    import mujoco

    states: list[dict[str, Any]] = []
    for env in venv.envs:
        sim = env.unwrapped
        state: dict[str, Any] = {"np_random": sim.np_random}
        if isinstance(getattr(sim, "model", None), mujoco.MjModel):
            spec = mujoco.mjtState.mjSTATE_INTEGRATION
            state["mujoco"] = np.empty(mujoco.mj_stateSize(sim.model, spec))
            mujoco.mj_getState(sim.model, sim.data, state["mujoco"], spec)
        states.append(state)
    return states


def set_sim_states(venv: VecEnv, states: list[dict[str, Any]]) -> None:
    import mujoco

    for env, state in zip(venv.envs, states, strict=True):
        sim = env.unwrapped
        sim.np_random = state["np_random"]
        if "mujoco" in state:
            mujoco.mj_setState(sim.model, sim.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)


def algorithm_state(model: BaseAlgorithm) -> dict[str, Any]:
    """What `model.save` stores, by SB3's own lists: the pickled attributes (counters such as
    `num_timesteps`, `_n_calls` and `exploration_rate` included), the state dicts of the
    networks and optimizers, and the other torch variables (SAC's `log_ent_coef`)."""
    state_dicts, variables = model._get_torch_save_params()
    excluded = set(model._excluded_save_params()) | {name.split(".")[0] for name in state_dicts + variables}
    return {
        "attributes": {name: value for name, value in vars(model).items() if name not in excluded},
        "parameters": model.get_parameters(),
        "variables": {name: recursive_getattr(model, name) for name in variables},
    }


def load_algorithm_state(model: BaseAlgorithm, state: dict[str, Any]) -> None:
    """Put `algorithm_state` back into a model built with the same settings, as `load` does."""
    vars(model).update(state["attributes"])
    model.set_parameters(state["parameters"], exact_match=True)
    for name, value in state["variables"].items():
        if value is not None:  # in place, so that optimizers (and stacked views) keep their reference
            recursive_getattr(model, name).data.copy_(value.data)


def run_state(model: BaseAlgorithm, parts: dict[str, Stateful]) -> dict[str, Any]:
    """What a checkpoint of a run holds under either engine: the algorithm's state, its replay
    buffer, its env (with its simulator state) and the state of its other `parts` (callbacks)."""
    normalize = model.get_vec_normalize_env()
    return {
        "version": RESUME_VERSION,
        "algorithm": algorithm_state(model),
        "replay_buffer": buffer_state(getattr(model, "replay_buffer", None)),  # on-policy: a rollout starts afresh
        "env": model.get_env() if normalize is None else normalize.venv,
        "normalize": None if normalize is None else normalize_state(normalize),
        "sims": sim_states(model.get_env()),
        "parts": {name: part.state_dict() for name, part in parts.items()},
    }


def load_run_state(model: BaseAlgorithm, state: dict[str, Any], parts: dict[str, Stateful]) -> None:
    """Put `run_state` back into a freshly built run."""
    env, normalize = state["env"], model.get_vec_normalize_env()
    if normalize is not None:  # the run's own VecNormalize around the saved env, with its statistics
        normalize.venv = env
        vars(normalize).update(copy.deepcopy(state["normalize"]))
        env = normalize
    model.set_env(env, force_reset=False)
    load_algorithm_state(model, state["algorithm"])
    set_sim_states(model.get_env(), state["sims"])
    if state["replay_buffer"] is not None:
        load_buffer_state(model.replay_buffer, state["replay_buffer"])
    for name, part in parts.items():
        part.load_state_dict(state["parts"][name])


def buffer_state(buffer: BaseBuffer | None) -> dict[str, Any] | None:
    """A replay buffer's attributes, its transition arrays cut to the rows it has filled: a
    checkpoint early in a run with a large buffer stays small, and so does the resumed run's memory."""
    if buffer is None:
        return None
    filled = buffer.buffer_size if buffer.full else buffer.pos
    return {
        name: value[:filled] if name in TRANSITIONS and isinstance(value, np.ndarray) else value
        for name, value in vars(buffer).items()
    }


def load_buffer_state(buffer: BaseBuffer, state: dict[str, Any] | BaseBuffer) -> None:
    """Put `buffer_state` back into a freshly built buffer of the same settings, the transitions
    in place (the stacked engine's buffers are views of its arrays)."""
    attributes = vars(state) if isinstance(state, BaseBuffer) else state  # or the whole buffer, as saved before
    for name, value in attributes.items():
        if name in TRANSITIONS and isinstance(value, np.ndarray):
            getattr(buffer, name)[: len(value)] = value
        else:
            setattr(buffer, name, value)


def normalize_state(normalize: VecNormalize) -> dict[str, Any]:
    """VecNormalize's statistics and its running returns (which its pickle leaves out), without its env."""
    return copy.deepcopy(
        {key: value for key, value in vars(normalize).items() if key not in ("venv", "class_attributes")}
    )


def _sde_state(model: BaseAlgorithm) -> dict[str, Any] | None:
    """gSDE's current exploration matrices (SB3 draws them outside the state dict)."""
    if not getattr(model, "use_sde", False):
        return None
    dist = model.policy.actor.action_dist
    return {name: getattr(dist, name) for name in SDE_STATE if hasattr(dist, name)}


def _rng_state() -> dict[str, Any]:
    state = {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()}
    if th.cuda.is_available():
        state["cuda"] = th.cuda.get_rng_state_all()
    return state


def _set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    th.set_rng_state(state["torch"])
    if "cuda" in state and th.cuda.is_available():
        th.cuda.set_rng_state_all(state["cuda"])


def write_checkpoint(path: Path, state: dict[str, Any]) -> None:
    """Replace the checkpoint at `path` with `state`, atomically, then the step it was taken at beside it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, lambda fh: cloudpickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL))
    steps = json.dumps({"steps": int(state["algorithm"]["attributes"]["num_timesteps"])})
    _replace(path.parent / CHECKPOINT_STEPS, lambda fh: fh.write(steps.encode()))


def _replace(path: Path, write: Callable[[BinaryIO], Any]) -> None:
    """Write a file through a temporary one, synced, so that it is replaced whole or not at all."""
    tmp = path.parent / f".{path.name}.{uuid.uuid4().hex[:8]}"
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_checkpoint(path: Path) -> dict[str, Any] | None:
    """The checkpoint at `path`; None if there is none or it is of an earlier format."""
    if not path.is_file():
        return None
    with open(path, "rb") as fh:
        state = pickle.load(fh)
    return state if state.get("version") == RESUME_VERSION else None


class Checkpointer(BaseCallback):
    """Every `every` steps, between training phases, saves the whole state of the run.

    A checkpoint is taken at the start of a rollout, after SB3 has begun it (reset the action
    noise, drawn gSDE's matrices); a resumed run therefore puts the random streams, the action
    noise and gSDE's matrices back at its first rollout start, so that the rollout continues
    from exactly the saved state.

    :param folder: the run's checkpoint folder (one file, replaced atomically)
    :param parts: other stateful pieces of the run (callbacks), by name
    """

    def __init__(self, folder: Path, every: int, parts: dict[str, Stateful]) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.every = every
        self.parts = parts
        self._saved_at = 0
        self._resume: dict[str, Any] | None = None

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT

    def _on_rollout_start(self) -> None:
        if self._resume is not None:
            self._continue()
        # here the buffer holds every transition so far and training on them is done
        elif self.num_timesteps - self._saved_at >= self.every:
            self.save()

    def _on_step(self) -> bool:
        return True

    def save(self) -> None:
        model = self.model
        state = run_state(model, self.parts) | {"sde": _sde_state(model), "rng": _rng_state()}
        write_checkpoint(self.path, state)
        self._saved_at = model.num_timesteps

    def restore(self, model: BaseAlgorithm) -> bool:
        """Load the last checkpoint into a freshly built model; False if there is none.

        A checkpoint of an earlier format is not used: the run starts over.
        """
        state = read_checkpoint(self.path)
        if state is None:
            self.clear()
            return False
        load_run_state(model, state, self.parts)
        _set_rng_state(state["rng"])
        self._resume = {
            "action_noise": copy.deepcopy(state["algorithm"]["attributes"].get("action_noise")),
            "sde": state["sde"],
            "rng": state["rng"],
        }
        self._saved_at = model.num_timesteps
        return True

    def _continue(self) -> None:
        """At the first rollout start after a restore: undo what starting `learn` changed."""
        resume, self._resume = self._resume, None
        if resume["action_noise"] is not None:  # SB3 resets it when learning starts (OU state)
            vars(self.model.action_noise).update(vars(resume["action_noise"]))  # in place: the rollout holds it
        if resume["sde"] is not None:  # SB3 draws new matrices at every rollout start
            vars(self.model.policy.actor.action_dist).update(resume["sde"])
        _set_rng_state(resume["rng"])

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

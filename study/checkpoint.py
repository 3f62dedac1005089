"""Checkpoints of a run in progress, from which it continues exactly as if never stopped."""

from __future__ import annotations

import copy
import os
import pickle
import random
import shutil
import uuid
from pathlib import Path
from typing import Any, Protocol

import cloudpickle
import numpy as np
import torch as th
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.vec_env import VecEnv

CHECKPOINT = "checkpoint.pkl"
# the algorithm's own progress, beside its parameters, optimizers and replay buffer
ALGO_STATE = (
    "num_timesteps",
    "_episode_num",
    "_n_updates",
    "_last_obs",
    "_last_episode_starts",
    "_last_original_obs",
    "_current_progress_remaining",
    "action_noise",
    "action_space",
    "ep_info_buffer",
    "ep_success_buffer",
)


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...
    def load_state_dict(self, state: dict[str, Any]) -> None: ...


def _sim_states(venv: VecEnv) -> list[dict[str, Any]]:
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


def _set_sim_states(venv: VecEnv, states: list[dict[str, Any]]) -> None:
    import mujoco

    for env, state in zip(venv.envs, states, strict=True):
        sim = env.unwrapped
        sim.np_random = state["np_random"]
        if "mujoco" in state:
            mujoco.mj_setState(sim.model, sim.data, state["mujoco"], mujoco.mjtState.mjSTATE_INTEGRATION)


class Checkpointer(BaseCallback):
    """Every `every` steps, between training phases, saves the whole state of the run.

    :param folder: the run's checkpoint folder (one file, replaced atomically)
    :param parts: other stateful pieces of the run (callbacks), by name
    """

    def __init__(self, folder: Path, every: int, parts: dict[str, Stateful]) -> None:
        super().__init__()
        self.folder = Path(folder)
        self.every = every
        self.parts = parts
        self._saved_at = 0
        self._action_noise: Any = None

    @property
    def path(self) -> Path:
        return self.folder / CHECKPOINT

    def _on_rollout_start(self) -> None:
        # here the buffer holds every transition so far and training on them is done
        if self.num_timesteps - self._saved_at >= self.every:
            self.save()

    def _on_training_start(self) -> None:
        # SB3 resets the action noise when learning starts: put the saved one (OU state) back
        if self._action_noise is not None:
            self.model.action_noise, self._action_noise = self._action_noise, None

    def _on_step(self) -> bool:
        return True

    def save(self) -> None:
        model = self.model
        state = {
            "parameters": model.get_parameters(),
            "algo": {name: getattr(model, name) for name in ALGO_STATE if hasattr(model, name)},
            "replay_buffer": model.replay_buffer,
            "env": model.get_env(),
            "sims": _sim_states(model.get_env()),
            "parts": {name: part.state_dict() for name, part in self.parts.items()},
            "rng": {"python": random.getstate(), "numpy": np.random.get_state(), "torch": th.get_rng_state()},
        }
        self.folder.mkdir(parents=True, exist_ok=True)
        tmp = self.folder / f".{CHECKPOINT}.{uuid.uuid4().hex[:8]}"
        with open(tmp, "wb") as fh:
            cloudpickle.dump(state, fh, protocol=pickle.HIGHEST_PROTOCOL)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, self.path)
        self._saved_at = model.num_timesteps

    def restore(self, model: BaseAlgorithm) -> bool:
        """Load the last checkpoint into a freshly built model; False if there is none."""
        if not self.path.is_file():
            return False
        with open(self.path, "rb") as fh:
            state = pickle.load(fh)
        model.set_parameters(state["parameters"], exact_match=True)
        for name, value in state["algo"].items():
            setattr(model, name, value)
        self._action_noise = copy.deepcopy(state["algo"].get("action_noise"))
        model.replay_buffer = state["replay_buffer"]
        model.set_env(state["env"], force_reset=False)
        _set_sim_states(model.get_env(), state["sims"])
        for name, part in self.parts.items():
            part.load_state_dict(state["parts"][name])
        random.setstate(state["rng"]["python"])
        np.random.set_state(state["rng"]["numpy"])
        th.set_rng_state(state["rng"]["torch"])
        self._saved_at = model.num_timesteps
        return True

    def clear(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

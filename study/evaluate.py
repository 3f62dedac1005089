"""A run's saved model evaluated again: more episodes, the deterministic policy or the run's exploration."""

from __future__ import annotations

import os
import pickle
import sys
from dataclasses import dataclass
from pathlib import Path

import gymnasium as gym
import numpy as np
from gymnasium import spaces
from stable_baselines3.common.base_class import BaseAlgorithm
from stable_baselines3.common.vec_env import VecNormalize

from study.config import RunSpec, Study, StudyError
from study.envs import make_env
from study.exploration.param_noise import derived_seed
from study.messages import did_you_mean
from study.recording import episode_costs
from study.registry import ALGORITHMS, resolve
from study.store import DONE, MODEL, NORMALIZE, DamagedRunError, check_run, run_dir, verify_model


@dataclass(frozen=True)
class Evaluation:
    """Per episode: return, length and the continuity and jerk costs of its actions."""

    returns: list[float]
    lengths: list[int]
    continuity: list[float]
    jerk: list[float]


def find_run(study: Study, run: str) -> RunSpec:
    """The study's run named by its run id or its 8-character hash."""
    for spec in study.runs:
        if run in (spec.run_id, spec.spec_hash):
            return spec
    ids = [spec.run_id for spec in study.runs]
    raise StudyError(f"--run {run}: no run of {study.name} (budget {study.budget}) has that id{did_you_mean(run, ids)}")


def load_model(results: Path, spec: RunSpec) -> BaseAlgorithm:
    """The run's final model, checked against its manifest, as its algorithm's `load` reads it
    (on the CPU)."""
    check = check_run(Path(results), spec)
    if check.state != DONE:
        raise StudyError(f"--run {spec.run_id}: the run is {check.state}, not complete{_why(check.problem)}")
    folder = run_dir(Path(results), spec)
    if not (folder / MODEL).is_file():
        raise StudyError(
            f"--run {spec.run_id}: no saved model at {folder / MODEL} (a run keeps one unless `save_model: false`; "
            "runs from before saved models have none)"
        )
    try:
        path = verify_model(folder)
    except DamagedRunError as err:
        raise StudyError(f"--run {spec.run_id}: {err.problem}") from None
    try:
        return resolve(ALGORITHMS[spec.settings.algo].cls).load(path, device="cpu", buffer_size=1)
    except Exception as err:
        raise StudyError(f"--run {spec.run_id}: {path} does not load: {err}") from None


def load_normalize(results: Path, spec: RunSpec) -> VecNormalize | None:
    """The run's final VecNormalize statistics (runs with `normalize`), checked against its
    manifest, frozen: they normalize observations and change no more."""
    if spec.settings.normalize is None:
        return None
    folder = run_dir(Path(results), spec)
    if not (folder / NORMALIZE).is_file():
        raise StudyError(f"--run {spec.run_id}: no {NORMALIZE} beside its model at {folder}")
    try:
        with open(verify_model(folder, NORMALIZE), "rb") as fh:
            normalize = pickle.load(fh)
    except DamagedRunError as err:
        raise StudyError(f"--run {spec.run_id}: {err.problem}") from None
    except Exception as err:
        raise StudyError(f"--run {spec.run_id}: {folder / NORMALIZE} does not load: {err}") from None
    normalize.training = False
    return normalize


def _why(problem: str | None) -> str:
    return f" ({problem})" if problem else ""


def evaluate_model(
    spec: RunSpec,
    model: BaseAlgorithm,
    episodes: int,
    explore: bool = False,
    normalize: VecNormalize | None = None,
    video: Path | None = None,
) -> Evaluation:
    """`episodes` episodes of `model` in a fresh evaluation env of the run's (seeded from the run's
    seed): the deterministic, unperturbed policy, or with `explore` the run's exploration as it
    ended training: the perturbed actor as training left it (its last draw, not redrawn), gSDE's
    matrices drawn as often as the run drew them, SAC's sampling, action noise, NoisyNet's noise
    drawn before every action, ε- or εz-greedy at the final ε. SAC's colored sampling noise is
    not restored (refused). With `normalize` (`load_normalize`), the policy sees observations
    normalized by the run's final statistics. With `video`, the episodes are also recorded to
    that MP4 file, a frame per step and one of each episode's last state."""
    settings = spec.settings
    if explore and settings.exploration.sampling_noise is not None:
        raise StudyError("--explore: SAC's colored sampling noise is not restored from a saved model")
    if explore and settings.exploration.param_noise is not None and ALGORITHMS[settings.algo].on_policy:
        raise StudyError(f"--explore: {settings.algo}'s parameter noise (its segments' ε) is not in a saved model")
    kwargs = settings.env_kwargs | ({"render_mode": "rgb_array"} if video is not None else {})
    if video is not None and sys.platform.startswith("linux") and not os.environ.get("DISPLAY"):
        os.environ.setdefault("MUJOCO_GL", "egl")  # MuJoCo renders offscreen, without a display
    try:
        env = make_env(
            spec.env, kwargs, settings.env_wrapper, True, task_seed=spec.seed, frame_stack=settings.frame_stack
        )
    except Exception as err:
        if video is None:
            raise
        raise StudyError(f"--video: {spec.env} cannot render frames ({type(err).__name__}: {err})") from None
    recording = None
    policy = model.policy
    if explore and settings.exploration.param_noise is not None:
        policy.explore_perturbed = True
    noisy = explore and settings.exploration.noisy_net is not None
    gsde = settings.exploration.gsde
    resample = None  # gSDE: new matrices at episode starts and every k steps, as the run drew them
    if explore and gsde is not None:
        resample = -1 if gsde.interval == "episode" else gsde.interval
    seed: int | None = derived_seed(spec.seed, "evaluate")
    out = Evaluation([], [], [], [])
    try:
        if video is not None:
            recording = Recording(video, env.metadata.get("render_fps") or 30)
        for _ in range(episodes):
            obs, _ = env.reset(seed=seed)
            seed = None
            if explore and getattr(model, "action_noise", None) is not None:
                model.action_noise.reset()
            actions, total, done = [], 0.0, False
            while not done:
                if resample is not None and (not actions or (resample > 0 and len(actions) % resample == 0)):
                    policy.reset_noise()  # gSDE: new exploration matrices, as often as the run drew them
                if noisy:
                    policy.sample_acting_noise()  # NoisyNet: new noise before every action
                action = _act(model, obs if normalize is None else normalize.normalize_obs(obs), explore)
                if recording is not None:
                    recording.add(env)
                obs, reward, terminated, truncated, _ = env.step(action)
                actions.append(action)
                total += float(reward)
                done = terminated or truncated
            if recording is not None:
                recording.add(env)  # the episode's last state
            if explore and getattr(model, "ez_greedy", None) is not None:
                model.ez_greedy.end_episode()
            continuity, jerk = episode_costs(actions, env.action_space)
            out.returns.append(total)
            out.lengths.append(len(actions))
            out.continuity.append(continuity)
            out.jerk.append(jerk)
        if recording is not None:
            recording.close(complete=True)
    finally:
        if recording is not None:
            recording.close(complete=False)
        env.close()
    return out


def _frame(env: gym.Env) -> np.ndarray:
    try:
        frame = env.render()
    except Exception as err:
        raise StudyError(
            f"--video: cannot render {env.spec.id} here ({type(err).__name__}: {err}){_RENDER_HINT}"
        ) from None
    if not isinstance(frame, np.ndarray):
        raise StudyError(f"--video: {env.spec.id} renders no image frames")
    return frame


_RENDER_HINT = (
    "; MuJoCo renders headless through EGL (MUJOCO_GL=egl, the default on a Linux without a display)"
    " or OSMesa (MUJOCO_GL=osmesa)"
)


class Recording:
    """An MP4 file written frame by frame (imageio's bundled ffmpeg) under a temporary name, and
    moved into place only when complete."""

    def __init__(self, path: Path, fps: float) -> None:
        import imageio.v2 as imageio

        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.mp4")
        try:
            self.writer = imageio.get_writer(self.tmp, fps=fps, macro_block_size=1)
        except Exception as err:
            raise StudyError(f"--video: cannot write {self.path} ({type(err).__name__}: {err})") from None

    def add(self, env: gym.Env) -> None:
        """The env's current frame."""
        frame = _frame(env)
        try:
            self.writer.append_data(frame)
        except Exception as err:
            raise StudyError(f"--video: cannot write {self.path} ({type(err).__name__}: {err})") from None

    def close(self, complete: bool) -> None:
        """Finish the file: into place if `complete`, else removed (closing twice does nothing)."""
        if self.writer is None:
            return
        writer, self.writer = self.writer, None
        try:
            writer.close()
            if complete:
                os.replace(self.tmp, self.path)
        except Exception as err:
            raise StudyError(f"--video: cannot write {self.path} ({type(err).__name__}: {err})") from None
        finally:
            self.tmp.unlink(missing_ok=True)


def _act(model: BaseAlgorithm, obs: np.ndarray, explore: bool) -> np.ndarray:
    """The policy's action (`predict`); exploring, with the run's action noise added as SB3's
    `_sample_action` adds it."""
    action, _ = model.predict(obs, deterministic=not explore)
    noise = getattr(model, "action_noise", None)
    if explore and noise is not None and isinstance(model.action_space, spaces.Box):
        scaled = np.clip(model.policy.scale_action(action) + noise(), -1, 1)
        action = model.policy.unscale_action(scaled)
    return action

"""The project's own environments (registered with gymnasium on import) and environment creation."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator

if "study/Chain-v0" not in gym.registry:
    gym.register("study/Chain-v0", entry_point="study.envs.chain:ChainEnv", kwargs={"n": 10})

# MinAtar (Young & Tian, 2019) with its minimal action sets, as the `minatar` package's own v1 ids
for _game in ("asterix", "breakout", "freeway", "seaquest", "space_invaders"):
    _id = f"MinAtar/{_game.title().replace('_', '')}-v1"
    if _id not in gym.registry:
        _kwargs = {"game": _game, "use_minimal_action_set": True}
        gym.register(_id, entry_point="study.envs.minatar_games:MinAtarEnv", kwargs=_kwargs)


class _ChannelsFirst(gym.ObservationWrapper):
    """(stack, H, W, 1) frames → (stack, H, W), an image SB3's CNNs take as channel-first."""

    def __init__(self, env: gym.Env) -> None:
        super().__init__(env)
        space = env.observation_space
        self.observation_space = gym.spaces.Box(0, 255, shape=space.shape[:-1], dtype=np.uint8)

    def observation(self, observation: np.ndarray) -> np.ndarray:
        return np.asarray(observation)[..., 0]


def atari(env: gym.Env, evaluation: bool) -> gym.Env:
    """SB3's Atari preprocessing (no-op reset, frame skip 4, 84×84 grey, episodic life and
    clipped rewards for training only) and a stack of the last 4 frames."""
    from stable_baselines3.common.atari_wrappers import AtariWrapper

    try:
        import cv2  # noqa: F401
    except ImportError:
        raise ImportError("the atari wrapper needs OpenCV: pip install -e '.[atari]'") from None

    env = AtariWrapper(env, terminal_on_life_loss=not evaluation, clip_reward=not evaluation)
    return _ChannelsFirst(gym.wrappers.FrameStackObservation(env, 4))


def stack_frames(env: gym.Env, n: int) -> gym.Env:
    """The last `n` observations side by side, oldest first, zeros before the episode's first,
    as SB3's VecFrameStack (rl-zoo3's `frame_stack`) stacks vector observations."""
    space = env.observation_space
    if not isinstance(space, gym.spaces.Box) or len(space.shape) != 1:
        raise ValueError(f"frame_stack: stacks vector observations; this env observes {space}")
    stacked = gym.wrappers.FrameStackObservation(env, n, padding_type="zero")
    return gym.wrappers.FlattenObservation(stacked)


WRAPPERS: dict[str, Callable[[gym.Env, bool], gym.Env]] = {
    "none": lambda env, evaluation: env,
    "atari": atari,
}


def takes_task_seed(env_id: str) -> bool:
    """Whether the env's constructor takes `task_seed`: a seed that fixes the task itself
    (the same for a run's training and evaluation envs), not the episodes' random stream."""
    module, _, name = env_id.rpartition(":")
    if module:  # `module:EnvId`: the module registers the env, as gym.make does
        importlib.import_module(module)
    entry_point = gym.spec(name).entry_point
    creator = load_env_creator(entry_point) if isinstance(entry_point, str) else entry_point
    return "task_seed" in inspect.signature(creator).parameters


def make_env(
    env_id: str,
    env_kwargs: dict | None = None,
    wrapper: str = "none",
    evaluation: bool = False,
    task_seed: int | None = None,
    frame_stack: int | None = None,
) -> gym.Env:
    """A gymnasium environment (`module:EnvId` imports `module` first), wrapped by name.

    :param task_seed: passed to envs that take one (see `takes_task_seed`) unless `env_kwargs` sets it
    :param frame_stack: observe the last this many observations (`stack_frames`)
    """
    kwargs = dict(env_kwargs or {})
    if task_seed is not None and "task_seed" not in kwargs and takes_task_seed(env_id):
        kwargs["task_seed"] = task_seed
    env = WRAPPERS[wrapper](gym.make(env_id, **kwargs), evaluation)
    return env if frame_stack is None else stack_frames(env, frame_stack)

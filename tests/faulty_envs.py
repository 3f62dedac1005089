"""Environments that misbehave on purpose, for failure-isolation and episode-timing tests.

Runs name them as `faulty_envs:Diverging-v0`; workers find this module on PYTHONPATH.
"""

from __future__ import annotations

import os
import time

import gymnasium as gym
from gymnasium.envs.classic_control.pendulum import PendulumEnv


class DivergingPendulum(PendulumEnv):
    """Raises after 50 steps, as a simulation that blows up would."""

    def reset(self, **kwargs):
        self._steps = getattr(self, "_steps", 0)
        return super().reset(**kwargs)

    def step(self, action):
        self._steps += 1
        if self._steps > 50:
            raise FloatingPointError("simulation diverged")
        return super().step(action)


class SlowPendulum(PendulumEnv):
    """Sleeps a little every step (seconds from $SLOW_ENV_SLEEP), so a run lasts long enough to kill."""

    def step(self, action):
        time.sleep(float(os.environ.get("SLOW_ENV_SLEEP", "0.005")))
        return super().step(action)


gym.register("Diverging-v0", entry_point=DivergingPendulum, max_episode_steps=200)
gym.register("Slow-v0", entry_point=SlowPendulum, max_episode_steps=200)


class EndingPendulum(PendulumEnv):
    """Ends each step with probability 1/40 (drawn from the env's own seeded stream), so that
    runs of different seeds finish their episodes at different steps."""

    def step(self, action):
        obs, reward, terminated, truncated, info = super().step(action)
        return obs, reward, terminated or bool(self.np_random.random() < 1 / 40), truncated, info


gym.register("Ending-v0", entry_point=EndingPendulum, max_episode_steps=200)

"""Continuity and jerk cost on hand-built action sequences and on recorded training episodes."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from stable_baselines3 import TD3
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from study.costs import continuity_cost, jerk_cost, switch_rate
from study.policies import ParamNoiseTD3Policy
from study.recording import EpisodeRecorder

LOW, HIGH = np.array([-2.0, 0.0]), np.array([2.0, 1.0])


def test_constant_actions_cost_nothing() -> None:
    actions = np.tile([0.7, 0.3], (50, 1))
    assert continuity_cost(actions, LOW, HIGH) == 0.0
    assert jerk_cost(actions, LOW, HIGH) == 0.0


def test_jumping_between_the_bounds_every_step_costs_100() -> None:
    actions = np.array([LOW if t % 2 == 0 else HIGH for t in range(51)])
    assert continuity_cost(actions, LOW, HIGH) == pytest.approx(100.0)
    assert jerk_cost(actions, LOW, HIGH) == pytest.approx(100.0)


def test_hand_computed_values() -> None:
    low, high = np.array([-1.0]), np.array([1.0])
    actions = np.array([[0.0], [0.5], [0.5], [-0.5]])
    # first differences / range: 0.25, 0, -0.5 → mean of squares = (0.0625 + 0 + 0.25) / 3
    assert continuity_cost(actions, low, high) == pytest.approx(100 * 0.3125 / 3)
    # second differences / range: (0.5 - 1.0 + 0)/2 = -0.25, (-0.5 - 1.0 + 0.5)/2 = -0.5
    assert jerk_cost(actions, low, high) == pytest.approx(25 * (0.0625 + 0.25) / 2)


def test_a_linear_ramp_has_no_jerk() -> None:
    actions = np.linspace(-1, 1, 20)[:, None]
    assert jerk_cost(actions, np.array([-1.0]), np.array([1.0])) == pytest.approx(0.0, abs=1e-12)
    assert continuity_cost(actions, np.array([-1.0]), np.array([1.0])) > 0


def test_too_short_episodes_are_undefined() -> None:
    assert np.isnan(continuity_cost(np.zeros((1, 2)), LOW, HIGH))
    assert np.isnan(jerk_cost(np.zeros((2, 2)), LOW, HIGH))


def test_switch_rate() -> None:
    assert switch_rate(np.array([0, 0, 1, 1, 0])) == pytest.approx(0.5)
    assert switch_rate(np.array([2, 2, 2])) == 0.0


class BoxActionsEnv(gym.Env):
    """Actions in Box([-2, 0], [2, 10]), episodes of `length` steps; records the actions it receives."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.Box(np.array([-2.0, 0.0], np.float32), np.array([2.0, 10.0], np.float32))

    def __init__(self, length: int = 4) -> None:
        self.length = length
        self.received: list[np.ndarray] = []

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        self.t = 0
        return np.zeros(2, np.float32), {}

    def step(self, action: np.ndarray):
        self.received.append(np.array(action, dtype=np.float64))
        self.t += 1
        return np.full(2, self.t / self.length, np.float32), 0.0, False, self.t >= self.length, {}


def tiny_box_td3(length: int = 4, **kwargs) -> tuple[TD3, BoxActionsEnv]:
    env = BoxActionsEnv(length)
    params = {"learning_starts": 0, "batch_size": 4, "seed": 0, "policy_kwargs": {"net_arch": [8]}} | kwargs
    return TD3(ParamNoiseTD3Policy, env, **params), env


BOX_LOW, BOX_HIGH = BoxActionsEnv.action_space.low, BoxActionsEnv.action_space.high


def test_hand_computed_values_on_a_box_not_in_minus_one_one() -> None:
    actions = np.array([[-2.0, 0.0], [2.0, 10.0], [0.0, 5.0], [0.0, 5.0]])
    # first differences / (4, 10): (1, 1), (−0.5, −0.5), (0, 0) → mean of squares = 2.5 / 6
    assert continuity_cost(actions, BOX_LOW, BOX_HIGH) == pytest.approx(100 * 2.5 / 6)
    # second differences / (4, 10): (0 − 4 − 2, 5 − 20 + 0) → (−1.5, −1.5); (0 − 0 + 2, 5 − 10 + 10) → (0.5, 0.5)
    assert jerk_cost(actions, BOX_LOW, BOX_HIGH) == pytest.approx(25 * (2.25 + 2.25 + 0.25 + 0.25) / 4)


def test_recorded_episode_costs_are_in_env_units_over_the_range() -> None:
    model, env = tiny_box_td3(length=4)
    script = iter(
        [[-2.0, 0.0], [2.0, 10.0], [0.0, 5.0], [0.0, 5.0]]  # the hand-computed episode above
        + [[1.0, 2.0]] * 4  # constant: no cost
        + [[-2.0, 10.0], [2.0, 0.0], [-2.0, 10.0], [2.0, 0.0]]  # bound to bound every step: 100
    )
    model.predict = lambda obs, state=None, episode_start=None, deterministic=False: (np.array([next(script)]), None)
    recorder = EpisodeRecorder()
    model.learn(12, callback=recorder)
    assert np.allclose(env.received[:4], [[-2.0, 0.0], [2.0, 10.0], [0.0, 5.0], [0.0, 5.0]], atol=1e-6)
    assert [row["length"] for row in recorder.rows] == [4, 4, 4]
    costs = [(row["continuity_cost"], row["jerk_cost"]) for row in recorder.rows]
    assert costs[0] == (pytest.approx(100 * 2.5 / 6, rel=1e-5), pytest.approx(31.25, rel=1e-5))
    assert costs[1] == (pytest.approx(0.0, abs=1e-9), pytest.approx(0.0, abs=1e-9))
    assert costs[2] == (pytest.approx(100.0, rel=1e-5), pytest.approx(100.0, rel=1e-5))


def test_recorded_costs_of_random_episodes_by_hand() -> None:
    model, env = tiny_box_td3(length=6, learning_starts=1000)  # warm-up: SB3's uniform random actions
    recorder = EpisodeRecorder()
    model.learn(18, callback=recorder)
    width = BOX_HIGH.astype(np.float64) - BOX_LOW
    for episode, row in enumerate(recorder.rows):
        a = env.received[6 * episode : 6 * episode + 6]
        assert row["warmup"]
        first = [((a[t + 1][j] - a[t][j]) / width[j]) ** 2 for t in range(5) for j in range(2)]
        second = [((a[t + 1][j] - 2 * a[t][j] + a[t - 1][j]) / width[j]) ** 2 for t in range(1, 5) for j in range(2)]
        assert row["continuity_cost"] == pytest.approx(100 * sum(first) / 10, rel=1e-6)
        assert row["jerk_cost"] == pytest.approx(25 * sum(second) / 8, rel=1e-6)


@pytest.mark.parametrize(("learning_starts", "warmup"), [(11, True), (10, False), (9, False)])
def test_warmup_flag_at_the_learning_starts_boundary(learning_starts: int, warmup: bool) -> None:
    """The episode starting at step 10 starts at learning_starts − 1, learning_starts, learning_starts + 1:
    warm-up iff it began before learning_starts, that is iff its first action was SB3's random one."""
    model, _ = tiny_box_td3(length=5, learning_starts=learning_starts)
    from_policy: list[bool] = []

    class FromPolicy(BaseCallback):
        def _on_step(self) -> bool:  # the actor has not trained since it chose this step's action
            predicted, _ = self.model.predict(self.model._last_obs, deterministic=True)
            from_policy.append(bool(np.allclose(predicted, self.locals["actions"], atol=1e-6)))
            return True

    recorder = EpisodeRecorder()
    model.learn(25, callback=CallbackList([FromPolicy(), recorder]))
    assert from_policy == [t >= learning_starts for t in range(25)]  # step t (0-based) acts at num_timesteps = t
    flags = [row["warmup"] for row in recorder.rows]
    assert flags == [not from_policy[5 * e] for e in range(5)]
    assert flags == [True, True, warmup, False, False]

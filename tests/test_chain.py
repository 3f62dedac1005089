"""The chain MDP: dynamics, encoding, optimal return, and runs that stop once solved."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from study.config import EvalSettings, RunSettings, RunSpec
from study.dqn import DQN
from study.envs import make_env
from study.envs.chain import LEFT, RIGHT, ChainEnv
from study.policies import ParamNoiseDQNPolicy
from study.recording import Evaluator
from study.run import execute


def rollout(env: gym.Env, action: int) -> tuple[float, int, list[np.ndarray]]:
    obs, _ = env.reset(seed=0)
    observations, total, steps, done = [obs], 0.0, 0, False
    while not done:
        obs, reward, terminated, truncated, _ = env.step(action)
        observations.append(obs)
        total += reward
        steps += 1
        done = terminated or truncated
    return total, steps, observations


@pytest.mark.parametrize("n", [3, 10, 20, 100])
def test_always_right_is_optimal_and_episodes_last_n_plus_9(n: int) -> None:
    env = gym.make("study/Chain-v0", n=n)
    total, steps, observations = rollout(env, RIGHT)
    assert steps == n + 9
    # n - 2 steps to walk from s_2 to s_N, then one reward per step of pushing right in s_N
    assert total == pytest.approx(n + 9 - (n - 2)) == env.unwrapped.optimal_return
    assert observations[-1].tolist() == [1.0] * n


def test_always_left_finds_only_the_small_reward() -> None:
    total, steps, observations = rollout(gym.make("study/Chain-v0", n=10), LEFT)
    assert total == pytest.approx(0.001 * (steps - 1))  # one step to reach s_1, then 0.001 per step
    assert observations[0].tolist() == [1.0, 1.0] + [0.0] * 8  # start in s_2


def test_thermometer_encoding() -> None:
    env = ChainEnv(n=5)
    obs, _ = env.reset()
    seen = [obs]
    for _ in range(4):
        seen.append(env.step(RIGHT)[0])
    assert np.array_equal(np.array(seen[1:4]), np.tril(np.ones((5, 5)))[2:5])
    assert env.observation_space.contains(seen[-1])


@pytest.mark.parametrize("n", [2, 0, 3.5])
def test_bad_chain_length(n) -> None:
    with pytest.raises(ValueError, match="chain length"):
        ChainEnv(n=n)


def test_a_hand_coded_always_right_policy_solves_it_once_learning_has_begun() -> None:
    n, window = 6, 4
    # episodes end at steps 15, 30, 45, ...; training (every 4 steps) begins after step 32 > 28,
    # so the evaluations at 15 and at 30 (after learning_starts, before any gradient step) are
    # of the untrained network and must not count towards the streak
    model = DQN(ParamNoiseDQNPolicy, gym.make("study/Chain-v0", n=n), learning_starts=28, seed=0)
    model.policy._predict = lambda obs, deterministic=True: th.full((obs.shape[0],), RIGHT)
    settings = EvalSettings(freq="episode", episodes=1, stop_when_solved=True, solved_window=window)
    evaluator = Evaluator(gym.make("study/Chain-v0", n=n), settings)
    model.learn(100 * (n + 9), callback=evaluator)
    assert all(row["optimal"] for row in evaluator.rows)
    assert [row["gradient_steps"] for row in evaluator.rows[:3]] == [0, 0, 4]  # steps 32, 36, 40, 44
    assert len(evaluator.rows) == 2 + window
    assert model.num_timesteps == (2 + window) * (n + 9)


def test_randomized_actions_fix_per_state_which_action_moves_right() -> None:
    n = 12
    env = ChainEnv(n=n, randomize_actions=True, task_seed=5)
    assert np.array_equal(env.right, ChainEnv(n=n, randomize_actions=True, task_seed=5).right)
    assert not np.array_equal(env.right, ChainEnv(n=n, randomize_actions=True, task_seed=6).right)
    assert 0 < env.right.sum() < n  # both actions move right somewhere
    assert np.array_equal(ChainEnv(n=n).right, np.full(n, RIGHT))

    def play(policy) -> float:
        env.reset(seed=1)
        total, done = 0.0, False
        while not done:
            _, reward, terminated, truncated, _ = env.step(policy(env._state))
            total += reward
            done = terminated or truncated
        return total

    assert play(lambda state: int(env.right[state])) == env.optimal_return  # follow the mapping
    assert play(lambda state: RIGHT) < env.optimal_return  # the shortcut no longer works
    # the same task for a run's training and evaluation envs, drawn from the run's seed
    train, evaluation = (
        make_env("study/Chain-v0", {"n": n, "randomize_actions": True}, evaluation=e, task_seed=3)
        for e in (False, True)
    )
    assert np.array_equal(train.unwrapped.right, evaluation.unwrapped.right)
    assert np.array_equal(train.unwrapped.right, ChainEnv(n=n, randomize_actions=True, task_seed=3).right)


def test_chain_runs_record_per_episode_optimality_and_stop_at_max_episodes() -> None:
    settings = RunSettings(
        algo="dqn",
        env="study/Chain-v0",
        env_kwargs={"n": 30},
        total_steps=100_000,
        max_episodes=7,
        net_arch=[8],
        eval=EvalSettings(freq="episode", episodes=1, stop_when_solved=True),
        hyperparams={"learning_starts": 50, "batch_size": 8},
    )
    result = execute(RunSpec(study="chain", budget="full", seed=0, settings=settings))
    assert result.status == "done", result.error
    assert result.meta["episodes"] == 7 and result.meta["steps"] == 7 * 39
    assert len(result.evaluations) == 7 and result.evaluations["optimal"].dtype == "boolean"
    assert not result.evaluations["optimal"].any()  # 7 episodes cannot solve N = 30
    assert result.episodes["switch_rate"].between(0, 1).all()

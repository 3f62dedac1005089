"""The chain MDP: dynamics, encoding, optimal return, and runs that stop once solved."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch as th

from study.config import EvalSettings, RunSettings, RunSpec
from study.dqn import DQN
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


def test_a_hand_coded_always_right_policy_solves_it_and_training_stops() -> None:
    n, window = 6, 4
    model = DQN(ParamNoiseDQNPolicy, gym.make("study/Chain-v0", n=n), learning_starts=10_000, seed=0)
    model.policy._predict = lambda obs, deterministic=True: th.full((obs.shape[0],), RIGHT)
    settings = EvalSettings(freq="episode", episodes=1, stop_when_solved=True, solved_window=window)
    evaluator = Evaluator(gym.make("study/Chain-v0", n=n), settings)
    model.learn(100 * (n + 9), callback=evaluator)
    assert len(evaluator.rows) == window  # one evaluation after every training episode
    assert all(row["optimal"] for row in evaluator.rows)
    assert model.num_timesteps == window * (n + 9)


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

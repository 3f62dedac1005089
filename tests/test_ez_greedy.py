"""εz-greedy: the zeta law of its durations, its repeats, episode ends, seeds, settings."""

from __future__ import annotations

import math
import re

import numpy as np
import pandas as pd
import pytest
from stable_baselines3.common.callbacks import CallbackList

from study.config import RunSettings, RunSpec, StudyError, load_study
from study.exploration.ez_greedy import EzGreedy
from study.run import build_run, run_result


def test_the_durations_follow_the_zeta_law() -> None:
    ez = EzGreedy(mu=2.0, max_duration=10_000, n_actions=4, rng=np.random.default_rng(0))
    for _ in range(200_000):
        ez.act(greedy=0, epsilon=1.0)
    drawn = sum(ez.durations.values())
    zeta_2 = math.pi**2 / 6
    for n in range(1, 5):  # P(n) = n^-2 / ζ(2): 0.608, 0.152, 0.068, 0.038
        assert ez.durations[n] / drawn == pytest.approx(n**-2 / zeta_2, abs=0.01)
    assert max(ez.durations) > 100  # the heavy tail


def test_a_random_action_repeats_for_its_duration_then_the_greedy_one_returns() -> None:
    ez = EzGreedy(mu=2.0, max_duration=3, n_actions=5, rng=np.random.default_rng(1))
    replay = np.random.default_rng(1)  # the same draws, by hand
    expected = []
    while len(expected) < 60:
        if replay.random() < 0.3:
            duration, action = min(int(replay.zipf(2.0)), 3), int(replay.integers(5))
            expected += [action] * duration
        else:
            expected.append(9)  # greedy
    got = [ez.act(greedy=9, epsilon=0.3) for _ in range(len(expected))]
    assert got == expected and max(ez.durations) == 3  # capped at max_duration
    assert [EzGreedy(2.0, 10, 5, np.random.default_rng(2)).act(7, 0.0) for _ in range(20)] == [7] * 20


def test_a_random_action_ends_with_its_episode() -> None:
    ez = EzGreedy(mu=1.01, max_duration=10_000, n_actions=3, rng=np.random.default_rng(0))
    ez.act(greedy=-1, epsilon=1.0)
    assert ez.remaining > 0 or ez.durations == {1: 1}
    ez.end_episode()
    assert ez.act(greedy=-1, epsilon=0.0) == -1


def chain_run(seed: int) -> RunSpec:
    settings = RunSettings(
        algo="dqn",
        env="study/Chain-v0",
        env_kwargs={"n": 8},
        total_steps=800,
        net_arch=[16, 16],
        eval={"freq": "episode", "episodes": 1},
        hyperparams={"learning_starts": 100, "batch_size": 16, "exploration_fraction": 0.5},
        exploration={"ez_greedy": {"mu": 2.0}},
    )
    return RunSpec(study="t", budget="full", seed=seed, settings=settings)


def test_same_seed_same_run_and_the_schedule_sets_epsilon() -> None:
    results, models = [], []
    for seed in (0, 0, 1):
        parts = build_run(chain_run(seed))
        parts.model.learn(800, callback=CallbackList(parts.callbacks))
        results.append(run_result(chain_run(seed), parts, None, pd.Timestamp.now(tz="UTC"), 1.0, None, 1))
        models.append(parts.model)
    pd.testing.assert_frame_equal(results[0].episodes, results[1].episodes, check_exact=True)
    assert models[0].ez_greedy.durations == models[1].ez_greedy.durations != models[2].ez_greedy.durations
    assert models[0].exploration_rate == pytest.approx(models[0].exploration_final_eps)  # SB3's schedule ran out


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"exploration.param_noise": None, "exploration.ez_greedy": {}}, "exploration.ez_greedy: td3 has continuous"),
        (
            {"algo": "dqn", "envs": ["CartPole-v1"], "exploration.ez_greedy": {}, "exploration.param_noise": {}},
            "param_noise and ez_greedy: choose one",
        ),
        ({"algo": "dqn", "envs": ["CartPole-v1"], "exploration.ez_greedy": {"mu": 1.0}}, "exploration.ez_greedy.mu"),
    ],
)
def test_ez_greedy_settings_that_cannot_work_are_refused(write_study, overrides: dict, message: str) -> None:
    path = write_study(overrides)
    with pytest.raises(StudyError, match=re.escape(message)) as err:
        load_study(path)
    assert str(path) in str(err.value)

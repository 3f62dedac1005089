"""Colored action noise: its spectrum, its agreement with the pink-noise-rl package, its episodes and seeds."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
import pytest
import torch as th
from pink.cnrl import ColoredNoiseProcess as PackageProcess
from stable_baselines3.common.callbacks import CallbackList

from study.config import RunSettings, RunSpec, StudyError, load_study
from study.exploration.colored import ColoredActionNoise, ColoredNoiseProcess, powerlaw_psd_gaussian
from study.run import build_run, run_result


@pytest.mark.parametrize("beta", [0.0, 1.0, 2.0])
def test_the_spectrum_falls_as_one_over_f_to_the_beta(beta: float) -> None:
    signals = powerlaw_psd_gaussian(beta, (400, 1024), np.random.default_rng(0))
    power = (np.abs(np.fft.rfft(signals, axis=-1)) ** 2).mean(axis=0)
    frequencies = np.fft.rfftfreq(1024)
    slope = np.polyfit(np.log(frequencies[1:-1]), np.log(power[1:-1]), 1)[0]
    assert slope == pytest.approx(-beta, abs=0.15)
    # unit variance about each sequence's mean (the normalization leaves the constant term out)
    assert (signals - signals.mean(axis=-1, keepdims=True)).std() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize(("beta", "seq_len"), [(0.0, 50), (0.5, 51), (1.0, 200), (2.0, 37)])
def test_the_sequences_are_the_pink_noise_rl_packages(beta: float, seq_len: int) -> None:
    ours = ColoredNoiseProcess(beta, 3, seq_len, np.random.default_rng(7))
    theirs = PackageProcess(beta, (3, seq_len), rng=np.random.default_rng(7))
    for _ in range(2 * seq_len + 5):  # across the refill of the sequence
        np.testing.assert_array_equal(ours.sample(), theirs.sample())


def test_a_new_sequence_starts_at_every_episode_and_a_seed_gives_one_stream() -> None:
    noise, again = (ColoredActionNoise(1.0, 0.3, 2, 100, seed=5) for _ in range(2))
    first = np.stack([noise() for _ in range(10)])
    np.testing.assert_array_equal(first, np.stack([again() for _ in range(10)]))
    noise.reset()  # SB3 resets the action noise at each episode end
    second = np.stack([noise() for _ in range(10)])
    assert not np.allclose(first, second)
    assert first.dtype == np.float32 and np.abs(first).max() < 0.3 * 5


def spec(algo: str, exploration: dict, seed: int = 0) -> RunSpec:
    settings = RunSettings(
        algo=algo,
        env="Pendulum-v1",
        env_kwargs={"max_episode_steps": 60},
        total_steps=300,
        net_arch=[16, 16],
        eval={"freq": 150, "episodes": 1},
        hyperparams={"learning_starts": 100, "batch_size": 16},
        exploration=exploration,
    )
    return RunSpec(study="t", budget="full", seed=seed, settings=settings)


def train(run: RunSpec) -> tuple[object, object]:
    parts = build_run(run)
    parts.model.learn(run.settings.total_steps, callback=CallbackList(parts.callbacks))
    return run_result(run, parts, None, pd.Timestamp.now(tz="UTC"), 1.0, None, 1), parts


@pytest.mark.parametrize(
    "exploration",
    [{"action_noise": {"type": "colored", "beta": 1.0, "sigma": 0.3}}, {"sampling_noise": {"beta": 2.0}}],
    ids=["td3 colored action noise", "sac colored sampling"],
)
def test_same_seed_same_run(exploration: dict) -> None:
    algo = "sac" if "sampling_noise" in exploration else "td3"
    (a, _), (b, _), (c, _) = (train(spec(algo, exploration, seed)) for seed in (0, 0, 1))
    for name, table in a.tables().items():
        pd.testing.assert_frame_equal(table, b.tables()[name], check_exact=True)
    assert not a.episodes["return"].equals(c.episodes["return"])


def test_sac_explores_with_its_own_scale_and_the_colored_sequence() -> None:
    parts = build_run(spec("sac", {"sampling_noise": {"beta": 1.0}}))
    model = parts.model
    model._setup_learn(10, CallbackList(parts.callbacks))  # attaches the sequence to the policy
    process = model.policy.colored_noise
    assert process is parts.callbacks[0].process and process.seq_len == 60  # the env's episode limit
    expected_noise = process.buffer[:, :3].T.copy()
    obs = th.as_tensor(np.zeros((1, 3), dtype=np.float32))
    with th.no_grad():
        mean, log_std, _ = model.actor.get_action_dist_params(obs)
        for step in range(3):
            action = model.policy._predict(obs, deterministic=False)
            expected = th.tanh(mean + log_std.exp() * th.as_tensor(expected_noise[step], dtype=th.float32))
            th.testing.assert_close(action, expected)
        assert th.equal(model.policy._predict(obs, deterministic=True), th.tanh(mean))  # evaluation: the mean


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (
            {"algo": "td3", "exploration.param_noise": None, "exploration.sampling_noise": {"beta": 1}},
            "exploration.sampling_noise: td3 does not sample its policy",
        ),
        (
            {"algo": "sac", "exploration.sampling_noise": {"beta": 1}, "exploration.param_noise": {}},
            "param_noise and sampling_noise: choose one",
        ),
        ({"exploration.action_noise": {"type": "colored", "beta": -1}}, "exploration.action_noise.beta"),
        ({"exploration.action_noise": {"type": "colored", "seq_len": 1}}, "exploration.action_noise.seq_len"),
    ],
)
def test_colored_settings_that_cannot_work_are_refused(write_study, overrides: dict, message: str) -> None:
    path = write_study(overrides)
    with pytest.raises(StudyError, match=re.escape(message)) as err:
        load_study(path)
    assert str(path) in str(err.value)

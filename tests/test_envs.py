"""Environment creation: MinAtar registration and seeding, the Atari wrapper's requirements."""

from __future__ import annotations

import importlib.util

import gymnasium as gym
import numpy as np
import pytest

from study.envs import make_env


def test_minatar_games_are_registered_with_minimal_action_sets() -> None:
    env = gym.make("MinAtar/Breakout-v1")
    assert env.action_space.n == 3 and env.observation_space.shape == (10, 10, 4)
    first, _ = env.reset(seed=2**40 + 5)  # gymnasium-sized seeds work
    again, _ = env.reset(seed=2**40 + 5)
    assert np.array_equal(first, again)


@pytest.mark.skipif(importlib.util.find_spec("cv2") is not None, reason="OpenCV is installed")
def test_atari_wrapper_says_how_to_install_opencv() -> None:
    pytest.importorskip("ale_py")
    with pytest.raises(ImportError, match=r"pip install -e '\.\[atari\]'"):
        make_env("ale_py:ALE/Breakout-v5", {"frameskip": 1}, "atari")


def test_dqn_learns_on_minatar_with_its_cnn() -> None:
    from study.config import RunSettings, RunSpec
    from study.features import MinAtarCNN
    from study.run import execute

    settings = RunSettings(
        algo="dqn",
        env="MinAtar/Breakout-v1",
        total_steps=300,
        features_extractor="minatar_cnn",
        net_arch=[],
        eval={"freq": 300, "episodes": 1},
        hyperparams={"learning_starts": 100, "batch_size": 8, "buffer_size": 500},
        exploration={"param_noise": {}},
    )
    result = execute(RunSpec(study="minatar", budget="full", seed=0, settings=settings))
    assert result.status == "done", result.error
    assert result.adaptations["step"].tolist() == [100, 200, 300]  # σ adapted once the buffer held a batch
    extractor = MinAtarCNN(gym.make("MinAtar/Breakout-v1").observation_space)
    assert extractor.linear[0].in_features == 16 * 8 * 8

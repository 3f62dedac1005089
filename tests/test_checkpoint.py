"""Checkpoint and resume of one run: the resumed run records what the uninterrupted one does,
and ends with the same parameters, optimizer states and counters."""

from __future__ import annotations

from typing import Any

import numpy as np
import pandas as pd
import pytest
import torch as th
from stable_baselines3.common.buffers import ReplayBuffer

from study import algos
from study.buffers import TRANSITIONS
from study.checkpoint import CHECKPOINT, EXACT_RESUME_ALGOS, algorithm_state, read_checkpoint, write_checkpoint
from study.config import load_study
from study.recording import EpisodeRecorder
from study.run import execute
from study.store import PARTIAL, RunCheck, check_run, checkpoint_dir


class Interrupted(Exception):
    pass


CHAIN_DQN = {"envs": ["study/Chain-v0"], "algo": "dqn", "exploration.param_noise": None}
EPSILON_GREEDY = {
    # ε moves from 1 to 0.05 over the first 400 steps, across the checkpoint at 300, and the
    # target network is updated every 70 steps: 300 is not a multiple of 70
    "hyperparams.exploration_fraction": 0.8,
    "hyperparams.exploration_final_eps": 0.05,
    "hyperparams.target_update_interval": 70,
}
SHORT_PENDULUM = {"env_kwargs": {"max_episode_steps": 50}}  # episodic training resumes at an episode start

ON_POLICY = {  # rollouts of 50 steps: the checkpoint at 300 is a rollout start
    "hyperparams": None,
    "hyperparams.n_steps": 50,
    "hyperparams.batch_size": 25,
    "exploration.param_noise": None,
    "exploration.param_noise.interval": "episode",
}

CASES = {
    "td3-param-noise": ("td3", {"exploration.param_noise.interval": 7}),
    "td3-ou": ("td3", {"exploration.param_noise": None, "exploration.action_noise": {"type": "ou"}}),
    "td3-colored-noise": (
        "td3",
        SHORT_PENDULUM | {"exploration.param_noise": None, "exploration.action_noise": {"type": "colored", "beta": 1}},
    ),
    "sac-colored-sampling": (
        "sac",
        SHORT_PENDULUM | {"exploration.param_noise": None, "exploration.sampling_noise": {"beta": 2}},
    ),
    "td3-halfcheetah-follow-learner": (
        "td3",
        {"envs": ["HalfCheetah-v5"], "exploration.param_noise.follow_learner": True},
    ),
    "ddpg-param-noise": ("ddpg", {"exploration.param_noise.interval": 3}),
    "sac-auto-entropy": (
        "sac",
        {"exploration.param_noise": None, "hyperparams.ent_coef": "auto", "hyperparams.learning_starts": 50},
    ),
    "sac-param-noise": ("sac", {"exploration.param_noise.interval": 7, "hyperparams.ent_coef": "auto"}),
    "sac-gsde": (
        "sac",
        SHORT_PENDULUM
        | {
            "exploration.param_noise": None,
            "exploration.gsde": {"interval": 8},
            "hyperparams.train_freq": "episode",
            "hyperparams.ent_coef": "auto",
        },
    ),
    "sac-gsde-trained-every-step": (  # the held exploration matrices carry over
        "sac",
        {"exploration.param_noise": None, "exploration.gsde": {"interval": 6}, "hyperparams.train_freq": 1},
    ),
    "dqn-ez-greedy": ("dqn", CHAIN_DQN | EPSILON_GREEDY | {"exploration.ez_greedy": {"mu": 1.5}}),
    "dqn-epsilon-greedy-prioritized": ("dqn", CHAIN_DQN | EPSILON_GREEDY | {"replay": {"type": "proportional"}}),
    "dqn-param-noise-prioritized": (
        "dqn",
        CHAIN_DQN | {"exploration.param_noise": {"interval": 7, "adapt_every": 50}, "replay": {"type": "proportional"}},
    ),
    "dqn-noisy-net-rank": (
        "dqn",
        CHAIN_DQN
        | {
            "exploration.noisy_net": {"resample": 3, "log_every": 50},
            "replay": {"type": "rank", "sort_every": 7},
            "max_episodes": 25,  # 475 steps: the limit must count the episodes before the crash
            "eval": {"freq": "episode", "episodes": 1},
        },
    ),
    "qrdqn-epsilon-greedy": ("qrdqn", CHAIN_DQN | {"algo": "qrdqn"} | EPSILON_GREEDY),
    # VecNormalize's statistics and running return carry over (rewards scaled, observations normalized)
    "td3-normalize": ("td3", {"normalize": True, "exploration.param_noise.interval": 7}),
    "sac-normalize-obs": ("sac", {"normalize": {"norm_reward": False}, "exploration.param_noise": None}),
    # on-policy: the segments of the acting ε and the noise's stream carry over; σ adapted per rollout
    "ppo-param-noise": ("ppo", ON_POLICY | {"hyperparams.n_epochs": 2, "exploration.param_noise.interval": 7}),
    "trpo-param-noise-layer-norm": ("trpo", ON_POLICY | {"layer_norm": True}),
    # as the on-policy reference runs: VecNormalize, σ adapted on the KL from σ₀ = 0.05 by ×1.05
    "ppo-normalize-param-noise": (
        "ppo",
        ON_POLICY
        | {
            "normalize": True,
            "policy_kwargs": {"log_std_init": -2.0, "ortho_init": False},
            "exploration.param_noise.initial_sigma": 0.05,
            "exploration.param_noise.alpha": 1.05,
        },
    ),
    "qrdqn-param-noise": ("qrdqn", CHAIN_DQN | {"algo": "qrdqn", "exploration.param_noise": {"interval": 5}}),
}


def test_every_algorithm_with_exact_resume_is_tested() -> None:
    assert {algo for algo, _ in CASES.values()} == EXACT_RESUME_ALGOS


def _final_state(model: Any) -> dict[str, Any]:
    state = algorithm_state(model)
    return (
        {"parameters": state["parameters"], "variables": state["variables"]}
        | {
            name: state["attributes"][name]
            for name in ("num_timesteps", "_n_updates", "_n_calls", "exploration_rate", "_episode_num")
            if name in state["attributes"]
        }
        | _normalize_state(model)
    )


def _normalize_state(model: Any) -> dict[str, Any]:
    normalize = model.get_vec_normalize_env()
    if normalize is None:
        return {}
    stats = {name: getattr(normalize, name) for name in ("obs_rms", "ret_rms")}
    return {"normalize": {name: vars(rms) for name, rms in stats.items()} | {"returns": normalize.returns}}


def _assert_same(actual: Any, expected: Any, where: str) -> None:
    if isinstance(expected, dict):
        assert actual.keys() == expected.keys(), where
        for key in expected:
            _assert_same(actual[key], expected[key], f"{where}.{key}")
    elif isinstance(expected, list | tuple):
        assert len(actual) == len(expected), where
        for i, (a, e) in enumerate(zip(actual, expected, strict=True)):
            _assert_same(a, e, f"{where}[{i}]")
    elif isinstance(expected, th.Tensor):
        assert th.equal(actual, expected), where
    elif isinstance(expected, np.ndarray):
        np.testing.assert_array_equal(actual, expected, err_msg=where)
    else:
        assert actual == expected, where


@pytest.mark.parametrize("case", list(CASES))
def test_resume_from_checkpoint_equals_uninterrupted_run(write_study, tmp_path, monkeypatch, case) -> None:
    algo, overrides = CASES[case]
    path = write_study(
        {"algo": algo, "total_steps": 500, "budgets.full": 500, "eval.freq": 125, "checkpoint_every": 100} | overrides
    )
    spec = load_study(path).runs[0]
    models: list[Any] = []
    build = algos.build

    def keep_model(*args: Any, **kwargs: Any) -> Any:
        model, callbacks = build(*args, **kwargs)
        models.append(model)
        return model, callbacks

    monkeypatch.setattr(algos, "build", keep_model)
    reference = execute(spec)
    assert reference.status == "done", reference.error
    expected = _final_state(models[-1])

    folder = checkpoint_dir(tmp_path / "results", spec)
    _crash_at_step_330(spec, folder, monkeypatch)
    assert check_run(tmp_path / "results", spec) == RunCheck(PARTIAL, steps=300)  # what `study status` shows
    _resume(spec, folder, reference)
    _assert_same(_final_state(models[-1]), expected, case)
    assert not folder.exists()  # removed once the run completed


def _crash_at_step_330(spec: Any, folder: Any, monkeypatch: pytest.MonkeyPatch) -> None:
    """Run `spec` with checkpoints every 100 steps into `folder` until it crashes at step 330."""
    original = EpisodeRecorder._on_step

    def crash_at_step_330(self) -> bool:
        if self.num_timesteps == 330:
            raise Interrupted
        return original(self)

    with monkeypatch.context() as crashing:
        crashing.setattr(EpisodeRecorder, "_on_step", crash_at_step_330)
        crashed = execute(spec, checkpoint_dir=folder)
    assert crashed.status == "failed" and "Interrupted" in crashed.error
    assert (folder / CHECKPOINT).is_file()


def _resume(spec: Any, folder: Any, reference: Any) -> None:
    """Resume `spec` from its checkpoint at step 300 and check it records what `reference` does."""
    resumed = execute(spec, checkpoint_dir=folder)
    assert resumed.status == "done", resumed.error
    assert resumed.meta["resumed_at"] == 300
    for name, frame in reference.tables().items():
        pd.testing.assert_frame_equal(resumed.tables()[name], frame, check_exact=True, obj=name)


def test_a_checkpoint_holds_the_filled_rows_of_the_buffer_and_one_with_the_whole_buffer_resumes_alike(
    write_study, tmp_path, monkeypatch
) -> None:
    path = write_study(
        {"total_steps": 500, "budgets.full": 500, "eval.freq": 125, "checkpoint_every": 100}
        | {"hyperparams.buffer_size": 100_000}
    )
    spec = load_study(path).runs[0]
    reference = execute(spec)
    folder = tmp_path / "checkpoints"
    _crash_at_step_330(spec, folder, monkeypatch)
    state = read_checkpoint(folder / CHECKPOINT)
    saved = state["replay_buffer"]
    assert (saved["buffer_size"], saved["pos"], saved["full"]) == (100_000, 300, False)
    assert {saved[name].shape[0] for name in TRANSITIONS} == {300}
    # Pendulum's 100,000 transitions of float32 (3 + 3 + 1 + 1 + 1 + 1) take 4 MB; its 300, 12 kB
    assert (folder / CHECKPOINT).stat().st_size < 1_000_000

    whole = ReplayBuffer.__new__(ReplayBuffer)  # as checkpoints held it before: the buffer itself
    for name, value in saved.items():
        if name in TRANSITIONS:
            value = np.concatenate([value, np.zeros((100_000 - 300, *value.shape[1:]), value.dtype)])
        setattr(whole, name, value)
    write_checkpoint(folder / CHECKPOINT, state | {"replay_buffer": whole})
    _resume(spec, folder, reference)


def test_a_checkpoint_of_an_earlier_format_starts_the_run_over(write_study, tmp_path) -> None:
    import pickle

    spec = load_study(write_study({"checkpoint_every": 100})).runs[0]
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    (folder / CHECKPOINT).write_bytes(pickle.dumps({"parameters": {}, "algo": {}}))  # no version
    result = execute(spec, checkpoint_dir=folder)
    assert result.status == "done", result.error
    assert result.meta["resumed_at"] is None

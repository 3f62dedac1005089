"""Checkpoint and resume of one run: the resumed run records what the uninterrupted one does."""

from __future__ import annotations

import pandas as pd
import pytest

from study.checkpoint import CHECKPOINT
from study.config import load_study
from study.recording import EpisodeRecorder
from study.run import execute


class Interrupted(Exception):
    pass


@pytest.mark.parametrize(
    ("env", "overrides"),
    [
        ("Pendulum-v1", {"exploration.param_noise.interval": 7}),
        ("Pendulum-v1", {"exploration.param_noise": None, "exploration.action_noise": {"type": "ou"}}),
        ("HalfCheetah-v5", {"exploration.param_noise.follow_learner": True}),
        ("study/Chain-v0", {"algo": "dqn", "exploration.param_noise.interval": 7, "replay": {"type": "proportional"}}),
        (
            "study/Chain-v0",
            {
                "algo": "dqn",
                "exploration.param_noise": None,
                "exploration.noisy_net": {"resample": 3, "log_every": 50},
                "replay": {"type": "rank", "sort_every": 7},
                "max_episodes": 25,  # 475 steps: the limit must count the episodes before the crash
                "eval": {"freq": "episode", "episodes": 1},
            },
        ),
    ],
)
def test_resume_from_checkpoint_equals_uninterrupted_run(write_study, tmp_path, monkeypatch, env, overrides) -> None:
    path = write_study(
        {"envs": [env], "total_steps": 500, "budgets.full": 500, "eval.freq": 125, "checkpoint_every": 100} | overrides
    )
    spec = load_study(path).runs[0]
    reference = execute(spec)
    assert reference.status == "done", reference.error

    original = EpisodeRecorder._on_step

    def crash_at_step_330(self) -> bool:
        if self.num_timesteps == 330:
            raise Interrupted
        return original(self)

    folder = tmp_path / "checkpoints" / spec.run_id
    monkeypatch.setattr(EpisodeRecorder, "_on_step", crash_at_step_330)
    crashed = execute(spec, checkpoint_dir=folder)
    assert crashed.status == "failed" and "Interrupted" in crashed.error
    assert (folder / CHECKPOINT).is_file()
    monkeypatch.undo()

    resumed = execute(spec, checkpoint_dir=folder)
    assert resumed.status == "done", resumed.error
    assert resumed.meta["resumed_at"] == 300
    for name, frame in reference.tables().items():
        pd.testing.assert_frame_equal(resumed.tables()[name], frame, check_exact=True, obj=name)
    assert not folder.exists()  # removed once the run completed

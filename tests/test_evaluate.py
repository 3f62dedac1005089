"""Saved models: each run keeps its final model, and `study evaluate` evaluates it again."""

from __future__ import annotations

import ctypes.util
import json

import numpy as np
import pytest
import torch as th
from stable_baselines3 import TD3

from study.__main__ import main
from study.config import StudyError, load_study
from study.envs import make_env
from study.evaluate import evaluate_model, load_model
from study.exploration.param_noise import derived_seed
from study.policies import ParamNoiseTD3Policy
from study.run import build_run, execute
from study.stacked.group import run_group
from study.store import MODEL, write_run


@pytest.fixture
def saved(write_study, tmp_path):
    """A tiny study with one complete run written to tmp_path/results: (study path, spec, result)."""
    path = write_study()
    spec = load_study(path).runs[0]
    result = execute(spec)
    write_run(result, tmp_path / "results")
    return path, spec, result


def test_a_run_keeps_its_final_model_which_sb3_loads(saved, tmp_path) -> None:
    _, spec, result = saved
    folder = tmp_path / "results" / spec.study / spec.run_id
    meta = json.loads((folder / "meta.json").read_text())
    assert MODEL in meta["manifest"] and meta["manifest"][MODEL]["size"] == len(result.model)
    model = TD3.load(folder / MODEL, device="cpu")
    assert isinstance(model.policy, ParamNoiseTD3Policy) and model.num_timesteps == 300
    obs = np.random.RandomState(0).uniform(-1, 1, (5, 3)).astype(np.float32)
    again = load_model(tmp_path / "results", spec)
    np.testing.assert_array_equal(model.predict(obs, deterministic=True)[0], again.predict(obs, deterministic=True)[0])


def test_without_save_model_nothing_is_kept_and_the_run_is_the_same_run(write_study, tmp_path) -> None:
    keep, skip = (load_study(write_study({"save_model": flag}, name=f"{flag}.yaml")).runs[0] for flag in (True, False))
    assert keep.run_id == skip.run_id  # keeping the model changes no result
    result = execute(skip)
    assert result.model is None
    assert not (write_run(result, tmp_path / "results") / MODEL).exists()
    with pytest.raises(StudyError, match="no saved model at"):
        load_model(tmp_path / "results", skip)


def test_a_stacked_member_saves_its_own_model_only(write_study) -> None:
    specs = load_study(write_study({"seeds": 4, "net_arch": [64, 64]}), engine="stacked").runs
    alone = execute(load_study(write_study({"net_arch": [64, 64]}, name="one.yaml")).runs[0])
    results = run_group(specs)
    sizes = [len(result.model) for result in results]
    assert max(sizes) < 1.2 * len(alone.model)  # not the group's stacked tensors


def test_evaluation_runs_the_deterministic_policy_from_the_runs_seed(saved, tmp_path) -> None:
    _, spec, _ = saved
    model = load_model(tmp_path / "results", spec)
    got = evaluate_model(spec, model, episodes=2)
    assert got.lengths == [200, 200] and evaluate_model(spec, model, episodes=2) == got
    env = make_env(spec.env, spec.settings.env_kwargs, evaluation=True, task_seed=spec.seed)
    obs, _ = env.reset(seed=derived_seed(spec.seed, "evaluate"))
    total, done = 0.0, False
    while not done:  # the first episode by hand
        obs, reward, terminated, truncated, _ = env.step(model.predict(obs, deterministic=True)[0])
        total, done = total + float(reward), terminated or truncated
    assert got.returns[0] == pytest.approx(total, abs=0)
    th.manual_seed(0)
    explored = evaluate_model(spec, load_model(tmp_path / "results", spec), episodes=2, explore=True)
    assert explored.returns != got.returns  # the perturbed actor acts


def test_evaluate_prints_the_returns_and_costs(saved, tmp_path, capsys) -> None:
    path, spec, _ = saved
    argv = ["evaluate", str(path), "--results", str(tmp_path / "results"), "--run", spec.spec_hash]
    assert main([*argv, "--episodes", "2"]) == 0
    out = capsys.readouterr().out
    assert f"{spec.run_id}: 2 episodes, deterministic policy" in out
    assert "return " in out and "continuity cost" in out and "jerk cost" in out


@pytest.mark.parametrize(
    ("more", "message"),
    [
        (["--run", "nosuchrun"], "--run nosuchrun: no run of tiny"),
        (["--episodes", "0"], "--episodes: must be at least 1"),
        (["--set", "seeds=2", "--run", "SEED1"], "the run is pending, not complete"),  # it never ran
    ],
)
def test_bad_evaluations_exit_2_with_one_message(saved, tmp_path, capsys, more, message) -> None:
    path, spec, _ = saved
    seed_1 = load_study(path, sets={"seeds": 2}).runs[1].run_id
    more = [seed_1 if arg == "SEED1" else arg for arg in more]
    run = [] if "--run" in more else ["--run", spec.run_id]
    assert main(["evaluate", str(path), "--results", str(tmp_path / "results"), *run, *more]) == 2
    assert message in capsys.readouterr().err


def test_a_model_that_cannot_be_saved_leaves_the_run_complete(write_study, monkeypatch) -> None:
    def refuse(self, path, **kwargs):
        raise TypeError("cannot pickle this")

    monkeypatch.setattr(TD3, "save", refuse)
    result = execute(load_study(write_study()).runs[0])
    assert result.status == "done" and result.model is None
    assert "cannot pickle this" in result.meta["model_error"]


def test_saving_a_members_model_leaves_it_a_view_of_the_group(write_study) -> None:
    from study.run import model_zip
    from study.stacked.group import Group, Member

    specs = load_study(write_study({"seeds": 2}), engine="stacked").runs
    group = Group([Member(spec, build_run(spec)) for spec in specs])
    member = group.members[1].model
    model_zip(member)
    with th.no_grad():
        group.learner.actor[0].weight.add_(1.0)  # the stacked update writes here
    assert th.equal(member.actor.mu[0].weight, group.learner.actor[0].weight[1])


def test_a_changed_model_file_is_refused(saved, tmp_path, capsys) -> None:
    path, spec, _ = saved
    model = tmp_path / "results" / spec.study / spec.run_id / MODEL
    data = bytearray(model.read_bytes())
    data[-10] ^= 0xFF  # same size, other bytes
    model.write_bytes(bytes(data))
    assert main(["evaluate", str(path), "--results", str(tmp_path / "results"), "--run", spec.run_id]) == 2
    assert "does not match its checksum" in capsys.readouterr().err


@pytest.mark.skipif(
    ctypes.util.find_library("EGL") is None, reason="no EGL library on this machine: MuJoCo cannot render headless"
)
def test_video_records_the_evaluated_episodes_headless(write_study, tmp_path, capsys) -> None:
    import imageio.v2 as imageio

    path = write_study({"envs": ["HalfCheetah-v5"], "env_kwargs": {"max_episode_steps": 20}})
    spec = load_study(path).runs[0]
    write_run(execute(spec), tmp_path / "results")
    video = tmp_path / "videos" / "cheetah.mp4"
    argv = ["evaluate", str(path), "--results", str(tmp_path / "results"), "--run", spec.spec_hash]
    assert main([*argv, "--episodes", "2", "--video", str(video)]) == 0
    reader = imageio.get_reader(video)
    frames = [frame for frame in reader]
    assert len(frames) == 2 * (20 + 1)  # each step's state, and each episode's last
    assert frames[0].shape == (480, 480, 3) and frames[0].std() > 0  # a picture, not a blank
    assert reader.get_meta_data()["fps"] == pytest.approx(20)  # HalfCheetah's render_fps
    assert [p.name for p in video.parent.iterdir()] == ["cheetah.mp4"]  # written whole, nothing left over
    capsys.readouterr()


def test_video_of_an_env_that_cannot_render_exits_2(write_study, tmp_path, capsys) -> None:
    chain = {"envs": ["study/Chain-v0"], "algo": "dqn", "exploration.param_noise": None}
    path = write_study(chain)
    spec = load_study(path).runs[0]
    write_run(execute(spec), tmp_path / "results")
    video = tmp_path / "chain.mp4"
    argv = ["evaluate", str(path), "--results", str(tmp_path / "results"), "--run", spec.spec_hash]
    assert main([*argv, "--video", str(video)]) == 2
    assert "--video: study/Chain-v0 cannot render frames" in capsys.readouterr().err
    assert not video.exists()

"""Settings an rl-baselines3-zoo user brings: schedules, any constructor argument, policy_kwargs."""

from __future__ import annotations

import io
import pickle

import numpy as np
import pytest
from stable_baselines3 import TD3
from stable_baselines3.common.callbacks import CallbackList
from stable_baselines3.common.vec_env import VecNormalize

from study.__main__ import main
from study.config import StudyError, load_study
from study.evaluate import evaluate_model, load_model, load_normalize
from study.policies import ParamNoiseTD3Policy
from study.run import build_run, execute, model_zip
from study.schedules import LinearSchedule, schedule
from study.stacked.group import run_group
from study.store import NORMALIZE, write_run

ZOO = {
    "net_arch": {"pi": [8], "qf": [16, 16]},
    "hyperparams.learning_rate": "lin_1e-3",
    "hyperparams.stats_window_size": 7,
    "policy_kwargs": {"n_critics": 1},
}


def test_a_linear_schedule_falls_from_its_initial_rate_to_zero() -> None:
    rate = schedule("lin_7.3e-4")
    assert rate == LinearSchedule(7.3e-4)
    assert [rate(progress) for progress in (1.0, 0.5, 0.0)] == [7.3e-4, 3.65e-4, 0.0]
    assert schedule(3e-4) == 3e-4
    with pytest.raises(ValueError, match="not a schedule"):
        schedule("exp_1e-3")


def test_zoo_settings_reach_the_model(write_study) -> None:
    spec = load_study(write_study(ZOO)).runs[0]
    parts = build_run(spec)
    model = parts.model
    assert model.learning_rate == LinearSchedule(1e-3) and model.lr_schedule(0.25) == pytest.approx(2.5e-4)
    assert model._stats_window_size == 7
    assert len(model.critic.q_networks) == 1
    linear = [layer.out_features for layer in model.actor.mu if hasattr(layer, "out_features")]
    assert linear == [8, 1]  # pi: one hidden layer of 8, then Pendulum's one action
    critic = [layer.out_features for layer in model.critic.q_networks[0] if hasattr(layer, "out_features")]
    assert critic == [16, 16, 1]
    parts.close()
    # the saved model carries its schedule and layers, and SB3 loads it
    loaded = TD3.load(io.BytesIO(model_zip(model)), custom_objects={"policy_class": ParamNoiseTD3Policy})
    assert loaded.lr_schedule(0.5) == pytest.approx(5e-4) and len(loaded.critic.q_networks) == 1


def test_the_stacked_engine_trains_zoo_settings_like_sb3(write_study) -> None:
    study = load_study(write_study(ZOO | {"seeds": 2}), engine="stacked")
    stacked = run_group(study.runs)
    sb3 = [
        execute(spec.model_copy(update={"settings": spec.settings.model_copy(update={"engine": "sb3"})}))
        for spec in study.runs
    ]
    for one, other in zip(stacked, sb3, strict=True):
        assert one.status == other.status == "done"
        assert one.evaluations["return_mean"].to_numpy() == pytest.approx(
            other.evaluations["return_mean"].to_numpy(), rel=1e-5
        )


def test_a_rate_yaml_reads_as_a_string_is_a_number_and_one_schedule_has_one_id(write_study) -> None:
    path = write_study()
    path.write_text(path.read_text().replace("hyperparams:", "hyperparams:\n  learning_rate: 3e-4", 1))
    assert load_study(path).runs[0].settings.hyperparams.learning_rate == 3e-4  # YAML: the string "3e-4"
    one, other = (load_study(write_study({"hyperparams.learning_rate": rate})) for rate in ("lin_1e-3", "lin_0.001"))
    assert one.runs[0].run_id == other.runs[0].run_id
    assert one.runs[0].settings.hyperparams.learning_rate == "lin_0.001"


def test_the_run_identity_changes_only_with_what_is_set(write_study) -> None:
    plain = load_study(write_study()).runs[0]
    default = load_study(write_study({"policy_kwargs": {}})).runs[0]
    assert plain.run_id == default.run_id  # no key: same run as before policy_kwargs existed
    assert load_study(write_study({"policy_kwargs": {"n_critics": 1}})).runs[0].run_id != plain.run_id


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hyperparams.learning_rate": "lin_fast"}, "hyperparams.learning_rate"),
        ({"hyperparams.learning_rate": "lin_0"}, "the initial rate must be positive and finite"),
        ({"hyperparams.learning_rate": "lin_1e400"}, "the initial rate must be positive and finite"),
        ({"hyperparams.optimize_memory_usage": True}, "hyperparams.optimize_memory_usage: set by nothing"),
        ({"policy_kwargs": {"squash_output": False}}, "policy_kwargs.squash_output: not an argument of"),
        ({"policy_kwargs": {"observation_space": None}}, "policy_kwargs.observation_space: set by the env"),
        (
            {
                "algo": "dqn",
                "envs": ["CartPole-v1"],
                "exploration": {},
                "replay": {"type": "proportional"},
                "hyperparams.n_steps": 3,
            },
            "hyperparams.n_steps: n-step returns come from uniform replay only",
        ),
        ({"hyperparams.stats_window_size": "seven"}, "hyperparams.stats_window_size: 'seven' does not fit TD3's"),
        ({"hyperparams.stats_windows_size": 7}, "not an argument of TD3; did you mean 'stats_window_size'?"),
        ({"hyperparams.seed": 3}, "hyperparams.seed: set by seeds"),
        ({"hyperparams.n_timesteps": 1000}, "hyperparams.n_timesteps: set by total_steps"),
        ({"hyperparams.noise_std": 0.1}, "hyperparams.noise_std: set by exploration.action_noise.sigma"),
        ({"hyperparams.policy_kwargs": {"n_critics": 1}}, "set by policy_kwargs (at the top level of the study)"),
        ({"policy_kwargs": "dict(n_critics=1)"}, "policy_kwargs: write it as a YAML mapping"),
        ({"policy_kwargs": {"net_arch": [64, 64]}}, "policy_kwargs.net_arch: set by net_arch"),
        ({"policy_kwargs": {"n_critic": 1}}, "policy_kwargs.n_critic: not an argument of ParamNoiseTD3Policy"),
        ({"policy_kwargs": {"n_critics": 1.5}}, "policy_kwargs.n_critics: 1.5 does not fit"),
        (
            {"algo": "dqn", "envs": ["CartPole-v1"], "exploration": {}, "net_arch": {"pi": [8], "qf": [8]}},
            "net_arch: dqn has one network",
        ),
    ],
)
def test_bad_zoo_settings_are_refused_naming_the_key(write_study, overrides, message) -> None:
    with pytest.raises(StudyError) as error:
        load_study(write_study(overrides))
    assert message in str(error.value)


def test_log_std_init_belongs_to_gsde_when_gsde_is_on(write_study) -> None:
    sac = {"algo": "sac", "exploration": {"param_noise": None}, "hyperparams.train_freq": "episode"}
    assert load_study(write_study(sac | {"policy_kwargs": {"log_std_init": -2}})).runs
    with pytest.raises(StudyError, match="policy_kwargs.log_std_init: set by exploration.gsde.log_std_init"):
        load_study(write_study(sac | {"exploration.gsde": {}, "policy_kwargs": {"log_std_init": -2}}))


def test_the_stacked_engine_refuses_adam_arguments_it_does_not_stack(write_study) -> None:
    kwargs = {"policy_kwargs": {"optimizer_kwargs": {"eps": 1e-5}}}
    assert load_study(write_study(kwargs), engine="stacked").runs
    with pytest.raises(StudyError, match="policy_kwargs.optimizer_kwargs.amsgrad: not stacked yet"):
        load_study(write_study({"policy_kwargs": {"optimizer_kwargs": {"amsgrad": True}}}), engine="stacked")


def test_set_takes_a_schedule_and_refuses_a_bad_one(write_study, tmp_path, capsys) -> None:
    path = write_study()
    results = tmp_path / "results"
    argv = ["run", str(path), "--results", str(results), "--dry-run", "--set", "hyperparams.learning_rate=lin_3e-4"]
    assert main(argv) == 0
    assert main([*argv[:-1], "hyperparams.learning_rate=lin_x"]) == 2
    assert "hyperparams.learning_rate" in capsys.readouterr().err
    assert not results.exists()


NORMALIZED = {"normalize": True, "hyperparams.gamma": 0.95, "total_steps": 400, "budgets.full": 400}


def test_normalize_wraps_the_training_env_in_vecnormalize_with_the_algorithms_gamma(write_study) -> None:
    parts = build_run(load_study(write_study(NORMALIZED)).runs[0])
    normalize = parts.model.get_vec_normalize_env()
    assert isinstance(normalize, VecNormalize) and normalize.norm_obs and normalize.norm_reward
    assert normalize.gamma == 0.95 and normalize.clip_obs == 10.0
    parts.close()
    parts = build_run(load_study(write_study({"normalize": {"norm_reward": False, "gamma": 0.9}})).runs[0])
    assert not parts.model.get_vec_normalize_env().norm_reward and parts.model.get_vec_normalize_env().gamma == 0.9
    parts.close()
    assert build_run(load_study(write_study({"normalize": False})).runs[0]).model.get_vec_normalize_env() is None


def test_a_normalized_run_records_the_envs_own_rewards_and_evaluates_on_normalized_observations(write_study) -> None:
    parts = build_run(load_study(write_study(NORMALIZED)).runs[0])
    model = parts.model
    model.learn(400, callback=CallbackList(parts.callbacks))
    # Monitor, inside VecNormalize, sees the env's own rewards (rounded to 6 decimals)
    monitored = [info["r"] for info in model.ep_info_buffer]
    assert [row["return"] for row in parts.recorder.rows] == pytest.approx(monitored, abs=1e-5)
    assert len(monitored) == 2  # two 200-step Pendulum episodes
    raw: list[np.ndarray] = []
    env = parts.evaluator.eval_env
    reset = env.reset

    def recording_reset(**kwargs):
        obs, info = reset(**kwargs)
        raw.append(obs)
        return obs, info

    env.reset = recording_reset
    seen = next(parts.evaluator.episodes())
    normalize = model.get_vec_normalize_env()
    np.testing.assert_array_equal(seen, normalize.normalize_obs(raw[0]))
    assert not np.allclose(seen, raw[0])
    parts.close()


def test_a_normalized_run_saves_its_statistics_which_evaluate_uses(write_study, tmp_path, capsys) -> None:
    path = write_study(NORMALIZED)
    spec = load_study(path).runs[0]
    result = execute(spec)
    folder = write_run(result, tmp_path / "results")
    with open(folder / NORMALIZE, "rb") as fh:
        saved = pickle.load(fh)
    normalize = load_normalize(tmp_path / "results", spec)
    assert not normalize.training  # frozen for evaluation
    np.testing.assert_array_equal(saved.obs_rms.mean, normalize.obs_rms.mean)
    assert saved.obs_rms.count == pytest.approx(401 + 1e-4)  # the first observation, one per step, and ε
    model = load_model(tmp_path / "results", spec)
    plain, normalized = (evaluate_model(spec, model, 1, normalize=n) for n in (None, normalize))
    assert plain.returns != normalized.returns  # the policy acts on what it was trained on
    assert main(["evaluate", str(path), "--results", str(tmp_path / "results"), "--run", spec.spec_hash]) == 0
    (folder / NORMALIZE).write_bytes(b"0" + (folder / NORMALIZE).read_bytes()[1:])
    with pytest.raises(StudyError, match="vecnormalize.pkl does not match its checksum"):
        load_normalize(tmp_path / "results", spec)


@pytest.mark.parametrize(
    ("overrides", "engine", "message"),
    [
        ({"hyperparams.normalize": True}, "sb3", "hyperparams.normalize: set by normalize (at the top level"),
        ({"normalize": "{'norm_obs': True}"}, "sb3", "normalize: write it as a YAML mapping"),
        ({"normalize": {"norm_obs": True, "clip": 5}}, "sb3", "normalize.clip"),
        ({"normalize": True}, "stacked", "normalize: not stacked yet"),
    ],
)
def test_bad_normalize_settings_are_refused(write_study, overrides, engine, message) -> None:
    with pytest.raises(StudyError) as error:
        load_study(write_study(overrides), engine=engine)
    assert message in str(error.value)


def test_frame_stack_observes_the_last_frames_oldest_first_zeros_before_the_first(write_study) -> None:
    spec = load_study(write_study({"frame_stack": 3})).runs[0]
    parts = build_run(spec)
    env = parts.envs[0]
    assert env.observation_space.shape == (9,)  # 3 × Pendulum's 3
    first, _ = env.reset(seed=1)
    np.testing.assert_array_equal(first[:6], 0.0)
    second, *_ = env.step(np.zeros(1, dtype=np.float32))
    np.testing.assert_array_equal(second[3:6], first[6:])  # the newest moves one place back
    np.testing.assert_array_equal(second[:3], 0.0)
    assert parts.model.observation_space.shape == (9,)
    assert parts.evaluator.eval_env.observation_space.shape == (9,)
    parts.close()


def test_frame_stack_trains_under_both_engines_alike(write_study) -> None:
    study = load_study(write_study({"frame_stack": 2, "seeds": 2}), engine="stacked")
    stacked = run_group(study.runs)
    sb3 = [
        execute(spec.model_copy(update={"settings": spec.settings.model_copy(update={"engine": "sb3"})}))
        for spec in study.runs
    ]
    for one, other in zip(stacked, sb3, strict=True):
        assert one.status == other.status == "done", one.error
        assert one.evaluations["return_mean"].to_numpy() == pytest.approx(
            other.evaluations["return_mean"].to_numpy(), rel=1e-5
        )


def test_frame_stack_is_refused_where_it_cannot_stack(write_study) -> None:
    with pytest.raises(StudyError, match="frame_stack: env_wrapper atari stacks its 4 frames itself"):
        load_study(write_study({"frame_stack": 4, "env_wrapper": "atari"}))
    with pytest.raises(StudyError, match="frame_stack"):
        load_study(write_study({"frame_stack": 1}))
    spec = load_study(
        write_study({"frame_stack": 2, "envs": ["MinAtar/Breakout-v1"], "algo": "dqn", "exploration": {}})
    ).runs[0]
    result = execute(spec)
    assert result.status == "failed" and "frame_stack: stacks vector observations" in result.error

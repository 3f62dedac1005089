"""Settings an rl-baselines3-zoo user brings: schedules, any constructor argument, policy_kwargs."""

from __future__ import annotations

import io

import pytest
from stable_baselines3 import TD3

from study.__main__ import main
from study.config import StudyError, load_study
from study.policies import ParamNoiseTD3Policy
from study.run import build_run, execute, model_zip
from study.schedules import LinearSchedule, schedule
from study.stacked.group import run_group

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


def test_the_run_identity_changes_only_with_what_is_set(write_study) -> None:
    plain = load_study(write_study()).runs[0]
    default = load_study(write_study({"policy_kwargs": {}})).runs[0]
    assert plain.run_id == default.run_id  # no key: same run as before policy_kwargs existed
    assert load_study(write_study({"policy_kwargs": {"n_critics": 1}})).runs[0].run_id != plain.run_id


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"hyperparams.learning_rate": "lin_fast"}, "hyperparams.learning_rate"),
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

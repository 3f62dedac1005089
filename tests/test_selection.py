"""Settings and run selection from the command line: `--set KEY=VALUE` and `--only COLUMN=LEVEL`."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from study.__main__ import main
from study.analysis.report import report_dir
from study.config import StudyError, load_study, parse_only, parse_sets, select_runs


@pytest.fixture
def grid_study(write_study) -> Path:
    grid = {"exploration.param_noise.interval": [1, 8, "episode"]}
    return write_study({"seeds": 2, "envs": ["Pendulum-v1", "MountainCarContinuous-v0"], "grid": grid})


def test_values_are_read_as_yaml() -> None:
    sets = parse_sets(["hyperparams.gamma=0.98", "seeds=[0, 7]", "net_arch=[64, 64]", "max_episodes=", "algo=sac"])
    assert sets == {
        "hyperparams.gamma": 0.98,
        "seeds": [0, 7],
        "net_arch": [64, 64],
        "max_episodes": None,
        "algo": "sac",
    }


@pytest.mark.parametrize("item", ["gamma", "=3", "hyperparams..gamma=1", "a b=1"])
def test_a_set_without_a_dotted_key_is_refused(item: str) -> None:
    with pytest.raises(StudyError, match="expected KEY=VALUE"):
        parse_sets([item])


def test_set_overrides_the_file_and_changes_the_runs_identity(write_study) -> None:
    path = write_study()
    base = load_study(path)
    changed = load_study(path, sets=parse_sets(["hyperparams.gamma=0.9", "seeds=3"]))
    assert len(base.runs) == 1 and len(changed.runs) == 3
    assert {spec.settings.hyperparams.gamma for spec in changed.runs} == {0.9}
    assert base.runs[0].settings.hyperparams.gamma is None
    assert changed.runs[0].run_id != base.runs[0].run_id  # other settings: another run


def test_only_keeps_the_runs_with_the_given_levels(grid_study) -> None:
    study = load_study(grid_study)
    assert len(study.runs) == 12  # 2 envs × 3 intervals × 2 seeds
    one = select_runs(study, parse_only(["env=Pendulum-v1,interval=8,seed=1"]))
    assert [(s.env, s.factors["interval"], s.seed) for s in one.runs] == [("Pendulum-v1", "8", 1)]
    either = select_runs(study, parse_only(["interval=1", "interval=episode,seed=0"]))
    assert sorted({s.factors["interval"] for s in either.runs}) == ["1", "episode"]
    assert len(either.runs) == 4 and {s.seed for s in either.runs} == {0}
    assert either.only == {"interval": ["1", "episode"], "seed": ["0"]}
    assert select_runs(study, {}) is study


@pytest.mark.parametrize(
    ("flag", "item", "message"),
    [
        ("--set", "hyperparams.gamam=0.9", "--set: hyperparams.gamam: not an argument of TD3; did you mean 'gamma'?"),
        ("--set", "hyperparams.gamma=high", "--set: hyperparams.gamma: must be a number (got 'high')"),
        ("--set", "grid.interval=[1]", "--set grid.interval: may not set name, budgets, grid or cell_overrides"),
        ("--set", "name=other", "--set name: may not set name, budgets, grid or cell_overrides"),
        (
            "--only",
            "intervall=8",
            "--only intervall: tiny has no column 'intervall' (have: env, interval, seed); did you mean",
        ),
        ("--only", "interval=7", "--only interval=7: no such level (have: 1, 8, episode)"),
        ("--only", "seed=5", "--only seed=5: no such level (have: 0, 1)"),
        ("--only", "interval", "--only interval: expected COLUMN=LEVEL pairs"),
    ],
)
def test_bad_flags_exit_2_naming_the_flag_and_write_nothing(grid_study, tmp_path, capsys, flag, item, message) -> None:
    results = tmp_path / "results"
    assert main(["run", str(grid_study), "--results", str(results), flag, item]) == 2
    assert message in capsys.readouterr().err
    assert not results.exists()


def test_only_that_matches_no_run_is_refused(grid_study) -> None:
    study = load_study(grid_study)
    runs = [s for s in study.runs if (s.factors["interval"], s.seed) != ("8", 0)]  # as if the grid had a hole
    with pytest.raises(StudyError, match="--only interval=8,seed=0: matches no run of tiny"):
        select_runs(study.model_copy(update={"runs": runs}), parse_only(["interval=8,seed=0"]))


def test_dry_run_and_status_show_the_selection(grid_study, tmp_path, capsys) -> None:
    argv = ["--results", str(tmp_path / "r"), "--only", "interval=8,seed=0", "--set", "hyperparams.gamma=0.9"]
    assert main(["run", str(grid_study), "--dry-run", *argv]) == 0
    out = capsys.readouterr().out
    assert "2 runs" in out and "total 2: done 0" in out
    assert main(["status", str(grid_study), *argv]) == 0
    assert "total 2:" in capsys.readouterr().out


def test_a_selection_reports_into_its_own_folder(grid_study, tmp_path) -> None:
    study = load_study(grid_study)
    chosen = select_runs(study, parse_only(["env=Pendulum-v1,interval=episode"]))
    assert report_dir(study, tmp_path).name == "report"
    assert report_dir(chosen, tmp_path).name == "report-only-env=Pendulum-v1-interval=episode"


@pytest.mark.parametrize(
    ("key", "value"),
    [
        ("exploration.param_noise.interval", 3),
        ("exploration.param_noise", {"interval": 3}),
        ("exploration", {"param_noise": {"initial_sigma": 0.3}}),
    ],
)
def test_a_set_of_what_the_grid_sets_per_run_is_refused(grid_study, key, value) -> None:
    with pytest.raises(StudyError, match=f"--set {key}: grid.interval sets it per run"):
        load_study(grid_study, sets={key: value})
    load_study(grid_study, sets={"exploration.param_noise.initial_sigma": 0.3})  # beside it: fine


def test_a_set_is_refused_only_where_a_kept_run_would_not_take_it(write_study) -> None:
    path = write_study(
        {
            "grid": {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg", "hyperparams.tau": 0.02}}},
            "cell_overrides": [{"match": {"algo": "TD3"}, "set": {"hyperparams.gamma": 0.9}}],
            "budgets": {"full": 300, "ddpg": {"levels": {"algo": "DDPG"}}},
        }
    )
    with pytest.raises(StudyError, match="--set hyperparams.tau: grid.algo sets it per run"):
        load_study(path, sets={"hyperparams.tau": 0.01})
    kept = load_study(path, sets={"hyperparams.tau": 0.01}, only={"algo": ["TD3"]})
    assert [r.settings.hyperparams.tau for r in kept.runs] == [0.01]
    with pytest.raises(StudyError, match=re.escape("--set hyperparams.gamma: cell_overrides[0] sets it per run")):
        load_study(path, sets={"hyperparams.gamma": 0.5})
    assert [
        r.settings.hyperparams.gamma for r in load_study(path, budget="ddpg", sets={"hyperparams.gamma": 0.5}).runs
    ] == [0.5]


def test_a_set_of_what_an_env_override_sets_is_refused(write_study) -> None:
    path = write_study({"env_overrides": {"Pendulum-v1": {"hyperparams": {"gamma": 0.9}}}})
    with pytest.raises(StudyError, match="--set hyperparams.gamma: env_overrides.Pendulum-v1 sets it per run"):
        load_study(path, sets={"hyperparams.gamma": 0.95})


def test_a_key_given_again_is_applied_in_its_latest_place(write_study) -> None:
    sets = parse_sets(["hyperparams.gamma=0.5", "hyperparams={gamma: 0.7}", "hyperparams.gamma=0.9"])
    assert list(sets) == ["hyperparams", "hyperparams.gamma"]
    assert load_study(write_study(), sets=sets).runs[0].settings.hyperparams.gamma == 0.9


def test_levels_with_commas_and_the_selections_report_folder(write_study, tmp_path) -> None:
    study = load_study(write_study({"grid": {"net_arch": [[16, 16], [32, 32]]}, "seeds": 2}))
    chosen = select_runs(study, parse_only(["seed=1,net_arch=[32,32]"]))
    assert [(s.factors["net_arch"], s.seed) for s in chosen.runs] == [("[32,32]", 1)]
    assert chosen.factor_levels == {"net_arch": ["[32,32]"]}  # the report shows only what was chosen
    again = select_runs(study, parse_only(["net_arch=[32,32]", "seed=1"]))
    assert report_dir(chosen, tmp_path) == report_dir(again, tmp_path)  # whatever the order given

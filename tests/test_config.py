"""Study files: grid expansion, budgets, run ids, and every kind of bad input."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from study.__main__ import main
from study.config import StudyError, load_study

ROOT = Path(__file__).resolve().parent.parent


def test_grid_is_the_product_of_factors_envs_and_seeds(write_study) -> None:
    path = write_study(
        {
            "envs": ["Pendulum-v1", "MountainCarContinuous-v0"],
            "seeds": [3, 4, 5],
            "grid": {"exploration.param_noise.interval": [1, 8, "episode"], "layer_norm": [True, False]},
        }
    )
    study = load_study(path)
    assert len(study.runs) == 2 * 3 * 2 * 3
    assert study.factor_levels == {"interval": ["1", "8", "episode"], "layer_norm": ["true", "false"]}
    run = study.runs[0]
    assert run.settings.exploration.param_noise.interval == 1 and run.settings.layer_norm is True
    assert run.run_id.startswith("Pendulum-v1_interval=1_layer_norm=true_s3_")
    assert len({r.run_id for r in study.runs}) == len(study.runs)


def test_run_ids_are_stable_and_follow_the_spec(write_study) -> None:
    first = [r.run_id for r in load_study(write_study()).runs]
    assert first == [r.run_id for r in load_study(write_study()).runs]
    changed = load_study(write_study({"hyperparams.gamma": 0.9})).runs
    assert changed[0].run_id != first[0]
    assert changed[0].run_id.rsplit("_", 1)[0] == first[0].rsplit("_", 1)[0]


def test_named_levels_set_several_keys(write_study) -> None:
    path = write_study(
        {
            "grid": {
                "noise": {
                    "param": {"exploration.param_noise.interval": 4},
                    "action": {"exploration.param_noise": None, "exploration.action_noise": {"type": "normal"}},
                }
            }
        }
    )
    runs = load_study(path).runs
    assert [r.factors["noise"] for r in runs] == ["param", "action"]
    assert runs[1].settings.exploration.param_noise is None
    assert runs[1].settings.exploration.action_noise.type == "normal"


def test_budgets_and_steps_override(write_study) -> None:
    small = {"total_steps": 50, "seeds": 2, "eval.freq": 25, "hyperparams.learning_starts": 5}
    path = write_study({"budgets": {"full": 1000, "small": small}})
    assert load_study(path).runs[0].settings.total_steps == 1000
    small = load_study(path, budget="small")
    assert [r.settings.total_steps for r in small.runs] == [50, 50]
    assert small.runs[0].settings.eval.freq == 25
    assert load_study(path, budget="small", steps=7).runs[0].settings.total_steps == 7


def test_env_overrides(write_study) -> None:
    path = write_study(
        {
            "envs": ["Pendulum-v1", "MountainCarContinuous-v0"],
            "env_overrides": {"Pendulum-v1": {"hyperparams.gamma": 0.9}},
        }
    )
    runs = load_study(path).runs
    assert [r.settings.hyperparams.gamma for r in runs] == [0.9, None]


def test_cell_overrides_set_the_cells_they_match(write_study) -> None:
    path = write_study(
        {
            "envs": ["Pendulum-v1", "MountainCarContinuous-v0"],
            "env_overrides": {"Pendulum-v1": {"hyperparams.gamma": 0.9, "hyperparams.tau": 0.01}},
            "budgets": {"full": 300, "mujoco": {"envs": ["Hopper-v5"]}},
            "grid": {
                "algo": {"TD3": {}, "DDPG": {"algo": "ddpg", "hyperparams.tau": 0.02}},
                "noise": {"param": {}, "action": {"exploration.param_noise": None}},
            },
            "cell_overrides": [
                {"match": {"algo": "DDPG", "env": "Pendulum-v1"}, "set": {"hyperparams": {"gamma": 0.8, "tau": 0.03}}},
                {"match": {"algo": "DDPG", "env": "Hopper-v5"}, "set": {"seeds": 3}},  # a budget's env
                {"match": {"noise": ["action"]}, "set": {"exploration.action_noise": {"type": "normal"}}},
                {"match": {"noise": "action", "algo": ["DDPG"]}, "set": {"hyperparams.tau": 0.04}},
            ],
        }
    )
    study = load_study(path)
    got = {
        (r.env, r.factors["algo"], r.factors["noise"]): (
            r.settings.hyperparams.gamma,
            r.settings.hyperparams.tau,
            r.settings.exploration.action_noise.type,
        )
        for r in study.runs
    }
    # after the study's env overrides and the cell's levels, in the file's order
    assert got == {
        ("Pendulum-v1", "TD3", "param"): (0.9, 0.01, "none"),
        ("Pendulum-v1", "TD3", "action"): (0.9, 0.01, "normal"),
        ("Pendulum-v1", "DDPG", "param"): (0.8, 0.03, "none"),
        ("Pendulum-v1", "DDPG", "action"): (0.8, 0.04, "normal"),
        ("MountainCarContinuous-v0", "TD3", "param"): (None, None, "none"),
        ("MountainCarContinuous-v0", "TD3", "action"): (None, None, "normal"),
        ("MountainCarContinuous-v0", "DDPG", "param"): (None, 0.02, "none"),
        ("MountainCarContinuous-v0", "DDPG", "action"): (None, 0.04, "normal"),
    }


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ({"match": {"algo": "DDPG"}, "set": {"hyperparams.gama": 0.8}}, "cell_overrides[0]: hyperparams.gama: not an"),
        ({"match": {"env": "Pendulm-v1"}, "set": {}}, "cell_overrides[0].match: env: 'Pendulm-v1' is not an env of"),
        ({"match": {"env": "Hopper-v5"}, "set": {}}, "'Hopper-v5' is not an env of the study or its budgets"),
        ({"match": {"algo": []}, "set": {}}, "cell_overrides[0].match.algo: needs at least 1 item"),
        ({"match": {"algo": "DDGP"}, "set": {}}, "cell_overrides[0].match: algo: no level 'DDGP' (have: TD3, DDPG)"),
        ({"match": {"algoo": "DDPG"}, "set": {}}, "cell_overrides[0].match: algoo: no such column (have: env, algo)"),
        ({"match": {}, "set": {}}, "cell_overrides[0].match: needs at least 1 item"),
        ({"match": {"algo": "DDPG"}, "set": {"env": "Hopper-v5"}}, "cell_overrides[0]: env: set by envs"),
    ],
)
def test_bad_cell_overrides_name_the_override(write_study, cell, message) -> None:
    path = write_study({"grid": {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg"}}}, "cell_overrides": [cell]})
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(path)


@pytest.mark.parametrize(
    ("comparison", "message"),
    [
        (
            {"factor": "algoo", "x": "TD3", "y": "DDPG"},
            "compare[0]: factor: no factor 'algoo' (have: algo, layer_norm)",
        ),
        ({"factor": "algo", "x": "TD3", "y": "DDGP"}, "compare[0]: y: no level 'DDGP' of algo (have: TD3, DDPG)"),
        ({"factor": "algo", "x": "TD3", "y": "TD3"}, "compare[0]: y: the same level as x ('TD3')"),
        ({"factor": "algo", "x": "TD3", "y": "DDPG", "where": {"algo": "TD3"}}, "compare[0]: where: may not name algo"),
        (
            {"factor": "algo", "x": "TD3", "y": "DDPG", "where": {"layer_norm": 1}},
            "compare[0].where: layer_norm: no level '1'",
        ),
        (
            {"factor": "algo", "x": "TD3", "y": "DDPG", "where": {"env": "Hopper-v5"}},
            "compare[0].where: env: 'Hopper-v5'",
        ),
        ({"factor": "algo", "x": "TD3"}, "compare[0].y: required, but not given"),
    ],
)
def test_bad_comparisons_name_the_comparison(write_study, comparison, message) -> None:
    grid = {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg"}}, "layer_norm": [True, False]}
    path = write_study({"grid": grid, "compare": [comparison]})
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(path)


def test_comparisons_keep_levels_as_written_and_no_run_changes(write_study) -> None:
    grid = {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg"}}, "layer_norm": [True, False]}
    plain = load_study(write_study({"grid": grid}))
    compared = load_study(
        write_study(
            {"grid": grid, "compare": [{"factor": "layer_norm", "x": True, "y": False, "where": {"algo": "TD3"}}]}
        )
    )
    assert [(c.x, c.y, c.where) for c in compared.file.compare] == [("true", "false", {"algo": ["TD3"]})]
    assert [r.run_id for r in compared.runs] == [r.run_id for r in plain.runs]


@pytest.mark.parametrize(
    ("labels", "message"),
    [
        ({"algoo": {"TD3": "x"}}, "labels.algoo: no factor 'algoo' (have: algo, layer_norm)"),
        ({"algo": {"DDGP": "x"}}, "labels.algo: no level 'DDGP' of algo (have: TD3, DDPG)"),
        ({"layer_norm": {1: "x"}}, "labels.layer_norm: no level '1' of layer_norm (have: true, false)"),
    ],
)
def test_bad_labels_name_the_file_or_budget_and_the_key(write_study, labels, message) -> None:
    grid = {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg"}}, "layer_norm": [True, False]}
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(write_study({"grid": grid, "labels": labels}))
    path = write_study({"grid": grid, "budgets.small": {"total_steps": 500, "labels": labels}})
    with pytest.raises(StudyError, match=re.escape(f"budgets.small: {message}")):
        load_study(path, budget="small")


def test_labels_set_by_a_budget_change_no_run(write_study) -> None:
    grid = {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg"}}, "layer_norm": [True, False]}
    path = write_study({"grid": grid, "budgets.small": {"total_steps": 500, "labels": {"layer_norm": {True: "LN"}}}})
    named, plain = (
        load_study(path, budget="small"),
        load_study(write_study({"grid": grid, "budgets.small": 500}), budget="small"),
    )
    assert named.file.labels == {"layer_norm": {"true": "LN"}} and load_study(path).file.labels == {}
    assert [r.run_id for r in named.runs] == [r.run_id for r in plain.runs]


def test_a_budget_picks_levels_of_the_grid(write_study) -> None:
    grid = {"exploration.param_noise.interval": [1, 8, "episode"], "layer_norm": [True, False]}
    small = {"total_steps": 500, "levels": {"interval": [8, "episode"], "layer_norm": True}}
    path = write_study({"grid": grid, "budgets": {"full": 1000, "small": small, "all": 500}})
    full, picked, everything = load_study(path), load_study(path, budget="small"), load_study(path, budget="all")
    assert picked.factor_levels == {"interval": ["8", "episode"], "layer_norm": ["true"]}
    assert [r.factors for r in picked.runs] == [
        {"interval": "8", "layer_norm": "true"},
        {"interval": "episode", "layer_norm": "true"},
    ]
    # the same runs as the whole grid's at the same settings
    assert {r.run_id for r in picked.runs} < {r.run_id for r in everything.runs}
    assert picked.runs[0].settings.total_steps == 500 and len(full.runs) == len(everything.runs) == 6
    assert picked.only == {}  # the budget's grid, not a selection


def test_levels_a_budget_leaves_out_need_not_fit_it(write_study) -> None:
    grid = {"warmup": {"short": {}, "long": {"hyperparams.learning_starts": 700}}}
    path = write_study(
        {"grid": grid, "budgets": {"full": 1000, "small": {"total_steps": 500, "levels": {"warmup": "short"}}}}
    )
    assert len(load_study(path).runs) == 2
    assert [r.factors["warmup"] for r in load_study(path, budget="small").runs] == ["short"]
    path = write_study({"grid": grid, "budgets": {"full": 1000, "small": 500}})
    with pytest.raises(
        StudyError, match="grid.warmup.long: hyperparams.learning_starts: 700 must be below total_steps 500"
    ):
        load_study(path, budget="small")


@pytest.mark.parametrize(
    ("levels", "message"),
    [
        (
            {"intervall": [8]},
            "budgets.small: levels: intervall: no such factor (have: interval); did you mean 'interval'?",
        ),
        ({"interval": [3]}, "budgets.small: levels: interval: no level '3' (have: 1, 8)"),
        ([8], "budgets.small: levels: must map factor columns to the levels to run"),
    ],
)
def test_bad_budget_levels_name_the_budget(write_study, levels, message) -> None:
    budgets = {"full": 1000, "small": {"levels": levels}}
    path = write_study({"grid": {"exploration.param_noise.interval": [1, 8]}, "budgets": budgets})
    with pytest.raises(StudyError, match=re.escape(message)):
        load_study(path, budget="small")


@pytest.mark.parametrize(
    "name",
    sorted(path.stem for path in (ROOT / "ablations").glob("*.yaml")),
)
def test_shipped_studies_are_valid(name: str) -> None:
    study = load_study(ROOT / "ablations" / f"{name}.yaml")
    assert study.runs
    for budget in study.file.budgets:
        assert load_study(ROOT / "ablations" / f"{name}.yaml", budget=budget).runs
    # every cell override fits the cells it sets, on envs no budget runs with all of the grid too
    named = {env for cell in study.file.cell_overrides for env in cell.match.get("env", [])}
    if named:
        assert load_study(ROOT / "ablations" / f"{name}.yaml", sets={"envs": sorted(named)}).runs


def test_the_three_ablations_set_up_their_algorithms_alike() -> None:
    """sampling_interval, layer_norm and adaptation hold the same algorithm levels and per-env settings."""
    import yaml

    docs = [
        yaml.safe_load((ROOT / "ablations" / f"{n}.yaml").read_text())
        for n in ("sampling_interval", "layer_norm", "adaptation")
    ]
    assert docs[0]["grid"]["algo"] == docs[1]["grid"]["algo"] == docs[2]["grid"]["algo"]
    assert (
        docs[0]["cell_overrides"]
        == docs[2]["cell_overrides"]
        == docs[1]["cell_overrides"][: len(docs[0]["cell_overrides"])]
    )
    assert list(docs[0]["grid"]["algo"]) == ["TD3", "SAC", "PPO", "TRPO"]


BAD = [
    ({"algo": "td4"}, "algo: unknown algorithm 'td4'"),
    ({"envs": ["NoSuchEnv-v0"]}, "envs: unknown environment id 'NoSuchEnv-v0'"),
    ({"totl_steps": 5}, "totl_steps: unknown key; did you mean 'total_steps'?"),
    (
        {"exploration.param_noise.intervall": 5},
        "exploration.param_noise.intervall: unknown key; did you mean 'interval'",
    ),
    ({"exploration.param_noise.interval": 0}, "exploration.param_noise.interval: must be a positive integer k"),
    ({"exploration.param_noise.interval": -2}, "exploration.param_noise.interval: must be a positive integer k"),
    ({"grid": {"exploration.param_noise.interval": [4, 0]}}, "grid.exploration.param_noise.interval[1]"),
    ({"grid": {"layer_norm": ["maybe"]}}, "grid.layer_norm[0]: must be true or false (got 'maybe')"),
    ({"grid": {"layer_norm": []}}, "grid: Value error, factor 'layer_norm' has no levels"),
    ({"budgets.full": "lots"}, "budgets.full"),
    ({"budgets.full": {"total_steps": 0}}, "budgets.full: total_steps: must be greater than 0 (got 0)"),
    ({"budgets.full": 0}, "budgets.full: a step count must be at least 1 (got 0)"),
    ({"seeds": -1}, "seeds: a number of seeds must be at least 1 (got -1)"),
    ({"seeds": [0, -3]}, "seeds: -3 is not a seed"),
    (
        {"hyperparams.learning_rat": 1e-3},
        "hyperparams.learning_rat: not an argument of TD3; did you mean 'learning_rate'",
    ),
    ({"hyperparams.learning_starts": 300}, "hyperparams.learning_starts: 300 must be below total_steps 300"),
    ({"hyperparams.batch_size": 2000}, "hyperparams.batch_size: 2000 must be at most hyperparams.buffer_size 1000"),
    ({"algo": "sac", "exploration.mean_actions": True}, "exploration.mean_actions: sac would act with its unperturbed"),
    ({"algo": "ddpg", "hyperparams.policy_delay": 2}, "hyperparams.policy_delay: not a hyperparameter of ddpg"),
    (
        {"exploration.action_noise.type": "pink"},
        "exploration.action_noise.type: must be 'none', 'normal', 'ou' or 'colored'",
    ),
    ({"env_overrides": {"Hopper-v5": {}}}, "env_overrides.Hopper-v5: not one of envs"),
]


@pytest.mark.parametrize(("overrides", "message"), BAD, ids=[m.split(":")[0] for _, m in BAD])
def test_bad_input_exits_2_naming_file_and_key(write_study, tmp_path, capsys, overrides, message) -> None:
    path = write_study(overrides)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results)]) == 2
    err = capsys.readouterr().err
    assert str(path) in err
    assert message.replace("Value error, ", "") in err
    assert not results.exists()


@pytest.mark.parametrize(
    ("text", "argv", "message"),
    [
        ("name: [unclosed", [], "not valid YAML"),
        ("name: x\nbudgets: {short: 5}\n", [], "budgets: no budget named 'full' (have: short)"),
        ("- just\n- a list\n", [], "must be a YAML mapping"),
        (None, ["--budget", "huge"], "budgets: no budget named 'huge' (have: full)"),
        (None, ["--steps", "0"], "--steps: must be a positive integer"),
        (None, ["--workers", "0"], "--workers: must be at least 1"),
    ],
)
def test_bad_files_and_options(write_study, tmp_path, capsys, text, argv, message) -> None:
    path = write_study(text=text)
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), *argv]) == 2
    err = capsys.readouterr().err
    assert message in err
    assert str(path) in err or message.startswith("--")
    assert not results.exists()


def test_missing_file(tmp_path, capsys) -> None:
    assert main(["run", str(tmp_path / "nope.yaml"), "--results", str(tmp_path / "r")]) == 2
    assert f"{tmp_path / 'nope.yaml'}: file not found" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()


def test_study_error_is_a_value_error(write_study) -> None:
    with pytest.raises(StudyError):
        load_study(write_study({"algo": "nope"}))


def test_run_id_ignores_settings_left_at_their_defaults(write_study) -> None:
    implicit = load_study(write_study()).runs[0]
    explicit = load_study(write_study({"exploration.mean_actions": False, "layer_norm": False})).runs[0]
    assert implicit.run_id == explicit.run_id
    assert load_study(write_study({"layer_norm": True})).runs[0].run_id != implicit.run_id


def test_mappings_merge_with_their_keys_as_they_are() -> None:
    from study.config import apply_overrides

    doc = {"tune": {"trials": 5, "search_space": {"hyperparams.gamma": {"type": "float"}}}}
    out = apply_overrides(doc, {"tune": {"trials": 3, "search_space": {"hyperparams.tau": {"type": "int"}}}})
    assert out["tune"] == {
        "trials": 3,
        "search_space": {"hyperparams.gamma": {"type": "float"}, "hyperparams.tau": {"type": "int"}},
    }
    assert apply_overrides({}, {"a.b": {"c.d": 1}}) == {"a": {"b": {"c.d": 1}}}

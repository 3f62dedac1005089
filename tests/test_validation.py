"""Input that YAML and the schema would accept but that is wrong: refused at load, exit code 2,
one message per problem naming the file, the line where there is one, and the key."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from study.__main__ import main
from study.config import StudyError, load_study, read_yaml_mapping
from study.yamlio import DuplicateKeyError, load_yaml

ROOT = Path(__file__).resolve().parent.parent

# a study file written by hand, so that the tests know its lines
STUDY = """\
name: tiny
algo: td3
envs: [Pendulum-v1]
seeds: 1
total_steps: 300
eval: {freq: 150, episodes: 1}
net_arch: [16, 16]
hyperparams:
  learning_starts: 100
  batch_size: 32
  buffer_size: 1000
exploration:
  param_noise: {interval: episode, adapt_every: 50}
budgets:
  full: 300
  small: {total_steps: 150, hyperparams.learning_starts: 50}
"""


def refuse(tmp_path: Path, capsys, path: Path, *argv: str, named: Path | None = None, dry_run: bool = True) -> str:
    """`study run` on `path` (a dry run: so that a regression trains nothing); check it exits 2,
    writes nothing and names the file at fault (`named`, default `path`); return its error output."""
    results = tmp_path / "results"
    assert main(["run", str(path), "--results", str(results), *argv, *(["--dry-run"] if dry_run else [])]) == 2
    assert not results.exists()
    err = capsys.readouterr().err
    assert str(named or path) in err
    return err


@pytest.fixture
def study_text(tmp_path: Path):
    """Write STUDY with lines replaced or appended; returns its path."""

    def write(replace: dict[str, str] | None = None, append: str = "", name: str = "study.yaml") -> Path:
        text = STUDY
        for old, new in (replace or {}).items():
            assert old in text
            text = text.replace(old, new)
        path = tmp_path / name
        path.write_text(text + append)
        return path

    return write


# ---------------------------------------------------------------------------
# Duplicate keys


def test_study_text_is_valid(study_text) -> None:
    assert len(load_study(study_text()).runs) == 1


def test_a_second_block_with_the_same_key_is_refused(study_text, tmp_path, capsys) -> None:
    path = study_text(append="hyperparams:\n  learning_rate: 1.0e-3\n")
    err = refuse(tmp_path, capsys, path, dry_run=False)
    assert f"{path}:17: hyperparams: key given twice, at lines 8 and 17" in err


def test_nested_and_flow_duplicates_are_each_named(study_text, tmp_path, capsys) -> None:
    path = study_text(
        {
            "  buffer_size: 1000\n": "  buffer_size: 1000\n  batch_size: 64\n",
            "small: {total_steps: 150,": "small: {total_steps: 150, total_steps: 100,",
        }
    )
    err = refuse(tmp_path, capsys, path)
    assert f"{path}:12: hyperparams.batch_size: key given twice, at lines 10 and 12" in err
    assert f"{path}:17: budgets.small.total_steps: key given twice, on line 17" in err


def test_duplicates_in_an_overlay_are_refused(study_text, tmp_path, capsys) -> None:
    overlay = tmp_path / "best.yaml"
    overlay.write_text("hyperparams.learning_starts: 10\nhyperparams.learning_starts: 20\n")
    err = refuse(tmp_path, capsys, study_text(), "--overlay", str(overlay), named=overlay)
    assert f"{overlay}:2: hyperparams.learning_starts: key given twice, at lines 1 and 2" in err


def test_merge_keys_may_be_overridden_and_lines_are_kept() -> None:
    data, lines = load_yaml("base: &b {x: 1, y: 2}\nover:\n  <<: *b\n  y: 3\nlist: [a, b]\n")
    assert data["over"] == {"x": 1, "y": 3}
    assert lines[("over", "y")] == 4 and lines[("list", 1)] == 5 and lines[("base", "x")] == 1
    with pytest.raises(DuplicateKeyError):
        load_yaml("a: 1\nb: 2\na: 3\n")
    with pytest.raises(DuplicateKeyError):
        load_yaml("a: {1: x, 1.0: y}\n")  # equal keys: the second would replace the first


def test_read_yaml_mapping_refuses_duplicates(tmp_path) -> None:
    path = tmp_path / "x.yaml"
    path.write_text("a: 1\na: 2\n")
    with pytest.raises(StudyError, match="a: key given twice"):
        read_yaml_mapping(path)


def test_yaml_syntax_errors_give_the_line(study_text, tmp_path, capsys) -> None:
    err = refuse(tmp_path, capsys, study_text({"envs: [Pendulum-v1]": "envs: [Pendulum-v1"}))
    assert "study.yaml:4: not valid YAML: expected ',' or ']'" in err
    assert "flow sequence that starts at line 3" in err


# ---------------------------------------------------------------------------
# Seeds


@pytest.mark.parametrize(
    ("seeds", "message"),
    [
        ("[0, -3]", "seeds: -3 is not a seed: seeds are integers from 0 to 4294967295"),
        ("[0, 4294967296]", "seeds: 4294967296 is not a seed"),
        ("[0, 1.5]", "seeds: 1.5 is not a seed"),
        ("[3, 1, 3]", "seeds: seed 3 is listed twice"),
        ("[]", "seeds: an empty list of seeds runs nothing"),
        ("0", "seeds: a number of seeds must be at least 1 (got 0)"),
        ("-2", "seeds: a number of seeds must be at least 1 (got -2)"),
        ("true", "seeds: must be a number of seeds or a list of seeds (got true)"),
    ],
)
def test_bad_seeds_are_refused_before_a_dry_run(study_text, tmp_path, capsys, seeds, message) -> None:
    path = study_text({"seeds: 1": f"seeds: {seeds}"})
    assert f"{path}:4: {message}" in refuse(tmp_path, capsys, path)


def test_good_seeds(study_text) -> None:
    assert [r.seed for r in load_study(study_text({"seeds: 1": "seeds: [0, 7, 4294967295]"})).runs] == [
        0,
        7,
        4294967295,
    ]
    assert [r.seed for r in load_study(study_text({"seeds: 1": "seeds: 3"})).runs] == [0, 1, 2]


# ---------------------------------------------------------------------------
# Bounds of each resolved run


def test_learning_starts_must_be_below_total_steps(study_text, tmp_path, capsys) -> None:
    path = study_text({"learning_starts: 100": "learning_starts: 300"})
    err = refuse(tmp_path, capsys, path)
    assert (
        f"{path}:9: hyperparams.learning_starts: 300 must be below total_steps 300 (budgets.full, line 15), "
        "or the run would end before its first gradient step (in every run)"
    ) in err
    assert len(load_study(study_text({"learning_starts: 100": "learning_starts: 299"})).runs) == 1


def test_steps_on_the_command_line_are_checked(study_text, tmp_path, capsys) -> None:
    path = study_text()
    err = refuse(tmp_path, capsys, path, "--steps", "100")
    assert f"{path}:9: hyperparams.learning_starts: 100 must be below total_steps 100 (--steps)" in err
    err = refuse(tmp_path, capsys, path, "--budget", "small", "--steps", "40")
    assert f"{path}:16: budgets.small: hyperparams.learning_starts: 50 must be below total_steps 40 (--steps)" in err


def test_sb3_defaults_are_checked_too(study_text, tmp_path, capsys) -> None:
    path = study_text({"  learning_starts: 100\n": "", "full: 300": "full: 80"})
    err = refuse(tmp_path, capsys, path)
    assert "hyperparams.learning_starts: 100 (SB3's default for td3) must be below total_steps 80 (budgets.full" in err
    path = study_text({"algo: td3": "algo: dqn", "[Pendulum-v1]": "[CartPole-v1]", "  batch_size: 32\n": ""})
    assert len(load_study(path).runs) == 1  # DQN's default batch of 32 fits the buffer of 1000
    path = study_text({"  batch_size: 32\n": "", "buffer_size: 1000": "buffer_size: 200"})
    err = refuse(tmp_path, capsys, path)
    assert (
        "hyperparams.batch_size: 256 (SB3's default for td3) must be at most hyperparams.buffer_size 200 "
        "(line 10), or every batch would repeat transitions"
    ) in err


def test_each_run_is_checked_and_named_with_the_level_that_broke_it(study_text, tmp_path, capsys) -> None:
    path = study_text(append="grid:\n  hyperparams.batch_size: [32, 1000, 2000]\n  layer_norm: [true, false]\n")
    err = refuse(tmp_path, capsys, path)
    assert (
        f"{path}:18: grid.hyperparams.batch_size[2]: 2000 must be at most hyperparams.buffer_size 1000 (line 11), "
        "or every batch would repeat transitions (in Pendulum-v1 batch_size=2000 layer_norm=true; "
        "Pendulum-v1 batch_size=2000 layer_norm=false)"
    ) in err
    assert err.count("error") == 1 and err.count("must be") == 1  # one message for the two runs


def test_env_overrides_and_overlays_are_checked(study_text, tmp_path, capsys) -> None:
    path = study_text(
        {"[Pendulum-v1]": "[Pendulum-v1, MountainCarContinuous-v0]"},
        append="env_overrides:\n  MountainCarContinuous-v0: {hyperparams.learning_starts: 1000}\n",
    )
    err = refuse(tmp_path, capsys, path)
    assert (
        f"{path}:18: env_overrides.MountainCarContinuous-v0: hyperparams.learning_starts: 1000 must be below "
        "total_steps 300 (budgets.full, line 15)"
    ) in err
    assert "(in MountainCarContinuous-v0)" in err
    overlay = tmp_path / "best.yaml"
    overlay.write_text("# the best trial\nhyperparams: {batch_size: 4096}\n")
    path = study_text()
    err = refuse(tmp_path, capsys, path, "--overlay", str(overlay), named=overlay)
    assert (
        f"{overlay}:2: hyperparams.batch_size: 4096 must be at most hyperparams.buffer_size 1000 ({path}, line 11)"
        in err
    )


def test_shipped_tuning_files_load_at_every_budget() -> None:
    from study.tune import load_tuning

    for path in sorted((ROOT / "tuning").glob("*.yaml")):
        for budget in read_yaml_mapping(path)["budgets"]:
            assert load_tuning(path, budget).base.runs


def test_a_search_space_reaching_past_the_bounds_is_refused(study_text, tmp_path) -> None:
    from study.tune import load_tuning

    path = study_text(
        append="tune:\n  trials: 2\n  search_space:\n    hyperparams.learning_starts: {type: int, low: 10, high: 400}\n"
    )
    with pytest.raises(StudyError, match=r"tune.search_space.hyperparams.learning_starts: 400 must be below total_st"):
        load_tuning(path)


# ---------------------------------------------------------------------------
# Silent exploration no-ops


def test_sac_mean_actions_with_param_noise_is_refused(study_text, tmp_path, capsys) -> None:
    path = study_text({"algo: td3": "algo: sac", "exploration:\n": "exploration:\n  mean_actions: true\n"})
    err = refuse(tmp_path, capsys, path)
    assert (
        f"{path}:13: exploration.mean_actions: sac would act with its unperturbed mean, so exploration.param_noise "
        "would never act; choose one"
    ) in err


def test_mean_actions_with_param_noise_from_a_grid_level_is_refused(study_text, tmp_path, capsys) -> None:
    path = study_text(
        {"algo: td3": "algo: sac", "  param_noise: {interval: episode, adapt_every: 50}\n": "  mean_actions: true\n"},
        append="grid:\n  noise:\n    none: {}\n    param: {exploration.param_noise: {interval: 4}}\n",
    )
    err = refuse(tmp_path, capsys, path)
    assert "grid.noise.param: exploration.mean_actions: sac would act with its unperturbed mean" in err


def test_stop_when_solved_needs_an_env_with_an_optimal_return(study_text, tmp_path, capsys) -> None:
    path = study_text({"eval: {freq: 150, episodes: 1}": "eval: {freq: 150, episodes: 1, stop_when_solved: true}"})
    err = refuse(tmp_path, capsys, path)
    assert f"{path}:6: eval.stop_when_solved: Pendulum-v1 has no optimal_return to reach" in err


# ---------------------------------------------------------------------------
# Messages in the study's terms


BAD = [
    ("totl_steps: 5\n", "17: totl_steps: unknown key; did you mean 'total_steps'?"),
    ("hyperparms: {}\n", "17: hyperparms: unknown key; did you mean 'hyperparams'?"),
    ("resources: {cpu: 2}\n", "17: resources.cpu: unknown key; did you mean 'cpus'?"),
    ("resources: {memory: 2}\n", "17: resources.memory: unknown key (known keys: cpus, gpus, group_size)"),
    ("replay: {type: proportional, rank: 3}\n", "17: replay.rank: unknown key (known keys: type, alpha, beta0, eps)"),
    ("tune: {search_space: {}}\n", "17: tune.trials: required, but not given"),
    ("replay: {alpha: 0.5}\n", "17: replay.type: required, but not given"),
    ("replay: {type: proportinal}\n", "replay.type: must be one of 'uniform', 'proportional', 'rank' (got "),
    ("activation: Relu\n", "17: activation: must be 'relu' or 'tanh' (got 'Relu'); did you mean 'relu'?"),
    ("max_episodes: many\n", "17: max_episodes: must be an integer (got 'many')"),
    ("max_episodes: 2.5\n", "17: max_episodes: must be a whole number (got 2.5)"),
    ("layer_norm: maybe\n", "17: layer_norm: must be true or false (got 'maybe')"),
    ("description: [a]\n", "17: description: must be a string (got ['a'])"),
    ("resources: {gpus: -1}\n", "17: resources.gpus: must be at least 0"),
    ("resources: {gpus: .inf}\n", "17: resources.gpus: must be a finite number (got inf)"),
    ("env_kwargs: {1: 2}\n", "17: env_kwargs: keys must be strings (got 1; quote it: '1')"),
    ("checkpoint_every: 0\n", "17: checkpoint_every: must be greater than 0 (got 0)"),
    ("replay: {type: rank, beta0: 2}\n", "17: replay.beta0: must be at most 1.0 (got 2)"),
    ("env_wrapper: {}\n", "17: env_wrapper: must be 'none' or 'atari'"),
    ("tune: {trials: 1, search_space: {x: {type: categorical, choices: []}}}\n", "needs at least 1 item (got [])"),
    ("tune: {trials: 1, search_space: {}}\n", "17: tune.search_space: needs at least 1 item"),
    ("tune: {trials: 1, objectives: [return, return, return], search_space: {}}\n", "takes at most 2 items"),
]


@pytest.mark.parametrize(("line", "message"), BAD, ids=[line.split(":")[0] for line, _ in BAD])
def test_schema_errors_read_naturally(study_text, tmp_path, capsys, line, message) -> None:
    err = refuse(tmp_path, capsys, study_text(append=line))
    assert message in err
    for phrase in (
        "Input should",
        "Extra inputs",
        "Field required",
        "Value error",
        "String should",
        "after validation",
    ):
        assert phrase not in err


@pytest.mark.parametrize(
    ("replace", "message"),
    [
        (
            {"algo: td3": "algo: td4"},
            "2: algo: unknown algorithm 'td4' (known: ddpg, dqn, ppo, qrdqn, sac, td3, trpo); did you ",
        ),
        ({"[Pendulum-v1]": "[Pendulm-v1]"}, "3: envs: unknown environment id 'Pendulm-v1'; did you mean 'Pendulum-v1'"),
        (
            {"  learning_starts: 100": "  learning_strats: 100"},
            "9: hyperparams.learning_strats: not an argument of TD3; did you",
        ),
        ({"{interval: episode,": "{intervall: 4,"}, "13: exploration.param_noise.intervall: unknown key; did you mean"),
        (
            {"batch_size: 32": "batch_size: [1, step]"},
            "10: hyperparams.batch_size: must be an integer (got [1, 'step'])",
        ),
        ({"small: {total_steps: 150": "small: {total_steps: 0"}, "16: budgets.small: total_steps: must be greater"),
        ({"freq: 150": "freq: often"}, "6: eval.freq: must be an integer or 'episode' (got 'often')"),
        (
            {"  param_noise: {interval: episode, adapt_every: 50}": "  param_noise: 3"},
            "13: exploration.param_noise: must",
        ),
        ({"name: tiny": "name: my study"}, "1: name: must be a string matching ^[A-Za-z0-9_.-]+$ (got 'my study')"),
        ({"net_arch: [16, 16]": "net_arch: [16, 0]"}, "7: net_arch[1]: must be greater than 0 (got 0)"),
    ],
)
def test_messages_name_the_line_and_key(study_text, tmp_path, capsys, replace, message) -> None:
    argv = ["--budget", "small"] if "small" in message else []
    path = study_text(replace)
    assert f"{path}:{message}" in refuse(tmp_path, capsys, path, *argv)


def test_union_members_that_got_furthest_are_reported(study_text, tmp_path, capsys) -> None:
    path = study_text({"  buffer_size: 1000\n": "  buffer_size: 1000\n  train_freq: [1, stp]\n"})
    err = refuse(tmp_path, capsys, path)
    assert "hyperparams.train_freq[1]: must be 'step' or 'episode' (got 'stp'); did you mean 'step'?" in err


def test_grid_and_budget_names(study_text, tmp_path, capsys) -> None:
    path = study_text()
    err = refuse(tmp_path, capsys, path, "--budget", "smal")
    assert f"{path}:14: budgets: no budget named 'smal' (have: full, small); did you mean 'small'?" in err
    path = study_text(append="grid:\n  exploration.param_noise.intervl: [4, 8]\n")
    err = refuse(tmp_path, capsys, path)
    assert f"{path}:18: grid: exploration.param_noise.intervl: unknown key; did you mean 'interval'?" in err
    assert err.count("intervl") == 1  # once for the factor, not once per level
    path = study_text(append="grid:\n  noise:\n    a: {seeds: 3}\n    b: {env: CartPole-v1}\n")
    err = refuse(tmp_path, capsys, path)
    assert "grid.noise.a: seeds: applies to the whole study: a grid level or env override cannot set it" in err
    assert "grid.noise.b: env: set by envs; a grid level cannot change it" in err
    path = study_text(append="env_overrides:\n  Pendulum-v2: {}\n")
    assert "env_overrides.Pendulum-v2: not one of envs; did you mean 'Pendulum-v1'?" in refuse(tmp_path, capsys, path)


def test_overlay_problems_name_the_overlay(study_text, tmp_path, capsys) -> None:
    overlay = tmp_path / "best.yaml"
    overlay.write_text("hyperparams.learning_rate: 1.0e-3\nexploration.param_noise.adapt_evry: 10\n")
    err = refuse(tmp_path, capsys, study_text(), "--overlay", str(overlay), named=overlay)
    assert f"{overlay}:2: exploration.param_noise.adapt_evry: unknown key; did you mean 'adapt_every'" in err


def test_each_problem_once_on_its_own_line(study_text, tmp_path, capsys) -> None:
    path = study_text({"algo: td3": "algo: td4", "seeds: 1": "seeds: [1, 1]"}, append="layer_norm: maybe\n")
    lines = refuse(tmp_path, capsys, path).strip().splitlines()
    assert len(lines) == 3 and all(str(path) in line for line in lines)


def test_dumped_studies_still_load(write_study) -> None:
    """YAML written by yaml.safe_dump (the tests' studies, best.yaml) has no duplicates to refuse."""
    path = write_study({"grid": {"layer_norm": [True, False]}})
    assert yaml.safe_load(path.read_text()) == read_yaml_mapping(path)
    assert len(load_study(path).runs) == 2

"""`study report`: figures, tables and report.md for complete, partial and empty studies."""

from __future__ import annotations

import re
from pathlib import Path

import matplotlib.image as mpimg
import pandas as pd
import pytest

from study.__main__ import main
from study.analysis.labels import level_label, level_names
from study.analysis.report import build_report
from study.config import load_study
from study.store import write_run
from study.synthetic import fake_result

ROOT = Path(__file__).resolve().parent.parent


def check_report(folder: Path, expected: set[str]) -> str:
    """Every figure is a non-empty PNG and PDF that report.md shows; returns report.md."""
    text = (folder / "report.md").read_text()
    pngs = {p.stem for p in folder.glob("*.png")}
    assert pngs == expected
    for name in pngs:
        image = mpimg.imread(folder / f"{name}.png")
        assert image.shape[0] > 200 and image.shape[1] > 200 and image.std() > 0
        assert (folder / f"{name}.pdf").stat().st_size > 1000
        assert f"]({name}.png)" in text
    return text


def test_report_of_the_smoke_study(smoke_results: Path, capsys) -> None:
    path = ROOT / "ablations" / "smoke.yaml"
    assert main(["report", str(path), "--results", str(smoke_results)]) == 0
    assert "8 figures, 2 tables" in capsys.readouterr().out
    folder = smoke_results / "smoke" / "report"
    text = check_report(  # one seed per cell: no score distribution
        folder,
        {
            "learning_curves",
            "return_vs_interval",
            "continuity_vs_interval",
            "final_return_by_layer_norm",
            "tradeoff",
            "tradeoff_eval",
            "sigma",
            "action_traces",
        },
    )
    assert "4 of 4 runs complete" in text and "Partial study" not in text
    assert "warm-up, with random actions, left out" in text
    for table in ("results.md", "results.tex", "metrics.csv", "final_return_by_cell.csv"):
        assert (folder / table).stat().st_size > 0


def test_report_of_a_selection_at_one_interval(smoke_results: Path, tmp_path: Path) -> None:
    """A factor held at one level is named once, not in every label, and the sampling interval
    still draws its figures; the metrics keep every factor's column."""
    import shutil

    results = Path(shutil.copytree(smoke_results, tmp_path / "results"))
    study = load_study(ROOT / "ablations" / "smoke.yaml", only={"interval": ["4"]})
    assert study.constants == {"interval": "4"} and study.factors == ["layer_norm"]
    report = build_report(study, results, reps=50)
    assert {"return_vs_interval", "final_return_by_layer_norm"} <= set(report.figures)
    text = report.markdown.read_text()
    assert "Every run at interval = 4." in text
    assert "| k = 4, layer norm on |" in text  # the interval stays in the labels: its figures are drawn on it
    assert "interval" in (report.folder / "metrics.csv").read_text().splitlines()[0]


def test_a_report_names_levels_as_the_study_labels_them(smoke_results: Path, tmp_path: Path) -> None:
    """The study's `labels` name its levels in every table and caption (and legend); nothing else changes."""
    import shutil

    results = Path(shutil.copytree(smoke_results, tmp_path / "results"))
    study = load_study(ROOT / "ablations" / "smoke.yaml")
    labels = {"layer_norm": {"false": "plain layers"}, "interval": {"episode": "once per episode"}}
    named = study.model_copy(update={"file": study.file.model_copy(update={"labels": labels})})
    text = build_report(named, results, reps=50).markdown.read_text()
    assert "| k = 4, plain layers |" in text and "| once per episode, layer norm on |" in text
    assert "layer norm off" not in text and "k = episode" not in text
    assert level_label("layer_norm", "false") == "layer norm off"  # only within the report


@pytest.fixture
def partial_study(write_study, tmp_path: Path):
    """2 envs × interval {1, 4, episode} × noise {param, action} × 3 seeds, synthetic results:
    one run failed, one cell missing entirely on one env, one seed missing elsewhere."""
    path = write_study(
        {
            "name": "partial",
            "envs": ["Pendulum-v1", "MountainCarContinuous-v0"],
            "seeds": 3,
            "total_steps": 5000,
            "budgets.full": 5000,
            "grid": {
                "exploration.param_noise.interval": [1, 4, "episode"],
                "noise": {"param": {}, "action + param": {"exploration.action_noise.type": "normal"}},
            },
        }
    )
    study = load_study(path)
    results = tmp_path / "results"
    written = 0
    for i, spec in enumerate(study.runs):
        if spec.env == "MountainCarContinuous-v0" and spec.factors["interval"] == "4":
            continue  # a missing cell
        if i == 5:
            continue  # a missing seed
        write_run(fake_result(spec, status="failed" if i == 7 else "done"), results)
        written += 1
    return path, results, written


def test_report_of_a_partial_study_with_a_failed_run(partial_study) -> None:
    path, results, written = partial_study
    study = load_study(path)
    report = build_report(study, results, reps=200)
    text = check_report(
        report.folder,
        {
            "learning_curves",
            "score_distribution",
            "return_vs_interval",
            "continuity_vs_interval",
            "final_return_by_noise",
            "tradeoff",
            "tradeoff_eval",
            "sigma",
        },
    )
    assert f"{written - 1} of {len(study.runs)} runs complete, 1 failed" in text
    assert "**Partial study**" in text and "(failed)" in text and "(pending)" in text
    assert "| k = 4, param | 2/3 | 0/3 |" in text
    table = (report.folder / "results.md").read_text()
    cells = [cell for line in table.splitlines()[2:] for cell in line.split("|")[2:-1]]
    assert all(re.fullmatch(r" \*\*[^*/]+\*\* / [^*]+ ", cell) for cell in cells if "**" in cell)  # the return alone
    assert re.search(r"\| k = 4, param \| .+ \| – \|", table)  # the missing cell
    tex = (report.folder / "results.tex").read_text()
    assert r"\toprule" in tex and r"\textbf{" in tex and r"$\pm$" in tex


def test_report_of_an_empty_or_unknown_study_exits_2(write_study, tmp_path: Path, capsys) -> None:
    path = write_study()
    assert main(["report", str(path), "--results", str(tmp_path / "results")]) == 2
    assert "no complete runs of study 'tiny'" in capsys.readouterr().err
    assert main(["report", str(tmp_path / "nope.yaml")]) == 2
    assert "file not found" in capsys.readouterr().err


def test_episodes_to_solve_figure_for_chain_like_runs(write_study, tmp_path: Path) -> None:
    """Runs that record an `optimal` flag per evaluation, over a factor `n`: the report draws
    episodes-to-solve against N, unsolved runs censored."""
    import numpy as np

    grid = {"n": {"5": {}, "10": {}, "20": {}}}
    chain = {"envs": ["study/Chain-v0"], "algo": "dqn", "exploration": {}, "eval.stop_when_solved": True}
    path = write_study({"name": "chainlike", "seeds": 4, "grid": grid} | chain)
    study = load_study(path)
    results = tmp_path / "results"
    for spec in study.runs:
        result = fake_result(spec, n_evaluations=500)
        n = int(spec.factors["n"])
        solved_from = {5: 100, 10: 200, 20: 300}[n] + 10 * spec.seed if n < 20 or spec.seed < 2 else 10**9
        optimal = np.arange(500) >= solved_from
        optimal[:2] = n == 5 and spec.seed == 0  # the untrained policy (2 evaluations) happens to be optimal
        result.evaluations["optimal"] = optimal
        result.evaluations["gradient_steps"] = np.where(np.arange(500) < 2, 0, np.arange(500))
        write_run(result, results)
    report = build_report(study, results, reps=100)
    assert {"episodes_to_solve", "solved_fraction"} <= set(report.figures)
    assert "learning_curves" not in report.figures  # evaluations after each episode: not aligned on steps
    assert "final_return_by_n" not in report.figures  # runs that stop once solved end at the optimum
    assert "score_distribution" not in report.figures  # nor their final returns' distribution
    metrics = pd.read_csv(report.folder / "metrics.csv")
    solved = metrics.set_index(["n", "seed"])["episodes_to_solve"]
    assert solved[(5, 0)] == 100 + 100 and solved[(10, 3)] == 200 + 30 + 100
    assert np.isnan(solved[(20, 3)])
    table = (report.folder / "episodes_to_solve.md").read_text()
    row = next(line for line in table.splitlines() if line.startswith("| all runs"))
    # N = 5: 200, 210, 220, 230; N = 20: 400, 410 and two unsolved (at the budget, 500), so the
    # median and the upper quartile are lower bounds
    assert "215 [208, 222] (4/4 · 1 init)" in row and "≥ 455 [408, ≥ 500] (2/4 · 0 init)" in row
    assert metrics.set_index(["n", "seed"])["optimal_at_init"].sum() == 1
    assert (report.folder / "episodes_to_solve.tex").is_file()
    check_report(report.folder, set(report.figures))


def test_config_styles_shade_the_levels_of_a_third_factor() -> None:
    import itertools

    from study.analysis.labels import config_label, config_styles

    frame = pd.DataFrame(list(itertools.product(["x", "y"], ["u", "v"], ["1", "2", "3"])), columns=["a", "b", "c"])
    styles = config_styles(frame, ["a", "b", "c"])
    label = dict(zip(map(tuple, frame.to_numpy()), config_label(frame, ["a", "b", "c"]), strict=True))
    shades = [styles[label["x", "u", c]]["color"] for c in "123"]
    assert len(set(shades)) == 3 and sum(shades[0]) < sum(shades[1]) < sum(shades[2])  # dark to light
    assert styles[label["x", "v", "2"]]["color"] == shades[1]  # the second factor sets the line style only
    assert styles[label["x", "v", "2"]]["linestyle"] != styles[label["x", "u", "2"]]["linestyle"]
    assert styles[label["y", "u", "2"]]["color"] != shades[1]


def test_a_level_keeps_its_color_in_figures_that_show_some_levels_only() -> None:
    """The σ figure shows the parameter-noise levels alone; each has the color it has in the
    learning curves, which show every level."""

    from study.analysis.labels import config_styles

    levels = ["Gaussian only", "param k=episode", "param k=64"]
    every = pd.DataFrame({"exploration": pd.Categorical(levels, categories=levels)})
    some = every.iloc[1:]
    all_styles, some_styles = config_styles(every, ["exploration"]), config_styles(some, ["exploration"])
    for label in ("param k = episode", "param k = 64"):
        assert some_styles[label]["color"] == all_styles[label]["color"]
    assert all_styles["Gaussian only"]["color"] != all_styles["param k = episode"]["color"]


def test_factor_comparison_wraps_long_level_names() -> None:

    from study.analysis.figures import factor_comparison

    levels = ["none", "unstructured", "param noise", "gSDE-8"]
    metrics = pd.DataFrame(
        {"env": "E", "noise": pd.Categorical(levels * 2, categories=levels), "seed": [0] * 4 + [1] * 4}
    ).assign(final_return=range(8))
    fig = factor_comparison(metrics, "noise", [], "final_return", reps=50)
    labels = [tick.get_text() for tick in fig.axes[0].get_xticklabels()]
    assert labels == ["none", "unstructured", "parameter\nnoise", "gSDE-8"]


def test_curves_draw_each_run_up_to_its_budget() -> None:
    """A run trained in whole episodes ends past its budget: its rows there are not drawn, a run
    without a known budget keeps all of its rows."""
    from types import SimpleNamespace

    from study.analysis.report import _within_budget

    spec = SimpleNamespace(settings=SimpleNamespace(total_steps=60_000))
    results = SimpleNamespace(specs={"a": spec, "b": spec})
    frame = pd.DataFrame(
        {"run_id": ["a", "a", "a", "b", "b", "c"], "step": [55_000, 60_000, 60_018, 60_000, 60_532, 70_000]}
    )
    kept = _within_budget(frame, results)  # type: ignore[arg-type]
    assert kept["step"].tolist() == [55_000, 60_000, 60_000, 70_000]
    assert kept["run_id"].tolist() == ["a", "a", "b", "c"]


def test_compute_is_the_wall_time_of_each_process_times_its_cpus() -> None:
    from study.analysis.report import _compute

    runs = pd.DataFrame(
        {
            "run_id": ["a", "b", "c", "d", "e"],
            "status": ["done"] * 4 + ["failed"],
            "process": ["a", "a", "a", "d", "e"],  # a stacked group of three, a run alone, a failed one
            "wall_time_s": [3600.0, 3600.0, 3600.0, 1800.0, 9000.0],
            "cpus": [1, 1, 1, 2, 1],
            "resumed_at": [None, None, None, None, None],
            "cpu": ["X", "X", "X", "X", None],
        }
    )
    assert _compute(runs) == (
        "Compute: 2 CPU-hours of training (wall time × CPUs) in 2 processes, stacked groups of up to 3 runs, on X."
    )
    resumed = runs.assign(resumed_at=[40_000, 40_000, 40_000, None, None], cpu=None)
    assert _compute(resumed) == (
        "Compute: 2 CPU-hours of training (wall time × CPUs) in 2 processes, stacked groups of up to 3 runs; "
        "3 runs resumed after an interruption count from the resume, so it is a lower bound."
    )


def test_probabilities_of_improvement_are_the_comparisons_the_study_names(write_study) -> None:
    """P(X better than Y) per comparison, over the runs `where` names, against hand-counted pairs:
    with parameter noise k = 1 returns 10, 11, 12 against once per episode's 0, 1, 13 (6 of 9
    pairs better); with action noise 0, 0, 0 against 5, 5, 5 (none). By default each level is
    compared with its factor's last, over all runs: (6/9 + 0) / 2."""
    from study.analysis.report import _improvement_table

    grid = {
        "exploration.param_noise.interval": [1, "episode"],
        "noise": {"param": {}, "action": {"exploration.action_noise.type": "normal"}},
    }
    where = {"factor": "interval", "x": 1, "y": "episode", "where": {"noise": "param"}}
    returns = {("1", "param"): [10, 11, 12], ("episode", "param"): [0, 1, 13], ("1", "action"): [0, 0, 0]}
    rows = [
        {"env": "Pendulum-v1", "interval": k, "noise": noise, "seed": seed, "final_return": value, "c_train": None}
        for (k, noise) in [("1", "param"), ("episode", "param"), ("1", "action"), ("episode", "action")]
        for seed, value in enumerate(returns.get((k, noise), [5, 5, 5]))
    ]
    metrics = pd.DataFrame(rows).astype({"interval": "category", "noise": "category", "c_train": float})
    named = _improvement_table(metrics, load_study(write_study({"grid": grid, "compare": [where]})), reps=200)
    assert "| k | k = 1 vs k = episode | param | final return (higher is better) | 0.67 [" in named
    assert "param vs action" not in named and "C_train" not in named  # no C_train recorded: no row
    study = load_study(write_study({"grid": grid}))
    default = _improvement_table(metrics, study, reps=200)
    assert "| k | k = 1 vs k = episode | all | final return (higher is better) | 0.33 [" in default
    assert "| noise | param vs action | all |" in default  # levels as readers name them
    with level_names({"noise": {"action": "own noise"}}):  # or as the study's labels do
        assert "| noise | param vs own noise | all |" in _improvement_table(metrics, study, reps=200)


def test_horizontal_lines_on_top_of_each_other_are_named() -> None:
    """Baselines whose IQMs differ by at most 1% of the env's range (0 to 100 here) coincide."""
    from study.analysis.figures import coinciding_levels

    values = {"none": [0.0, 0.1, 0.2, 0.3], "OU": [0.5, 0.6, 0.7, 0.8], "pink": [90.0, 91.0, 92.0, 100.0]}
    runs = pd.DataFrame(
        [{"env": "E", "noise": name, "final_return": v} for name, vs in values.items() for v in vs]
    ).astype({"noise": "category"})
    assert coinciding_levels(runs, ["noise"], "final_return") == {"E": [["none", "OU"]]}  # IQMs 0.15 and 0.65
    narrow = runs[runs["noise"] != "pink"]  # a range of 0.8: 1% of it no longer covers 0.5
    assert coinciding_levels(narrow, ["noise"], "final_return") == {}
    assert coinciding_levels(narrow, ["noise"], "final_return", scale=runs) == {"E": [["none", "OU"]]}


def test_episodes_to_solve_bolds_the_best_and_what_cannot_be_told_from_it() -> None:
    """Per N, the lowest median in bold with every median whose interquartile range overlaps the
    best's; none where all overlap."""
    from study.analysis.tables import solve_table

    solves = {
        ("a", 5): [90, 100, 100, 110],  # median 100, IQR [97.5, 102.5]
        ("b", 5): [95, 101, 103, 120],  # 102 [99.5, 107.25]: overlaps a's
        ("c", 5): [280, 300, 300, 320],  # told apart
        ("a", 10): [100, 110, 120, 130],
        ("b", 10): [105, 115, 125, 135],
        ("c", 10): [110, 120, 130, 140],  # every range overlaps the best's
    }
    metrics = pd.DataFrame(
        [
            {"env": "E", "method": m, "n": n, "seed": i, "episodes_to_solve": float(v)}
            for (m, n), values in solves.items()
            for i, v in enumerate(values)
        ]
    ).astype({"method": "category", "n": "category"})
    best = solve_table(metrics, "n", ["method"], budget=1000).attrs["best"]
    assert best["N = 5"].to_dict() == {"a": True, "b": True, "c": False}
    assert not best["N = 10"].any()


def test_the_solved_fraction_caption_names_panels_no_run_solves() -> None:
    from study.analysis.report import _unsolved_panels

    metrics = pd.DataFrame(
        {
            "actions": ["fixed", "fixed", "randomized", "randomized"],
            "n": ["5", "10", "5", "10"],
            "episodes_to_solve": [100.0, 300.0, 200.0, float("nan")],
        }
    ).astype({"actions": "category", "n": "category"})
    assert _unsolved_panels(metrics, "n", "actions").endswith(": randomized actions, N = 10.")
    assert _unsolved_panels(metrics.fillna(1.0), "n", None) == ""

"""How reports present numbers: precision, bold, labels, and what the figures draw."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from study.analysis.aggregates import probability_of_improvement
from study.analysis.figures import (
    coinciding_curves,
    coinciding_scores,
    learning_curves,
    metric_vs_interval,
    score_distributions,
    tradeoff,
)
from study.analysis.labels import config_label, level_label
from study.analysis.tables import mean_se, results_table, significant, tied_best, to_latex, to_markdown


@pytest.mark.parametrize(
    ("mean", "se", "text"),
    [
        (-116.4, 15.2, "-116 ± 15"),
        (94.486, 0.048, "94.486 ± 0.048"),  # two significant digits of the s.e.
        (-0.0025, 0.0015, "-0.0025 ± 0.0015"),
        (-0.0004, 0.00004, "-0.000400 ± 0.000040"),
        (3.0, float("nan"), "3.00"),  # one seed: no s.e., three significant digits
        (0.0, 0.0, "0 ± 0"),
        (11.0, 0.0, "11.0 ± 0"),  # every seed alike: the mean to three significant digits
        (0.058, 1e-12, "0.0580 ± 0"),  # an s.e. too small to show beside its mean
        (-0.00001, 0.3, "0.00 ± 0.30"),  # never "-0.00"
    ],
)
def test_mean_and_standard_error_at_the_standard_errors_precision(mean: float, se: float, text: str) -> None:
    assert mean_se(mean, se) == text


def test_the_per_cell_table_keeps_the_digits_of_small_returns() -> None:
    from study.analysis.report import _stats_markdown

    stats = pd.DataFrame(
        [
            {
                "env": "E",
                "k": "1",
                "seeds": 10,
                "mean": -0.00204,
                "se": 0.00113,
                "iqm": -0.0011,
                "iqm_low": -0.0031,
                "iqm_high": -0.0002,
            },
            {
                "env": "E",
                "k": "8",
                "seeds": 10,
                "mean": 85.04,
                "se": 9.46,
                "iqm": 94.41,
                "iqm_low": 78.6,
                "iqm_high": 94.6,
            },
        ]
    )
    rows = _stats_markdown(stats, ["k"]).splitlines()[2:]
    assert rows == [
        "| E | 1 | 10 | -0.0020 | 0.0011 | -0.0011 | -0.0031 | -0.0002 |",
        "| E | 8 | 10 | 85.0 | 9.5 | 94.4 | 78.6 | 94.6 |",
    ]


def test_costs_keep_three_significant_digits() -> None:
    assert [significant(v) for v in (22.14, 0.35912, 8.08e-9, 0.0, float("nan"), 19.96, 0.36, 8e-9, 150.0, 1234.5)] == [
        "22.1",
        "0.359",
        "8.08e-09",
        "0",
        "–",
        "20.0",
        "0.360",
        "8.00e-09",
        "150",
        "1.23e+03",
    ]


def test_tied_bests_are_those_whose_interval_overlaps_the_best() -> None:
    mean = pd.Series({"a": 10.0, "b": 9.0, "c": 0.0})
    se = pd.Series({"a": 0.5, "b": 0.5, "c": 0.5})  # a: [9.02, 10.98], b: [8.02, 9.98], c: [-0.98, 0.98]
    assert tied_best(mean, se).to_dict() == {"a": True, "b": True, "c": False}
    assert not tied_best(mean, pd.Series({"a": 9.0, "b": 9.0, "c": 9.0})).any()  # all tied: nothing stands out
    assert tied_best(mean, pd.Series([np.nan] * 3, index=mean.index)).to_dict() == {"a": True, "b": False, "c": False}


def test_results_table_bolds_the_return_and_never_the_cost() -> None:
    metrics = pd.DataFrame(
        {
            "env": "E",
            "noise": ["gSDE"] * 3 + ["none"] * 3,
            "seed": [0, 1, 2] * 2,
            "final_return": [94.4, 94.5, 94.6, -0.001, -0.002, 0.0],
            "c_train": [0.36, 0.35, 0.37, 1e-8, 2e-8, 3e-8],
        }
    )
    table = results_table(metrics, ["noise"])
    assert table.loc["gSDE", "E"] == "94.500 ± 0.058 / 0.360"
    assert table.loc["none", "E"] == "-0.00100 ± 0.00058 / 2.00e-08"
    assert "| gSDE | **94.500 ± 0.058** / 0.360 |" in to_markdown(table)
    assert r"\textbf{94.500 $\pm$ 0.058} / 0.360" in to_latex(table, "caption")


def test_levels_are_named_as_readers_name_them() -> None:
    assert level_label("interval", "8") == "k = 8"
    assert level_label("interval", "episode") == "k = episode"
    assert level_label("layer_norm", "true") == "layer norm on"
    assert level_label("exploration.param_noise.target_distance", "0.1") == "δ = 0.1"
    assert level_label("replay", "uniform", first=False) == "uniform replay"
    assert level_label("method", "NoisyNet", first=False) == "NoisyNet"
    assert level_label("adaptation", "fixed sigma=0.05", first=False) == "fixed σ = 0.05"  # names its parameter
    assert level_label("noise", "param k=episode") == "param k = episode"
    assert level_label("noise", "none, train every 8") == "none, train every 8"
    frame = pd.DataFrame({"method": ["epsilon-greedy"], "replay": ["uniform"], "n": ["20"]})
    assert config_label(frame, ["method", "replay", "n"]).tolist() == ["ε-greedy, uniform replay, N = 20"]


def test_probability_of_improvement_needs_two_seeds_of_each_level() -> None:
    levels = pd.CategoricalDtype(["a", "b"], ordered=True)
    one_seed = pd.DataFrame(
        {"env": ["E", "E"], "f": pd.Categorical(["a", "b"], dtype=levels), "final_return": [1.0, 0.0]}
    )
    assert probability_of_improvement(one_seed, "f", "a", "b", "final_return", reps=20)["tasks"] == 0
    two = pd.DataFrame(
        {"env": "E", "f": pd.Categorical(["a", "a", "b", "b"], dtype=levels), "final_return": [2.0, 3.0, 0.0, 2.0]}
    )
    got = probability_of_improvement(two, "f", "a", "b", "final_return", reps=20)
    assert got["tasks"] == 1 and got["p"] == pytest.approx((1 + 1 + 0.5 + 1) / 4)  # pairs: 2>0, 2=2, 3>0, 3>2


def _evaluations(curves: dict[str, list[float]]) -> pd.DataFrame:
    rows = []
    for config, values in curves.items():
        for seed in range(2):
            for i, value in enumerate(values):
                rows.append({"env": "E", "noise": config, "run_id": f"{config}{seed}", "step": 1000 * (i + 1)})
                rows[-1]["return_mean"] = value + 0.001 * seed
    return pd.DataFrame(rows)


def test_curves_on_top_of_each_other_are_named() -> None:
    evaluations = _evaluations({"none": [0, 0, 0], "OU": [0, 0.05, 0], "gSDE": [0, 90, 94], "param": [0, 0, 0]})
    assert coinciding_curves(evaluations, ["noise"]) == {"E": [["none", "OU", "param"]]}
    assert coinciding_curves(_evaluations({"a": [0, 50], "b": [0, 90]}), ["noise"]) == {}


def _finals(returns: dict[str, list[float]]) -> pd.DataFrame:
    levels = pd.CategoricalDtype(list(returns), ordered=True)
    rows = [(config, seed, value) for config, values in returns.items() for seed, value in enumerate(values)]
    frame = pd.DataFrame(rows, columns=["noise", "seed", "final_return"]).assign(env="E")
    return frame.assign(noise=pd.Categorical(frame["noise"], dtype=levels))


def test_score_distributions_draw_the_fraction_of_runs_above_each_threshold() -> None:
    # MountainCar-like: failures near 0, successes near 94
    finals = _finals({"fails": [0.0, -0.2, 0.1, 0.0], "half": [94.0, 0.0, 93.5, -0.1], "solves": [94.0] * 4})
    ax = score_distributions(finals, ["noise"], reps=50).axes[0]
    lines = {line.get_label(): line for line in ax.get_lines()}
    assert list(lines) == ["fails", "half", "solves"] and ax.get_ylim() == (-0.03, 1.03)
    tau, fraction = lines["half"].get_xdata(), lines["half"].get_ydata()
    assert lines["half"].get_drawstyle() == "steps-post"
    middle = np.searchsorted(tau, 50)
    assert fraction[middle] == 0.5 and lines["solves"].get_ydata()[middle] == 1.0  # two of four runs above τ = 50
    assert fraction[0] == 1.0 and fraction[-1] == 0.0  # τ spans every return, with a margin either side


def test_score_distributions_of_many_configurations_are_small_multiples() -> None:
    fig = score_distributions(_finals({f"c{i}": [i, 2.0 * i] for i in range(6)}), ["noise"], reps=20)
    assert [ax.get_title() for ax in fig.axes if ax.get_visible()] == [f"c{i}" for i in range(6)]


def test_score_distributions_on_top_of_each_other_are_named() -> None:
    finals = _finals({"none": [0.0, -0.3], "OU": [-0.2, 0.1], "pink": [94.0, 0.0], "param": [0.2, 0.0]})
    # sorted returns within 1% of the range (94.3): none, OU and param; pink's 94 stands apart
    assert coinciding_scores(finals, ["noise"]) == {"E": [["none", "OU", "param"]]}
    assert coinciding_scores(_finals({"a": [0.0, 50.0], "b": [0.0, 90.0]}), ["noise"]) == {}


def test_learning_curves_shade_the_warm_up_and_leave_the_untrained_evaluation_out_of_the_y_range() -> None:
    fig = learning_curves(
        _evaluations({"a": [-1500, -200, -150], "b": [-1400, -180, -120]}), ["noise"], 20, {"E": 1500}
    )
    ax = fig.axes[0]
    assert ax.get_ylim()[0] > -300  # the first evaluation (at 1,000, in the warm-up) is not what sets the range
    assert [(patch.get_x(), patch.get_width()) for patch in ax.patches] == [(0, 1500)]  # the warm-up, shaded


def test_the_y_range_holds_the_confidence_bands_after_the_warm_up() -> None:
    # one seed solves (return 90), one does not (0): a mean of 45, its band reaching up to 90
    evaluations = pd.concat(
        [_evaluations({"a": [-500, 0, 0]}).query("run_id == 'a0'"), _evaluations({"a": [-500, 90, 90]})]
    ).assign(run_id=["a0"] * 3 + ["a1"] * 3 + ["a2"] * 3)
    low, high = learning_curves(evaluations, ["noise"], 200, {"E": 1500}).axes[0].get_ylim()
    assert high >= 90 and -100 < low <= 0


def test_many_configurations_are_small_multiples() -> None:
    fig = learning_curves(_evaluations({f"c{i}": [0, i, 2 * i] for i in range(12)}), ["noise"], 20)
    titled = [ax.get_title() for ax in fig.axes if ax.get_visible()]
    assert titled == [f"c{i}" for i in range(12)]


def test_episode_is_drawn_apart_from_the_sampling_intervals() -> None:
    levels = pd.CategoricalDtype(["1", "8", "episode"], ordered=True)
    metrics = pd.DataFrame(
        {"env": "E", "interval": pd.Categorical(["1", "8", "episode"] * 2, dtype=levels), "seed": [0] * 3 + [1] * 3}
    ).assign(final_return=[1.0, 2.0, 3.0, 1.5, 2.5, 3.5])
    fig = metric_vs_interval(metrics, "interval", [], "final_return", reps=20, episode_length={"E": "≈200"})
    ax = fig.axes[0]
    joined = [line for line in ax.get_lines() if line.get_linestyle() != "None" and len(line.get_xdata()) > 1]
    assert [list(line.get_xdata()) for line in joined if line.get_color() != "grey"] == [[1.0, 8.0]]
    assert [t.get_text() for t in ax.get_xticklabels()][-1] == "episode\n(≈200)"


def test_configurations_equal_at_a_k_are_drawn_side_by_side() -> None:
    levels = pd.CategoricalDtype(["1", "8", "episode"], ordered=True)
    metrics = pd.DataFrame(
        {
            "env": "E",
            "interval": pd.Categorical(["1", "8", "episode"] * 4, dtype=levels),
            "training": ["a"] * 6 + ["b"] * 6,
            "seed": ([0] * 3 + [1] * 3) * 2,
        }
    ).assign(final_return=[1.0, 2.0, 3.0, 1.5, 2.5, 3.5] * 2)  # both trainings give the same returns
    ax = metric_vs_interval(metrics, "interval", ["training"], "final_return", reps=20).axes[0]
    joined = [line for line in ax.get_lines() if line.get_linestyle() != "None" and len(line.get_xdata()) > 1]
    xs = [list(line.get_xdata()) for line in joined if line.get_color() != "grey"]
    assert np.allclose(xs, [[2**-0.12, 8 * 2**-0.12], [2**0.12, 8 * 2**0.12]])


def test_the_episode_label_is_the_length_of_the_runs_that_resample_once_per_episode() -> None:
    from types import SimpleNamespace

    from study.analysis.report import _episode_length

    metrics = pd.DataFrame({"run_id": ["a", "b"], "k": ["8", "episode"]})
    episodes = pd.DataFrame({"run_id": ["a", "a", "a", "b"], "env": "E", "length": [100, 100, 100, 999]})
    assert _episode_length(SimpleNamespace(episodes=episodes), metrics, "k") == {"E": "999"}  # every episode
    assert _episode_length(SimpleNamespace(episodes=episodes), metrics.assign(k="8"), "k") == {"E": "≈325"}  # 324.75


def test_tradeoff_goes_log_when_costs_span_decades() -> None:
    metrics = pd.DataFrame(
        {"env": "E", "noise": ["a", "a", "b", "b"], "seed": [0, 1, 0, 1], "final_return": [0.0, 1.0, 90.0, 91.0]}
    ).assign(c_train=[1e-8, 2e-8, 0.3, 0.4])
    assert tradeoff(metrics, ["noise"]).axes[0].get_xscale() == "log"
    assert tradeoff(metrics.assign(c_train=[1.0, 2.0, 3.0, 4.0]), ["noise"]).axes[0].get_xscale() == "linear"


def test_named_levels_that_set_k_are_drawn_against_k_with_the_others_as_baselines(write_study) -> None:
    from types import SimpleNamespace

    from study.analysis.report import _by_family
    from study.config import load_study

    grid = {
        "none": {"exploration.mean_actions": True},
        "param k=1": {"exploration.param_noise": {"interval": 1}},
        "param k=episode": {"exploration.param_noise": {"interval": "episode"}},
        "gSDE k=8": {"exploration.gsde": {"interval": 8}},
        "gSDE k=2": {"exploration.gsde": {"interval": 2}},
    }
    overrides = {"algo": "sac", "exploration.param_noise": None, "hyperparams.train_freq": "episode"}
    study = load_study(write_study(overrides | {"grid": {"noise": grid, "training": {"a": {}, "b": {}}}}))
    results = SimpleNamespace(specs={spec.run_id: spec for spec in study.runs})
    levels = pd.CategoricalDtype(list(grid), ordered=True)
    metrics = pd.DataFrame(
        [
            {
                "run_id": spec.run_id,
                "env": spec.env,
                "noise": spec.factors["noise"],
                "training": spec.factors["training"],
            }
            for spec in study.runs
        ]
    ).astype({"noise": levels})
    with_k, interval, others, baselines, baseline_factors = _by_family(metrics, results, ["noise", "training"])
    assert list(with_k[interval].cat.categories) == ["1", "2", "8", "episode"]
    assert set(zip(with_k["noise family"], with_k[interval], strict=True)) == {
        ("parameter noise", "1"),
        ("parameter noise", "episode"),
        ("gSDE", "8"),
        ("gSDE", "2"),
    }
    assert others == ["noise family", "training"]  # `noise` is drawn by family and k; `training` keeps its lines
    assert set(baselines["noise"]) == {"none"} and baseline_factors == ["noise", "training"]
    one_k = metrics[metrics["noise"].isin(["none", "param k=1", "gSDE k=8"])]
    assert _by_family(one_k, results, ["noise", "training"]) is None  # no family with two values of k


@pytest.mark.parametrize("joined", [True, False])
def test_a_family_over_k_is_joined_in_order_of_k_only_where_k_orders_the_cost(joined: bool) -> None:
    import matplotlib.pyplot as plt

    from study.analysis.figures import tradeoff_by_interval

    k_metrics = pd.DataFrame(
        {"env": "E", "noise family": "parameter noise", "k": ["8", "1", "8", "1"], "seed": [0, 0, 1, 1]}
    ).assign(final_return=[90.0, 0.0, 92.0, 1.0], c_eval=[0.3, 2.0, 0.2, 3.0])
    baselines = pd.DataFrame({"env": "E", "noise": "none", "seed": [0, 1], "final_return": 0.0, "c_eval": 0.0})
    fig = tradeoff_by_interval(k_metrics, "k", ["noise family"], baselines, ["noise"], cost="c_eval", joined=joined)
    family = next(line for line in fig.axes[0].lines if len(line.get_xdata()) == 2)
    assert list(family.get_xdata()) == [2.5, 0.25]  # k = 1, then k = 8: the means over seeds
    assert (family.get_linestyle() != "None") is joined
    assert sorted(text.get_text() for text in fig.axes[0].texts) == ["1", "8"]
    plt.close(fig)


def test_a_baseline_is_a_line_at_its_iqm_with_its_ci_a_bar_right_of_the_panel() -> None:
    import matplotlib.pyplot as plt

    levels = pd.CategoricalDtype(["1", "8"], ordered=True)
    metrics = pd.DataFrame(
        {"env": "E", "interval": pd.Categorical(["1", "8"] * 2, dtype=levels), "seed": [0, 0, 1, 1]}
    ).assign(final_return=[0.0, 90.0, 0.0, 92.0])
    baselines = pd.DataFrame({"env": "E", "noise": "pink", "seed": [0, 1, 2, 3], "final_return": [0.0, 0, 90, 90]})
    fig = metric_vs_interval(metrics, "interval", [], "final_return", 200, {"E": 200.0}, baselines, ["noise"])
    ax = fig.axes[0]
    assert not ax.patches  # no band across the panel
    (level,) = [line for line in ax.get_lines() if line.get_label() == "pink"]
    assert list(level.get_ydata()) == [45.0, 45.0]  # the IQM of 0, 0, 90, 90
    (bar,) = [line for line in ax.get_lines() if min(line.get_xdata()) > 1]  # in the panel's width: right of it
    low, high = bar.get_ydata()
    assert 0 <= low < 45 < high <= 90 and bar.get_color() == level.get_color()
    plt.close(fig)


def test_point_labels_go_where_they_cover_no_other_point_and_no_other_label() -> None:
    import matplotlib.pyplot as plt

    from study.analysis.figures import place_labels

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.set_xlim(0, 100)
    ax.set_ylim(0, 100)
    # "a" would go right above its point, where "b"'s marker is; "c" and "d" are one point
    points = [(50.0, 50.0, 0.0, 0.0), (52.0, 52.0, 0.0, 0.0), (20.0, 20.0, 0.0, 0.0), (20.0, 20.0, 0.0, 0.0)]
    labels = [(name, (x, y), "k", 0) for name, (x, y, _, _) in zip("abcd", points, strict=True)]
    boxes = place_labels(ax, labels, points)
    b_x, b_y = ax.transData.transform((52.0, 52.0)) * 72 / fig.dpi
    a = boxes[0]
    assert not (a[0] - 5 < b_x < a[2] + 5 and a[1] - 5 < b_y < a[3] + 5)
    c, d = boxes[2], boxes[3]
    assert not (c[0] < d[2] and d[0] < c[2] and c[1] < d[3] and d[1] < c[3])
    assert [text.get_text() for text in ax.texts] == list("abcd")
    plt.close(fig)


def test_many_levels_are_listed_down_the_y_axis_in_order() -> None:
    from study.analysis.figures import MANY_LEVELS, factor_comparison

    names = [str(2**i) for i in range(MANY_LEVELS)]
    metrics = pd.DataFrame(
        {
            "env": "E",
            "k": np.repeat(names, 2),
            "seed": [0, 1] * MANY_LEVELS,
            "final_return": np.arange(2.0 * MANY_LEVELS),
        }
    ).astype({"k": pd.CategoricalDtype(names, ordered=True)})
    ax = factor_comparison(metrics, "k", [], "final_return", reps=10).axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == [f"k = {2**i}" for i in range(MANY_LEVELS)]
    assert ax.get_ylim()[0] > ax.get_ylim()[1]  # the first level on top
    assert ax.get_xlabel() == "final return (IQM)"
    few = factor_comparison(metrics[metrics["k"].isin(names[:3])], "k", [], "final_return", reps=10).axes[0]
    assert [t.get_text() for t in few.get_xticklabels()] == ["k = 1", "k = 2", "k = 4"]


def test_settings_are_listed_under_what_sets_them(write_study) -> None:
    from study.analysis.settings import settings_markdown, settings_tables
    from study.config import load_study

    path = write_study(
        {
            "envs": ["Pendulum-v1", "MountainCarContinuous-v0"],
            "hyperparams": {"gamma": 0.99, "tau": 0.005},
            "env_overrides": {"Pendulum-v1": {"hyperparams.gamma": 0.9}},
            "grid": {"algo": {"TD3": {}, "DDPG": {"algo": "ddpg"}}, "exploration.param_noise.interval": [1, 8]},
            "cell_overrides": [
                {"match": {"algo": "DDPG", "env": "MountainCarContinuous-v0"}, "set": {"hyperparams.tau": 0.03}},
                {"match": {"algo": "DDPG", "interval": "8"}, "set": {"hyperparams.batch_size": 64}},
            ],
        }
    )
    study = load_study(path)
    sections = settings_tables(study.runs, ["algo", "interval"])
    assert list(sections) == ["every run", "algo", "k", "env", "algo and env", "configuration"]
    shared = sections["every run"]
    assert shared["net_arch"] == "[16, 16]" and shared["hyperparams.buffer_size"] == "1,000"
    assert shared["exploration.param_noise.adapt_every"] == "50" and shared["layer_norm"] == "false"
    assert "save_model" not in shared and "hyperparams.gradient_steps" not in shared  # no result / unset
    assert "exploration.action_noise" in shared and shared["exploration.action_noise"] == "none"  # off, alone
    assert sections["algo"] == {"TD3": "algo td3", "DDPG": "algo ddpg"}
    assert sections["k"] == {
        "k = 1": "exploration.param_noise: interval 1",
        "k = 8": "exploration.param_noise: interval 8",
    }
    assert sections["env"] == {
        "Pendulum-v1": "hyperparams: gamma 0.9",
        "MountainCarContinuous-v0": "hyperparams: gamma 0.99",
    }
    assert sections["algo and env"]["DDPG · MountainCarContinuous-v0"] == "hyperparams: tau 0.03"
    assert sections["algo and env"]["TD3 · MountainCarContinuous-v0"] == "hyperparams: tau 0.005"
    assert sections["configuration"]["DDPG, k = 8 · Pendulum-v1"] == "hyperparams: batch_size 64"
    assert sections["configuration"]["TD3, k = 8 · Pendulum-v1"] == "hyperparams: batch_size 32"
    text = settings_markdown(study.runs, ["algo", "interval"])
    assert "| hyperparams | buffer_size 1,000 · learning_starts 100 |" in text  # a row per group of keys
    assert "| per algo and env | |" in text and "| DDPG · MountainCarContinuous-v0 | hyperparams: tau 0.03 |" in text

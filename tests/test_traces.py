"""Action traces: what a run records, what the store keeps, and the figure."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
from stable_baselines3.common.callbacks import CallbackList

from study.analysis import figures
from study.config import RunSettings, RunSpec, load_study
from study.recording import TRACE_STEPS
from study.run import build_run, run_result
from study.store import load_results, write_run


def run(exploration: dict, total_steps: int = 400, episode: int = 60) -> tuple[object, object]:
    settings = RunSettings(
        algo="td3",
        env="Pendulum-v1",
        env_kwargs={"max_episode_steps": episode},
        total_steps=total_steps,
        net_arch=[16, 16],
        eval={"freq": 100, "episodes": 2},
        hyperparams={"learning_starts": 100, "batch_size": 16},
        exploration=exploration,
    )
    return train(RunSpec(study="t", budget="full", seed=0, settings=settings))


def train(spec: RunSpec) -> tuple[object, np.ndarray]:
    """The run's result, and every action it sent to its env."""
    parts = build_run(spec)
    actions: list[np.ndarray] = []
    step = parts.model.env.step

    def recording_step(action: np.ndarray) -> tuple:
        actions.append(np.array(action[0]))
        return step(action)

    parts.model.env.step = recording_step  # every action sent to the env, by hand
    parts.model.learn(spec.settings.total_steps, callback=CallbackList(parts.callbacks))
    return run_result(spec, parts, None, pd.Timestamp.now(tz="UTC"), 1.0, None, 1), np.array(actions)


def test_a_run_traces_its_first_episode_after_warm_up_and_three_evaluations() -> None:
    result, actions = run({"param_noise": {"interval": 5}})
    traces = result.traces
    train = traces[traces["kind"] == "train"]
    # warm-up ends at step 100: the episodes start at 0, 60, 120, ... so the first one after it starts at 120
    assert set(train["step"]) == {120} and list(train["t"]) == list(range(60))
    np.testing.assert_allclose(train["action"], actions[120:180, 0])
    first_trained = result.episodes[~result.episodes["warmup"]].iloc[0]
    assert train["sigma"].iloc[0] == first_trained["sigma"] and not np.isnan(first_trained["sigma"])
    evaluations = traces[traces["kind"] == "eval"]
    # the first evaluation at or after 10% and 50% of 400 steps, and the final one
    assert evaluations.groupby("point")["step"].first().to_dict() == {0.1: 100, 0.5: 200, 1.0: 400}
    assert (evaluations.groupby("point").size() == 60).all() and evaluations["sigma"].isna().all()


def test_a_trace_keeps_the_first_steps_of_a_long_episode() -> None:
    episode = TRACE_STEPS + 50  # the second episode, from step 250, is the first after warm-up
    result, _ = run({"action_noise": {"type": "colored", "beta": 1.0}}, total_steps=3 * episode, episode=episode)
    traces = result.traces.groupby(["kind", "point"], dropna=False)
    assert traces.ngroups == 4  # training, and the evaluations at 10%, 50% and 100%
    for _, trace in traces:
        assert list(trace["t"]) == list(range(TRACE_STEPS))


def test_traces_are_stored_and_runs_recorded_before_them_still_load(write_study, tmp_path) -> None:
    study = load_study(write_study({"seeds": 2, "total_steps": 200}))
    for spec in study.runs:
        write_run(train(spec)[0], tmp_path)
    older = tmp_path / study.name / study.runs[1].run_id
    (older / "traces.parquet").unlink()  # a run recorded before traces were
    meta = json.loads((older / "meta.json").read_text())
    del meta["manifest"]["traces.parquet"]
    (older / "meta.json").write_text(json.dumps(meta))
    loaded = load_results(study, tmp_path)  # raises if a run were damaged
    assert len(loaded.runs) == 2 and set(loaded.traces["run_id"]) == {study.runs[0].run_id}
    assert {"env", "seed", "kind", "point", "action"} <= set(loaded.traces)


def test_the_figure_draws_a_panel_per_configuration() -> None:
    rows = []
    for method, values in {
        "white": np.random.default_rng(0).normal(size=50),
        "slow": np.sin(np.arange(50) / 8),
    }.items():
        for kind, point in (("train", np.nan), ("eval", 1.0)):
            rows += [
                {"run_id": method, "env": "E", "seed": 0, "method": method, "kind": kind, "point": point, "step": 0,
                 "t": t, "dim": 0, "action": v, "sigma": np.nan}
                for t, v in enumerate(values)
            ]  # fmt: skip
    traces = pd.DataFrame(rows)
    traces["method"] = pd.Categorical(traces["method"], categories=["white", "slow"], ordered=True)
    fig = figures.action_traces(traces, ["method"], "E")
    titles = [ax.get_title() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert titles == ["white", "slow"]
    lines = fig.axes[1].get_lines()
    np.testing.assert_allclose(lines[-1].get_ydata(), np.sin(np.arange(50) / 8))  # the training trace, drawn last


def test_every_training_trace_is_drawn_in_the_legends_color_apart_from_the_evaluations_grey() -> None:
    """Each panel names its configuration; the training trace is one strong color in every panel
    (so that none is a pale or grey palette color lost on the grey evaluation), and the legend's."""
    from matplotlib.colors import to_rgb

    methods = [f"m{i}" for i in range(10)]
    rows = [
        {"run_id": m, "env": "E", "seed": 0, "method": m, "kind": kind, "point": point, "step": 0,
         "t": t, "dim": 0, "action": np.sin(t / (i + 1)), "sigma": np.nan}
        for i, m in enumerate(methods) for kind, point in (("train", np.nan), ("eval", 1.0)) for t in range(20)
    ]  # fmt: skip
    traces = pd.DataFrame(rows).astype({"method": pd.CategoricalDtype(methods, ordered=True)})
    fig = figures.action_traces(traces, ["method"], "E")
    drawn = [ax.get_lines() for ax in fig.axes if ax.get_visible() and ax.get_title()]
    assert len(drawn) == 10
    colors = {to_rgb(training.get_color()) for _, training in drawn}
    assert len(colors) == 1
    (color,) = colors
    assert max(color) - min(color) > 0.3 and sum(color) < 2.0  # saturated, not pale
    for evaluation, _ in drawn:
        grey = to_rgb(evaluation.get_color())
        assert max(grey) - min(grey) < 0.05
    legend = {
        text.get_text(): handle
        for text, handle in zip(fig.legends[0].get_texts(), fig.legends[0].legend_handles, strict=True)
    }
    assert to_rgb(legend["training"].get_color()) == color

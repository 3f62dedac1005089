"""`study report`: every figure and table a study's factors allow, and a report.md that shows them."""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from study.analysis import figures, tables
from study.analysis.aggregates import MIN_SEEDS, REPS, cell_stats, probability_of_improvement
from study.analysis.labels import config_label, factor_name, level_label, level_names
from study.analysis.metrics import HIGHER_IS_BETTER, LABELS, run_metrics
from study.analysis.settings import settings_markdown
from study.config import FULL_BUDGET, Comparison, RunSettings, Study, StudyError
from study.registry import ALGORITHMS
from study.store import DAMAGED, DONE, FAILED, StudyResults, load_results

INTERVAL_KEY = "exploration.param_noise.interval"
CHAIN_LENGTH_FACTORS = ("n", "chain_length")
CHAIN_VARIANT_FACTORS = ("actions",)  # chain variants drawn side by side, one panel each


@dataclass
class Report:
    """What `build_report` wrote."""

    folder: Path
    figures: dict[str, list[Path]] = field(default_factory=dict)
    tables: list[Path] = field(default_factory=list)
    damaged: dict[str, str] = field(default_factory=dict)  # runs left out as damaged: what is wrong

    @property
    def markdown(self) -> Path:
        return self.folder / "report.md"


def report_dir(study: Study, results: Path) -> Path:
    name = "report" if study.budget == FULL_BUDGET else f"report-{study.budget}"
    if study.only:  # a selection's report never replaces the whole study's
        chosen = "-".join(f"{column}={'+'.join(levels)}" for column, levels in study.only.items())
        name += "-only-" + re.sub(r"[^\w.=+-]", "_", chosen)
    return Path(results) / study.name / name


#: the smoothness costs a report sets against the return: column, figure, what it measures, and
#: whether k orders it (the evaluation's policy acts without the noise: its points stand apart)
COSTS = (
    ("c_train", "tradeoff", "continuity cost C_train (the training episodes: exploration included)", True),
    (
        "c_eval",
        "tradeoff_eval",
        "continuity cost C_eval (the last evaluation: the deterministic, unperturbed policy)",
        False,
    ),
)


def _compared(study: Study) -> list[str]:
    """The factors a report compares: all but those held at one level (by the budget or a
    selection), except the sampling interval and the chain length, on which its figures are drawn."""
    keep = {interval_factor(study), *CHAIN_LENGTH_FACTORS}
    return [f for f in study.factor_levels if f not in study.constants or f in keep]


def interval_factor(study: Study) -> str | None:
    """The factor that varies the sampling interval k, if the study has one."""
    return next((col for col, key in study.factor_keys.items() if key == INTERVAL_KEY), None)


def _targets(results: StudyResults) -> pd.Series:
    """Target distance δ of each run with adaptive parameter noise."""
    targets = {}
    for run_id, spec in results.specs.items():
        noise = spec.settings.exploration.param_noise
        if noise is not None and noise.adaptive:
            targets[run_id] = noise.target_distance
    return pd.Series(targets, dtype=float)


def _distance_of(settings: RunSettings) -> str:
    """The distance a run's parameter noise measures (a key of `figures.DISTANCE_LABELS`)."""
    algo, noise = ALGORITHMS[settings.algo], settings.exploration.param_noise
    if algo.on_policy:
        return f"policy-{noise.distance or 'kl'}" if noise is not None else "policy-kl"
    return "kl" if algo.discrete else "rms"


def _distance(results: StudyResults) -> str:
    """The distance adaptive parameter noise measures in this study's runs: rms, kl or mixed."""
    kinds = {_distance_of(spec.settings) for spec in results.specs.values()}
    return kinds.pop() if len(kinds) == 1 else "mixed"


def build_report(
    study: Study, results: Path | str = "results", reps: int = REPS, include_warmup: bool = False
) -> Report:
    """Load the study's results and write figures (PNG + PDF), tables (Markdown + LaTeX) and
    report.md to `results/<study>/report/` (`report-<budget>/` for other budgets), its levels
    named as the study's `labels` say. Damaged runs are left out and named in `Report.damaged`
    and report.md."""
    with level_names(study.file.labels):
        return _build_report(study, results, reps, include_warmup)


def _build_report(study: Study, results: Path | str, reps: int, include_warmup: bool) -> Report:
    results = Path(results)
    loaded = load_results(study, results, damaged="skip")
    states = loaded.states()
    if not (states == DONE).any():
        damaged = f" ({len(loaded.damaged)} damaged)" if loaded.damaged else ""
        raise StudyError(
            f"{study.path}: no complete runs of study {study.name!r} (budget {study.budget!r}) "
            f"under {results / study.name}{damaged}: run it first with python -m study run {study.path}"
        )
    figures.set_style()
    report = Report(report_dir(study, results), damaged=loaded.damaged)
    report.folder.mkdir(parents=True, exist_ok=True)
    factors = _compared(study)
    metrics = run_metrics(loaded, include_warmup=include_warmup)
    metrics.to_csv(report.folder / "metrics.csv", index=False)
    interval = interval_factor(study)
    others = [f for f in factors if f != interval]
    has_costs = metrics["c_train"].notna().any()

    def figure(name: str, caption: str, make: Callable[[], object]) -> None:
        report.figures[name] = figures.save(make(), report.folder / name)
        captions[name] = caption

    captions: dict[str, str] = {}
    chain_n = next((f for f in factors if f in CHAIN_LENGTH_FACTORS), None)
    solvable = chain_n is not None and "episodes_to_solve" in metrics
    solve = None
    if solvable:
        chain_others = [f for f in factors if f != chain_n]
        chain_panel = next((f for f in chain_others if f in CHAIN_VARIANT_FACTORS), None)
        limits = loaded.runs.get("max_episodes")
        budget = (
            float(limits.max())
            if limits is not None and limits.notna().any()
            else float(loaded.evaluations.groupby("run_id").size().max())  # episodes: one evaluation each
        )
        figure(
            "episodes_to_solve",
            "Episodes until the greedy policy is optimal in `solved_window` consecutive evaluations (one after "
            "each training episode), against the chain length N: median and interquartile range over seeds; "
            "unsolved runs are censored at the budget (hollow: the median is only a lower bound).",
            lambda: figures.episodes_to_solve_vs_n(metrics, chain_n, chain_others, budget, chain_panel),
        )
        solve = tables.solve_table(metrics, chain_n, chain_others, budget)
        caption = (
            f"{study.name}: episodes to solve, median [interquartile range] over seeds (solved / seeds · runs "
            "whose untrained greedy policy was optimal at the first evaluation); only evaluations after learning "
            f"began count; unsolved runs censored at {budget:.0f} episodes, ≥ marks a lower bound; in bold per N, "
            "the lowest median and every median whose interquartile range overlaps it (none where all do)."
        )
        (report.folder / "episodes_to_solve.md").write_text(tables.to_markdown(solve))
        (report.folder / "episodes_to_solve.tex").write_text(tables.to_latex(solve, caption))
        report.tables += [report.folder / "episodes_to_solve.md", report.folder / "episodes_to_solve.tex"]
        figure(  # evaluations after each episode end at different steps in each run: curves over episodes
            "solved_fraction",
            "Fraction of seeds solved (greedy policy optimal in `solved_window` consecutive evaluations) by each "
            "training episode, one panel per chain length N"
            + (f" (one row per level of `{chain_panel}`)." if chain_panel else ".")
            + _unsolved_panels(metrics, chain_n, chain_panel),
            lambda: figures.solved_fraction(metrics, chain_n, chain_others, budget, chain_panel),
        )
    else:
        warmup, curves = _warmup_steps(loaded), _within_budget(loaded.evaluations, loaded)
        figure(
            "learning_curves",
            "Evaluation return (deterministic, unperturbed policy) over training, mean over seeds with a 95% "
            "bootstrap confidence band, per configuration; shaded: the warm-up (random actions, no training), "
            "whose evaluations of the untrained policy may lie below the y-range. Each run is drawn up to its "
            "budget: one trained in whole episodes or rollouts ends with the one that crosses it, and its "
            "evaluation there (the tables' final return) is not drawn."
            + _coinciding(figures.coinciding_curves(curves, factors)),
            lambda: figures.learning_curves(curves, factors, reps=min(reps, 500), warmup=warmup),
        )
    # a run that stops once solved ends at the optimum: its final return says nothing the
    # episodes to solve do not say better
    stops_when_solved = any(spec.settings.eval.stop_when_solved for spec in study.runs)
    seeds = metrics.dropna(subset=["final_return"]).groupby(["env", *factors], observed=True).size()
    if not stops_when_solved and seeds.max() >= MIN_SEEDS:  # one seed is no distribution
        figure(
            "score_distribution",
            "Run-score distributions (rliable's performance profiles): the fraction of runs whose final return "
            "exceeds τ, against τ, per configuration, with a 95% bootstrap band over seeds. A line above another "
            "everywhere is better for every threshold; where returns split into failures and successes, the "
            "height between the two is the fraction of seeds that succeed."
            + _coinciding(figures.coinciding_scores(metrics, factors), "Distributions", "their sorted final returns"),
            lambda: figures.score_distributions(metrics, factors, reps=min(reps, 500)),
        )
    k_metrics, k_others, baselines, baseline_factors = metrics, others, None, []
    if interval is None:  # k set by named levels ("param k=8", "gSDE k=8")
        by_family = _by_family(metrics, loaded, factors)
        if by_family is not None:
            k_metrics, interval, k_others, baselines, baseline_factors = by_family
    drawn_apart = (
        " Runs without a sampling interval are horizontal lines at their IQM, their CI a bar of the same color"
        " right of the panel."
        if baselines is not None and len(baselines)
        else ""
    )

    def on_top(metric: str) -> str:
        if baselines is None or not len(baselines):
            return ""
        sets = figures.coinciding_levels(baselines, baseline_factors, metric, scale=metrics)
        quantity = "return" if metric == "final_return" else "C_train"
        return _coinciding(sets, "Horizontal lines", "their IQMs", quantity)

    if interval:
        figure(
            "return_vs_interval",
            "Final return against the noise sampling interval k: IQM over seeds with 95% bootstrap confidence "
            "intervals; `episode` resamples only at episode starts (drawn apart, with the mean length of those "
            "runs' training episodes); configurations side by side at each k." + drawn_apart + on_top("final_return"),
            lambda: figures.metric_vs_interval(
                k_metrics,
                interval,
                k_others,
                "final_return",
                reps=reps,
                episode_length=_episode_length(loaded, k_metrics, interval),
                baselines=baselines,
                baseline_factors=baseline_factors,
            ),
        )
        if has_costs:
            figure(
                "continuity_vs_interval",
                "Continuity cost of the training episodes (C_train, 0–100, lower is smoother) against the "
                "sampling interval k: IQM over seeds with 95% bootstrap confidence intervals."
                + drawn_apart
                + on_top("c_train"),
                lambda: figures.metric_vs_interval(
                    k_metrics,
                    interval,
                    k_others,
                    "c_train",
                    reps=reps,
                    episode_length=_episode_length(loaded, k_metrics, interval),
                    baselines=baselines,
                    baseline_factors=baseline_factors,
                ),
            )
    for factor in [] if stops_when_solved else others:
        rest = [f for f in factors if f != factor]
        figure(
            f"final_return_by_{_slug(factor)}",
            f"Final return for each level of `{factor}`, side by side: IQM over seeds with 95% bootstrap "
            "confidence intervals" + (f", one color per combination of {', '.join(rest)}." if rest else "."),
            lambda factor=factor, rest=rest: figures.factor_comparison(metrics, factor, rest, "final_return", reps),
        )
    for cost, name, what, joined in COSTS if has_costs else ():
        if metrics[cost].isna().all():
            continue
        if baselines is not None:
            figure(
                name,
                f"Return against smoothness: final return and {what} (mean ± standard error over seeds); each "
                f"noise's sampling intervals {'joined in order of k' if joined else 'as points'} (labelled with "
                "k, `ep`: once per episode), runs without a k as single points. Up and to the left is better.",
                lambda cost=cost, joined=joined: figures.tradeoff_by_interval(
                    k_metrics, interval, k_others, baselines, baseline_factors, cost=cost, joined=joined
                ),
            )
        else:
            figure(
                name,
                f"Return against smoothness: final return and {what} (mean ± standard error over seeds), one "
                "point per configuration. Up and to the left is better.",
                lambda cost=cost: figures.tradeoff(metrics, factors, cost=cost),
            )
    if len(loaded.adaptations):
        figure(
            "sigma",
            "Adaptive parameter noise: σ and the measured distance d over training (median over seeds, "
            "interquartile band; d as a running mean over 1/40 of the run, since one adaptation measures one "
            "batch); wide pale lines: the target distance δ where it is fixed; σ on a log scale where it spans more "
            "than a decade. NoisyNet runs show the mean |σ| of their noisy layers."
            + (" One column per chain length N." if chain_n else ""),
            lambda: figures.sigma_trajectories(
                _within_budget(loaded.adaptations, loaded),
                factors,
                _targets(loaded),
                _distance(loaded),
                columns=chain_n,
            ),
        )
    if len(loaded.traces):
        envs = list(dict.fromkeys(loaded.traces["env"]))
        for env in envs:
            figure(
                "action_traces" if len(envs) == 1 else f"action_traces_{_slug(env)}",
                f"{env}: what each configuration's exploration does to the actions. The first action dimension "
                "over the first training episode after warm-up (colored), and over the first episode of the final "
                "evaluation with the deterministic, unperturbed policy (grey, dashed); one seed, the first "
                "200 steps at most.",
                lambda env=env: figures.action_traces(loaded.traces, factors, env),
            )
    table = tables.results_table(metrics, factors) if has_costs else None
    if table is not None:
        caption = (
            f"{study.name}: final return ± standard error over seeds / continuity cost C_train; in bold, per env, "
            "the returns that cannot be told from the best (mean ± 1.96 s.e. overlapping), none where all overlap."
        )
        (report.folder / "results.md").write_text(tables.to_markdown(table))
        (report.folder / "results.tex").write_text(tables.to_latex(table, caption))
        report.tables += [report.folder / "results.md", report.folder / "results.tex"]
    stats = cell_stats(metrics, "final_return", ["env", *factors], reps=reps)
    stats.to_csv(report.folder / "final_return_by_cell.csv", index=False)

    report.markdown.write_text(
        _markdown(study, loaded, states, metrics, stats, captions, table, solve, include_warmup, reps)
    )
    return report


#: the structured noises sampled on an interval k, and where a run's settings hold theirs
INTERVAL_FAMILIES = {"parameter noise": "param_noise", "gSDE": "gsde"}
FAMILY, INTERVAL = "noise family", "interval"


def _by_family(
    metrics: pd.DataFrame, results: StudyResults, factors: list[str]
) -> tuple[pd.DataFrame, str, list[str], pd.DataFrame, list[str]] | None:
    """For a study whose named levels set the sampling interval k ("param k=8", "gSDE k=8"):
    the runs with a k, with columns for their noise family and k (ordered, `episode` last),
    the factors left to tell their lines apart, the runs without a k (the baselines) and the
    factors that name those. None where no family has two values of k."""
    rows = {}
    for run_id, spec in results.specs.items():
        exploration = spec.settings.exploration
        found = [(name, getattr(exploration, key)) for name, key in INTERVAL_FAMILIES.items()]
        rows[run_id] = next(((name, str(noise.interval)) for name, noise in found if noise is not None), ("", ""))
    family = metrics["run_id"].map(lambda run: rows[run][0])
    k = metrics["run_id"].map(lambda run: rows[run][1])
    with_k = metrics.assign(**{FAMILY: family, INTERVAL: k})[family != ""]
    if not len(with_k) or with_k.groupby(FAMILY)[INTERVAL].nunique().max() < 2:
        return None
    # a factor whose levels each set one family and k is drawn by them; the others keep their lines
    absorbed = [
        f
        for f in factors
        if with_k[f].nunique() > 1 and (with_k.groupby(f, observed=True)[[FAMILY, INTERVAL]].nunique() == 1).all().all()
    ]
    levels = sorted(set(with_k[INTERVAL]), key=lambda level: (level == "episode", int(level) if level.isdigit() else 0))
    with_k[INTERVAL] = pd.Categorical(with_k[INTERVAL], categories=levels, ordered=True)
    families = [name for name in INTERVAL_FAMILIES if name in set(with_k[FAMILY])]
    with_k[FAMILY] = pd.Categorical(with_k[FAMILY], categories=families, ordered=True)
    others = [FAMILY, *(f for f in factors if f not in absorbed)]
    return with_k, INTERVAL, others, metrics[family == ""], list(factors)


def _within_budget(frame: pd.DataFrame, results: StudyResults) -> pd.DataFrame:
    """Each run's rows up to its budget (`total_steps`). A run trained in whole episodes or
    rollouts ends with the one that crosses its budget, so only some runs have steps past it,
    and a curve's mean there would be over those few."""
    budgets = {run_id: spec.settings.total_steps for run_id, spec in results.specs.items()}
    return frame[frame["step"] <= frame["run_id"].map(budgets).astype(float).fillna(float("inf"))]


def _warmup_steps(results: StudyResults) -> dict[str, float]:
    """Per env, the warm-up steps of its runs (learning_starts), where all its runs share one."""
    starts: dict[str, set[int]] = {}
    for spec in results.specs.values():
        value = spec.settings.hyperparams.learning_starts
        if value is None:
            value = ALGORITHMS[spec.settings.algo].default("learning_starts") or 0  # on-policy: no warm-up
        starts.setdefault(spec.env, set()).add(int(value))
    return {env: float(values.pop()) for env, values in starts.items() if len(values) == 1}


def _episode_length(results: StudyResults, metrics: pd.DataFrame, interval: str) -> dict[str, str]:
    """Per env, the length of the training episodes of the runs that resample once per episode
    (what `interval: episode` lasts there; of all runs where none does): the length every
    episode has, or ≈ their mean."""
    episodes = results.episodes
    once = metrics.loc[metrics[interval].astype(str) == figures.EPISODE, "run_id"]
    if len(once):
        episodes = episodes[episodes["run_id"].isin(once)]
    lengths = episodes.groupby("env", observed=True)["length"].agg(["min", "max", "mean"])
    return {
        env: f"{row['max']:.0f}" if row["min"] == row["max"] else f"≈{row['mean']:.0f}"
        for env, row in lengths.iterrows()
    }


def _unsolved_panels(metrics: pd.DataFrame, n: str, panel: str | None) -> str:
    """A caption's sentence naming the panels where no run is solved: every line lies at 0 there."""
    keys = [panel, n] if panel else [n]
    solved = metrics["episodes_to_solve"].notna().groupby([metrics[k] for k in keys], observed=True).sum()
    empty = [key if isinstance(key, tuple) else (key,) for key, count in solved.items() if count == 0]
    if not empty:
        return ""
    named = "; ".join(
        ", ".join(level_label(k, level, first=False) for k, level in zip(keys, key, strict=True)) for key in empty
    )
    return f" No run is solved in these panels, where every line lies at 0, on top of the others: {named}."


def _coinciding(
    sets: dict[str, list[list[str]]], what: str = "Curves", equal: str = "", quantity: str = "return"
) -> str:
    """A caption's sentence naming the lines of a figure that lie on top of each other."""
    if not sets:
        return ""
    named = " — ".join(
        (f"{env}: " if len(sets) > 1 else "") + "; ".join(" = ".join(f"‘{m}’" for m in members) for members in groups)
        for env, groups in sets.items()
    )
    return f" {what} on top of each other ({equal + ' ' if equal else ''}equal to 1% of the {quantity} range): {named}."


def _state(run_id: str, states: pd.Series, damaged: dict[str, str]) -> str:
    """A missing run's state, with what is wrong for a damaged one."""
    return f"damaged: {damaged[run_id]}" if run_id in damaged else states[run_id]


def _slug(text: str) -> str:
    return "".join(c if c.isalnum() else "_" for c in text)


def _markdown(
    study: Study,
    loaded: StudyResults,
    states: pd.Series,
    metrics: pd.DataFrame,
    stats: pd.DataFrame,
    captions: dict[str, str],
    table: pd.DataFrame | None,
    solve: pd.DataFrame | None,
    include_warmup: bool,
    reps: int,
) -> str:
    factors = _compared(study)
    counts = states.value_counts()
    total = len(states)
    lines = [
        f"# {study.name}",
        "",
        *([study.file.description, ""] if study.file.description else []),
        f"Study file `{study.path.name}`, budget `{study.budget}`; "
        f"{counts.get(DONE, 0)} of {total} runs complete"
        + (f", {counts.get(FAILED, 0)} failed" if counts.get(FAILED, 0) else "")
        + (f", {counts.get(DAMAGED, 0)} damaged (left out)" if counts.get(DAMAGED, 0) else "")
        + (
            f", {total - counts.get(DONE, 0) - counts.get(FAILED, 0) - counts.get(DAMAGED, 0)} not run yet"
            if counts.get(DONE, 0) + counts.get(FAILED, 0) + counts.get(DAMAGED, 0) < total
            else ""
        )
        + "."
        + (
            " Every run at " + ", ".join(f"{column} = {level}" for column, level in study.constants.items()) + "."
            if study.constants
            else ""
        ),
        "",
        _compute(loaded.runs),
        "",
        "Metrics: final return = the last evaluation's mean return; C_train = mean continuity cost of the "
        "training episodes ("
        + (
            "episodes begun during warm-up included"
            if include_warmup
            else "episodes begun during warm-up, with random actions, left out"
        )
        + "); IQM = interquartile mean over seeds; confidence intervals are 95% percentile bootstrap "
        f"intervals ({reps} resamples, numpy/scipy implementation of rliable's method).",
        "",
        "## Runs per cell",
        "",
        _runs_per_cell(study, states),
    ]
    missing = [spec for spec in study.runs if states[spec.run_id] != DONE]
    if missing:
        lines += ["", f"**Partial study**: {len(missing)} runs are missing from this report:", ""]
        lines += [f"- `{spec.run_id}` ({_state(spec.run_id, states, loaded.damaged)})" for spec in missing[:50]]
        if len(missing) > 50:
            lines.append(f"- … and {len(missing) - 50} more")
    lines += ["", "## Figures", ""]
    for name, caption in captions.items():
        lines += [f"![{name}]({name}.png)", "", f"*{caption}* ([PDF]({name}.pdf))", ""]
    if table is not None:
        lines += [
            "## Results table",
            "",
            "Final return ± standard error over seeds / continuity cost C_train. In bold, per env, the returns "
            "that cannot be told from the best (their mean ± 1.96 s.e. overlaps the best's), none where all "
            "overlap (also as LaTeX: [results.tex](results.tex)).",
            "",
            tables.to_markdown(table),
        ]
    if solve is not None:
        lines += [
            "## Episodes to solve",
            "",
            "Median [interquartile range] over seeds (solved / seeds · k init: the runs whose untrained greedy "
            "policy was already optimal at the first evaluation). Only evaluations after learning began (after "
            "the first gradient step) count towards the solving streak, so an untrained network that happens to "
            "be optimal is never credited. Unsolved runs count at the episode budget, so ≥ marks a quantile that "
            "is only a lower bound; lowest median per N in bold (also as LaTeX: "
            "[episodes_to_solve.tex](episodes_to_solve.tex)).",
            "",
            tables.to_markdown(solve),
        ]
    improvement = "" if solve is not None else _improvement_table(metrics, loaded.study, reps)
    if improvement:
        lines += ["## Probability of improvement", "", improvement]
    lines += [
        "## Final return per cell",
        "",
        _stats_markdown(stats, factors),
        "Per-run metrics: [metrics.csv](metrics.csv).",
        "",
        "## Settings",
        "",
        "What every run of the study shares, then what each factor's levels set (per env where an env "
        "changes them); settings at the library's defaults are not listed. Each run's full configuration "
        "is the `spec.yaml` in its folder.",
        "",
        settings_markdown(study.runs, factors),
    ]
    return "\n".join(lines)


def _compute(runs: pd.DataFrame) -> str:
    """The training's compute: CPU-hours (wall time × CPUs of each process that trained runs:
    one run, or one stacked group), from what the complete runs recorded."""
    done = runs[runs["status"] == DONE]
    if "process" not in done or done["wall_time_s"].isna().all():
        return "Compute: not recorded."
    processes = done.groupby("process").agg(wall=("wall_time_s", "max"), cpus=("cpus", "max"), runs=("run_id", "size"))
    hours = float((processes["wall"] * processes["cpus"].fillna(1)).sum() / 3600)
    largest = int(processes["runs"].max())
    resumed = int(done["resumed_at"].notna().sum())
    text = (
        f"Compute: {hours:.3g} CPU-hours of training (wall time × CPUs) in {len(processes)} "
        + ("processes" if len(processes) > 1 else "process")
        + (f", stacked groups of up to {largest} runs" if largest > 1 else ", one run each")
    )
    cpus = set(done["cpu"].dropna())
    if len(cpus) == 1 and done["cpu"].notna().all():
        text += f", on {cpus.pop()}"
    if resumed:
        runs_were = (
            "1 run resumed after an interruption counts"
            if resumed == 1
            else f"{resumed} runs resumed after an interruption count"
        )
        text += f"; {runs_were} from the resume, so it is a lower bound"
    return text + "."


def _runs_per_cell(study: Study, states: pd.Series) -> str:
    rows = pd.DataFrame([{"env": spec.env, **spec.factors, "state": states[spec.run_id]} for spec in study.runs])
    factors = _compared(study)
    rows["config"] = config_label(rows, factors)
    counts = rows.pivot_table(index="config", columns="env", values="state", aggfunc=lambda s: (s == DONE).sum())
    planned = rows.pivot_table(index="config", columns="env", values="state", aggfunc="size")
    order = list(dict.fromkeys(rows["config"]))
    envs = list(dict.fromkeys(rows["env"]))
    lines = ["| configuration | " + " | ".join(envs) + " |", "|" + "---|" * (len(envs) + 1)]
    for config in order:
        cells = [f"{counts.loc[config, env]}/{planned.loc[config, env]}" for env in envs]
        lines.append(f"| {config} | " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n\n(complete seeds / planned seeds)\n"


def _improvement_table(metrics: pd.DataFrame, study: Study, reps: int) -> str:
    """P(X better than Y) on final return and on C_train, for the study's `compare` (by default,
    each level of a factor against its last)."""
    lines = []
    for comparison in _comparisons(study):
        factor, x, y = comparison.factor, comparison.x, comparison.y
        if factor not in study.factors or not {x, y} <= set(study.factor_levels[factor]):
            continue  # a level this budget or selection does not run
        runs = metrics
        for column, levels in comparison.where.items():
            runs = runs[runs[column].isin(levels)]
        where = ", ".join(
            level if column == "env" else level_label(column, level)
            for column, levels in comparison.where.items()
            for level in levels
        )
        for metric in ("final_return", "c_train"):
            if runs[metric].isna().all():
                continue
            p = probability_of_improvement(runs, factor, x, y, metric, reps=reps)
            if p["tasks"]:
                better = "higher" if HIGHER_IS_BETTER[metric] else "lower"
                lines.append(
                    f"| {factor_name(factor)} | {level_label(factor, x)} vs {level_label(factor, y)} | "
                    f"{where or 'all'} | {LABELS[metric]} ({better} is better) | "
                    f"{p['p']:.2f} [{p['low']:.2f}, {p['high']:.2f}] |"
                )
    if not lines:
        return ""
    head = [
        "P(X better than Y): over seeds, averaged over envs and the other factors' levels (of the runs "
        "named), with 95% bootstrap CIs; 0.5 means no difference.",
        "",
        "| factor | X vs Y | runs | metric | P(X better) [95% CI] |",
        "|---|---|---|---|---|",
    ]
    return "\n".join(head + lines) + "\n"


def _comparisons(study: Study) -> list[Comparison]:
    """The study's `compare`, or each level of each factor against the factor's last level (a
    task's size, the chain length, is not a choice to compare)."""
    if study.file.compare:
        return study.file.compare
    return [
        Comparison(factor=factor, x=level, y=levels[-1])
        for factor, levels in study.factor_levels.items()
        if factor not in CHAIN_LENGTH_FACTORS
        for level in levels[:-1]
    ]


def _stats_markdown(stats: pd.DataFrame, factors: list[str]) -> str:
    """The per-cell table: mean and se at the se's precision, the IQM and its CI at the CI's."""
    columns = ["env", *factors, "seeds", "mean", "se", "iqm", "iqm_low", "iqm_high"]
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in stats[columns].to_dict("records"):
        at_se = tables.decimals(row["se"], row["mean"])
        at_ci = tables.decimals((row["iqm_high"] - row["iqm_low"]) / 2, row["iqm"])
        digits = {"mean": at_se, "se": at_se, "iqm": at_ci, "iqm_low": at_ci, "iqm_high": at_ci}
        cells = [
            tables.fmt_se(row[c], at_se) if c == "se" else tables.fmt(row[c], digits[c]) if c in digits else str(row[c])
            for c in columns
        ]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"

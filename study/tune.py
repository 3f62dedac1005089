"""Optuna searches over a study's settings: single- or multi-objective, resumable, fanned out on Ray.

A tuning file is a study file without a grid and with a `tune:` section (`TuneSettings`).
Each trial is the study's runs (envs × seeds) with the trial's settings, executed one after
another in one Ray task, stored like study runs under `results/<name>/` (factor `trial`).
The Optuna study lives in `results/<name>/optuna.db` (or any Optuna storage URL).
"""

from __future__ import annotations

import math
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import optuna
import yaml
from optuna.trial import FrozenTrial, TrialState

from study.config import (
    FULL_BUDGET,
    CategoricalParam,
    FloatParam,
    SearchParam,
    Study,
    StudyError,
    TuneSettings,
    load_study,
)
from study.launch import Interrupted, _init_ray, _interrupt_flag, failed_result
from study.live import clear_progress
from study.result import RunResult
from study.run import execute
from study.store import DONE, clear_staging, write_run
from study.studylock import StudyLock

DIRECTIONS = {"return": "maximize", "continuity_cost": "minimize"}
TRIAL_FACTOR = "trial"
BEST_OVERLAY = "best.yaml"
TUNE_FOLDER = "tune"

SAMPLERS: dict[str, Callable[[TuneSettings], optuna.samplers.BaseSampler]] = {
    "tpe": lambda s: optuna.samplers.TPESampler(seed=s.seed, multivariate=True),
    "random": lambda s: optuna.samplers.RandomSampler(seed=s.seed),
    "grid": lambda s: optuna.samplers.GridSampler(grid_space(s), seed=s.seed),
    "nsga2": lambda s: optuna.samplers.NSGAIISampler(seed=s.seed),
}
PRUNERS: dict[str, Callable[[], optuna.pruners.BasePruner]] = {
    "median": lambda: optuna.pruners.MedianPruner(n_startup_trials=3, n_warmup_steps=0),
    "successive_halving": lambda: optuna.pruners.SuccessiveHalvingPruner(),
    "none": lambda: optuna.pruners.NopPruner(),
}


@dataclass(frozen=True)
class Tuning:
    """A validated tuning file, with the budget in force."""

    path: Path
    budget: str
    steps: int | None
    base: Study  # the study's runs without any trial settings

    @property
    def name(self) -> str:
        return self.base.name

    @property
    def settings(self) -> TuneSettings:
        return self.base.file.tune

    def trial_study(self, trials: dict[str, dict[str, Any]]) -> Study:
        """The study whose grid is `trials` (label → settings): what those trials run."""
        overlay = {"grid": {TRIAL_FACTOR: trials}} if trials else None
        return load_study(self.path, self.budget, self.steps, overlay=overlay)


def grid_space(settings: TuneSettings) -> dict[str, list[Any]]:
    """Every value of each parameter, for the grid sampler."""
    space: dict[str, list[Any]] = {}
    for key, param in settings.search_space.items():
        if isinstance(param, CategoricalParam):
            space[key] = list(param.choices)
        else:
            space[key] = np.arange(param.low, param.high + param.step / 2, param.step).tolist()
    return space


def suggest(trial: optuna.Trial, key: str, param: SearchParam) -> Any:
    """The trial's value for one parameter."""
    if isinstance(param, CategoricalParam):
        return trial.suggest_categorical(key, param.choices)
    log = param.type.startswith("log")
    if isinstance(param, FloatParam):
        return trial.suggest_float(key, param.low, param.high, log=log, step=param.step)
    return trial.suggest_int(key, param.low, param.high, log=log, step=param.step)


def load_tuning(path: str | Path, budget: str = FULL_BUDGET, steps: int | None = None) -> Tuning:
    """Read and validate a tuning file; raises StudyError naming the file and the key."""
    path = Path(path)
    base = load_study(path, budget, steps)
    if base.file.tune is None:
        raise StudyError(f"{path}: tune: missing (a tuning file has a tune section)")
    if base.file.grid:
        raise StudyError(f"{path}: grid: a tuning file has no grid (its trials are the grid)")
    if base.file.engine != "sb3":
        raise StudyError(f"{path}: engine: tuning runs each trial's runs one by one (engine: sb3), to prune them")
    tuning = Tuning(path, budget, steps, base)
    for key, param in base.file.tune.search_space.items():
        values = param.choices if isinstance(param, CategoricalParam) else [param.low, param.high]
        for value in values:
            try:
                tuning.trial_study({"probe": {key: value}})
            except StudyError as err:
                detail = str(err).split(": ", 1)[-1].removeprefix("grid.trial.probe: ").removeprefix(f"{key}: ")
                raise StudyError(f"{path}: tune.search_space.{key}: {detail}") from None
    return tuning


def objective_values(results: list[RunResult], objectives: list[str]) -> list[float]:
    """Each objective over the trial's runs: the mean final evaluation return, or the mean
    continuity cost of the training episodes (warm-up episodes left out)."""
    values = []
    for objective in objectives:
        if objective == "return":
            values.append(float(np.mean([r.final_return for r in results])))
        else:
            costs = [r.episodes.loc[~r.episodes["warmup"], "continuity_cost"].mean() for r in results]
            values.append(float(np.mean(costs)))
    return values


@dataclass
class TrialOutcome:
    results: list[RunResult]
    pruned: bool = False


def _trial_task(
    runs: list, storage: str, study_name: str, trial_id: int, pruner: optuna.pruners.BasePruner | None
) -> TrialOutcome:
    """Run a trial's runs one after another; with a `pruner`, report each evaluation's return
    (step: the run's index × its steps + the step) and stop when the pruner says so."""
    trial = None
    if pruner is not None:
        study = optuna.load_study(study_name=study_name, storage=_storage(storage), pruner=pruner)
        trial = optuna.trial.Trial(study, trial_id)
    results: list[RunResult] = []
    for index, spec in enumerate(runs):
        pruned = False

        def report(row: dict[str, Any], index: int = index, total: int = spec.settings.total_steps) -> bool:
            nonlocal pruned
            trial.report(row["return_mean"], index * total + row["step"])
            pruned = trial.should_prune()
            return not pruned

        result = execute(spec, on_evaluation=report if trial is not None else None)
        results.append(result)
        if pruned:
            return TrialOutcome(results, pruned=True)
        if result.status != DONE:
            break
    return TrialOutcome(results)


def _storage(url: str) -> optuna.storages.BaseStorage:
    from sqlalchemy.exc import OperationalError

    # sqlite: several worker processes write to it
    kwargs = {"engine_kwargs": {"connect_args": {"timeout": 60}}} if url.startswith("sqlite") else {}
    try:
        return optuna.storages.RDBStorage(url, **kwargs)
    except OperationalError:  # another process (a notebook, a dashboard) created its tables at the same moment
        return optuna.storages.RDBStorage(url, **kwargs)


def default_storage(results: Path, name: str) -> str:
    return f"sqlite:///{(results / name / 'optuna.db').resolve()}"


def open_study(tuning: Tuning, storage: str) -> optuna.Study:
    """The Optuna study of a tuning (created on first use)."""
    settings = tuning.settings
    return optuna.create_study(
        study_name=tuning.name,
        storage=_storage(storage),
        load_if_exists=True,
        directions=[DIRECTIONS[o] for o in settings.objectives],
        sampler=SAMPLERS[settings.sampler](settings),
        pruner=PRUNERS[settings.pruner](),
    )


@dataclass
class TuneSummary:
    """What one invocation did."""

    completed: list[FrozenTrial] = field(default_factory=list)
    pruned: list[int] = field(default_factory=list)
    failed: list[int] = field(default_factory=list)
    retried: list[int] = field(default_factory=list)  # trials a killed invocation left running
    overlay: Path | None = None


def _finished(study: optuna.Study) -> int:
    return len(study.get_trials(deepcopy=False, states=(TrialState.COMPLETE, TrialState.PRUNED)))


def _requeue(study: optuna.Study, trial_number: int, params: dict[str, Any]) -> bool:
    """Fail a trial that was cut off and queue its settings again, so that no trial is lost; one
    cut off before its settings were drawn is only failed (a fresh trial takes its place)."""
    study.tell(trial_number, state=TrialState.FAIL)
    if params:
        study.enqueue_trial(params, user_attrs={"retry_of": trial_number}, skip_if_exists=False)
    return bool(params)


def run_tuning(
    tuning: Tuning,
    results: Path | str = "results",
    storage: str | None = None,
    workers: int | None = None,
    address: str | None = None,
    verbose: bool = False,
    on_trial: Callable[[FrozenTrial], None] | None = None,
) -> TuneSummary:
    """Run trials until the tuning has its number of finished (complete or pruned) trials.

    Rerunning continues: trials a killed invocation left running are queued again. On SIGINT
    the running trials are cancelled and queued again, and `Interrupted` is raised.
    """
    import ray

    results = Path(results)
    settings = tuning.settings
    folder = results / tuning.name
    summary = TuneSummary()
    with StudyLock(folder):
        clear_progress(folder)  # a killed `study run`'s live progress
        clear_staging(folder)
        storage = storage or default_storage(results, tuning.name)
        study = open_study(tuning, storage)
        for stale in study.get_trials(deepcopy=False, states=(TrialState.RUNNING,)):
            # an enqueued trial holds its settings in fixed_params until they are drawn
            if _requeue(study, stale.number, {**stale.system_attrs.get("fixed_params", {}), **stale.params}):
                summary.retried.append(stale.number)
        started_ray = _init_ray(address, workers, verbose) if _finished(study) < settings.trials else False
        try:
            if _finished(study) < settings.trials:
                _drive(tuning, study, storage, results, summary, on_trial)
        finally:
            if started_ray:
                ray.shutdown()
        if study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,)):
            summary.overlay = export_best(tuning, study, results)
            save_plots(tuning, study, folder / TUNE_FOLDER)
    return summary


def _drive(
    tuning: Tuning,
    study: optuna.Study,
    storage: str,
    results: Path,
    summary: TuneSummary,
    on_trial: Callable[[FrozenTrial], None] | None,
) -> None:
    """Keep `parallel` trials in flight until the tuning has its trials; tell Optuna each outcome."""
    import ray

    settings = tuning.settings
    task = ray.remote(_trial_task)
    cpus = max(spec.settings.resources.cpus for spec in tuning.base.runs)
    gpus = max(spec.settings.resources.gpus for spec in tuning.base.runs)
    parallel = settings.parallel or max(1, int(ray.cluster_resources().get("CPU", 1) // cpus))
    prune = len(settings.objectives) == 1 and settings.pruner != "none"
    inflight: dict[Any, tuple[optuna.Trial, list]] = {}
    with _interrupt_flag() as interrupted:
        while not interrupted.is_set():
            while len(inflight) < parallel and _finished(study) + len(inflight) < settings.trials:
                trial = study.ask()
                params = {key: suggest(trial, key, p) for key, p in settings.search_space.items()}
                runs = tuning.trial_study({str(trial.number): params}).runs
                pruner = PRUNERS[settings.pruner]() if prune else None
                ref = task.options(num_cpus=cpus, num_gpus=gpus).remote(
                    runs, storage, tuning.name, trial._trial_id, pruner
                )
                inflight[ref] = (trial, runs)
            if not inflight or len(summary.failed) >= max(3, settings.trials):
                break
            ready, _ = ray.wait(list(inflight), num_returns=1, timeout=0.5)
            for ref in ready:
                trial, runs = inflight.pop(ref)
                _finish(trial, runs, _outcome(ref, runs), study, settings.objectives, results, summary)
                if on_trial is not None:
                    on_trial(study.trials[trial.number])
    if interrupted.is_set():
        for ref, (trial, _) in inflight.items():
            ray.cancel(ref, force=True)
            _requeue(study, trial.number, trial.params)
        raise Interrupted


def _outcome(ref: Any, runs: list) -> TrialOutcome:
    """The trial task's outcome; failed runs if its worker died for good."""
    import ray
    from ray.exceptions import RayError

    try:
        return ray.get(ref)
    except RayError as err:
        error = f"{type(err).__name__}: {err}\n{traceback.format_exc()}"
        return TrialOutcome([failed_result(spec, error) for spec in runs])


def _finish(
    trial: optuna.Trial,
    runs: list,
    outcome: TrialOutcome,
    study: optuna.Study,
    objectives: list[str],
    results: Path,
    summary: TuneSummary,
) -> None:
    """Store the trial's runs and tell Optuna: pruned, failed (a run failed, or no finite value), or its values."""
    if outcome.pruned:  # its runs were cut short: not stored
        study.tell(trial, state=TrialState.PRUNED)
        summary.pruned.append(trial.number)
        return
    for result in outcome.results:
        write_run(result, results)
        result.model = result.normalize = None  # on disk now
    complete = len(outcome.results) == len(runs) and all(r.status == DONE for r in outcome.results)
    values = objective_values(outcome.results, objectives) if complete else []
    if not complete or not all(math.isfinite(v) for v in values):
        reason = (
            "a run failed (see its error.txt)"
            if not complete
            else f"an objective is not finite ({dict(zip(objectives, values, strict=True))}): "
            "no evaluation, or no training episode after the warm-up"
        )
        trial.set_user_attr("failure", reason)
        study.tell(trial, state=TrialState.FAIL)
        summary.failed.append(trial.number)
        return
    study.tell(trial, values)
    summary.completed.append(study.trials[trial.number])


def best_trials(study: optuna.Study) -> list[FrozenTrial]:
    """The best trial (one objective) or the Pareto set (two)."""
    return list(study.best_trials) if len(study.directions) > 1 else [study.best_trial]


def export_best(tuning: Tuning, study: optuna.Study, results: Path) -> Path:
    """Write the best settings as an overlay `study run --overlay` accepts: the settings
    themselves, or for two objectives a grid with one level per Pareto-optimal trial."""
    best = best_trials(study)
    if len(best) == 1 and len(study.directions) == 1:
        overlay: dict[str, Any] = dict(best[0].params)
        what = f"trial {best[0].number}, {tuning.settings.objectives[0]} = {best[0].value:.6g}"
    else:
        overlay = {"grid": {TRIAL_FACTOR: {str(t.number): dict(t.params) for t in best}}}
        what = f"the Pareto set of {len(best)} trials for {' and '.join(tuning.settings.objectives)}"
    path = results / tuning.name / BEST_OVERLAY
    header = f"# {tuning.name}: {what}\n# python -m study run {tuning.path} --budget {tuning.budget} --overlay {path}\n"
    text = header + yaml.safe_dump(overlay, sort_keys=False, allow_unicode=True)
    staging = path.with_suffix(".yaml.tmp")
    staging.write_text(text)
    staging.replace(path)
    return path


def save_plots(tuning: Tuning, study: optuna.Study, folder: Path) -> list[Path]:
    """Optuna's optimization history, parameter importances and (two objectives) Pareto front, as PNGs."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as oplt

    folder.mkdir(parents=True, exist_ok=True)
    objectives = tuning.settings.objectives
    plots: dict[str, Callable[[], Any]] = {}
    multi = len(objectives) > 1
    for i, objective in enumerate(objectives):
        target = (lambda t, i=i: t.values[i]) if multi else None
        # importances are of reaching low targets: negate an objective that is maximized
        sign = -1.0 if DIRECTIONS[objective] == "maximize" else 1.0
        lowered = (lambda t, i=i, sign=sign: sign * t.values[i]) if multi else None
        plots[f"history_{objective}"] = lambda target=target, o=objective: oplt.plot_optimization_history(
            study, target=target, target_name=o
        )
        plots[f"importances_{objective}"] = lambda target=lowered, o=objective: oplt.plot_param_importances(
            study, target=target, target_name=o
        )
    if len(objectives) > 1:
        plots["pareto_front"] = lambda: oplt.plot_pareto_front(study, target_names=objectives)
    written = []
    for name, plot in plots.items():
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                warnings.simplefilter("ignore", UserWarning)
                ax = plot()
        except (ValueError, RuntimeError) as err:  # e.g. too few finished trials for importances
            optuna.logging.get_logger("study").info("no %s plot: %s", name, err)
            continue
        fig = (ax if not isinstance(ax, np.ndarray) else ax.flat[0]).figure
        fig.set_size_inches(7.5, 4.5)
        fig.tight_layout()
        fig.savefig(folder / f"{name}.png", dpi=150)
        plt.close(fig)
        written.append(folder / f"{name}.png")
    return written


def tuned_study(tuning: Tuning, study: optuna.Study) -> Study:
    """The study of all complete trials (grid factor `trial`), for `study.store.load_results`."""
    trials = study.get_trials(deepcopy=False, states=(TrialState.COMPLETE,))
    return tuning.trial_study({str(t.number): dict(t.params) for t in trials})

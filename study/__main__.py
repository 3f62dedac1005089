"""Command line: python -m study run|status|rename|reuse|report|evaluate STUDY.yaml ...,
python -m study tune TUNE.yaml ..."""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from rich.console import Console
from rich.table import Table

from study.config import FULL_BUDGET, Study, StudyError, load_study, parse_only, parse_sets

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from study.tune import Tuning
from study.launch import MAX_RETRIES, Interrupted, Summary, pending_runs, run_study
from study.live import progress_line, read_progress
from study.progress import ProgressDisplay, counts_line
from study.store import (
    DAMAGED,
    DONE,
    FAILED,
    PARTIAL,
    PENDING,
    NoResultsError,
    check_run,
    damaged_runs,
    resume_steps,
)
from study.studylock import StudyLocked

EXIT_FAILED_RUNS, EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_LOST, EXIT_INTERRUPTED = 1, 2, 3, 4, 130


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)

    def study_command(name: str, help: str) -> argparse.ArgumentParser:
        sub = commands.add_parser(name, help=help)
        sub.add_argument("study", type=Path, help="study YAML file")
        sub.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
        sub.add_argument("--budget", default="full", help="a budget named in the study (default: full)")
        sub.add_argument("--steps", type=int, help="override the budget's total steps per run")
        if name != "tune":
            sub.add_argument("--engine", choices=["sb3", "stacked"], help="override the study's engine")
            sub.add_argument("--overlay", type=Path, help="settings applied after the budget (a best.yaml)")
            sub.add_argument(
                "--set",
                action="append",
                default=[],
                metavar="KEY=VALUE",
                help="a setting by dotted key, over the file, budget and overlay (repeatable): hyperparams.gamma=0.98",
            )
            sub.add_argument(
                "--only",
                action="append",
                default=[],
                metavar="COLUMN=LEVEL,…",
                help="only the runs with these levels of env, seed or a factor (repeatable): env=Hopper-v5,seed=0",
            )
        return sub

    run = study_command("run", "run a study's pending runs")
    run.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    run.add_argument("--workers", type=int, help="local runs at a time (default: one per CPU)")
    run.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT")
    run.add_argument("--retry-failed", action="store_true", help="also rerun the runs that failed")
    run.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    run.add_argument(
        "--tensorboard", type=Path, metavar="DIR", help="each run logs to DIR/<study>/<run_id> for TensorBoard"
    )
    run.add_argument(
        "--max-retries",
        type=int,
        default=MAX_RETRIES,
        help=f"reruns of a run whose worker died (default {MAX_RETRIES})",
    )
    study_command("status", "runs of a study by state")
    rename = study_command("rename", "give existing runs the ids of a changed grid (a factor added, a level renamed)")
    rename.add_argument("--dry-run", action="store_true", help="print the renames and change nothing")
    reuse = study_command(
        "reuse", "copy another study's finished runs that are runs of this one (same seed and settings)"
    )
    reuse.add_argument("--from", dest="source", required=True, help="the other study's name (its folder in --results)")
    reuse.add_argument("--dry-run", action="store_true", help="print the copies and change nothing")
    report = study_command("report", "figures, tables and report.md from a study's results")
    report.add_argument("--include-warmup", action="store_true", help="keep warm-up episodes in C_train")
    evaluate = study_command("evaluate", "evaluate a run's saved model again")
    evaluate.add_argument("--run", required=True, help="the run's id (or its 8-character hash)")
    evaluate.add_argument("--episodes", type=int, help="episodes (default: the run's evaluation episodes)")
    evaluate.add_argument(
        "--explore", action="store_true", help="act with the run's exploration, not deterministically"
    )
    evaluate.add_argument("--video", type=Path, metavar="FILE", help="record the episodes to an MP4 file")
    tune = study_command("tune", "run or continue an Optuna search over a study's settings")
    tune.add_argument("--storage", help="Optuna storage URL (default: sqlite:///RESULTS/NAME/optuna.db)")
    tune.add_argument("--workers", type=int, help="local Ray workers (default: one per CPU)")
    tune.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT")
    tune.add_argument("--verbose", action="store_true", help="show Ray's, the workers' and Optuna's logs")
    tune.add_argument("--show", action="store_true", help="print the trials and the best settings, run nothing")
    return parser


def _load(args: argparse.Namespace) -> Study:
    if args.steps is not None and args.steps <= 0:
        raise StudyError(f"--steps: must be a positive integer (got {args.steps})")
    if getattr(args, "workers", None) is not None and args.workers < 1:
        raise StudyError(f"--workers: must be at least 1 (got {args.workers})")
    return load_study(
        args.study,
        budget=args.budget,
        steps=args.steps,
        overlay=getattr(args, "overlay", None),
        engine=getattr(args, "engine", None),
        sets=parse_sets(getattr(args, "set", [])),
        only=parse_only(getattr(args, "only", [])),
    )


def print_runs(study: Study, results: Path, console: Console) -> None:
    """A table of the study's runs with their factor levels and state, and the totals."""
    table = Table(title=f"{study.name} · budget {study.budget} · {len(study.runs)} runs")
    for column in ["env", *study.factor_levels, "seed", "steps", "id", "state"]:
        table.add_column(column)
    states: Counter = Counter()
    checks = {spec.run_id: check_run(results, spec) for spec in study.runs}
    live = read_progress(results / study.name)
    running = live["running"] if live else {}
    for spec in study.runs:
        check = checks[spec.run_id]
        state = check.state
        states[state] += 1
        row = running.get(spec.run_id)
        if row and state != DONE:
            shown = f"running {row['steps'] / max(row['total'], 1):.0%}"
        else:
            shown = state if check.steps is None else f"{state} at {check.steps:,}"
        table.add_row(
            spec.env, *spec.factors.values(), str(spec.seed), str(spec.settings.total_steps), spec.spec_hash, shown
        )
    console.print(table)
    totals = " · ".join(f"{state} {states[state]}" for state in (DONE, FAILED, PARTIAL, PENDING, DAMAGED))
    console.print(f"total {len(study.runs)}: {totals}", highlight=False)
    if live:
        ago = time.time() - live["written"]
        console.print(
            f"a driver is running this study (as of {ago:.0f} s ago): {counts_line(live['counts'])}", highlight=False
        )
        for run_id, row in running.items():
            console.print(f"  {progress_line(run_id, row)}", highlight=False)
    damaged = {run_id: check.problem for run_id, check in checks.items() if check.state == DAMAGED}
    if damaged:
        console.print("damaged runs (python -m study run redoes them):", highlight=False)
        for run_id, problem in damaged.items():
            console.print(f"  {run_id}: {problem}", highlight=False)
    unsealed = sum(not check.sealed for check in checks.values())
    if unsealed:
        console.print(
            f"{unsealed} runs were written before manifests: their files are checked readable, not against "
            'checksums; seal them with: python -c "from study.store import seal_runs; '
            f"seal_runs('{results / study.name}')\"",
            highlight=False,
        )


def print_estimate(study: Study, args: argparse.Namespace, console: Console) -> None:
    """The pending runs' environment steps and their wall time on this machine, estimated."""
    from study.estimate import estimate, waits_for_episodes

    pending = pending_runs(study, args.results, args.retry_failed)
    if not pending:
        return
    workers = args.workers or os.cpu_count() or 1
    try:
        got = estimate(pending, workers, resume_at=resume_steps(args.results, pending))
    except Exception as err:  # e.g. a GPU run on a machine without one
        console.print(f"no time estimate: calibrating failed ({type(err).__name__}: {err})", highlight=False)
        return
    where = " (the runs on a cluster take what its workers take)" if args.address else ""
    console.print(
        f"estimate{where}: {got.runs} pending runs, {got.steps:,} environment steps at most; "
        f"about {_duration(got.seconds)} of wall time with {workers} local workers "
        f"({_duration(got.run_seconds)} of runs in all), from {got.configurations} configuration(s) "
        f"trained here for a few hundred steps each ({got.calibration_seconds:.0f} s); runs that stop "
        "early take less"
        + (
            "; stacked groups trained at episode ends wait for their longest episode, so runs whose "
            "episodes come to differ as they learn (a goal found, a fall) take longer"
            if waits_for_episodes(pending)
            else ""
        ),
        highlight=False,
    )


def _duration(seconds: float) -> str:
    """45 s, 12 min, 2.5 h, 4.1 days."""
    if seconds >= 2 * 86_400:
        return f"{seconds / 86_400:.1f} days"
    if seconds >= 2 * 3_600:
        return f"{seconds / 3_600:.1f} h"
    return f"{seconds / 60:.0f} min" if seconds >= 60 else f"{seconds:.0f} s"


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    print_runs(_load(args), args.results, console)
    return 0


def cmd_rename(args: argparse.Namespace, console: Console) -> int:
    from study.rename import rename_runs

    study = _load(args)
    return _give_ids(
        console,
        lambda: rename_runs(study, args.results, dry_run=args.dry_run),
        ("would rename" if args.dry_run else "renamed", f"runs of {study.name} under {args.results / study.name}"),
    )


def cmd_reuse(args: argparse.Namespace, console: Console) -> int:
    from study.rename import reuse_runs

    study = _load(args)
    return _give_ids(
        console,
        lambda: {
            f"{args.source}/{old}": new
            for new, old in reuse_runs(study, args.source, args.results, dry_run=args.dry_run).items()
        },
        ("would copy" if args.dry_run else "copied", f"runs of {args.source} to {args.results / study.name}"),
    )


def _give_ids(console: Console, act: Callable[[], dict[str, str]], summary: tuple[str, str]) -> int:
    """Run a rename or a reuse and print each record's old and new id, or why nothing changed."""
    from study.store import DamagedRunError

    verb, what = summary
    try:
        moves = act()
    except DamagedRunError as err:
        print(f"error: nothing changed: {err}", file=sys.stderr)
        return EXIT_FAILED_RUNS
    for old, new in moves.items():
        console.print(f"{old} → {new}", highlight=False)
    console.print(f"{verb} {len(moves)} {what}", highlight=False)
    return 0


def _report_hint(args: argparse.Namespace, study: Study, found: dict[str, int]) -> str:
    """What to type when a study has no results at the budget asked for: report the budgets
    that have results, or run the study."""
    where = "" if args.results == Path("results") else f" --results {args.results}"
    others = [budget for budget in found if budget != study.budget]
    if others:
        return "results exist for " + "; ".join(
            f"budget {b!r}: python -m study report {args.study} --budget {b}{where}" for b in others
        )
    budget = "" if study.budget == FULL_BUDGET else f" --budget {study.budget}"
    return f"run it first: python -m study run {args.study}{budget}{where}"


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from study.analysis.report import build_report

    study = _load(args)
    try:
        report = build_report(study, args.results, include_warmup=args.include_warmup)
    except NoResultsError as err:
        raise StudyError(f"{study.path}: {err}\n{_report_hint(args, study, err.found)}") from None
    console.print(
        f"wrote {report.markdown} ({len(report.figures)} figures, {len(report.tables)} tables)", highlight=False
    )
    _warn_damaged(report.damaged, console)
    return 0


def cmd_evaluate(args: argparse.Namespace, console: Console) -> int:
    from study.evaluate import evaluate_model, find_run, load_model, load_normalize

    if args.episodes is not None and args.episodes < 1:
        raise StudyError(f"--episodes: must be at least 1 (got {args.episodes})")
    spec = find_run(_load(args), args.run)
    episodes = args.episodes or spec.settings.eval.episodes
    model, normalize = load_model(args.results, spec), load_normalize(args.results, spec)
    got = evaluate_model(spec, model, episodes, explore=args.explore, normalize=normalize, video=args.video)
    how = "acting with its exploration" if args.explore else "deterministic policy"
    returns = np.array(got.returns)
    console.print(f"{spec.run_id}: {episodes} episodes, {how}", highlight=False)
    console.print(
        f"return {returns.mean():.2f} ± {returns.std():.2f} (min {returns.min():.2f}, max {returns.max():.2f})"
        f" · length {np.mean(got.lengths):.0f} · continuity cost {np.mean(got.continuity):.4f}"
        f" · jerk cost {np.mean(got.jerk):.4f}",
        highlight=False,
    )
    return 0


def _warn_damaged(damaged: dict[str, str], console: Console) -> None:
    """Name the damaged runs a report leaves out."""
    if damaged:
        console.print(
            f"warning: {len(damaged)} damaged runs left out (python -m study run redoes them):", highlight=False
        )
        for run_id, problem in damaged.items():
            console.print(f"  {run_id}: {problem}", highlight=False)


def _rerun_command() -> str:
    """This command line, to run again."""
    return " ".join(["python -m study", *sys.argv[1:]]) if sys.argv[0].endswith("__main__.py") else "the same command"


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    study = _load(args)
    if args.dry_run:
        print_runs(study, args.results, console)
        print_estimate(study, args, console)
        return 0
    damaged = damaged_runs(study, args.results)
    if damaged:
        console.print(
            f"redoing {len(damaged)} damaged runs (each folder is replaced once its new result is written):",
            highlight=False,
        )
        for run_id, problem in damaged.items():
            console.print(f"  {run_id}: {problem}", highlight=False)
    try:
        with ProgressDisplay(console) as progress:
            summary = run_study(
                study,
                args.results,
                workers=args.workers,
                address=args.address,
                retry_failed=args.retry_failed,
                verbose=args.verbose,
                max_retries=args.max_retries,
                on_event=progress,
                tensorboard=args.tensorboard,
            )
    except Interrupted:
        console.print(f"interrupted: completed runs are saved; run {_rerun_command()} again to resume", highlight=False)
        return EXIT_INTERRUPTED
    line = f"{study.name}: {len(summary.done)} done, {len(summary.failed)} failed"
    line += f", {summary.skipped - summary.failed_before} already complete"
    if summary.failed_before:
        line += f", {summary.failed_before} failed before (rerun them with --retry-failed)"
    console.print(f"{line} → {args.results / study.name}", highlight=False)
    if summary.failed:
        console.print("failed runs (tracebacks in each run's error.txt):", highlight=False)
        for result in summary.failed:
            console.print(f"  {result.spec.run_id}", highlight=False)
    if summary.lost:
        _print_lost(summary, console)
        return EXIT_LOST
    return EXIT_FAILED_RUNS if summary.failed else 0


def _print_lost(summary: Summary, console: Console) -> None:
    """The runs Ray lost, and how to resume them."""
    kinds = Counter(lost.reason.split(":")[0] for lost in summary.lost)
    console.print(
        f"lost {len(summary.lost)} runs to Ray ({', '.join(f'{kind} ×{n}' for kind, n in kinds.items())}), not to "
        f"errors of their own: they are not failed and stay pending; run {_rerun_command()} again to resume",
        highlight=False,
    )
    for lost in summary.lost:
        console.print(f"  {lost.spec.run_id}: {lost.reason[:200]}", highlight=False)
    if {"WorkerCrashedError", "OutOfMemoryError"} & set(kinds):
        console.print(
            "a run whose worker process keeps dying (killed when memory runs out?) is lost again on a rerun: "
            "run fewer at a time (--workers, or more resources.cpus per run)",
            highlight=False,
        )


def print_trials(tuning: Tuning, study: optuna.Study, console: Console) -> None:
    """The trials of a tuning: number, state, objective values and settings; the best marked."""
    from study.tune import best_trials

    finished = [t for t in study.trials if t.state.is_finished()]
    best = {t.number for t in best_trials(study)} if any(t.state.name == "COMPLETE" for t in finished) else set()
    keys = list(tuning.settings.search_space)
    table = Table(title=f"{tuning.name} · budget {tuning.budget} · {len(study.trials)} trials")
    for column in ["trial", "state", *tuning.settings.objectives, *keys, "best"]:
        table.add_column(column)
    for t in study.trials:
        values = [f"{v:.4g}" for v in t.values] if t.values else [""] * len(tuning.settings.objectives)
        params = [f"{v:.4g}" if isinstance(v := t.params.get(k, ""), float) else str(v) for k in keys]
        table.add_row(str(t.number), t.state.name.lower(), *values, *params, "*" if t.number in best else "")
    console.print(table)


def cmd_tune(args: argparse.Namespace, console: Console) -> int:
    import optuna

    from study.tune import BEST_OVERLAY, default_storage, load_tuning, open_study, run_tuning

    if args.steps is not None and args.steps <= 0:
        raise StudyError(f"--steps: must be a positive integer (got {args.steps})")
    if args.workers is not None and args.workers < 1:
        raise StudyError(f"--workers: must be at least 1 (got {args.workers})")
    tuning = load_tuning(args.study, budget=args.budget, steps=args.steps)
    if not args.verbose:
        optuna.logging.set_verbosity(optuna.logging.WARNING)
    storage = args.storage or default_storage(args.results, tuning.name)
    if args.show:
        if args.storage is None and not (args.results / tuning.name / "optuna.db").is_file():
            raise StudyError(f"{args.results / tuning.name}: no tuning has run here yet")
        print_trials(tuning, open_study(tuning, storage), console)
        overlay = args.results / tuning.name / BEST_OVERLAY
        if overlay.is_file():
            console.print(f"best settings: {overlay}\n{overlay.read_text()}", highlight=False)
        return 0

    def on_trial(trial: FrozenTrial) -> None:
        values = ", ".join(f"{v:.4g}" for v in trial.values) if trial.values else trial.user_attrs.get("failure", "")
        console.print(f"trial {trial.number}: {trial.state.name.lower()} {values}", highlight=False)

    try:
        summary = run_tuning(
            tuning, args.results, storage, workers=args.workers, address=args.address, verbose=args.verbose,
            on_trial=on_trial,
        )  # fmt: skip
    except Interrupted:
        console.print("interrupted: finished trials are saved; run the same command again to continue")
        return EXIT_INTERRUPTED
    counts = f"{len(summary.completed)} complete, {len(summary.pruned)} pruned, {len(summary.failed)} failed"
    line = f"{tuning.name}: {counts}"
    if summary.retried:
        line += f"; requeued {len(summary.retried)} trials an earlier run left unfinished"
    console.print(line, highlight=False)
    if summary.overlay is not None:
        console.print(f"best settings → {summary.overlay}", highlight=False)
    return EXIT_FAILED_RUNS if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    commands = {
        "run": cmd_run,
        "status": cmd_status,
        "rename": cmd_rename,
        "reuse": cmd_reuse,
        "report": cmd_report,
        "evaluate": cmd_evaluate,
        "tune": cmd_tune,
    }
    try:
        return commands[args.command](args, console)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT
    except StudyLocked as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_LOCKED


if __name__ == "__main__":
    sys.exit(main())

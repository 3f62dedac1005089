"""Command line: python -m study run|status|report STUDY.yaml ..., python -m study tune TUNE.yaml ..."""

from __future__ import annotations

import argparse
import sys
from collections import Counter
from pathlib import Path
from typing import TYPE_CHECKING

from rich.console import Console
from rich.table import Table

from study.config import Study, StudyError, load_study

if TYPE_CHECKING:
    import optuna
    from optuna.trial import FrozenTrial

    from study.tune import Tuning
from study.launch import MAX_RETRIES, Interrupted, run_study
from study.progress import ProgressDisplay
from study.store import DONE, FAILED, PARTIAL, PENDING, run_status
from study.studylock import StudyLocked

EXIT_FAILED_RUNS, EXIT_BAD_INPUT, EXIT_LOCKED, EXIT_INTERRUPTED = 1, 2, 3, 130


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
            sub.add_argument("--overlay", type=Path, help="settings applied after the budget (a best.yaml)")
        return sub

    run = study_command("run", "run a study's pending runs")
    run.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    run.add_argument("--workers", type=int, help="local runs at a time (default: one per CPU)")
    run.add_argument("--address", help="join a running Ray cluster: auto or HOST:PORT")
    run.add_argument("--retry-failed", action="store_true", help="also rerun the runs that failed")
    run.add_argument("--verbose", action="store_true", help="show Ray's and the workers' logs")
    run.add_argument(
        "--max-retries",
        type=int,
        default=MAX_RETRIES,
        help=f"reruns of a run whose worker died (default {MAX_RETRIES})",
    )
    study_command("status", "runs of a study by state")
    report = study_command("report", "figures, tables and report.md from a study's results")
    report.add_argument("--include-warmup", action="store_true", help="keep warm-up episodes in C_train")
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
    return load_study(args.study, budget=args.budget, steps=args.steps, overlay=args.overlay)


def print_runs(study: Study, results: Path, console: Console) -> None:
    """A table of the study's runs with their factor levels and state, and the totals."""
    table = Table(title=f"{study.name} · budget {study.budget} · {len(study.runs)} runs")
    for column in ["env", *study.factor_levels, "seed", "steps", "id", "state"]:
        table.add_column(column)
    states: Counter = Counter()
    for spec in study.runs:
        state = run_status(results, spec)
        states[state] += 1
        table.add_row(
            spec.env, *spec.factors.values(), str(spec.seed), str(spec.settings.total_steps), spec.spec_hash, state
        )
    console.print(table)
    totals = " · ".join(f"{state} {states[state]}" for state in (DONE, FAILED, PARTIAL, PENDING))
    console.print(f"total {len(study.runs)}: {totals}", highlight=False)


def cmd_status(args: argparse.Namespace, console: Console) -> int:
    print_runs(_load(args), args.results, console)
    return 0


def cmd_report(args: argparse.Namespace, console: Console) -> int:
    from study.analysis.report import build_report

    report = build_report(_load(args), args.results, include_warmup=args.include_warmup)
    console.print(
        f"wrote {report.markdown} ({len(report.figures)} figures, {len(report.tables)} tables)", highlight=False
    )
    return 0


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    study = _load(args)
    if args.dry_run:
        print_runs(study, args.results, console)
        return 0
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
            )
    except Interrupted:
        rerun = (
            " ".join(["python -m study", *sys.argv[1:]]) if sys.argv[0].endswith("__main__.py") else "the same command"
        )
        console.print(f"interrupted: completed runs are saved; run {rerun} again to resume", highlight=False)
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
    return EXIT_FAILED_RUNS if summary.failed else 0


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
    commands = {"run": cmd_run, "status": cmd_status, "report": cmd_report, "tune": cmd_tune}
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

"""Command line: python -m study run STUDY.yaml ..."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from rich.console import Console
from rich.table import Table

from study.config import StudyError, load_study
from study.launch import run_study
from study.run import RunResult
from study.store import run_status

EXIT_BAD_INPUT = 2


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("run", help="run a study's pending runs")
    run.add_argument("study", type=Path, help="study YAML file")
    run.add_argument("--results", type=Path, default=Path("results"), help="results folder (default: results)")
    run.add_argument("--budget", default="full", help="a budget named in the study (default: full)")
    run.add_argument("--steps", type=int, help="override the budget's total steps per run")
    run.add_argument("--dry-run", action="store_true", help="print the grid and exit")
    run.add_argument("--workers", type=int, default=1, help="runs at a time (default: 1)")
    return parser


def _grid_table(study, results: Path) -> Table:
    table = Table(title=f"{study.name} · budget {study.budget} · {len(study.runs)} runs")
    for column in ["env", *study.factor_levels, "seed", "steps", "id", "status"]:
        table.add_column(column)
    for spec in study.runs:
        table.add_row(
            spec.env,
            *spec.factors.values(),
            str(spec.seed),
            str(spec.settings.total_steps),
            spec.spec_hash,
            run_status(results, spec),
        )
    return table


def cmd_run(args: argparse.Namespace, console: Console) -> int:
    if args.steps is not None and args.steps <= 0:
        raise StudyError(f"--steps: must be a positive integer (got {args.steps})")
    if args.workers < 1:
        raise StudyError(f"--workers: must be at least 1 (got {args.workers})")
    study = load_study(args.study, budget=args.budget, steps=args.steps)
    if args.dry_run:
        console.print(_grid_table(study, args.results))
        return 0

    def report(result: RunResult, index: int, total: int) -> None:
        meta = result.meta
        line = f"[{index}/{total}] {result.status:6} {result.spec.run_id}"
        if result.status == "done":
            line += (
                f"  return {result.final_return:.1f}  {meta['steps_per_s']:.0f} steps/s  {meta['wall_time_s']:.0f} s"
            )
        console.print(line, highlight=False)

    summary = run_study(study, args.results, workers=args.workers, on_result=report)
    console.print(
        f"{study.name}: {len(summary.done)} done, {len(summary.failed)} failed, "
        f"{summary.skipped} already complete → {args.results / study.name}",
        highlight=False,
    )
    for result in summary.failed:
        console.print(f"failed: {result.spec.run_id}\n{result.error}", highlight=False)
    return 1 if summary.failed else 0


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    console = Console(soft_wrap=True, width=None if sys.stdout.isatty() else 200)
    try:
        return {"run": cmd_run}[args.command](args, console)
    except StudyError as err:
        print(f"error: {err}", file=sys.stderr)
        return EXIT_BAD_INPUT


if __name__ == "__main__":
    sys.exit(main())

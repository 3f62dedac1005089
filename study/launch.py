"""Runs a study's pending runs and writes each result as it arrives (the driver alone writes)."""

from __future__ import annotations

import multiprocessing as mp
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from study.config import RunSpec, Study
from study.run import RunResult, execute
from study.store import DONE, run_status, write_run


@dataclass
class Summary:
    """What one invocation did."""

    skipped: int = 0
    done: list[RunResult] = field(default_factory=list)
    failed: list[RunResult] = field(default_factory=list)


def pending_runs(study: Study, results: Path) -> list[RunSpec]:
    """The runs of the study that have no complete result yet."""
    return [spec for spec in study.runs if run_status(results, spec) != DONE]


def run_study(
    study: Study,
    results: Path | str = "results",
    workers: int = 1,
    on_result: Callable[[RunResult, int, int], None] | None = None,
) -> Summary:
    """Execute every pending run (one after another, or in `workers` processes) and store it."""
    results = Path(results)
    pending = pending_runs(study, results)
    summary = Summary(skipped=len(study.runs) - len(pending))

    def collect(result: RunResult) -> None:
        write_run(result, results)
        (summary.done if result.status == DONE else summary.failed).append(result)
        if on_result:
            on_result(result, len(summary.done) + len(summary.failed), len(pending))

    if workers <= 1 or len(pending) <= 1:
        for spec in pending:
            collect(execute(spec))
    else:
        with ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn")) as pool:
            for future in as_completed([pool.submit(execute, spec) for spec in pending]):
                collect(future.result())
    return summary

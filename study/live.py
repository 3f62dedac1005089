"""Live progress of the running runs: workers report to a board in the driver's Ray instance;
the driver shows it, and keeps a copy in the study's results folder for `study status`."""

from __future__ import annotations

import json
import os
import time
import uuid
from pathlib import Path
from typing import Any

PROGRESS = ".progress.json"  # in results/<study>/, while a driver runs the study
REPORT_EVERY_S = 2.0  # between a run's reports, and between the driver's copies
#: a run silent this long is not counted as running: its worker may have died, its task waiting
#: for a retry (a run reports while it steps; a long update or evaluation between takes minutes at most)
SILENT_S = 600.0


class ProgressBoard:
    """The latest report of each running run (a Ray actor: workers `report`, the driver reads)."""

    def __init__(self) -> None:
        self.rows: dict[str, dict[str, Any]] = {}

    def report(self, run_id: str, row: dict[str, Any]) -> None:
        self.rows[run_id] = row | {"reported": time.monotonic()}

    def drop(self, run_ids: list[str]) -> None:
        for run_id in run_ids:
            self.rows.pop(run_id, None)

    def snapshot(self) -> dict[str, dict[str, Any]]:
        """Each run's latest report, with `silent_s`: the seconds since it came."""
        now = time.monotonic()
        return {run_id: row | {"silent_s": now - row["reported"]} for run_id, row in self.rows.items()}


def start_board() -> Any:
    """The board as a Ray actor of the driver's Ray instance, restarted (empty) whenever its
    process dies (killed by Ray's memory monitor, say): the runs' next reports fill it again."""
    import ray

    return ray.remote(num_cpus=0, max_restarts=-1)(ProgressBoard).remote()


def reporting(rows: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The runs that reported within SILENT_S."""
    return {run_id: row for run_id, row in rows.items() if row.get("silent_s", 0.0) < SILENT_S}


def write_progress(folder: Path, counts: dict[str, Any], running: dict[str, dict[str, Any]]) -> None:
    """Replace the study's progress copy, atomically."""
    tmp = folder / f".{PROGRESS}.{uuid.uuid4().hex[:8]}"
    tmp.write_text(json.dumps({"written": time.time(), "counts": counts, "running": running}))
    os.replace(tmp, folder / PROGRESS)


def read_progress(folder: Path) -> dict[str, Any] | None:
    """The progress a live driver keeps for the study, or None (no driver runs it)."""
    from study.studylock import StudyLock

    path = Path(folder) / PROGRESS
    if not path.is_file() or not StudyLock.held(folder):
        return None
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return None


def clear_progress(folder: Path) -> None:
    (Path(folder) / PROGRESS).unlink(missing_ok=True)


def progress_line(run_id: str, row: dict[str, Any]) -> str:
    """One line for a running run: steps, speed and its last evaluation."""
    line = f"{run_id}  {row['steps']:,}/{row['total']:,} steps ({row['steps'] / max(row['total'], 1):.0%})"
    if row.get("steps_per_s") is not None:
        line += f" · {row['steps_per_s']:.0f} steps/s"
    if row.get("last_return") is not None:
        line += f" · last evaluation {row['last_return']:.1f}"
    if row.get("silent_s", 0.0) >= SILENT_S:
        line += f" · no report for {row['silent_s'] / 60:.0f} min (its worker may have died; Ray retries its task)"
    return line

"""Progress of a running study: a live rich display on a terminal, plain lines otherwise."""

from __future__ import annotations

import time
from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from study.launch import Event
from study.live import progress_line
from study.result import RunResult

LIVE_RUNS = 8  # running runs shown on a terminal
PLAIN_EVERY_S = 60.0  # between the progress lines printed to a file or pipe


def _duration(seconds: float | None) -> str:
    if seconds is None:
        return "?"
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def result_line(result: RunResult) -> str:
    """One line for a finished run."""
    line = f"{result.status:6} {result.spec.run_id}"
    if result.status == "done":
        meta = result.meta
        final = round(result.final_return, 1) + 0.0  # no "-0.0"
        line += f"  final return {final:.1f}  {meta['steps_per_s']:.0f} steps/s  {meta['wall_time_s']:.0f} s"
    else:
        line += f"  ({(result.error or '').strip().splitlines()[-1][:120]})"
    return line


def counts_line(counts: Event | dict[str, Any]) -> str:
    """The study's counts, elapsed time and ETA (from an Event, or its fields by name)."""
    get = counts.get if isinstance(counts, dict) else lambda name: getattr(counts, name)
    return (
        f"done {get('done')} · failed {get('failed')} · running {get('running')} · pending {get('pending')}"
        f" · elapsed {_duration(get('elapsed'))} · ETA {_duration(get('eta'))}"
    )


def live_text(event: Event, shown: int = LIVE_RUNS) -> str:
    """The counts line, then a line for each of the first `shown` running runs."""
    lines = [counts_line(event)]
    lines += [f"  {progress_line(run_id, row)}" for run_id, row in list(event.progress.items())[:shown]]
    if len(event.progress) > shown:
        lines.append(f"  … and {len(event.progress) - shown} more running")
    return "\n".join(lines)


class ProgressDisplay:
    """Receives launcher events; use as a context manager around `run_study`."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self._printed = time.monotonic()
        self.live = (
            Live(Text(""), console=console, refresh_per_second=2, transient=True) if console.is_terminal else None
        )

    def __enter__(self) -> ProgressDisplay:
        if self.live:
            self.live.__enter__()
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.live:
            self.live.__exit__(*exc)

    def __call__(self, event: Event) -> None:
        if event.result is not None:
            self.console.print(result_line(event.result), highlight=False)
        if self.live:
            self.live.update(Text(live_text(event), style="bold"))
        elif event.kind != "tick":
            self.console.print(counts_line(event), highlight=False)
        elif event.progress and time.monotonic() - self._printed >= PLAIN_EVERY_S:  # a log: now and then
            self.console.print(live_text(event, shown=len(event.progress)), highlight=False)
        else:
            return
        self._printed = time.monotonic()

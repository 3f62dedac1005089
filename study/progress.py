"""Progress of a running study: a live rich display on a terminal, plain lines otherwise."""

from __future__ import annotations

from typing import Any

from rich.console import Console
from rich.live import Live
from rich.text import Text

from study.launch import Event
from study.result import RunResult


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


def counts_line(event: Event) -> str:
    return (
        f"done {event.done} · failed {event.failed} · running {event.running} · pending {event.pending}"
        f" · elapsed {_duration(event.elapsed)} · ETA {_duration(event.eta)}"
    )


class ProgressDisplay:
    """Receives launcher events; use as a context manager around `run_study`."""

    def __init__(self, console: Console) -> None:
        self.console = console
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
            self.live.update(Text(counts_line(event), style="bold"))
        elif event.kind != "tick":
            self.console.print(counts_line(event), highlight=False)

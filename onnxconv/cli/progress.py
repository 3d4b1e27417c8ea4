"""A progress line on stderr for long work, shown only on a terminal (or when asked).

Commands pass :class:`ProgressBar` as the reporter of :func:`onnxconv.progress.reporting` (separate: calibration,
the refit, planner rounds, quantization) or straight to :func:`onnxconv.bench.bench` (timing rounds).
"""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..text import printable

__all__ = ["ProgressBar", "progress_option"]

#: ``--progress auto|on|off``: the same option on every command with long work.
progress_option = click.option(
    "--progress", "progress_mode", type=click.Choice(("auto", "on", "off")), default="auto", show_default=True,
    help="Progress line on stderr (auto: on a terminal, after the first second).")


class ProgressBar:
    """A rich progress bar on stderr that appears only once a run has lasted a second.

    It is redrawn from the progress callback, between runs and at most 8 times a second, never by a thread of its
    own: a refresh thread would wake up during timed runs and take a core from the model being measured.
    """

    def __init__(self, mode: str, delay: float = 1.0) -> None:
        self._tty = sys.stderr.isatty()
        self._enabled = mode == "on" or (mode == "auto" and self._tty)
        self._said = ""  # off a terminal (--progress on in a log): each new phase once, as a plain line
        self._delay = delay  # bench: many short runs, shown after a second; a long phase: shown at once
        self._start = time.perf_counter()
        self._last = 0.0
        self._progress: Any = None
        self._task: Any = None

    def __call__(self, phase: str, done: float, total: float) -> None:
        if not self._enabled:
            return
        phase = printable(phase)  # it quotes model labels (paths); markup=False below keeps '[...]' literal
        if not self._tty:
            if phase != self._said:
                self._said = phase
                click.echo(f"... {phase}", err=True)
            return
        now = time.perf_counter()
        if self._progress is None:
            if now - self._start < self._delay:
                return
            # lazy: rich.progress takes ~100 ms to import; most runs (no terminal, under a second) draw no bar
            from rich.console import Console
            from rich.progress import BarColumn, Progress, TaskProgressColumn, TextColumn, TimeElapsedColumn

            self._progress = Progress(TextColumn("{task.description}", markup=False), BarColumn(), TaskProgressColumn(),
                                      TimeElapsedColumn(), console=Console(stderr=True), auto_refresh=False,
                                      transient=True)
            self._progress.start()
            self._task = self._progress.add_task(phase, total=total)
        if now - self._last < 0.125 and done < total:
            return
        self._last = now
        self._progress.update(self._task, description=phase, completed=done, total=total)
        self._progress.refresh()

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()

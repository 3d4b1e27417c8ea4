"""Progress of long work (calibration, the refit, planner rounds, quantization), reported without plumbing.

The library calls :func:`report` at natural steps (a refit wave, a planner round, a quantization trial); whoever
runs it decides whether anything is shown by installing a reporter with :func:`reporting` (the CLI draws a
progress line on stderr when it is a terminal and stays quiet otherwise; a test installs a list's ``append``).
A context variable, not a parameter threaded through every call: reporting is a concern of the caller, and the
functions in between neither know nor care (the same seam as :mod:`logging`, but typed and structured).

A reporter is ``fn(phase, done, total)``: ``phase`` a short text that says what is being done now (it may hold
an estimate of the time left), ``done`` of ``total`` steps of that phase.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from contextvars import ContextVar

__all__ = ["ProgressFn", "reporting", "report", "eta_text"]

#: ``fn(phase, done, total)``: called between steps, never inside a timed run.
ProgressFn = Callable[[str, float, float], None]

_reporter: ContextVar[ProgressFn | None] = ContextVar("onnxconv_progress", default=None)


@contextmanager
def reporting(fn: ProgressFn | None) -> Iterator[None]:
    """Send the :func:`report` calls made inside the ``with`` block to ``fn`` (None: nowhere)."""
    token = _reporter.set(fn)
    try:
        yield
    finally:
        _reporter.reset(token)


def report(phase: str, done: float = 0.0, total: float = 1.0) -> None:
    """Tell the installed reporter (if any) that ``phase`` is at ``done`` of ``total``."""
    fn = _reporter.get()
    if fn is not None:
        fn(phase, done, total)


def eta_text(seconds: float | None) -> str:
    """An estimate of the time left, as people say it: ``about 3 min left``, ``about 40 s left``."""
    if seconds is None or seconds != seconds or seconds < 0:
        return ""
    if seconds >= 90:
        return f"about {round(seconds / 60)} min left"
    return f"about {max(5, int(round(seconds / 5.0)) * 5)} s left"


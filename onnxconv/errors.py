"""One exception hierarchy for the library.

The CLI turns every :class:`OnnxConvError` into a single line on stderr and a non-zero exit; anything else is a
bug and keeps its traceback. The library never imports click.
"""

from __future__ import annotations

__all__ = ["OnnxConvError", "ModelLoadError", "ShapeError", "OptionError", "RewriteError", "TimingError"]


class OnnxConvError(Exception):
    """Base class: the message is one line that names the problem for the user."""


class ModelLoadError(OnnxConvError):
    """The file is missing, not ONNX, truncated, or refers to external data that is not there."""


class ShapeError(OnnxConvError):
    """A shape needed for counting is unknown or inconsistent (names the input and dim where it can)."""


class OptionError(OnnxConvError):
    """An option value is malformed or contradicts the model (e.g. --input-shape for an unknown input)."""


class RewriteError(OnnxConvError):
    """A rewrite could not produce a valid model; nothing is written."""


class TimingError(OnnxConvError):
    """Timing a model failed: ``--latency-command`` exited non-zero, timed out or printed no ``median_ms``."""

"""onnxconv: count and rewrite the convolutions of ONNX models.

Public API (the CLI is a thin layer over these):

* :func:`analyze` - per-layer params, MACs, exact FLOPs, receptive fields and what-if savings.
* :func:`load_model` / :func:`save_model` - safe I/O (external data, atomic writes).
* :class:`OnnxConvError` - every error meant for the user; its message is one line.

Rewrite passes live in :mod:`onnxconv.passes`, benchmarking in :mod:`onnxconv.bench`.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from .errors import OnnxConvError
    from .model_io import load_model, save_model
    from .stats import StatsReport, analyze

# Loaded on first use (PEP 562): `python -m onnxconv` imports this package before the CLI can guard against a
# Ctrl-C, and importing onnx/numpy here would make that unguarded window most of the start-up time.
_LAZY = {"OnnxConvError": ".errors", "load_model": ".model_io", "save_model": ".model_io",
         "StatsReport": ".stats", "analyze": ".stats"}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(import_module(_LAZY[name], __name__), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")

__all__ = ["analyze", "StatsReport", "load_model", "save_model", "OnnxConvError", "__version__"]
__version__ = "0.1.0"

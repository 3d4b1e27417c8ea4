"""onnxconv: count and rewrite the convolutions of ONNX models.

Public API (the CLI is a thin layer over these):

* :func:`analyze` - per-layer params, MACs, exact FLOPs, receptive fields and what-if savings.
* :func:`load_model` / :func:`save_model` - safe I/O (external data, atomic writes).
* :class:`OnnxConvError` - every error meant for the user; its message is one line.

Rewrite passes live in :mod:`onnxconv.passes`, benchmarking in :mod:`onnxconv.bench`.
"""

from __future__ import annotations

from .errors import OnnxConvError
from .model_io import load_model, save_model
from .stats import StatsReport, analyze

__all__ = ["analyze", "StatsReport", "load_model", "save_model", "OnnxConvError", "__version__"]
__version__ = "0.1.0"

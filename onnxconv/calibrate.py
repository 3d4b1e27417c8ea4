"""Moved to :mod:`onnxconv.calibration`; this module only keeps the CLI's import working until it switches."""

from __future__ import annotations

from .calibration import refit_from_file

__all__ = ["refit_from_file"]

"""Moved to :mod:`onnxconv.planning`; this module only keeps the CLI's import working until it switches."""

from __future__ import annotations

from .planning import plan_from_file

__all__ = ["plan_from_file"]

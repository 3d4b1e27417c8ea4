"""Rewrite passes: one module per rewrite, each returning a :class:`~onnxconv.passes.common.PassResult`."""

from __future__ import annotations

from .common import LayerChange, NodeFilter, PassResult

__all__ = ["LayerChange", "NodeFilter", "PassResult"]

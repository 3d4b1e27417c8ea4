"""What a graph (or subgraph, or function body) sees while it is walked, and shape helpers for it.

A subgraph reads names of its enclosing graphs, so a :class:`Scope` starts from its parent's shapes, types,
producers and constant names and adds its own: value_info, initializers (and sparse ones), and the dims of
``Constant`` nodes' tensors.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, TypeGuard

import onnx

from ..graph import shape_of_value_info
from ..shapes import type_map

__all__ = ["Scope", "int_shape", "is_static", "DEFAULT_DOMAINS"]

DEFAULT_DOMAINS = ("", "ai.onnx")


def int_shape(shape: Sequence[int | str | None] | None) -> list[int | None] | None:
    """A shape with every symbolic or unknown dim as None (None stays None)."""
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


def is_static(shape: Sequence[Any] | None) -> TypeGuard[Sequence[int]]:
    """Whether every dim of ``shape`` is a known non-negative int (a TypeGuard: the checker then sees ints)."""
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


class Scope:
    """What a graph (or subgraph, or function body) sees: shapes, types, producers and constant names, with
    the enclosing scope's behind them (a subgraph reads outer names)."""

    def __init__(self, graph: onnx.GraphProto, parent: Scope | None, consts: set[str], key_prefix: str = "") -> None:
        self.parent = parent
        self.key_prefix: str = key_prefix or (parent.key_prefix if parent else "")
        self.shapes: dict[str, Any] = dict(parent.shapes) if parent else {}
        self.types: dict[str, onnx.TypeProto] = dict(parent.types) if parent else {}
        for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
            s = shape_of_value_info(vi)
            if s is not None:
                self.shapes[vi.name] = s
        for t in graph.initializer:
            self.shapes[t.name] = tuple(int(d) for d in t.dims)
        sparse = {sp.values.name: tuple(int(d) for d in sp.dims) for sp in graph.sparse_initializer}
        self.shapes.update(sparse)
        for node in graph.node:
            if node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        self.shapes.setdefault(node.output[0], tuple(int(d) for d in a.t.dims))
        self.types.update(type_map(graph))
        self.consts: set[str] = (set(parent.consts) if parent else set()) | consts | {t.name for t in graph.initializer} | set(sparse)
        self.producers: dict[str, onnx.NodeProto] = dict(parent.producers) if parent else {}
        for node in graph.node:
            for o in node.output:
                if o:
                    self.producers[o] = node

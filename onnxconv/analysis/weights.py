"""Where a conv's weight comes from, and which rows share one stored weight.

Weights are never read, only their shapes: a weight is an initializer or a ``Constant`` (possibly behind
Cast/DequantizeLinear/Identity, which keep its shape), or computed at run time, when its shape comes from
inference or, failing that, from ``kernel_shape``, ``group`` and the channels around it. A stored weight has a
*sharing key* (its name, qualified by the function it lives in): rows with the same key read the same tensor,
whose params the totals count once.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from .. import counting as C
from ..weightless import stripped_source
from .layer import LayerStats
from .scope import DEFAULT_DOMAINS, Scope, is_static

__all__ = ["trace_weight", "const_elems", "weight_from_attrs", "SharedWeights"]

# Ops whose weight input keeps its shape: the weight behind them is still an initializer or Constant.
_SHAPE_KEEPING = ("Cast", "Identity", "DequantizeLinear", "QuantizeLinear", "CastLike")


def trace_weight(name: str, scope: Scope) -> tuple[tuple[int, ...] | None, str, str | None]:
    """(shape, source, sharing key) of a weight input: an initializer or Constant, possibly behind
    Cast/DequantizeLinear/Identity, or computed at run time (shape from inference, maybe unknown)."""
    chain: list[str] = []
    cur, source, key = name, "computed at run time", None
    for _ in range(16):
        node = scope.producers.get(cur)
        stub = stripped_source(node) if node is not None else None
        if cur in scope.consts or stub == "initializer":
            source, key = "initializer", scope.key_prefix + cur
            break
        if node is None:
            source = "graph input" if not chain else source
            break
        if stub == "Constant" or (node.op_type == "Constant" and node.domain in DEFAULT_DOMAINS):
            source, key = "Constant", scope.key_prefix + cur
            break
        if node.op_type in _SHAPE_KEEPING and node.domain in DEFAULT_DOMAINS and node.input:
            chain.append(node.op_type)
            cur = node.input[0]
            continue
        break
    if chain and key is not None:
        source += " via " + "/".join(chain)
    shape = scope.shapes.get(name)
    if not is_static(shape) and key is not None:
        shape = scope.shapes.get(cur)
    return (tuple(shape) if is_static(shape) else None), source, key


def const_elems(name: str, scope: Scope) -> int:
    """Elements of an operand that is a stored weight (0 for activations)."""
    if not name:
        return 0
    shape, source, _ = trace_weight(name, scope)
    return C.prod(shape) if shape is not None and source.startswith(("initializer", "Constant")) else 0


def weight_from_attrs(op: str, attrs: Mapping[str, Any], x: list[int | None] | None,
                       y: list[int | None] | None) -> tuple[int, ...] | None:
    """A computed weight's shape from kernel_shape, group and the input/output channels, when all are known."""
    kernel = attrs.get("kernel_shape")
    if not kernel or x is None or y is None or len(x) < 2 or len(y) < 2 or x[1] is None or y[1] is None:
        return None
    g = int(attrs.get("group", 1) or 1)
    c_in, c_out = x[1], y[1]
    if g < 1 or c_in % g or c_out % g:
        return None
    if op == "ConvTranspose":
        return (c_in, c_out // g, *[int(k) for k in kernel])
    return (c_out, c_in // g, *[int(k) for k in kernel])


class SharedWeights:
    """The rows reading each stored weight (by sharing key), for the params counted more than once."""

    def __init__(self) -> None:
        self.users: dict[str, list[LayerStats]] = {}

    def add(self, key: str | None, row: LayerStats) -> None:
        """Record that ``row`` reads the stored weight ``key`` (None: a computed weight, never shared)."""
        if key is not None:
            self.users.setdefault(key, []).append(row)

    def extra_params(self) -> int:
        """Weight elements counted more than once because several rows read the same stored tensor."""
        extra = 0
        for users in self.users.values():
            if len(users) > 1 and users[0].weight_shape is not None:
                extra += C.prod(users[0].weight_shape) * (len(users) - 1)
        return extra

"""Receptive fields and effective strides (jumps) of tensors with respect to the model input.

Per spatial axis, through a conv or pooling layer: ``rf += (k_eff - 1) * jump``, ``jump *= stride``
(:func:`onnxconv.counting.rf_step`; ConvTranspose divides the jump, :func:`onnxconv.counting.rf_step_transpose`).
Where paths meet, the maximum over them. A global pooling (or a reduction over all spatial axes) sees the whole
input but yields a 1x1 map (``collapsed``): broadcasting it back (an SE block) widens the field of what follows
without changing its effective stride. A resize scales the jump by in/out.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import onnx

from .. import counting as C
from ..conv import known
from ..graph import as_ints, attrs_of
from .scope import int_shape, is_static

__all__ = ["Field", "merge_fields", "fit_field", "field_steps", "input_field", "clean_values", "spatial_field"]

_POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
_GLOBAL_POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
_REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd")
_RESIZE_OPS = ("Resize", "Upsample")


@dataclass(frozen=True)
class Field:
    """Receptive field and effective stride (jump) per spatial axis of a tensor w.r.t. the model input.

    ``collapsed``: the tensor is a 1x1 summary of a whole map (global pooling); its jump must not become the
    stride of a full map it is broadcast onto. ``extent``: the model input's spatial size when known; a global
    pooling sees all of it, so its field is the whole input (not the input again for every SE block).
    """

    rf: tuple[float, ...]
    jump: tuple[float, ...]
    collapsed: bool = False
    extent: tuple[float, ...] | None = None


def _axis(values: tuple[float, ...], i: int) -> float:
    # A field tracked over fewer axes (e.g. after a Flatten) applies its widest value to every axis.
    return values[i] if i < len(values) else max(values)


def merge_fields(fields: Sequence[Field | None]) -> Field | None:
    """Where paths meet: the widest field per axis, and the jump of the full-map paths (a collapsed 1x1
    summary broadcast onto a map does not set its stride); None when no path carries a field."""
    present = [f for f in fields if f is not None]
    if not present:
        return None
    n = max(len(f.rf) for f in present)
    spatial = [f for f in present if not f.collapsed] or present
    rf = tuple(max(_axis(f.rf, i) for f in present) for i in range(n))
    jump = tuple(max(_axis(f.jump, i) for f in spatial) for i in range(n))
    extents = [f.extent for f in present if f.extent]
    extent = tuple(max(_axis(e, i) for e in extents) for i in range(n)) if extents else None
    return Field(rf, jump, all(f.collapsed for f in present), extent)


def fit_field(f: Field, k: int) -> Field:
    """``f`` tracked over exactly ``k`` spatial axes."""
    return Field(tuple(_axis(f.rf, i) for i in range(k)), tuple(_axis(f.jump, i) for i in range(k)), f.collapsed,
                 tuple(_axis(f.extent, i) for i in range(k)) if f.extent else None)


def field_steps(f: Field, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
                transposed: bool = False, collapsed: bool = False) -> Field:
    """The field after a conv or pooling layer (``rf += (k_eff - 1) * jump``, ``jump *= stride``; a
    ConvTranspose divides the jump); ``collapsed``: a global pooling, which sees the whole input."""
    step = C.rf_step_transpose if transposed else C.rf_step
    k = len(kernel)
    f = fit_field(f, k)
    pairs = [step(f.rf[i], f.jump[i], kernel[i], strides[i], dilations[i]) for i in range(k)]
    rf = tuple(p[0] for p in pairs)
    if collapsed and f.extent:
        rf = tuple(max(f.rf[i], f.extent[i]) for i in range(k))
    return Field(rf, tuple(p[1] for p in pairs), collapsed or f.collapsed, f.extent)


def input_field(shape: Sequence[Any] | None) -> Field:
    """The field of a model input: 1 with jump 1 on each spatial axis (NCHW, or NHWC when it looks so)."""
    if not shape or len(shape) < 3:
        k = max(len(shape) - 2, 1) if shape else 2
        return Field((1.0,) * k, (1.0,) * k)
    nhwc = len(shape) == 4 and isinstance(shape[3], int) and 0 < shape[3] <= 4 and not (
        isinstance(shape[1], int) and 0 < shape[1] <= 4)
    spatial = list(shape[1:-1] if nhwc else shape[2:])
    extent = tuple(float(d) for d in spatial) if is_static(spatial) else None
    return Field((1.0,) * len(spatial), (1.0,) * len(spatial), False, extent)


def clean_values(values: Sequence[float]) -> list[float]:
    """Whole numbers as ints, others rounded to 6 decimals, for the report."""
    return [int(v) if float(v).is_integer() else round(float(v), 6) for v in values]


def spatial_field(node: onnx.NodeProto, shapes: Mapping[str, Any], f: Field) -> Field:
    """The field after a non-conv op: pooling and resizing change it, everything else passes it on."""
    op = node.op_type
    if op in _POOL_OPS:
        at = attrs_of(node)
        ks = as_ints(at.get("kernel_shape") or [])
        if ks:
            k = len(ks)
            return field_steps(f, ks, as_ints(at.get("strides") or [1] * k), as_ints(at.get("dilations") or [1] * k))
    elif op in _GLOBAL_POOL_OPS or op in _REDUCE_OPS:
        x = int_shape(shapes.get(node.input[0])) if node.input else None
        y = int_shape(shapes.get(node.output[0])) if node.output else None
        spatial = known(x[2:]) if x is not None and len(x) > 2 else None
        if x is None or spatial is None:
            return f
        if op in _REDUCE_OPS and (y is None or len(y) != len(x) or any(v != 1 for v in y[2:])):
            return f  # a reduction that keeps spatial extent (e.g. over channels) leaves the field alone
        return field_steps(f, spatial, spatial, [1] * len(spatial), collapsed=True)
    elif op in _RESIZE_OPS:
        x = int_shape(shapes.get(node.input[0])) if node.input else None
        y = int_shape(shapes.get(node.output[0])) if node.output else None
        xs = known(x[2:]) if x and y and len(x) == len(y) > 2 else None
        ys = known(y[2:]) if xs is not None and y else None
        if xs is not None and ys is not None and all(xs) and all(ys):
            g = fit_field(f, len(xs))
            jump = tuple(g.jump[i] * xs[i] / ys[i] for i in range(len(xs)))
            return Field(g.rf, jump, f.collapsed, g.extent)
    return f

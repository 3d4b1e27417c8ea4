"""Shape arithmetic evaluated with numpy: the values of the small tensors an export computes shapes with.

Exporters compute Reshape targets, Expand shapes, Slice bounds and If conditions as ``Shape -> Gather ->
Concat`` and the like; onnx's data propagation follows that only for some ops at some opsets. :func:`fold`
evaluates, on a weight-free shape copy, every node of :data:`FOLD_OPS` whose inputs are constants or known
shapes, and keeps values of at most :data:`~onnxconv.weightless.KEEP_VALUES_BELOW` elements.
:mod:`onnxconv.shapes` feeds those values back to shape inference and decides If nodes from them.

Best effort throughout: a node whose inputs are unknown, or that numpy cannot evaluate, leaves its output
unknown; nothing here raises.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .counting import prod
from .graph import as_int, as_ints, attrs_of, toposort
from .weightless import KEEP_VALUES_BELOW

__all__ = ["fold", "is_static", "FOLD_OPS"]


def is_static(shape: tuple[Any, ...] | None) -> bool:
    """Whether ``shape`` is known in every dim (a tuple of non-negative ints)."""
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


def fold(graph: onnx.GraphProto, shapes: Mapping[str, tuple[Any, ...]]) -> dict[str, np.ndarray]:
    """Values of the small tensors computable from constants and known shapes (best effort, numpy only)."""
    values: dict[str, np.ndarray] = {}
    for t in graph.initializer:
        if t.data_location != onnx.TensorProto.EXTERNAL and len(t.dims) <= 1 and prod(t.dims) <= KEEP_VALUES_BELOW:
            try:
                values[t.name] = numpy_helper.to_array(t)
            except Exception:  # noqa: BLE001 - a tensor numpy cannot hold is simply not folded
                pass
    for node in toposort(graph.node):
        fn = FOLD_OPS.get(node.op_type) if node.domain in ("", "ai.onnx") else None
        if fn is None or not node.output:
            continue
        try:
            result = fn(node, [values.get(i) if i else None for i in node.input],
                        [shapes.get(i) if i else None for i in node.input])
        except Exception:  # noqa: BLE001 - folding is an optimisation; anything odd just stays unknown
            result = None
        if result is not None and result.size <= KEEP_VALUES_BELOW:
            values[node.output[0]] = result
    return values


# The folders of FOLD_OPS, and what they share.
def _need(vals: Sequence[np.ndarray | None], n: int) -> bool:
    return len(vals) >= n and all(v is not None for v in vals[:n])


def _f_shape(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    s = shp[0]
    if not is_static(s):
        return None
    at = attrs_of(node)
    start, end = as_int(at.get("start", 0)), at.get("end")
    return np.array(s[start:None if end is None else as_int(end)], dtype=np.int64)


def _f_constant(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR and prod(a.t.dims) <= KEEP_VALUES_BELOW:
            return numpy_helper.to_array(a.t)
        if a.name == "value_int":
            return np.array(a.i, dtype=np.int64)
        if a.name == "value_ints":
            return np.array(list(a.ints), dtype=np.int64)
        if a.name == "value_float":
            return np.array(a.f, dtype=np.float32)
        if a.name == "value_floats":
            return np.array(list(a.floats), dtype=np.float32)
    return None


def _axes(node: onnx.NodeProto, vals: Sequence[Any], index: int) -> list[int] | None:
    at = attrs_of(node)
    if "axes" in at:
        return as_ints(at["axes"])
    if len(vals) > index and vals[index] is not None:
        return [int(a) for a in np.asarray(vals[index]).reshape(-1)]
    return None


def _f_unsqueeze(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 1):
        return None
    axes = _axes(node, vals, 1)
    if axes is None:
        return None
    rank = vals[0].ndim + len(axes)
    out = vals[0]
    for a in sorted(a % rank for a in axes):
        out = np.expand_dims(out, a)
    return out


def _f_squeeze(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 1):
        return None
    axes = _axes(node, vals, 1)
    return np.squeeze(vals[0], axis=None if axes is None else tuple(a % vals[0].ndim for a in axes))


def _f_slice(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 1):
        return None
    at = attrs_of(node)
    x = vals[0]
    if "starts" in at:  # opset < 10: attributes
        starts, ends = as_ints(at["starts"]), as_ints(at["ends"])
        axes = as_ints(at.get("axes", range(len(starts))))
        steps = [1] * len(starts)
    else:
        if not _need(vals, 3):
            return None
        starts, ends = [int(v) for v in vals[1].reshape(-1)], [int(v) for v in vals[2].reshape(-1)]
        n = len(starts)
        axes = [int(v) for v in vals[3].reshape(-1)] if len(vals) > 3 and vals[3] is not None else list(range(n))
        steps = [int(v) for v in vals[4].reshape(-1)] if len(vals) > 4 and vals[4] is not None else [1] * n
    index = [slice(None)] * x.ndim
    for st, en, ax, sp in zip(starts, ends, axes, steps):
        index[int(ax) % x.ndim] = slice(int(st), int(en), int(sp))  # Python clamps out-of-range bounds like ONNX
    return x[tuple(index)]


def _f_gather(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 2):
        return None
    return np.take(vals[0], vals[1].astype(np.int64), axis=as_int(attrs_of(node).get("axis", 0)))


def _f_concat(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not vals or any(v is None for v in vals):
        return None
    return np.concatenate([np.atleast_1d(v) for v in vals], axis=as_int(attrs_of(node).get("axis", 0)))


def _f_cast(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 1):
        return None
    return vals[0].astype(helper.tensor_dtype_to_np_dtype(as_int(attrs_of(node)["to"])))


def _int_div(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if np.issubdtype(a.dtype, np.integer) and np.issubdtype(b.dtype, np.integer):
        # onnxruntime truncates integer division toward zero (C semantics), numpy's // floors.
        return (np.sign(a) * np.sign(b) * (np.abs(a) // np.abs(b))).astype(np.result_type(a, b))
    return a / b


def _binary(fn: Any) -> Any:
    def fold(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
        return np.asarray(fn(vals[0], vals[1])) if _need(vals, 2) else None
    return fold


def _unary(fn: Any) -> Any:
    def fold(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
        return np.asarray(fn(vals[0])) if _need(vals, 1) else None
    return fold


def _f_variadic(fn: Any) -> Any:
    def fold(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
        if not vals or any(v is None for v in vals):
            return None
        out = vals[0]
        for v in vals[1:]:
            out = fn(out, v)
        return np.asarray(out)
    return fold


def _f_where(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    return np.where(vals[0], vals[1], vals[2]) if _need(vals, 3) else None


def _f_range(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    return np.arange(vals[0].item(), vals[1].item(), vals[2].item(), dtype=vals[0].dtype) if _need(vals, 3) else None


def _f_constant_of_shape(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 1) or prod([int(v) for v in vals[0].reshape(-1)]) > KEEP_VALUES_BELOW:
        return None
    value = attrs_of(node).get("value")
    fill = numpy_helper.to_array(value).reshape(-1)[0] if isinstance(value, onnx.TensorProto) else np.float32(0)
    return np.full([int(v) for v in vals[0].reshape(-1)], fill, dtype=np.asarray(fill).dtype)


def _f_reshape(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 2):
        return None
    target = [int(v) for v in vals[1].reshape(-1)]
    if not attrs_of(node).get("allowzero", 0):
        target = [vals[0].shape[i] if v == 0 else v for i, v in enumerate(target)]
    return vals[0].reshape(target)


def _f_expand(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 2):
        return None
    shape = np.broadcast_shapes(vals[0].shape, tuple(int(v) for v in vals[1].reshape(-1)))
    return np.broadcast_to(vals[0], shape).copy() if prod(shape) <= KEEP_VALUES_BELOW else None


def _reduce(fn: Any) -> Any:
    def fold(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
        if not _need(vals, 1):
            return None
        axes = _axes(node, vals, 1)
        keep = bool(attrs_of(node).get("keepdims", 1))
        return np.asarray(fn(vals[0], axis=None if not axes else tuple(axes), keepdims=keep))
    return fold


def _f_transpose(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    if not _need(vals, 1):
        return None
    perm = attrs_of(node).get("perm")
    return np.transpose(vals[0], None if perm is None else as_ints(perm))


def _f_size(node: onnx.NodeProto, vals: Sequence[Any], shp: Sequence[Any]) -> np.ndarray | None:
    return np.array(prod(shp[0]), dtype=np.int64) if is_static(shp[0]) else None


#: Op type -> its folder (standard domain only): each gets (node, input values or None, input shapes or None)
#: and returns the first output or None.
FOLD_OPS: dict[str, Any] = {
    "Shape": _f_shape, "Size": _f_size, "Constant": _f_constant, "Identity": _unary(lambda a: a),
    "Cast": _f_cast, "Gather": _f_gather, "Unsqueeze": _f_unsqueeze, "Squeeze": _f_squeeze, "Slice": _f_slice,
    "Concat": _f_concat, "Add": _binary(np.add), "Sub": _binary(np.subtract), "Mul": _binary(np.multiply),
    "Div": _binary(_int_div), "Neg": _unary(np.negative), "Abs": _unary(np.abs), "Floor": _unary(np.floor),
    "Ceil": _unary(np.ceil), "Max": _f_variadic(np.maximum), "Min": _f_variadic(np.minimum),
    "Equal": _binary(np.equal), "Less": _binary(np.less), "Greater": _binary(np.greater), "Not": _unary(np.logical_not),
    "Where": _f_where, "Range": _f_range, "ConstantOfShape": _f_constant_of_shape, "Reshape": _f_reshape,
    "Expand": _f_expand, "ReduceProd": _reduce(np.prod), "ReduceSum": _reduce(np.sum), "Transpose": _f_transpose,
}

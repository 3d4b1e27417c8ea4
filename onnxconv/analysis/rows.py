"""Rows of the report, one per counted node: convs, and with ``all_ops`` matrix products and recurrent layers.

A conv's figures come from its :class:`~onnxconv.conv.ConvSpec` (the arithmetic of :mod:`onnxconv.counting`):
params, MACs, exact FLOPs, and for standard convs what-if figures (depthwise separable, and grouped with G
groups). A figure that cannot be known stays None and the row's note says why. onnxruntime's own convs (lowered
to standard ops by :func:`onnxconv.runtime_ops.lower_runtime_ops`) keep their op name; an NCHWc conv is counted with
its logical channels (:mod:`.nchwc`).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import onnx

from .. import counting as C
from ..conv import BIAS_INDEX, WEIGHT_INDEX, ConvSpec, conv_spec, known
from ..errors import ShapeError
from ..graph import as_int, attrs_of, node_label
from ..runtime_ops import lowered_from
from .layer import LayerStats
from .nchwc import nchwc_channels
from .scope import Scope, int_shape
from .weights import const_elems, trace_weight, weight_from_attrs

__all__ = ["MAC_OPS", "RECURRENT_OPS", "WeightValues", "conv_row", "matmul_row", "recurrent_row", "fill_conv_row",
           "describe_unknown_weight"]

#: Looks up a stored weight's values by name (None when unavailable); only NCHWc convs need them.
WeightValues = Callable[[str], "np.ndarray | None"]

#: Ops besides convolutions that ``all_ops`` counts: matrix products and recurrent layers.
MAC_OPS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")
#: Recurrent ops ``all_ops`` counts, with their number of gates.
RECURRENT_OPS = {"RNN": 1, "GRU": 3, "LSTM": 4}  # op -> gates


def conv_row(node: onnx.NodeProto, path: str, scope: Scope, groups: int,
             values: WeightValues) -> tuple[LayerStats, ConvSpec | None, str | None]:
    """The row of a Conv-family node, its resolved spec (None when it cannot be counted) and the sharing key
    of its weight (see :mod:`.weights`).

    The output shape is recomputed from the input shape and attributes (never read from value_info); the
    what-if figures are given for standard convs; ``groups`` is G of the grouped what-if. A node whose
    attributes contradict its weight or input raises :class:`ShapeError` naming the node.
    """
    op = node.op_type
    vendor = lowered_from(node)
    row = LayerStats(name=node_label(node), op_type=vendor or op, path=path)
    if vendor:
        row.add_note(f"onnxruntime's {vendor}, counted as the {op} it computes")
    widx, bidx = WEIGHT_INDEX[op], BIAS_INDEX.get(op)
    attrs = attrs_of(node)
    x_shape = int_shape(scope.shapes.get(node.input[0])) if node.input and node.input[0] else None
    row.input_shape = x_shape
    if len(node.input) <= widx or not node.input[widx]:
        row.note = "no weight input: not counted"
        return row, None, None
    wshape, row.weight_source, key = trace_weight(node.input[widx], scope)
    has_bias = bidx is not None and len(node.input) > bidx and bool(node.input[bidx])
    row.has_bias = has_bias
    if wshape is None:
        wshape = weight_from_attrs(op, attrs, x_shape, int_shape(scope.shapes.get(node.output[0])))
        if wshape is None:
            describe_unknown_weight(row, attrs)
            return row, None, None
        row.add_note("weight computed at run time; its shape derived from kernel_shape, group and the channels")
    elif not row.weight_source.startswith(("initializer", "Constant")):
        row.add_note(f"weight is a {row.weight_source} (shape known)")
    nchwc = bool(vendor and vendor.startswith("com.microsoft.nchwc."))
    try:
        # An NCHWc weight's channels are padded to the block size, and its input's channels may be (a blocked
        # tensor) or not (a plain NCHW input, a ReorderInput's logical output): the channel check waits for
        # _unpadded, which knows both counts.
        spec = conv_spec(op, attrs, wshape, has_bias, _without_channels(x_shape) if nchwc else x_shape)
        if nchwc:
            spec = _unpadded(spec, node, attrs, row, values, x_shape)
    except ShapeError as e:
        raise ShapeError(f"node '{row.qualified_name}' ({op}): {e}") from None
    fill_conv_row(row, spec)
    if row.macs is None:
        row.add_note("input shape unknown: MACs not counted")
    if spec.kind == "standard" and not spec.transposed and row.macs is not None:
        row.whatif = _whatif(spec, row.macs, groups)
    return row, spec, key


def _without_channels(shape: list[int | None] | None) -> list[int | None] | None:
    return None if shape is None or len(shape) < 2 else [shape[0], None, *shape[2:]]


def _unpadded(spec: ConvSpec, node: onnx.NodeProto, attrs: Mapping[str, Any], row: LayerStats,
              values: WeightValues, x_shape: list[int | None] | None) -> ConvSpec:
    """The logical conv behind an NCHWc conv whose channels onnxruntime padded to its block size.

    The padding is zero filters (trailing output rows, with zero bias) and zero input columns, and no
    attribute records the logical counts, so the weight's values are read for these convs only (an
    onnxruntime-optimised model keeps them inline). Without them the channels are counted as stored.

    The input's channel count, when known, is the input's own: a blocked tensor has the padded count (the
    shapes here are those of the lowered graph, where every blocked conv writes its padded filters), while a
    plain NCHW input or a ReorderInput's output has the logical count, fewer than the weight's padded columns
    (onnxruntime pads a stem's 12 input channels to 16 on an 8-wide CPU): then that count is C_in.
    """
    w = values(node.input[1])
    b = values(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    logical = nchwc_channels(spec, w, b)
    if logical is None:
        row.add_note("NCHWc: channels counted as stored, possibly padded to the block size")
        logical = (spec.c_out, spec.c_in, spec.group)
    c_out, c_in, group = logical
    x_c = x_shape[1] if x_shape is not None and len(x_shape) > 1 else None
    depthwise = spec.weight_shape[1] == 1 and spec.group == spec.c_in == spec.c_out
    if x_c is not None and x_c != spec.c_in:
        if x_c < spec.c_in and depthwise:
            c_out = c_in = group = x_c  # onnxruntime pads a depthwise conv's channels with whole filters
        elif x_c < spec.c_in and spec.group == 1:
            c_in = x_c
        else:  # more channels than the padded weight has, or a grouped conv (never padded): not what it reads
            raise ShapeError(f"input has {x_c} channels but weight {list(spec.weight_shape)} with "
                             f"group={spec.group} expects {spec.c_in}")
    if (c_out, c_in, group) != (spec.c_out, spec.c_in, spec.group):
        row.add_note(f"NCHWc: {spec.c_in}->{spec.c_out} channels as stored are {c_in}->{c_out} without the "
                     "block padding")
    x = list(spec.input_shape)
    x[1] = c_in if x_c is not None else None
    new_attrs = dict(attrs)
    new_attrs["group"] = group
    return conv_spec(spec.op_type, new_attrs, (c_out, c_in // group, *spec.kernel_shape), spec.has_bias, x)


def matmul_row(node: onnx.NodeProto, path: str, scope: Scope) -> LayerStats:
    """The row of a Gemm/MatMul-family node: ``batch*M*K*N`` MACs; params are its stored operands."""
    op = node.op_type
    row = LayerStats(name=node_label(node), op_type=op, path=path, kind="matmul")
    ia, ib = (0, 3) if op == "QLinearMatMul" else (0, 1)
    a = int_shape(scope.shapes.get(node.input[ia])) if len(node.input) > ia else None
    b = int_shape(scope.shapes.get(node.input[ib])) if len(node.input) > ib else None
    row.input_shape, row.output_shape = a, int_shape(scope.shapes.get(node.output[0]))
    ka, kb = (known(a) if a is not None else None), (known(b) if b is not None else None)
    row.weight_shape = list(kb) if kb is not None else None
    bias_name = node.input[2] if op == "Gemm" and len(node.input) > 2 else ""
    row.has_bias = bool(bias_name)
    row.params = const_elems(node.input[ia], scope) + const_elems(node.input[ib], scope)
    row.params += const_elems(bias_name, scope)
    if ka is None or kb is None or not ka or not kb:
        row.note = "operand shapes unknown: MACs not counted"
        return row
    if op == "Gemm":
        at = attrs_of(node)
        m, k = (ka[1], ka[0]) if at.get("transA", 0) else (ka[0], ka[1])
        n = kb[0] if at.get("transB", 0) else kb[1]
        batch = 1
    else:
        a2 = [1, *ka] if len(ka) == 1 else list(ka)
        b2 = [*kb, 1] if len(kb) == 1 else list(kb)
        m, k, n = a2[-2], a2[-1], b2[-1]
        rank = max(len(a2), len(b2))
        pa = [1] * (rank - len(a2)) + a2[:-2]
        pb = [1] * (rank - len(b2)) + b2[:-2]
        batch = C.prod([max(x, y) for x, y in zip(pa, pb)])
    row.macs = C.gemm_macs(batch, m, k, n)
    row.flops = C.conv_flops(row.macs, batch * m * n, row.has_bias)
    return row


def recurrent_row(node: onnx.NodeProto, path: str, scope: Scope) -> LayerStats:
    """The row of an RNN/GRU/LSTM node: the MACs of its matrix products (:func:`onnxconv.counting.recurrent_macs`)."""
    op = node.op_type
    row = LayerStats(name=node_label(node), op_type=op, path=path, kind="recurrent")
    at = attrs_of(node)
    x = int_shape(scope.shapes.get(node.input[0])) if node.input else None
    w = int_shape(scope.shapes.get(node.input[1])) if len(node.input) > 1 else None
    row.input_shape = x
    row.output_shape = int_shape(scope.shapes.get(node.output[0])) if node.output and node.output[0] else None
    row.has_bias = len(node.input) > 3 and bool(node.input[3])
    extra = [node.input[i] for i in (1, 2, 3, 7) if len(node.input) > i and (i != 7 or op == "LSTM")]
    row.params = sum(const_elems(n, scope) for n in extra)
    kx, kw = (known(x) if x is not None else None), (known(w) if w is not None else None)
    row.weight_shape = list(kw) if kw is not None else None
    if kx is None or kw is None or len(kx) != 3 or len(kw) != 3:
        row.note = "input or weight shape unknown: MACs not counted"
        return row
    seq, batch = (kx[1], kx[0]) if at.get("layout", 0) else (kx[0], kx[1])
    gates = RECURRENT_OPS[op]
    hidden = as_int(at.get("hidden_size") or kw[1] // gates)
    dirs = kw[0]
    row.macs = C.recurrent_macs(seq, batch, dirs, gates, hidden, kx[2])
    row.flops = C.recurrent_flops(row.macs, seq * batch * dirs * gates * hidden, row.has_bias)
    row.note = "matrix products only (gate nonlinearities not counted)"
    return row


def fill_conv_row(row: LayerStats, spec: ConvSpec) -> None:
    row.kind = spec.kind
    row.depth_multiplier = spec.depth_multiplier
    row.dilated, row.strided = spec.dilated, spec.strided
    row.input_shape = list(spec.input_shape)
    row.output_shape = list(spec.output_shape)
    row.weight_shape = list(spec.weight_shape)
    row.kernel_shape = list(spec.kernel_shape)
    row.strides = list(spec.strides)
    row.pads = list(spec.pads) if spec.pads is not None else None
    row.dilations = list(spec.dilations)
    row.group = spec.group
    row.auto_pad = spec.auto_pad
    row.output_padding = list(spec.output_padding) if spec.transposed else None
    row.params = spec.params
    row.macs = spec.macs
    row.flops = spec.flops


def describe_unknown_weight(row: LayerStats, attrs: Mapping[str, Any]) -> None:
    """Fill what the attributes alone tell about a conv whose weight shape is unknown."""
    kernel = attrs.get("kernel_shape")
    if kernel:
        k = len(kernel)
        row.kernel_shape = [int(v) for v in kernel]
        row.strides = [int(v) for v in attrs.get("strides") or [1] * k]
        row.dilations = [int(v) for v in attrs.get("dilations") or [1] * k]
    row.group = int(attrs.get("group", 1) or 1)
    row.note = (f"weight is a {row.weight_source} and its shape is unknown "
                "(needs kernel_shape and known input and output channels): params and MACs not counted")


def _whatif(spec: ConvSpec, macs: int, groups: int) -> dict[str, Any]:
    """Params and MACs of the same conv as depthwise separable and as grouped with ``groups`` groups."""
    n = spec.batch or 1
    spatial = known(spec.output_shape[2:])
    assert spatial is not None, "macs are known, so is the output's spatial size"
    sep_params, sep_macs = C.separable_cost(n, spec.c_in, spec.c_out, spatial, spec.kernel_shape, spec.has_bias)
    out: dict[str, Any] = {
        "separable": {"params": sep_params, "macs": sep_macs, "macs_ratio": sep_macs / macs if macs else None,
                      "params_ratio": sep_params / spec.params}
    }
    g = C.grouped_cost(spec.weight_params, macs, spec.c_in, spec.c_out, groups, spec.bias_params)
    if g is None:
        out["grouped"] = {"groups": groups, "params": None, "macs": None, "macs_ratio": None, "params_ratio": None,
                          "reason": f"channels {spec.c_in}->{spec.c_out} not divisible by {groups}"}
    else:
        out["grouped"] = {"groups": groups, "params": g[0], "macs": g[1],
                          "macs_ratio": g[1] / macs if macs else None, "params_ratio": g[0] / spec.params}
    return out

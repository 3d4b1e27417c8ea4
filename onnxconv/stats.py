"""Walk a model's convolutions and count params, MACs and exact FLOPs per layer.

Conventions are those of :mod:`onnxconv.counting` (MACs; exact FLOPs = 2*MACs with bias, minus one per output
without; ConvTranspose counted over its input, the scatter view). Shapes come from ONNX shape inference run on
a weight-free copy of the model (:mod:`onnxconv.shapes`), then every conv's output shape is recomputed from
its input shape and attributes, so a wrong or missing value_info cannot skew a count.

The walk covers the main graph, If/Loop/Scan bodies and model-local functions (each call analysed with its
caller's shapes); rows from those carry a ``path`` such as ``If_0/then_branch`` or ``block_1:local.Block``.
A Loop or Scan body is counted for one iteration and every If branch is counted (a note says so).
Receptive fields and effective strides are propagated in topological order from the graph inputs, taking the
maximum over paths; pooling, resize and ConvTranspose layers count. A global pooling (or a reduction over all
spatial axes) sees the whole input but yields a 1x1 map: broadcasting it back (an SE block) widens the field
of what follows without changing its effective stride.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from . import counting as C
from .conv import BIAS_INDEX, CONV_OPS, WEIGHT_INDEX, ConvSpec, conv_spec
from .errors import OptionError, ShapeError
from .graph import attrs_of, node_label, shape_of_value_info, subgraphs_of, toposort
from .model_io import shape_model, stripped_source
from .shapes import (
    apply_input_shapes, infer, infer_body, inputs_feeding, lower_runtime_ops, lowered_from, missing_dims_message,
    type_map,
)

__all__ = [
    "LayerStats", "StatsReport", "analyze", "observe_shapes", "parse_input_shape", "format_count", "CONVENTIONS",
    "MAC_OPS", "SCHEMA_VERSION",
]

#: Version of the JSON layout (docs/stats-json.md); bumped only when a key changes meaning or disappears.
SCHEMA_VERSION = 1

CONVENTIONS = (
    "MACs = multiply-accumulates; FLOPs = exact multiplies + additions "
    "(2*MACs with bias, 2*MACs - outputs without); ConvTranspose MACs over its input (scatter view); "
    "params = weight + bias elements"
)

#: Ops besides convolutions that ``all_ops`` counts: matrix products and recurrent layers.
MAC_OPS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")
RECURRENT_OPS = {"RNN": 1, "GRU": 3, "LSTM": 4}  # op -> gates

_POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
_GLOBAL_POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
_REDUCE_OPS = ("ReduceMean", "ReduceMax", "ReduceSum", "ReduceMin", "ReduceL2", "ReduceL1", "ReduceProd")
_RESIZE_OPS = ("Resize", "Upsample")
# Ops whose weight input keeps its shape: the weight behind them is still an initializer or Constant.
_SHAPE_KEEPING = ("Cast", "Identity", "DequantizeLinear", "QuantizeLinear", "CastLike")
_DEFAULT_DOMAINS = ("", "ai.onnx")
# Words that mark a vendor-domain op as conv-like (first) or MAC-bearing (the rest, for all_ops).
_FOREIGN_WORDS = ("conv", "matmul", "gemm", "lstm", "gru", "rnn", "attention")


@dataclass
class LayerStats:
    """One row of the report. ``None`` marks a figure that could not be known (``note`` says why)."""

    name: str
    op_type: str
    path: str = ""
    kind: str = ""
    depth_multiplier: int | None = None
    dilated: bool = False
    strided: bool = False
    input_shape: list[int | None] | None = None
    output_shape: list[int | None] | None = None
    weight_shape: list[int] | None = None
    kernel_shape: list[int] | None = None
    strides: list[int] | None = None
    pads: list[int] | None = None
    dilations: list[int] | None = None
    group: int | None = None
    auto_pad: str | None = None
    output_padding: list[int] | None = None
    has_bias: bool = False
    params: int | None = None
    macs: int | None = None
    flops: int | None = None
    share: float | None = None
    receptive_field: list[float] | None = None
    effective_stride: list[float] | None = None
    weight_source: str = ""
    whatif: dict[str, Any] | None = None
    note: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.path}/{self.name}" if self.path else self.name

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text


@dataclass
class StatsReport:
    """The whole analysis: rows, totals, and notes (assumptions made, what could not be counted)."""

    model: str
    layers: list[LayerStats]
    totals: dict[str, int]
    notes: list[str] = field(default_factory=list)
    conventions: str = CONVENTIONS
    whatif_groups: int = 4

    def to_dict(self) -> dict[str, Any]:
        """The stable JSON interface (docs/stats-json.md)."""
        return {
            "schema_version": SCHEMA_VERSION,
            "model": self.model,
            "conventions": self.conventions,
            "whatif_groups": self.whatif_groups,
            "layers": [asdict(layer) for layer in self.layers],
            "totals": dict(self.totals),
            "notes": list(self.notes),
        }


def parse_input_shape(text: str) -> tuple[str, list[int]]:
    """Parse ``NAME=1x3x224x224`` (also ``NAME:1,3,224,224``) into (name, dims)."""
    for sep in ("=", ":"):
        if sep in text:
            name, _, dims = text.rpartition(sep)
            break
    else:
        raise OptionError(f"--input-shape '{text}': expected NAME=1x3x224x224")
    parts = [p.strip() for p in dims.replace(",", "x").lower().split("x") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise OptionError(f"--input-shape '{text}': dims must be whole numbers, e.g. {name}=1x3x224x224") from None
    if not name or not values or any(v <= 0 for v in values):
        raise OptionError(f"--input-shape '{text}': expected NAME=1x3x224x224 with positive dims")
    return name, values


def format_count(value: float | int | None) -> str:
    """Human form of a count: 1.23G, 45.6M, 7.89K, 123; '?' for unknown."""
    if value is None:
        return "?"
    v = float(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(int(v)) if v.is_integer() else f"{v:.2f}"


# --------------------------------------------------------------------------------------------------------------
# Receptive fields


@dataclass(frozen=True)
class _Field:
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


def _merge(fields: Sequence[_Field | None]) -> _Field | None:
    present = [f for f in fields if f is not None]
    if not present:
        return None
    n = max(len(f.rf) for f in present)
    spatial = [f for f in present if not f.collapsed] or present
    rf = tuple(max(_axis(f.rf, i) for f in present) for i in range(n))
    jump = tuple(max(_axis(f.jump, i) for f in spatial) for i in range(n))
    extents = [f.extent for f in present if f.extent]
    extent = tuple(max(_axis(e, i) for e in extents) for i in range(n)) if extents else None  # type: ignore[arg-type]
    return _Field(rf, jump, all(f.collapsed for f in present), extent)


def _fit(f: _Field, k: int) -> _Field:
    return _Field(tuple(_axis(f.rf, i) for i in range(k)), tuple(_axis(f.jump, i) for i in range(k)), f.collapsed,
                  tuple(_axis(f.extent, i) for i in range(k)) if f.extent else None)


def _steps(f: _Field, kernel: Sequence[int], strides: Sequence[int], dilations: Sequence[int],
           transposed: bool = False, collapsed: bool = False) -> _Field:
    step = C.rf_step_transpose if transposed else C.rf_step
    k = len(kernel)
    f = _fit(f, k)
    pairs = [step(f.rf[i], f.jump[i], kernel[i], strides[i], dilations[i]) for i in range(k)]
    rf = tuple(p[0] for p in pairs)
    if collapsed and f.extent:
        rf = tuple(max(f.rf[i], f.extent[i]) for i in range(k))
    return _Field(rf, tuple(p[1] for p in pairs), collapsed or f.collapsed, f.extent)


def _input_field(shape: Sequence[Any] | None) -> _Field:
    """The field of a model input: 1 with jump 1 on each spatial axis (NCHW, or NHWC when it looks so)."""
    if not shape or len(shape) < 3:
        k = max(len(shape) - 2, 1) if shape else 2
        return _Field((1.0,) * k, (1.0,) * k)
    nhwc = len(shape) == 4 and isinstance(shape[3], int) and 0 < shape[3] <= 4 and not (
        isinstance(shape[1], int) and 0 < shape[1] <= 4)
    spatial = list(shape[1:-1] if nhwc else shape[2:])
    extent = tuple(float(d) for d in spatial) if _static(spatial) else None
    return _Field((1.0,) * len(spatial), (1.0,) * len(spatial), False, extent)


def _clean(values: Sequence[float]) -> list[float]:
    return [int(v) if float(v).is_integer() else round(float(v), 6) for v in values]


# --------------------------------------------------------------------------------------------------------------
# Scopes


def _int_shape(shape: Sequence[int | str | None] | None) -> list[int | None] | None:
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


def _static(shape: Sequence[Any] | None) -> bool:
    return shape is not None and all(isinstance(d, int) and d >= 0 for d in shape)


class _Scope:
    """What a graph (or subgraph, or function body) sees: shapes, types, producers and constant names, with
    the enclosing scope's behind them (a subgraph reads outer names)."""

    def __init__(self, graph: onnx.GraphProto, parent: _Scope | None, consts: set[str], key_prefix: str = "") -> None:
        self.parent = parent
        self.key_prefix = key_prefix or (parent.key_prefix if parent else "")
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
            if node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS and node.output:
                for a in node.attribute:
                    if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                        self.shapes.setdefault(node.output[0], tuple(int(d) for d in a.t.dims))
        self.types.update(type_map(graph))
        self.consts = (set(parent.consts) if parent else set()) | consts | {t.name for t in graph.initializer} | set(sparse)
        self.producers: dict[str, onnx.NodeProto] = dict(parent.producers) if parent else {}
        for node in graph.node:
            for o in node.output:
                if o:
                    self.producers[o] = node


# --------------------------------------------------------------------------------------------------------------
# The walk


class _Walker:
    def __init__(self, model: onnx.ModelProto, all_ops: bool, groups: int,
                 values: Callable[[str], np.ndarray | None] = lambda name: None) -> None:
        self.model = model
        self.values = values
        self.all_ops = all_ops
        self.groups = groups
        self.rows: list[LayerStats] = []
        self.main_nodes: list[tuple[LayerStats, onnx.NodeProto]] = []
        self.weight_users: dict[str, list[LayerStats]] = {}
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.foreign: dict[str, set[str]] = {}
        self.bodies: set[str] = set()
        self._depth = 0

    # -- weights ---------------------------------------------------------------------------------------------
    def _weight(self, name: str, scope: _Scope) -> tuple[tuple[int, ...] | None, str, str | None]:
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
            if stub == "Constant" or (node.op_type == "Constant" and node.domain in _DEFAULT_DOMAINS):
                source, key = "Constant", scope.key_prefix + cur
                break
            if node.op_type in _SHAPE_KEEPING and node.domain in _DEFAULT_DOMAINS and node.input:
                chain.append(node.op_type)
                cur = node.input[0]
                continue
            break
        if chain and key is not None:
            source += " via " + "/".join(chain)
        shape = scope.shapes.get(name)
        if not _static(shape) and key is not None:
            shape = scope.shapes.get(cur)
        return (tuple(shape) if _static(shape) else None), source, key  # type: ignore[arg-type]

    def _count_weight(self, row: LayerStats, key: str | None) -> None:
        if key is not None:
            self.weight_users.setdefault(key, []).append(row)

    # -- conv rows -------------------------------------------------------------------------------------------
    def _conv_row(self, node: onnx.NodeProto, path: str, scope: _Scope, field_in: _Field | None) -> tuple[LayerStats, ConvSpec | None]:
        op = node.op_type
        vendor = lowered_from(node)
        row = LayerStats(name=node_label(node), op_type=vendor or op, path=path)
        if vendor:
            row.add_note(f"onnxruntime's {vendor}, counted as the {op} it computes")
        widx, bidx = WEIGHT_INDEX[op], BIAS_INDEX.get(op)
        attrs = attrs_of(node)
        x_shape = _int_shape(scope.shapes.get(node.input[0])) if node.input and node.input[0] else None
        row.input_shape = x_shape
        if len(node.input) <= widx or not node.input[widx]:
            row.note = "no weight input: not counted"
            return row, None
        wshape, row.weight_source, key = self._weight(node.input[widx], scope)
        has_bias = bidx is not None and len(node.input) > bidx and bool(node.input[bidx])
        row.has_bias = has_bias
        if wshape is None:
            wshape = _weight_from_attrs(op, attrs, x_shape, _int_shape(scope.shapes.get(node.output[0])))
            if wshape is None:
                _describe_unknown_weight(row, attrs)
                return row, None
            row.add_note("weight computed at run time; its shape derived from kernel_shape, group and the channels")
        elif not row.weight_source.startswith(("initializer", "Constant")):
            row.add_note(f"weight is a {row.weight_source} (shape known)")
        try:
            spec = conv_spec(op, attrs, wshape, has_bias, x_shape)
            if vendor and vendor.startswith("com.microsoft.nchwc."):
                spec = self._unpadded(spec, node, attrs, row, scope)
        except ShapeError as e:
            raise ShapeError(f"node '{row.qualified_name}' ({op}): {e}") from None
        _fill_conv_row(row, spec)
        self._count_weight(row, key)
        if row.macs is None:
            row.add_note("input shape unknown: MACs not counted")
        if field_in is not None:
            f = _steps(field_in, spec.kernel_shape, spec.strides, spec.dilations, spec.transposed)
            row.receptive_field, row.effective_stride = _clean(f.rf), _clean(f.jump)
        if spec.kind == "standard" and not spec.transposed and row.macs is not None:
            row.whatif = _whatif(spec, row.macs, self.groups)
        return row, spec

    def _unpadded(self, spec: ConvSpec, node: onnx.NodeProto, attrs: Mapping[str, Any], row: LayerStats,
                  scope: _Scope) -> ConvSpec:
        """The logical conv behind an NCHWc conv whose channels onnxruntime padded to its block size.

        The padding is zero filters (trailing output rows, with zero bias) and zero input columns, and no
        attribute records the logical counts, so the weight's values are read for these convs only (an
        onnxruntime-optimised model keeps them inline). Without them the channels are counted as stored.
        """
        w = self.values(node.input[1])
        b = self.values(node.input[2]) if len(node.input) > 2 and node.input[2] else None
        source = scope.producers.get(node.input[0])
        blocked = source is not None and (lowered_from(source) or "").startswith("com.microsoft.nchwc.") and \
            lowered_from(source) != "com.microsoft.nchwc.ReorderOutput"
        logical = _nchwc_channels(spec, w, b, blocked)
        if logical is None:
            row.add_note("NCHWc: channels counted as stored, possibly padded to the block size")
            return spec
        c_out, c_in, group = logical
        if (c_out, c_in, group) == (spec.c_out, spec.c_in, spec.group):
            return spec
        x = list(spec.input_shape)
        x[1] = c_in if x[1] is not None else None
        new_attrs = dict(attrs)
        new_attrs["group"] = group
        row.add_note(f"NCHWc: {spec.c_in}->{spec.c_out} channels as stored are {c_in}->{c_out} without the "
                     "block padding")
        return conv_spec(spec.op_type, new_attrs, (c_out, c_in // group, *spec.kernel_shape), spec.has_bias, x)

    # -- other MAC-bearing ops -------------------------------------------------------------------------------
    def _const_elems(self, name: str, scope: _Scope) -> int:
        """Elements of an operand that is a stored weight (0 for activations)."""
        if not name:
            return 0
        shape, source, _ = self._weight(name, scope)
        return C.prod(shape) if shape is not None and source.startswith(("initializer", "Constant")) else 0

    def _matmul_row(self, node: onnx.NodeProto, path: str, scope: _Scope) -> LayerStats:
        op = node.op_type
        row = LayerStats(name=node_label(node), op_type=op, path=path, kind="matmul")
        ia, ib = (0, 3) if op == "QLinearMatMul" else (0, 1)
        a = _int_shape(scope.shapes.get(node.input[ia])) if len(node.input) > ia else None
        b = _int_shape(scope.shapes.get(node.input[ib])) if len(node.input) > ib else None
        row.input_shape, row.output_shape = a, _int_shape(scope.shapes.get(node.output[0]))
        row.weight_shape = b if b is not None and None not in b else None
        bias_name = node.input[2] if op == "Gemm" and len(node.input) > 2 else ""
        row.has_bias = bool(bias_name)
        row.params = self._const_elems(node.input[ia], scope) + self._const_elems(node.input[ib], scope)
        row.params += self._const_elems(bias_name, scope)
        if a is None or b is None or None in a or None in b or not a or not b:
            row.note = "operand shapes unknown: MACs not counted"
            return row
        if op == "Gemm":
            at = attrs_of(node)
            m, k = (a[1], a[0]) if at.get("transA", 0) else (a[0], a[1])
            n = b[0] if at.get("transB", 0) else b[1]
            batch = 1
        else:
            a2 = [1] + a if len(a) == 1 else a
            b2 = b + [1] if len(b) == 1 else b
            m, k, n = a2[-2], a2[-1], b2[-1]
            rank = max(len(a2), len(b2))
            pa = [1] * (rank - len(a2)) + a2[:-2]
            pb = [1] * (rank - len(b2)) + b2[:-2]
            batch = C.prod([max(x, y) for x, y in zip(pa, pb)])
        row.macs = C.gemm_macs(batch, m, k, n)  # type: ignore[arg-type]
        row.flops = C.conv_flops(row.macs, batch * m * n, row.has_bias)  # type: ignore[operator]
        return row

    def _recurrent_row(self, node: onnx.NodeProto, path: str, scope: _Scope) -> LayerStats:
        op = node.op_type
        row = LayerStats(name=node_label(node), op_type=op, path=path, kind="recurrent")
        at = attrs_of(node)
        x = _int_shape(scope.shapes.get(node.input[0])) if node.input else None
        w = _int_shape(scope.shapes.get(node.input[1])) if len(node.input) > 1 else None
        row.input_shape = x
        row.output_shape = _int_shape(scope.shapes.get(node.output[0])) if node.output and node.output[0] else None
        row.has_bias = len(node.input) > 3 and bool(node.input[3])
        extra = [node.input[i] for i in (1, 2, 3, 7) if len(node.input) > i and (i != 7 or op == "LSTM")]
        row.params = sum(self._const_elems(n, scope) for n in extra)
        row.weight_shape = w if w is not None and None not in w else None
        if x is None or w is None or None in x or None in w or len(x) != 3 or len(w) != 3:
            row.note = "input or weight shape unknown: MACs not counted"
            return row
        seq, batch = (x[1], x[0]) if at.get("layout", 0) else (x[0], x[1])
        gates = RECURRENT_OPS[op]
        hidden = int(at.get("hidden_size") or w[1] // gates)  # type: ignore[call-overload]
        dirs = w[0]
        row.macs = C.recurrent_macs(seq, batch, dirs, gates, hidden, x[2])  # type: ignore[arg-type]
        row.flops = C.recurrent_flops(row.macs, seq * batch * dirs * gates * hidden, row.has_bias)  # type: ignore[operator]
        row.note = "matrix products only (gate nonlinearities not counted)"
        return row

    # -- graph walk ------------------------------------------------------------------------------------------
    def walk(self, graph: onnx.GraphProto, path: str, scope: _Scope, fields: dict[str, _Field]) -> None:
        for vi in graph.input:
            if vi.name not in scope.consts and vi.name not in fields and vi.name not in scope.producers:
                fields[vi.name] = _input_field(scope.shapes.get(vi.name))
        for node in toposort(graph.node):
            self._visit(node, path, scope, fields)

    def _visit(self, node: onnx.NodeProto, path: str, scope: _Scope, fields: dict[str, _Field]) -> None:
        op, dom = node.op_type, node.domain or ""
        field_in = _merge([fields.get(i) for i in node.input if i in fields and i not in scope.consts])
        out_field = field_in
        standard = dom in _DEFAULT_DOMAINS
        if standard and op in CONV_OPS:
            row, _ = self._conv_row(node, path, scope, fields.get(node.input[0]) if node.input else None)
            self._add(row, node, path)
            if row.receptive_field is not None:
                out_field = _Field(tuple(row.receptive_field), tuple(row.effective_stride or ()),
                                   bool(field_in and field_in.collapsed), field_in.extent if field_in else None)
        elif standard and op in MAC_OPS:
            if self.all_ops:
                self._add(self._matmul_row(node, path, scope), node, path)
        elif standard and op in RECURRENT_OPS:
            if self.all_ops:
                self._add(self._recurrent_row(node, path, scope), node, path)
        elif standard and field_in is not None:
            out_field = _spatial_field(node, scope, field_in)
        elif (dom, op) in self.functions:
            out_field = self._call_function(node, path, scope, fields) or field_in
        elif not standard and any(w in op.lower() for w in _FOREIGN_WORDS[: None if self.all_ops else 1]):
            # Vendor ops (com.microsoft FusedConv, DynamicQuantizeLSTM, ...) are not counted; say so.
            self.foreign.setdefault(f"{dom}.{op}", set()).add(node_label(node))
        if any(True for _ in subgraphs_of(node)):
            out_field = self._subgraphs(node, path, scope, fields, out_field)
        if out_field is not None:
            for o in node.output:
                if o:
                    fields[o] = out_field

    def _add(self, row: LayerStats, node: onnx.NodeProto, path: str) -> None:
        self.rows.append(row)
        if not path:
            self.main_nodes.append((row, node))

    def _subgraphs(self, node: onnx.NodeProto, path: str, scope: _Scope, fields: dict[str, _Field],
                   out_field: _Field | None) -> _Field | None:
        """Walk If branches and Loop/Scan bodies; returns the merged field of their outputs."""
        merged = [out_field]
        label = node_label(node)
        for attr, g in subgraphs_of(node):
            sub_path = f"{path}/{label}/{attr}" if path else f"{label}/{attr}"
            body_inputs = _body_inputs(node, g, scope)
            if body_inputs is not None:
                # onnx leaves Loop/Scan bodies without shapes when their inputs declare none: infer on its own.
                g = infer_body(g, body_inputs, scope.types, self.model)
                self.bodies.add(f"{node.op_type} '{label}'")
            elif node.op_type == "If":
                self.bodies.add(f"If '{label}'")
            sub_fields = dict(fields)
            for formal, actual in _body_bindings(node, g):
                if actual in fields:
                    sub_fields[formal] = fields[actual]
            start = len(self.rows)
            self.walk(g, sub_path, _Scope(g, scope, set()), sub_fields)
            for row in self.rows[start:]:
                if node.op_type in ("Loop", "Scan") and row.path == sub_path:
                    row.add_note(f"in a {node.op_type} body: counted for one iteration")
            merged.extend(sub_fields.get(o.name) for o in g.output)
        return _merge(merged)

    def _call_function(self, node: onnx.NodeProto, path: str, scope: _Scope, fields: dict[str, _Field]) -> _Field | None:
        """Analyse a model-local function's body with this call's input types and attributes."""
        fn = self.functions[(node.domain or "", node.op_type)]
        if self._depth > 16:
            return None
        body = _function_body(fn, node)
        input_types = {formal: scope.types.get(actual) for formal, actual in zip(fn.input, node.input) if actual}
        opsets = _function_opsets(fn, self.model)
        inferred = infer_body(body, input_types, {}, self.model, opsets)
        sub_fields = {formal: fields[actual] for formal, actual in zip(fn.input, node.input) if actual in fields}
        label = f"{node_label(node)}:{fn.domain}.{fn.name}"
        sub_path = f"{path}/{label}" if path else label
        self._depth += 1
        try:
            self.walk(inferred, sub_path, _Scope(inferred, None, set(), key_prefix=f"{fn.domain}.{fn.name}:"), sub_fields)
        finally:
            self._depth -= 1
        return _merge([sub_fields.get(o) for o in fn.output])


# --------------------------------------------------------------------------------------------------------------
# Helpers of the walk


def _fill_conv_row(row: LayerStats, spec: ConvSpec) -> None:
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


#: onnxruntime's NCHWc block sizes (channels per block): 8 or 16 depending on the CPU's vector width.
_NCHWC_BLOCKS = (16, 8)


def _nchwc_unblock(w: np.ndarray, block: int, blocked_input: bool) -> np.ndarray | None:
    """An NCHWc weight back in OIHW order, flattened to ``(O, I, prod(k))``; None when ``block`` cannot apply.

    onnxruntime (MLAS) stores the weight of a conv reading a blocked input as OIHWBiBo,
    ``[O/B][I/B][k...][B_i][B_o]``, and of one reading a plain NCHW input (the first layer, depthwise convs)
    as OIHWBo, ``[O/B][I][k...][B_o]``, keeping the 4-D OIHW shape of the padded channel counts.
    """
    o, i = w.shape[0], w.shape[1]
    k = int(np.prod(w.shape[2:]))
    if o % block or (blocked_input and i % block):
        return None
    if blocked_input:
        a = w.reshape(o // block, i // block, k, block, block).transpose(0, 4, 1, 3, 2)
    else:
        a = w.reshape(o // block, i, k, block).transpose(0, 3, 1, 2)
    return a.reshape(o, i, k)


def _trailing_padding(zero: np.ndarray, block: int) -> int:
    """How many trailing entries of ``zero`` are True, fewer than a block and fewer than all of them."""
    n = 0
    for z in zero[::-1]:
        if not z or n + 1 >= block or n + 1 >= len(zero):
            break
        n += 1
    return n


def _nchwc_channels(spec: ConvSpec, w: np.ndarray | None, b: np.ndarray | None,
                    blocked_input: bool) -> tuple[int, int, int] | None:
    """(C_out, C_in, group) of an NCHWc conv with onnxruntime's zero padding removed; None if unknown.

    onnxruntime rounds blocked channel counts up to its block size and fills the new filters and input
    columns with zeros. After undoing the weight's block order (:func:`_nchwc_unblock`), trailing all-zero
    output filters (with a zero bias) fewer than a block are padding, and so are trailing all-zero input
    columns of a blocked input. A depthwise conv pads its groups with its filters. The block size is the one
    (16 or 8) that explains the most padding; with none found, the channels are as stored.
    """
    if w is None or tuple(w.shape) != spec.weight_shape:
        return None
    best: tuple[int, int] = (0, 0)
    for block in _NCHWC_BLOCKS:
        flat = _nchwc_unblock(w, block, blocked_input and spec.group == 1)
        if flat is None:
            continue
        row_zero = ~np.any(flat != 0, axis=(1, 2))
        if b is not None and b.shape[0] >= w.shape[0]:
            row_zero &= b[: w.shape[0]] == 0
        drop_out = _trailing_padding(row_zero, block)
        drop_in = 0
        if spec.group == 1 and blocked_input:
            drop_in = _trailing_padding(~np.any(flat != 0, axis=(0, 2)), block)
        if drop_out + drop_in > sum(best):
            best = (drop_out, drop_in)
    drop_out, drop_in = best
    if spec.group == 1:
        return spec.c_out - drop_out, spec.c_in - drop_in, 1
    if w.shape[1] == 1 and spec.group == spec.c_in == spec.c_out:
        c = spec.c_out - drop_out
        return c, c, c
    return spec.c_out, spec.c_in, spec.group


def _weight_from_attrs(op: str, attrs: Mapping[str, Any], x: list[int | None] | None,
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


def _describe_unknown_weight(row: LayerStats, attrs: Mapping[str, Any]) -> None:
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
    sep_params, sep_macs = C.separable_cost(
        n, spec.c_in, spec.c_out, spec.output_shape[2:], spec.kernel_shape, spec.has_bias  # type: ignore[arg-type]
    )
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


def _spatial_field(node: onnx.NodeProto, scope: _Scope, f: _Field) -> _Field:
    """The field after a non-conv op: pooling and resizing change it, everything else passes it on."""
    op = node.op_type
    if op in _POOL_OPS:
        at = attrs_of(node)
        ks = [int(v) for v in at.get("kernel_shape") or []]  # type: ignore[attr-defined]
        if ks:
            k = len(ks)
            return _steps(f, ks, [int(v) for v in at.get("strides") or [1] * k],  # type: ignore[attr-defined]
                          [int(v) for v in at.get("dilations") or [1] * k])  # type: ignore[attr-defined]
    elif op in _GLOBAL_POOL_OPS or op in _REDUCE_OPS:
        x = _int_shape(scope.shapes.get(node.input[0])) if node.input else None
        y = _int_shape(scope.shapes.get(node.output[0])) if node.output else None
        if x is None or len(x) <= 2 or None in x[2:]:
            return f
        if op in _REDUCE_OPS and (y is None or len(y) != len(x) or any(v != 1 for v in y[2:])):
            return f  # a reduction that keeps spatial extent (e.g. over channels) leaves the field alone
        spatial = [int(v) for v in x[2:]]  # type: ignore[arg-type]
        return _steps(f, spatial, spatial, [1] * len(spatial), collapsed=True)
    elif op in _RESIZE_OPS:
        x = _int_shape(scope.shapes.get(node.input[0])) if node.input else None
        y = _int_shape(scope.shapes.get(node.output[0])) if node.output else None
        if x and y and len(x) == len(y) > 2 and all(x[2:]) and all(y[2:]):
            g = _fit(f, len(x) - 2)
            jump = tuple(g.jump[i] * x[2 + i] / y[2 + i] for i in range(len(x) - 2))  # type: ignore[operator]
            return _Field(g.rf, jump, f.collapsed, g.extent)
    return f


def _body_inputs(node: onnx.NodeProto, body: onnx.GraphProto, scope: _Scope) -> dict[str, onnx.TypeProto | None] | None:
    """Types for a Loop/Scan body's inputs from the node's inputs; None for other ops."""
    if node.op_type == "Loop":
        out: dict[str, onnx.TypeProto | None] = {}
        for formal, actual in zip(list(body.input)[2:], list(node.input)[2:]):
            out[formal.name] = scope.types.get(actual)
        return out
    if node.op_type == "Scan":
        at = attrs_of(node)
        n_state = len(body.input) - int(at.get("num_scan_inputs", 0))  # type: ignore[call-overload]
        axes = [int(a) for a in at.get("scan_input_axes") or []]  # type: ignore[attr-defined]
        out = {}
        for i, (formal, actual) in enumerate(zip(body.input, node.input)):
            t = scope.types.get(actual)
            if t is not None and i >= n_state and t.tensor_type.HasField("shape"):
                t2 = onnx.TypeProto()
                t2.CopyFrom(t)
                dims = t2.tensor_type.shape.dim
                axis = axes[i - n_state] if i - n_state < len(axes) else 0
                del dims[axis % len(dims) if len(dims) else 0]  # a scan input loses its scan axis in the body
                t = t2
            out[formal.name] = t
        return out
    return None


def _body_bindings(node: onnx.NodeProto, body: onnx.GraphProto) -> list[tuple[str, str]]:
    """(body input, node input) pairs that carry the same values (for the receptive field)."""
    if node.op_type == "Loop":
        return [(f.name, a) for f, a in zip(list(body.input)[2:], list(node.input)[2:])]
    if node.op_type == "Scan":
        return [(f.name, a) for f, a in zip(body.input, node.input)]
    return []


def _function_body(fn: onnx.FunctionProto, call: onnx.NodeProto) -> onnx.GraphProto:
    """The function's nodes as a graph, with attribute references resolved from the call (or defaults)."""
    given = {a.name: a for a in call.attribute}
    defaults = {a.name: a for a in getattr(fn, "attribute_proto", [])}
    nodes = []
    for n in fn.node:
        if not any(a.ref_attr_name for a in n.attribute):
            nodes.append(n)
            continue
        n2 = onnx.NodeProto()
        n2.CopyFrom(n)
        keep = []
        for a in n2.attribute:
            ref = a.ref_attr_name
            src = given.get(ref) or defaults.get(ref) if ref else a
            if src is None:
                continue  # an optional attribute the call leaves out: the op's own default applies
            new = onnx.AttributeProto()
            new.CopyFrom(src)
            new.name = a.name
            new.ClearField("ref_attr_name")
            keep.append(new)
        del n2.attribute[:]
        n2.attribute.extend(keep)
        nodes.append(n2)
    inputs = [onnx.helper.make_empty_tensor_value_info(i) for i in fn.input]
    outputs = [onnx.helper.make_empty_tensor_value_info(o) for o in fn.output]
    return onnx.helper.make_graph(nodes, fn.name, inputs, outputs)


def _function_opsets(fn: onnx.FunctionProto, model: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    mine = {o.domain: o for o in fn.opset_import}
    return list(mine.values()) + [o for o in model.opset_import if o.domain not in mine]


def _check_domains(model: onnx.ModelProto) -> None:
    """Every node's domain must be imported by the model (or be a local function's)."""
    imported = {o.domain for o in model.opset_import} | {"ai.onnx"}
    if any(o.domain == "ai.onnx" for o in model.opset_import):
        imported.add("")
    local = {(f.domain, f.name) for f in model.functions}
    fn_imported = {d for f in model.functions for d in (o.domain for o in f.opset_import)}

    def visit(graph: onnx.GraphProto, where: str, allowed: set[str]) -> None:
        for node in graph.node:
            dom = node.domain or ""
            if dom not in allowed and (dom, node.op_type) not in local:
                shown = sorted(d or "ai.onnx" for d in imported - {"ai.onnx"})
                raise ShapeError(
                    f"node '{node_label(node)}'{where} ({node.op_type}) uses domain '{dom or 'ai.onnx'}', "
                    f"which the model does not import (opset_import: {', '.join(shown) or 'none'})"
                )
            for _, g in subgraphs_of(node):
                visit(g, f" in a subgraph of '{node_label(node)}'", allowed)

    visit(model.graph, "", imported)
    for f in model.functions:
        g = onnx.helper.make_graph(list(f.node), f.name, [], [])
        visit(g, f" in function '{f.domain}.{f.name}'", imported | fn_imported)


def observe_shapes(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> dict[str, list[int]]:
    """Shapes of the values every conv of the main graph reads (X) and writes, from one onnxruntime run.

    Shape inference cannot know a shape computed from an input's value (a Pad amount read from a scalar
    input); a run can. The convs' inputs and outputs become extra graph outputs of a copy of ``model``
    (which needs its weights), the copy runs once on ``feeds``, and the shapes of those outputs come back.
    onnxruntime is imported here only: ``stats`` without ``--inputs`` never loads it.

    Raises:
        OnnxConvError: onnxruntime cannot load or run the model on these inputs.
    """
    from .compare import run_model, session

    wanted: dict[str, None] = {}
    for node in model.graph.node:
        if node.op_type in CONV_OPS or _vendor_conv(node):
            for name in (node.input[0] if node.input else "", node.output[0] if node.output else ""):
                if name:
                    wanted.setdefault(name, None)
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    have = {o.name for o in copy.graph.output}
    for name in wanted:
        if name not in have:
            copy.graph.output.append(onnx.helper.make_empty_tensor_value_info(name))
    outs = run_model(session(copy, opt_level="disable"), feeds)  # unoptimised: every name stays
    return {name: [int(d) for d in outs[name].shape] for name in wanted if name in outs}


def _vendor_conv(node: onnx.NodeProto) -> bool:
    """Whether ``node`` is one of onnxruntime's conv ops that stats counts (see onnxconv.shapes)."""
    return node.domain not in _DEFAULT_DOMAINS and "conv" in node.op_type.lower()


def _set_value_shapes(graph: onnx.GraphProto, shapes: Mapping[str, Sequence[int]]) -> None:
    """Give the named values of ``graph`` these shapes (value_info, outputs or inputs; added when absent)."""
    infos = {vi.name: vi for vi in list(graph.value_info) + list(graph.output) + list(graph.input)}
    for name, dims in shapes.items():
        vi = infos.get(name)
        if vi is None:
            vi = graph.value_info.add()
            vi.name = name
            vi.type.tensor_type.elem_type = onnx.TensorProto.FLOAT
        shape = vi.type.tensor_type.shape
        del shape.dim[:]
        for d in dims:
            shape.dim.add().dim_value = int(d)


def _initializer_values(model: onnx.ModelProto) -> Callable[[str], np.ndarray | None]:
    """A lookup of the main graph's inline initializer values by name, decoding only what is asked for (stats
    reads values only for onnxruntime's NCHWc convs, see ``_nchwc_channels``)."""
    tensors = {t.name: t for t in model.graph.initializer}

    def value(name: str) -> np.ndarray | None:
        t = tensors.get(name)
        if t is None or t.data_location == onnx.TensorProto.EXTERNAL:
            return None
        try:
            return numpy_helper.to_array(t)
        except Exception:  # noqa: BLE001 - a tensor numpy cannot decode leaves the channels as stored
            return None

    return value


def _checker_rejection(work: onnx.ModelProto) -> str | None:
    """The first line of onnx.checker's complaint about the weight-free copy ``work``, or None when it passes.

    ``work`` is the shape-inferred copy: without the weights' bytes, sorted, graph outputs typed (the checker
    wants a shape on every graph output, which exporters often leave to inference and onnxruntime does not
    need). So
    the check costs what the graph costs, keeping stats about as fast as ``onnx.load``; what it cannot see
    (tensor data) stats never reads either. A model the checker rejects is usually one onnxruntime refuses too,
    so the counts are still given but said to rest on that model's word.
    """
    try:
        onnx.checker.check_model(work)
    except Exception as e:  # noqa: BLE001 - ValidationError and friends: every failure is a reason to note
        text = str(e).strip()
        first = text.splitlines()[0].strip() if text else type(e).__name__
        return first[:300]
    return None


def _shared_params(walker: _Walker) -> int:
    """Weight elements counted more than once because several rows read the same stored tensor."""
    extra = 0
    for users in walker.weight_users.values():
        if len(users) > 1 and users[0].weight_shape is not None:
            extra += C.prod(users[0].weight_shape) * (len(users) - 1)
    return extra


def analyze(
    model: onnx.ModelProto,
    *,
    name: str = "",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    all_ops: bool = False,
    groups: int = 4,
    observed_shapes: Mapping[str, Sequence[int]] | None = None,
) -> StatsReport:
    """Count every convolution (and with ``all_ops`` every Gemm/MatMul/RNN/GRU/LSTM) of ``model``.

    Args:
        model: the model; its weights need not be loaded (only their shapes are read).
        name: what to call the model in the report (usually its path).
        input_shapes: dims for graph inputs, e.g. ``{"images": [1, 3, 640, 640]}``.
        batch: the value for symbolic batch dims (default 1, with a note).
        all_ops: add rows for the other MAC-bearing ops so totals compare with published figures.
        groups: G of the "grouped with G groups" what-if.
        observed_shapes: shapes of main-graph values seen in a real run (:func:`observe_shapes`); they
            override inference, so a conv whose input shape depends on an input's *value* is counted.

    Raises:
        ShapeError: a dim needed for a count is still unknown (names the input and dim, with an example
            option), a node contradicts its weight, or the model uses a domain it does not import.
        OptionError: an input shape names no input or contradicts the model.
    """
    if groups < 1:
        raise OptionError(f"--groups must be at least 1, got {groups}")
    if batch is not None and batch < 1:
        raise OptionError(f"--batch must be at least 1, got {batch}")
    _check_domains(model)
    notes: list[str] = []
    weights = frozenset(t.name for t in model.graph.initializer)
    work = shape_model(model)
    lower_runtime_ops(work)
    apply_input_shapes(work, input_shapes or {}, batch, notes, weights)
    inferred = infer(work)
    if observed_shapes:
        _set_value_shapes(inferred.graph, observed_shapes)
        notes.append(f"shapes of {len(observed_shapes)} conv input/output value(s) taken from an onnxruntime run "
                     "on the given inputs")
    rejected = _checker_rejection(inferred)
    if rejected:
        notes.append(f"onnx.checker rejects this model: {rejected}; counts assume each node means what its "
                     "op's spec says, onnxruntime may refuse to run it")
    walker = _Walker(inferred, all_ops, groups, _initializer_values(model))
    walker.walk(inferred.graph, "", _Scope(inferred.graph, None, set(weights)), {})
    rows = walker.rows
    _check_unknown(model, work, inferred, walker, notes)
    if walker.bodies:
        notes.append("convs in " + ", ".join(sorted(walker.bodies)) + " are counted once (one Loop/Scan "
                     "iteration; every If branch, though only one runs)")
    for op, labels in sorted(walker.foreign.items()):
        notes.append(f"{len(labels)} '{op}' node(s) of a non-standard domain are not counted")
    if not rows:
        notes.append("no convolution layers found" + (" (nor Gemm/MatMul/RNN)" if all_ops else ""))
    totals = {
        "layers": len(rows),
        "params": sum(r.params or 0 for r in rows),
        "macs": sum(r.macs or 0 for r in rows),
        "flops": sum(r.flops or 0 for r in rows),
        "uncounted": sum(1 for r in rows if r.macs is None),
    }
    shared = _shared_params(walker)
    if shared:
        # A weight read by several convs is stored once: the params total counts it once.
        totals["params"] -= shared
        notes.append(f"{shared} params of weights shared between layers are counted once in the total")
    if totals["macs"]:
        for r in rows:
            if r.macs is not None:
                r.share = r.macs / totals["macs"]
    return StatsReport(model=name, layers=rows, totals=totals, notes=notes, whatif_groups=groups)


def _check_unknown(model: onnx.ModelProto, work: onnx.ModelProto, inferred: onnx.ModelProto, walker: _Walker,
                   notes: list[str]) -> None:
    """Raise when layers lack MACs because an input dim is unknown; note it when the gap is in the graph."""
    unknown = [r for r in walker.rows if r.macs is None and r.weight_shape is not None]
    if not unknown:
        return
    ids = {id(r) for r in unknown}
    main = [n for r, n in walker.main_nodes if id(r) in ids]
    needed = inputs_feeding(inferred.graph, main) if len(main) == len(unknown) else set()
    msg = missing_dims_message(model, work, needed, len(unknown))
    if msg:
        raise ShapeError(msg)
    notes.append(
        f"{len(unknown)} layer(s) have an input shape that shape inference could not work out "
        f"(first: '{unknown[0].qualified_name}'); their MACs are not counted"
    )

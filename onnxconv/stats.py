"""Walk a model's convolutions and count params, MACs and exact FLOPs per layer.

Conventions are those of :mod:`onnxconv.counting` (MACs; exact FLOPs = 2*MACs with bias, minus one per output
without; ConvTranspose counted over its input, the scatter view). Shapes come from ONNX shape inference run on
a weight-free copy of the model (:func:`onnxconv.model_io.shape_model`), then every conv's output shape is
recomputed from its input shape and attributes, so a wrong or missing value_info cannot skew a count.

The walk covers the main graph, If/Loop/Scan bodies and model-local functions (each call analysed with its
caller's shapes); rows from those carry a ``path`` such as ``If_0/then_branch`` or ``block_1:local.Block``.
Receptive fields and effective strides are propagated in topological order from the graph inputs (max over
paths); pooling, resize and ConvTranspose layers count.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import onnx
from onnx import helper

from . import counting as C
from .conv import BIAS_INDEX, CONV_OPS, WEIGHT_INDEX, ConvSpec, conv_spec
from .errors import OnnxConvError, OptionError, ShapeError
from .graph import attrs_of, node_label, shapes_of_graph, subgraphs_of, toposort
from .model_io import shape_model

__all__ = ["LayerStats", "StatsReport", "analyze", "parse_input_shape", "CONVENTIONS", "MAC_OPS"]

CONVENTIONS = (
    "MACs = multiply-accumulates; FLOPs = exact multiplies + additions "
    "(2*MACs with bias, 2*MACs - outputs without); ConvTranspose MACs over its input (scatter view); "
    "params = weight + bias elements"
)

#: Ops besides convolutions that `--all-ops` counts.
MAC_OPS = ("Gemm", "MatMul", "MatMulInteger", "QLinearMatMul")

_POOL_OPS = ("MaxPool", "AveragePool", "LpPool")
_GLOBAL_POOL_OPS = ("GlobalAveragePool", "GlobalMaxPool", "GlobalLpPool")
_RESIZE_OPS = ("Resize", "Upsample")
# Ops whose weight input keeps its shape: the weight behind them is still countable.
_SHAPE_KEEPING = ("Cast", "Identity", "DequantizeLinear", "QuantizeLinear", "CastLike")


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
        """The stable JSON interface (see README "JSON output")."""
        return {
            "model": self.model,
            "conventions": self.conventions,
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
    parts = [p for p in dims.replace(",", "x").lower().split("x") if p.strip()]
    try:
        values = [int(p) for p in parts]
    except ValueError:
        raise OptionError(f"--input-shape '{text}': dims must be whole numbers, e.g. {name}=1x3x224x224") from None
    if not name or not values or any(v <= 0 for v in values):
        raise OptionError(f"--input-shape '{text}': expected NAME=1x3x224x224 with positive dims")
    return name, values


# --------------------------------------------------------------------------------------------------------------
# Shape preparation


def _set_dims(vi: onnx.ValueInfoProto, dims: Sequence[int]) -> None:
    shape = vi.type.tensor_type.shape
    del shape.dim[:]
    for d in dims:
        shape.dim.add().dim_value = int(d)


def _prepare_inputs(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]], batch: int | None, notes: list[str]
) -> None:
    """Apply --input-shape and --batch to the graph inputs of the (shape-only) model, in place."""
    graph_inputs = {vi.name: vi for vi in model.graph.input}
    init_names = {t.name for t in model.graph.initializer}
    real_inputs = [vi for vi in model.graph.input if vi.name not in init_names]
    for name, dims in input_shapes.items():
        vi = graph_inputs.get(name)
        if vi is None or name in init_names:
            names = ", ".join(v.name for v in real_inputs) or "none"
            raise OptionError(f"--input-shape: the model has no input '{name}' (inputs: {names})")
        old = _shape_tuple(vi)
        if old is not None and len(old) != len(dims):
            raise OptionError(f"--input-shape {name}: {len(dims)} dims given, the input has rank {len(old)}")
        if old is not None:
            for i, (o, n) in enumerate(zip(old, dims)):
                if isinstance(o, int) and o != n:
                    raise OptionError(f"--input-shape {name}: dim {i} is fixed at {o} in the model, {n} given")
        _set_dims(vi, dims)
    for vi in real_inputs:
        if vi.name in input_shapes:
            continue
        shape = _shape_tuple(vi)
        if not shape:
            continue
        first = shape[0]
        if isinstance(first, int):
            if batch is not None and first != batch:
                notes.append(f"input '{vi.name}' has a fixed batch of {first}; --batch {batch} does not apply to it")
            continue
        if len(shape) < 3:
            continue
        n = batch if batch is not None else 1
        vi.type.tensor_type.shape.dim[0].ClearField("dim_param")
        vi.type.tensor_type.shape.dim[0].dim_value = n
        if batch is None:
            notes.append(f"input '{vi.name}': symbolic batch dim counted as 1 (set --batch)")


def _shape_tuple(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    if not vi.type.HasField("tensor_type") or not vi.type.tensor_type.HasField("shape"):
        return None
    out: list[int | str | None] = []
    for d in vi.type.tensor_type.shape.dim:
        out.append(int(d.dim_value) if d.HasField("dim_value") else (d.dim_param or None))
    return tuple(out)


def _infer(model: onnx.ModelProto) -> onnx.ModelProto:
    try:
        return onnx.shape_inference.infer_shapes(model, strict_mode=False, data_prop=True)
    except Exception as e:  # noqa: BLE001 - onnx raises several unrelated types; all mean the same here
        msg = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise ShapeError(f"ONNX shape inference failed: {msg[:300]}") from e


def _check_domains(model: onnx.ModelProto) -> None:
    """Every node's domain must be imported by the model (or be a local function's)."""
    imported = {o.domain for o in model.opset_import} | {"ai.onnx"}
    local = {(f.domain, f.name) for f in model.functions}

    def visit(graph: onnx.GraphProto, where: str) -> None:
        for node in graph.node:
            dom = node.domain or ""
            if dom not in imported and (dom, node.op_type) not in local:
                raise ShapeError(
                    f"node '{node_label(node)}'{where} ({node.op_type}) uses domain '{dom}', "
                    f"which the model does not import (opset_import: {sorted(imported - {'ai.onnx'})})"
                )
            for _, g in subgraphs_of(node):
                visit(g, f" in a subgraph of '{node_label(node)}'")

    visit(model.graph, "")


# --------------------------------------------------------------------------------------------------------------
# The walk


@dataclass
class _Field:
    rf: tuple[float, ...]
    jump: tuple[float, ...]


def _merge(fields: Sequence[_Field]) -> _Field | None:
    fields = [f for f in fields if f is not None]
    if not fields:
        return None
    n = max(len(f.rf) for f in fields)
    rf = tuple(max(_axis(f.rf, i) for f in fields) for i in range(n))
    jump = tuple(max(_axis(f.jump, i) for f in fields) for i in range(n))
    return _Field(rf, jump)


def _axis(values: tuple[float, ...], i: int) -> float:
    # A field tracked over fewer axes (e.g. after a Flatten) applies its widest value to every axis.
    return values[i] if i < len(values) else max(values)


def _fit(f: _Field, k: int) -> _Field:
    return _Field(tuple(_axis(f.rf, i) for i in range(k)), tuple(_axis(f.jump, i) for i in range(k)))


def _int_shape(shape: Sequence[int | str | None] | None) -> list[int | None] | None:
    if shape is None:
        return None
    return [d if isinstance(d, int) and d >= 0 else None for d in shape]


class _Walker:
    def __init__(self, model: onnx.ModelProto, all_ops: bool, groups: int) -> None:
        self.model = model
        self.all_ops = all_ops
        self.groups = groups
        self.rows: list[LayerStats] = []
        self.functions = {(f.domain, f.name): f for f in model.functions}
        self.opsets = list(model.opset_import)

    # -- weights ---------------------------------------------------------------------------------------------
    def _weight(
        self, name: str, shapes: Mapping[str, Any], producers: Mapping[str, onnx.NodeProto], consts: set[str]
    ) -> tuple[tuple[int, ...] | None, str]:
        """Weight shape and where it comes from: initializer, Constant, behind Cast/DequantizeLinear, computed."""
        seen = 0
        source_chain: list[str] = []
        cur = name
        while True:
            if cur in consts:
                base = "initializer" if not source_chain else "initializer via " + "/".join(source_chain)
                s = shapes.get(cur)
                return (tuple(s) if s is not None else None), base
            node = producers.get(cur)
            if node is not None and node.op_type == "Constant":
                base = "Constant" if not source_chain else "Constant via " + "/".join(source_chain)
                return (tuple(shapes[cur]) if cur in shapes else None), base
            if node is not None and node.op_type in _SHAPE_KEEPING and node.input and seen < 8:
                source_chain.append(node.op_type)
                known = shapes.get(cur)
                if known is not None and all(isinstance(d, int) for d in known):
                    # Still walk up to say where it comes from, but the shape is known here already.
                    inner, src = self._weight(node.input[0], shapes, producers, consts)
                    return tuple(known), src if "via" in src else src + " via " + "/".join(source_chain)
                cur = node.input[0]
                seen += 1
                continue
            s = shapes.get(cur)
            if s is not None and all(isinstance(d, int) and d >= 0 for d in s):
                return tuple(s), "computed at run time"
            return None, "computed at run time"

    # -- rows ------------------------------------------------------------------------------------------------
    def _conv_row(
        self, node: onnx.NodeProto, path: str, shapes: Mapping[str, Any], producers: Mapping[str, onnx.NodeProto],
        consts: set[str], field_in: _Field | None,
    ) -> tuple[LayerStats, ConvSpec | None]:
        op = node.op_type
        row = LayerStats(name=node_label(node), op_type=op, path=path)
        widx, bidx = WEIGHT_INDEX[op], BIAS_INDEX.get(op)
        if len(node.input) <= widx or not node.input[widx]:
            row.note = "no weight input"
            return row, None
        wshape, row.weight_source = self._weight(node.input[widx], shapes, producers, consts)
        has_bias = bidx is not None and len(node.input) > bidx and bool(node.input[bidx])
        row.has_bias = has_bias
        x_shape = _int_shape(shapes.get(node.input[0]))
        row.input_shape = x_shape
        if wshape is None:
            row.note = "weight computed at run time and its shape is unknown: not counted"
            return row, None
        try:
            spec = conv_spec(op, attrs_of(node), wshape, has_bias, x_shape)
        except ShapeError as e:
            raise ShapeError(f"node '{row.qualified_name}' ({op}): {e}") from None
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
        row.params = spec.params
        row.macs = spec.macs
        row.flops = spec.flops
        if row.macs is None:
            row.note = "input shape unknown: MACs not counted"
        if row.weight_source.startswith("computed"):
            row.note = (row.note + "; " if row.note else "") + "weight computed at run time (shape known)"
        if field_in is not None:
            k = spec.spatial_rank
            f = _fit(field_in, k)
            rf, jump = [], []
            for i in range(k):
                step = C.rf_step_transpose if spec.transposed else C.rf_step
                r, j = step(f.rf[i], f.jump[i], spec.kernel_shape[i], spec.strides[i], spec.dilations[i])
                rf.append(r)
                jump.append(j)
            row.receptive_field, row.effective_stride = rf, jump
        if spec.kind == "standard" and spec.op_type in ("Conv", "ConvInteger", "QLinearConv") and row.macs is not None:
            row.whatif = self._whatif(spec, row.macs)
        return row, spec

    def _whatif(self, spec: ConvSpec, macs: int) -> dict[str, Any]:
        n = spec.batch or 1
        sep_params, sep_macs = C.separable_cost(
            n, spec.c_in, spec.c_out, spec.output_shape[2:], spec.kernel_shape, spec.has_bias  # type: ignore[arg-type]
        )
        out: dict[str, Any] = {
            "separable": {"params": sep_params, "macs": sep_macs, "macs_ratio": sep_macs / macs if macs else None,
                          "params_ratio": sep_params / spec.params}
        }
        g = C.grouped_cost(spec.weight_params, macs, spec.c_in, spec.c_out, self.groups, spec.bias_params)
        if g is None:
            out["grouped"] = {"groups": self.groups, "params": None, "macs": None,
                              "reason": f"channels {spec.c_in}->{spec.c_out} not divisible by {self.groups}"}
        else:
            out["grouped"] = {"groups": self.groups, "params": g[0], "macs": g[1],
                              "macs_ratio": g[1] / macs if macs else None, "params_ratio": g[0] / spec.params}
        return out

    def _matmul_row(self, node: onnx.NodeProto, path: str, shapes: Mapping[str, Any]) -> LayerStats:
        op = node.op_type
        row = LayerStats(name=node_label(node), op_type=op, path=path, kind="matmul")
        ia, ib = (0, 3) if op == "QLinearMatMul" else (0, 1)
        a = _int_shape(shapes.get(node.input[ia])) if len(node.input) > ia else None
        b = _int_shape(shapes.get(node.input[ib])) if len(node.input) > ib else None
        y = _int_shape(shapes.get(node.output[0]))
        row.input_shape, row.output_shape = a, y
        if a is None or b is None or any(v is None for v in a + b):
            row.note = "operand shapes unknown: not counted"
            return row
        has_bias = False
        if op == "Gemm":
            at = attrs_of(node)
            m, k = (a[1], a[0]) if at.get("transA", 0) else (a[0], a[1])
            nn = b[0] if at.get("transB", 0) else b[1]
            batch = 1
            has_bias = len(node.input) > 2 and bool(node.input[2])
            row.params = C.prod(b) + (C.prod(_int_shape(shapes.get(node.input[2])) or [0]) if has_bias else 0)  # type: ignore[arg-type]
        else:
            a2 = [1] + a if len(a) == 1 else a
            b2 = b + [1] if len(b) == 1 else b
            m, k, nn = a2[-2], a2[-1], b2[-1]
            batch_dims = [max(x, y_) for x, y_ in zip([1] * (max(len(a2), len(b2)) - len(a2)) + a2[:-2],
                                                       [1] * (max(len(a2), len(b2)) - len(b2)) + b2[:-2])]
            batch = C.prod(batch_dims)
        row.macs = C.gemm_macs(batch, m, k, nn)  # type: ignore[arg-type]
        outputs = batch * m * nn  # type: ignore[operator]
        row.flops = C.conv_flops(row.macs, outputs, has_bias)
        return row

    # -- walk ------------------------------------------------------------------------------------------------
    def walk(
        self, graph: onnx.GraphProto, path: str, outer_shapes: Mapping[str, Any], fields: dict[str, _Field],
        outer_consts: set[str],
    ) -> None:
        shapes = dict(outer_shapes)
        shapes.update(shapes_of_graph(graph))
        consts = set(outer_consts) | {t.name for t in graph.initializer}
        producers: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for o in node.output:
                producers[o] = node
        for vi in graph.input:
            if vi.name not in consts and vi.name not in fields:
                s = shapes.get(vi.name)
                k = max(len(s) - 2, 1) if s else 2
                fields[vi.name] = _Field((1.0,) * k, (1.0,) * k)
        for node in toposort(graph.node):
            self._visit(node, path, shapes, producers, consts, fields)

    def _visit(
        self, node: onnx.NodeProto, path: str, shapes: dict[str, Any], producers: Mapping[str, onnx.NodeProto],
        consts: set[str], fields: dict[str, _Field],
    ) -> None:
        op, dom = node.op_type, node.domain or ""
        field_in = _merge([fields.get(i) for i in node.input if i in fields and i not in consts])
        out_field = field_in
        if dom in ("", "ai.onnx") and op in CONV_OPS:
            row, spec = self._conv_row(node, path, shapes, producers, consts, fields.get(node.input[0]))
            self.rows.append(row)
            if row.receptive_field is not None:
                out_field = _Field(tuple(row.receptive_field), tuple(row.effective_stride or ()))
        elif dom in ("", "ai.onnx") and op in MAC_OPS:
            if self.all_ops:
                self.rows.append(self._matmul_row(node, path, shapes))
        elif dom in ("", "ai.onnx") and op in _POOL_OPS and field_in is not None:
            at = attrs_of(node)
            ks = list(at.get("kernel_shape") or [])  # type: ignore[call-overload]
            k = len(ks)
            if k:
                f = _fit(field_in, k)
                ss = list(at.get("strides") or [1] * k)  # type: ignore[call-overload]
                ds = list(at.get("dilations") or [1] * k)  # type: ignore[call-overload]
                steps = [C.rf_step(f.rf[i], f.jump[i], ks[i], ss[i], ds[i]) for i in range(k)]
                out_field = _Field(tuple(s[0] for s in steps), tuple(s[1] for s in steps))
        elif dom in ("", "ai.onnx") and op in _GLOBAL_POOL_OPS and field_in is not None:
            x = _int_shape(shapes.get(node.input[0]))
            if x is not None and len(x) > 2 and all(v is not None for v in x[2:]):
                f = _fit(field_in, len(x) - 2)
                steps = [C.rf_step(f.rf[i], f.jump[i], x[2 + i], x[2 + i], 1) for i in range(len(x) - 2)]  # type: ignore[arg-type]
                out_field = _Field(tuple(s[0] for s in steps), tuple(s[1] for s in steps))
        elif dom in ("", "ai.onnx") and op in _RESIZE_OPS and field_in is not None:
            x = _int_shape(shapes.get(node.input[0]))
            y = _int_shape(shapes.get(node.output[0]))
            if x and y and len(x) == len(y) > 2 and all(v for v in x[2:] + y[2:]):
                f = _fit(field_in, len(x) - 2)
                out_field = _Field(f.rf, tuple(f.jump[i] * x[2 + i] / y[2 + i] for i in range(len(x) - 2)))  # type: ignore[operator]
        elif (dom, op) in self.functions:
            out_field = self._call_function(node, path, shapes, fields, field_in)
            if out_field is None:
                out_field = field_in
        for name, g in subgraphs_of(node):
            sub_fields = dict(fields)
            self.walk(g, f"{path}/{node_label(node)}/{name}" if path else f"{node_label(node)}/{name}",
                      shapes, sub_fields, consts)
            outs = [sub_fields.get(o.name) for o in g.output]
            merged = _merge([f for f in outs if f is not None] + ([out_field] if out_field else []))
            out_field = merged
        if out_field is not None:
            for o in node.output:
                if o:
                    fields[o] = out_field

    def _call_function(
        self, node: onnx.NodeProto, path: str, shapes: Mapping[str, Any], fields: dict[str, _Field],
        field_in: _Field | None,
    ) -> _Field | None:
        """Analyse a model-local function's body with this call's input shapes."""
        fn = self.functions[(node.domain or "", node.op_type)]
        call_attrs = {a.name: a for a in node.attribute}
        inputs = []
        for formal, actual in zip(fn.input, node.input):
            s = shapes.get(actual) if actual else None
            elem = onnx.TensorProto.FLOAT
            if s is None:
                inputs.append(helper.make_tensor_value_info(formal, elem, None))
            else:
                inputs.append(helper.make_tensor_value_info(formal, elem, [d if d is not None else None for d in s]))
        nodes = []
        for n in fn.node:
            if any(a.ref_attr_name for a in n.attribute):
                n2 = onnx.NodeProto()
                n2.CopyFrom(n)
                keep = []
                for a in n2.attribute:
                    if a.ref_attr_name:
                        if a.ref_attr_name in call_attrs:
                            new = onnx.AttributeProto()
                            new.CopyFrom(call_attrs[a.ref_attr_name])
                            new.name = a.name
                            keep.append(new)
                    else:
                        keep.append(a)
                del n2.attribute[:]
                n2.attribute.extend(keep)
                nodes.append(n2)
            else:
                nodes.append(n)
        g = helper.make_graph(nodes, fn.name, inputs, [helper.make_empty_tensor_value_info(o) for o in fn.output])
        sub = helper.make_model(g, opset_imports=list(fn.opset_import) or self.opsets, ir_version=self.model.ir_version or 8)
        sub.functions.extend(self.model.functions)
        try:
            sub = onnx.shape_inference.infer_shapes(sub, strict_mode=False, data_prop=True)
        except Exception:  # noqa: BLE001 - fall back to the shapes we passed in
            pass
        sub_fields: dict[str, _Field] = {}
        for formal, actual in zip(fn.input, node.input):
            if actual in fields:
                sub_fields[formal] = fields[actual]
        sub_path = f"{path}/{node_label(node)}:{fn.domain}.{fn.name}" if path else f"{node_label(node)}:{fn.domain}.{fn.name}"
        self.walk(sub.graph, sub_path, {}, sub_fields, set())
        return _merge([sub_fields.get(o) for o in fn.output if o in sub_fields])


def _symbolic_inputs(model: onnx.ModelProto) -> list[str]:
    init = {t.name for t in model.graph.initializer}
    out = []
    for vi in model.graph.input:
        if vi.name in init:
            continue
        s = _shape_tuple(vi)
        if s is None:
            out.append(f"input '{vi.name}' has no shape")
            continue
        for i, d in enumerate(s):
            if not isinstance(d, int):
                label = f" ('{d}')" if isinstance(d, str) else ""
                out.append(f"input '{vi.name}' dim {i}{label}")
    return out


def analyze(
    model: onnx.ModelProto,
    *,
    name: str = "",
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    all_ops: bool = False,
    groups: int = 4,
) -> StatsReport:
    """Count every convolution (and with ``all_ops`` every Gemm/MatMul) of ``model``.

    Args:
        model: the model; its weights need not be loaded (only their shapes are read).
        name: what to call the model in the report (usually its path).
        input_shapes: dims for graph inputs, e.g. ``{"images": [1, 3, 640, 640]}``.
        batch: the value for symbolic batch dims (default 1, with a note).
        all_ops: add rows for the other MAC-bearing ops so totals compare with published figures.
        groups: G of the "grouped with G groups" what-if.

    Raises:
        ShapeError: a dim needed for a count is still unknown (names the input and dim), or a node contradicts
            its weight.
        OptionError: an input shape names no input or contradicts the model.
    """
    if groups < 1:
        raise OptionError(f"--groups must be at least 1, got {groups}")
    if batch is not None and batch < 1:
        raise OptionError(f"--batch must be at least 1, got {batch}")
    _check_domains(model)
    notes: list[str] = []
    work = shape_model(model)
    _prepare_inputs(work, input_shapes or {}, batch, notes)
    inferred = _infer(work)
    walker = _Walker(inferred, all_ops, groups)
    consts = {t.name for t in model.graph.initializer}
    walker.walk(inferred.graph, "", {}, {}, consts)
    rows = walker.rows
    unknown = [r for r in rows if r.macs is None and r.weight_shape is not None]
    if unknown:
        missing = _symbolic_inputs(work)
        if missing:
            raise ShapeError(
                f"{len(unknown)} layer(s) need dims that are unknown, starting with '{unknown[0].qualified_name}': "
                f"{', '.join(missing)}; set them with --input-shape NAME=1x3x224x224"
            )
        notes.append(
            f"{len(unknown)} layer(s) have an input shape that shape inference could not work out "
            f"(first: '{unknown[0].qualified_name}'); their MACs are not counted"
        )
    for r in rows:
        if r.weight_source.startswith("computed") and r.weight_shape is None:
            notes.append(f"'{r.qualified_name}': weight computed at run time with unknown shape; not counted")
    totals = {
        "layers": len(rows),
        "params": sum(r.params or 0 for r in rows),
        "macs": sum(r.macs or 0 for r in rows),
        "flops": sum(r.flops or 0 for r in rows),
    }
    # Weights shared by several convs are counted once in the params total (they are stored once).
    shared = _shared_weight_params(rows, inferred)
    if shared:
        totals["params"] -= shared
        notes.append(f"{shared} params of weights shared between convs are counted once in the total")
    if totals["macs"]:
        for r in rows:
            if r.macs is not None:
                r.share = r.macs / totals["macs"]
    return StatsReport(model=name, layers=rows, totals=totals, notes=notes, whatif_groups=groups)


def _shared_weight_params(rows: Sequence[LayerStats], model: onnx.ModelProto) -> int:
    """Weight elements counted more than once because several rows read the same weight tensor."""
    by_name: dict[str, list[onnx.NodeProto]] = {}
    labels = {r.qualified_name for r in rows if r.path == ""}
    for node in model.graph.node:
        if node.op_type in CONV_OPS and node_label(node) in labels:
            w = node.input[WEIGHT_INDEX[node.op_type]] if len(node.input) > WEIGHT_INDEX[node.op_type] else ""
            if w:
                by_name.setdefault(w, []).append(node)
    row_by_label = {r.name: r for r in rows if r.path == ""}
    extra = 0
    for users in by_name.values():
        if len(users) > 1:
            r = row_by_label.get(node_label(users[0]))
            if r is not None and r.weight_shape is not None:
                extra += C.prod(r.weight_shape) * (len(users) - 1)
    return extra


def format_count(value: float | int | None) -> str:
    """Human form of a count: 1.23G, 45.6M, 7.89K, 123; '?' for unknown."""
    if value is None:
        return "?"
    v = float(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


del math, OnnxConvError

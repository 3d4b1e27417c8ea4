"""What every rewrite pass shares: the result record, node selection and constant lookup (finishing the
rewritten model is :mod:`.finish`).

A pass works on an ``onnx_graphsurgeon.Graph``: for each conv it runs a *check* step that returns the reason
the node is left alone (or None), and only then a *rewrite* step. Every conv the pass sees ends up in
:attr:`PassResult.layers`, rewritten or with its skip reason, so a user always learns why a node was left.
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..conv import BIAS_INDEX, CONV_OPS, WEIGHT_INDEX, ConvSpec, conv_spec, known
from ..errors import OptionError, RewriteError, ShapeError
from ..graph import node_label, shapes_of_graph, subgraphs_of
from ..shapes import apply_input_shapes, infer
from ..weightless import shape_model

__all__ = [
    "LayerChange",
    "PassResult",
    "FLOAT_TYPES",
    "base_check",
    "NodeFilter",
    "constant_array",
    "string_constant",
    "tensor_users",
    "weight_origin",
    "node_conv_spec",
    "graphs_with_paths",
    "drop_dead_producers",
    "function_rows",
    "NamePool",
    "tensor_shapes",
]


@dataclass
class LayerChange:
    """What a pass did to one conv node.

    ``reason`` is empty for a rewritten node and says why otherwise. Every figure is stored once, in a typed
    field (None, or False for ``forced``, where no stage set it): code reads the fields, and the report and the
    table read :attr:`details`, which is derived from them, so the two cannot disagree.

    * ``pass_name``: ``"separable"`` or ``"shuffle"`` (the pass that made the row; empty for rows of layers
      inside model-local functions and rows the planner made). Not in the report.
    * The separable pass: ``rank``, ``max_rank`` (``min(C_out/g, K)``), ``weight_error`` (relative Frobenius
      error of the rank-r weight), ``energy`` (kept share of the squared singular values); then, once emitted,
      ``form`` (the graph form actually emitted) and ``forced`` (a rank that saves no MACs, rewritten anyway).
      A layer whose rank saves no MACs keeps the first four with its skip reason.
    * The shuffle pass: ``groups`` (G), ``kept_energy`` (kept share of the weight's squared norm),
      ``identity_kept`` (the same without reordering), ``method`` (which assignment won), ``permutation`` (how
      its input reordering is realised) and ``output_reorder`` (the same for each consumer of its output); once
      rewritten, ``in_groups``/``out_groups``, the group of every original input / output channel. A layer
      below ``--min-energy`` keeps all but these two with its skip reason.
    * The planner: ``plan``, the chosen option, the layer's time before -> after and its estimated error.
    * The refit: ``refit_report``, figures keyed as the report spells them (``out_err``, ``refit_err``,
      ``ridge``, ``samples``, ...; or ``refit``, why the layer was not refitted). Their keys differ between the
      1x1 refit and the kernel refit and nothing reads them by name but the report and the table, so they stay
      a free-form dict.
    """

    name: str
    op_type: str
    rewritten: bool
    reason: str = ""
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    pass_name: str = ""
    rank: int | None = None
    max_rank: int | None = None
    weight_error: float | None = None
    energy: float | None = None
    form: str | None = None
    forced: bool = False
    groups: int | None = None
    kept_energy: float | None = None
    identity_kept: float | None = None
    method: str | None = None
    permutation: str | None = None
    output_reorder: list[str] | None = None
    in_groups: tuple[int, ...] | None = None
    out_groups: tuple[int, ...] | None = None
    plan: str | None = None
    refit_report: dict[str, Any] = field(default_factory=dict)

    @property
    def details(self) -> Mapping[str, Any]:
        """The per-layer figures as the JSON report and the table read them: every typed figure that is set, in
        the report's order (the separable pass's, the shuffle pass's, the planner's), then ``refit_report``.

        Derived on each read and read-only: a figure is changed through its field, never here.
        """
        typed: dict[str, Any] = {
            "rank": self.rank,
            "max_rank": self.max_rank,
            "weight_error": self.weight_error,
            "rel_error": self.weight_error,  # the same figure under its old name, for pipelines that read it
            "energy": self.energy,
            "form": self.form,
            "forced": True if self.forced else None,
            "groups": self.groups,
            "kept_energy": self.kept_energy,
            "identity_kept": self.identity_kept,
            "method": self.method,
            "permutation": self.permutation,
            "output_reorder": _json_list(self.output_reorder),
            "in_groups": _json_list(self.in_groups),
            "out_groups": _json_list(self.out_groups),
            "plan": self.plan,
        }
        out = {key: value for key, value in typed.items() if value is not None}
        out.update(self.refit_report)
        return MappingProxyType(out)

    def to_dict(self) -> dict[str, Any]:
        """The report's layout: the node, what the pass did, and :attr:`details` (``pass_name`` is left out)."""
        return {"name": self.name, "op_type": self.op_type, "rewritten": self.rewritten, "reason": self.reason,
                "params_before": self.params_before, "params_after": self.params_after,
                "macs_before": self.macs_before, "macs_after": self.macs_after, "details": dict(self.details)}


def _json_list(values: Sequence[Any] | None) -> list[Any] | None:
    """``values`` as a new list (the JSON array the report writes; a caller may change it freely), or None."""
    return None if values is None else list(values)


@dataclass
class PassResult:
    """The rewritten model and one :class:`LayerChange` per conv node the pass looked at."""

    model: onnx.ModelProto
    layers: list[LayerChange]
    pass_name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def rewritten(self) -> list[LayerChange]:
        return [c for c in self.layers if c.rewritten]

    @property
    def skipped(self) -> list[LayerChange]:
        return [c for c in self.layers if not c.rewritten]

    def totals(self) -> dict[str, int]:
        """MACs and params before/after over all convs seen (a skipped conv counts the same on both sides)."""
        out = {"layers": len(self.layers), "rewritten": len(self.rewritten), "skipped": len(self.skipped)}
        for key in ("macs", "params"):
            before = sum(c.__dict__[f"{key}_before"] or 0 for c in self.layers)
            after = sum(
                (c.__dict__[f"{key}_after"] if c.rewritten else c.__dict__[f"{key}_before"]) or 0 for c in self.layers
            )
            out[f"{key}_before"], out[f"{key}_after"] = before, after
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "options": self.options,
            "layers": [c.to_dict() for c in self.layers],
            "totals": self.totals(),
        }


class NodeFilter:
    """``--include``/``--exclude`` regexes matched (``re.search``) against node names.

    A node is selected when it matches some include pattern (or there are none) and no exclude pattern.
    """

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = [self._compile(p, "--include") for p in include]
        self.exclude = [self._compile(p, "--exclude") for p in exclude]

    @staticmethod
    def _compile(pattern: str, option: str) -> re.Pattern[str]:
        try:
            return re.compile(pattern)
        except re.error as e:
            raise OptionError(f"{option} '{pattern}': not a valid regular expression ({e})") from None

    def reason(self, name: str) -> str | None:
        """None when selected, else the skip reason."""
        if self.include and not any(p.search(name) for p in self.include):
            return "not matched by --include"
        for p in self.exclude:
            if p.search(name):
                return f"matched by --exclude '{p.pattern}'"
        return None


_DTYPE_CAST = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
}


def _numeric(c: gs.Constant) -> bool:
    """Whether ``c``'s values may be read: not strings. Reading makes onnx-graphsurgeon keep a numpy copy, which
    its export writes as raw bytes, and strings have none (the export raised TypeError); ``dtype`` is read from
    the stored tensor without loading it."""
    return not (isinstance(c.dtype, np.dtype) and c.dtype.kind in "OSU")


def string_constant(tensor: gs.Tensor) -> bool:
    """Whether ``tensor`` is a constant of strings (an initializer or a ``Constant`` node's output, or either
    behind ``Identity``), whose values :func:`constant_array` never reads."""
    for _ in range(8):
        if isinstance(tensor, gs.Constant):
            return not _numeric(tensor)
        if not tensor.inputs:
            return False
        node = tensor.inputs[0]
        if node.op == "Constant":
            value = node.attrs.get("value")
            return (isinstance(value, gs.Constant) and not _numeric(value)) or any(
                k in node.attrs for k in ("value_string", "value_strings"))
        if node.op != "Identity" or not node.inputs:
            return False
        tensor = node.inputs[0]
    return False


def constant_array(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of ``tensor`` when it is a numeric constant: an initializer, a ``Constant`` node's output, or
    either behind ``Identity``/``Cast`` to a float type. None for anything computed at run time, and for strings
    (:func:`string_constant`)."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values) if _numeric(tensor) else None
    if not tensor.inputs:
        return None
    node = tensor.inputs[0]
    if node.op == "Constant" and node.domain in ("", "ai.onnx", None):
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values) if _numeric(value) else None
        for key in ("value_float", "value_floats"):
            if key in node.attrs:
                return np.asarray(node.attrs[key], dtype=np.float32)
        return None
    if node.op == "Identity" and node.inputs:
        return constant_array(node.inputs[0])
    if node.op == "Cast" and node.inputs:
        to = node.attrs.get("to")
        inner = constant_array(node.inputs[0])
        if inner is None or to not in _DTYPE_CAST:
            return None
        return inner.astype(_DTYPE_CAST[to])
    return None


def tensor_users(tensor: gs.Tensor) -> list[gs.Node]:
    """Nodes reading ``tensor`` (a shared weight has more than one)."""
    return list(tensor.outputs)


class NamePool:
    """Fresh names for tensors and nodes, unique across the whole model (every subgraph and function too:
    ONNX names are global within a model, and a subgraph may read any outer name)."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.used: set[str] = set()

        def visit(graph: onnx.GraphProto) -> None:
            self.used.update(v.name for v in list(graph.input) + list(graph.output) + list(graph.value_info))
            self.used.update(t.name for t in graph.initializer)
            for n in graph.node:
                self.used.add(n.name)
                self.used.update(n.input)
                self.used.update(n.output)
                for _, sub in subgraphs_of(n):
                    visit(sub)

        visit(model.graph)
        for f in model.functions:
            self.used.update(f.input)
            self.used.update(f.output)
            for n in f.node:
                self.used.add(n.name)
                self.used.update(n.output)

    def new(self, base: str) -> str:
        """``base`` if unused, else ``base_1``, ``base_2``, ...; the name is reserved."""
        name, i = base, 0
        while name in self.used:
            i += 1
            name = f"{base}_{i}"
        self.used.add(name)
        return name


def tensor_shapes(
    model: onnx.ModelProto, input_shapes: Mapping[str, Sequence[int]] | None = None, batch: int | None = None
) -> tuple[dict[str, tuple[int | None, ...]], list[str]]:
    """Shapes of every tensor of the model and its subgraphs (names are global), plus notes.

    Runs ONNX shape inference on a weight-free copy with the same input handling as ``stats``
    (``input_shapes`` set graph inputs; a symbolic batch counts as ``batch``, default 1, with a note).
    Unknown dims are None.
    """
    # The same input handling and inference as `onnxconv stats`, so the pass counts exactly as stats does.
    notes: list[str] = []
    work = shape_model(model)
    apply_input_shapes(work, input_shapes or {}, batch, notes, frozenset(t.name for t in model.graph.initializer))
    inferred = infer(work)
    out: dict[str, tuple[int | None, ...]] = {}

    def visit(graph: onnx.GraphProto) -> None:
        for name, shape in shapes_of_graph(graph).items():
            out[name] = tuple(d if isinstance(d, int) and d >= 0 else None for d in shape)
        for n in graph.node:
            for _, sub in subgraphs_of(n):
                visit(sub)

    visit(inferred.graph)
    return out, notes


def weight_origin(tensor: gs.Tensor) -> str | None:
    """'DequantizeLinear' when the weight is dequantized at run time (QDQ), following Identity/Cast."""
    for _ in range(8):
        if isinstance(tensor, gs.Constant) or not tensor.inputs:
            return None
        prod = tensor.inputs[0]
        if prod.op == "DequantizeLinear":
            return "DequantizeLinear"
        if prod.op not in ("Identity", "Cast") or not prod.inputs:
            return None
        tensor = prod.inputs[0]
    return None


def node_conv_spec(node: gs.Node, qualified: str, shapes: Mapping[str, tuple[int | None, ...]],
          weight: np.ndarray | None) -> ConvSpec | None:
    """The node's ConvSpec when its weight shape is known (for the MACs of skipped layers too), else None."""
    widx, bidx = WEIGHT_INDEX[node.op], BIAS_INDEX.get(node.op)
    if len(node.inputs) <= widx or not node.inputs[widx].name:
        return None
    w_t = node.inputs[widx]
    stored = weight.shape if weight is not None else (
        w_t.shape if isinstance(w_t, gs.Constant) else shapes.get(w_t.name))
    wshape = known(stored) if stored is not None else None
    if wshape is None:
        return None
    has_bias = bidx is not None and len(node.inputs) > bidx and bool(node.inputs[bidx].name)
    try:
        return conv_spec(node.op, node.attrs, wshape, has_bias, shapes.get(node.inputs[0].name))
    except ShapeError as e:
        raise ShapeError(f"node '{qualified}' ({node.op}): {e}") from None


#: Weight types a pass factors or groups (numpy has no bfloat16).
FLOAT_TYPES = (np.float16, np.float32, np.float64)


def base_check(
    node: gs.Node, qualified: str, shapes: Mapping[str, tuple[int | None, ...]], node_filter: NodeFilter | None
) -> tuple[str | None, ConvSpec | None, np.ndarray | None]:
    """The checks every pass makes first, in order; each pass adds its own after them.

    Returns (the reason ``node`` is left alone or None, its spec when the weight shape is known, its weight when
    usable). Left alone: ConvTranspose (neither pass targets it), quantized convs (ConvInteger, QLinearConv),
    nodes not selected by ``node_filter``, no weight input, a weight from DequantizeLinear (rewriting it would
    break the quantization), a weight computed at run time, a non-float weight, and a weight with NaN/Inf
    values (no factoring or grouping reproduces them, and the SVDs both passes run do not converge on them).
    """
    w_t = node.inputs[1] if len(node.inputs) > 1 and node.op == "Conv" and node.inputs[1].name else None
    weight = constant_array(w_t) if w_t is not None and not weight_origin(w_t) else None
    spec = node_conv_spec(node, qualified, shapes, weight)
    if node.op == "ConvTranspose":
        return "ConvTranspose is not a target of this pass", spec, None
    if node.op in ("ConvInteger", "QLinearConv"):
        return f"quantized conv ({node.op}) is not rewritten", spec, None
    why = node_filter.reason(qualified) if node_filter is not None else None
    if why:
        return why, spec, None
    if w_t is None:
        return "no weight input", spec, None
    if weight_origin(w_t):
        return "quantized weight (from DequantizeLinear): rewriting it would break the quantization", spec, None
    if weight is None:
        if string_constant(w_t):
            return "weight type string is not float16/32/64", spec, None
        return "weight is computed at run time, not a constant", spec, None
    if weight.dtype.type not in FLOAT_TYPES:
        return f"weight type {weight.dtype} is not float16/32/64", spec, None
    bad = int(weight.size - np.count_nonzero(np.isfinite(weight)))
    if bad:
        return f"weight has NaN/Inf values ({bad} of {weight.size})", spec, None
    return None, spec, weight


def graphs_with_paths(graph: gs.Graph, path: str = "") -> Iterator[tuple[str, gs.Graph]]:
    """(path, graph) for the graph and every If/Loop/Scan body below it."""
    yield path, graph
    for node in graph.nodes:
        label = node.name or (node.outputs[0].name if node.outputs else node.op)
        for attr, value in node.attrs.items():
            if isinstance(value, gs.Graph):
                subs = [(attr, value)]
            elif isinstance(value, (list, tuple)):
                subs = [(f"{attr}[{i}]", v) for i, v in enumerate(value) if isinstance(v, gs.Graph)]
            else:
                continue
            for key, sub in subs:
                yield from graphs_with_paths(sub, f"{path}/{label}/{key}" if path else f"{label}/{key}")


def drop_dead_producers(graph: gs.Graph, tensor: gs.Tensor) -> None:
    """Remove the Identity/Cast/Constant chain that fed a replaced weight, where nothing else reads it."""
    for _ in range(8):
        if isinstance(tensor, gs.Constant) or not tensor.inputs or tensor.outputs or tensor in graph.outputs:
            return
        prod = tensor.inputs[0]
        if prod.op not in ("Identity", "Cast", "Constant"):
            return
        # By identity: ``in`` and ``remove`` would compare with onnx-graphsurgeon's costly Node.__eq__.
        at = next((i for i, n in enumerate(graph.nodes) if n is prod), None)
        if at is None:
            return
        if any(o.outputs or o in graph.outputs for o in prod.outputs):
            return
        upstream = prod.inputs[0] if prod.inputs else None
        del graph.nodes[at]
        prod.inputs.clear()
        prod.outputs.clear()
        if upstream is None:
            return
        tensor = upstream


def function_rows(model: onnx.ModelProto) -> list[LayerChange]:
    rows = []
    for f in model.functions:
        for n in f.node:
            if n.op_type in CONV_OPS and (n.domain or "") in ("", "ai.onnx"):
                rows.append(LayerChange(
                    name=f"{f.domain}.{f.name}/{node_label(n)}", op_type=n.op_type, rewritten=False,
                    reason="inside a model-local function: its body is shared by every call, not rewritten",
                ))
    return rows

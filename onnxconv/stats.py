"""Walk a model's convolutions and count params, MACs and exact FLOPs per layer.

Conventions are those of :mod:`onnxconv.counting` (MACs; exact FLOPs = 2*MACs with bias, minus one per output
without; ConvTranspose counted over its input, the scatter view). Shapes come from ONNX shape inference run on
a weight-free copy of the model (:mod:`onnxconv.shapes`), then every conv's output shape is recomputed from
its input shape and attributes, so a wrong or missing value_info cannot skew a count.

The walk covers the main graph, If/Loop/Scan bodies and model-local functions (each call analysed with its
caller's shapes); rows from those carry a ``path`` such as ``If_0/then_branch`` or ``block_1:local.Block``.
A Loop or Scan body is counted for one iteration and every If branch is counted (a note says so).
Receptive fields and effective strides are propagated in topological order from the graph inputs, taking the
maximum over paths; pooling, resize and ConvTranspose layers count.

This module is the public face (:func:`analyze`, :class:`StatsReport`, :class:`LayerStats`) and the checks
around the walk (domains, onnx.checker, unknown dims, shared weights); the walk's parts live in
:mod:`onnxconv.analysis`, one job per module.
"""


from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from .analysis.layer import LayerStats
from .analysis.rows import MAC_OPS, RECURRENT_OPS
from .analysis.scope import DEFAULT_DOMAINS, Scope
from .analysis.walker import Walker
from .compare import run_model, session
from .conv import CONV_OPS, INT64_MAX
from .errors import OptionError, ShapeError
from .graph import node_label, subgraphs_of
from .weightless import shape_model
from .runtime_ops import lower_runtime_ops
from .shapes import apply_input_shapes, infer, inputs_feeding, missing_dims_message
from .tables import format_count  # re-exported: it lives with the table writer all commands use

__all__ = [
    "LayerStats", "StatsReport", "analyze", "observe_shapes", "parse_input_shape", "format_count", "CONVENTIONS",
    "MAC_OPS", "RECURRENT_OPS", "SCHEMA_VERSION",
]

#: Version of the JSON layout (docs/stats-json.md); bumped only when a key changes meaning or disappears.
SCHEMA_VERSION = 1

CONVENTIONS = (
    "MACs = multiply-accumulates; FLOPs = exact multiplies + additions "
    "(2*MACs with bias, 2*MACs - outputs without); ConvTranspose MACs over its input (scatter view); "
    "params = weight + bias elements"
)


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
    if any(v > INT64_MAX for v in values):
        raise OptionError(f"--input-shape '{text}': a dim beyond int64 ({INT64_MAX})")
    return name, values


# --------------------------------------------------------------------------------------------------------------
# Checks and inputs around the walk


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
    return node.domain not in DEFAULT_DOMAINS and "conv" in node.op_type.lower()


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
    if batch is not None and not 1 <= batch <= INT64_MAX:
        raise OptionError(f"--batch must be from 1 to {INT64_MAX}, got {batch}")
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
    walker = Walker(inferred, all_ops, groups, _initializer_values(model))
    walker.walk(inferred.graph, "", Scope(inferred.graph, None, set(weights)), {})
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
    shared = walker.shared.extra_params()
    if shared:
        # A weight read by several convs is stored once: the params total counts it once.
        totals["params"] -= shared
        notes.append(f"{shared} params of weights shared between layers are counted once in the total")
    if totals["macs"]:
        for r in rows:
            if r.macs is not None:
                r.share = r.macs / totals["macs"]
    return StatsReport(model=name, layers=rows, totals=totals, notes=notes, whatif_groups=groups)


def _check_unknown(model: onnx.ModelProto, work: onnx.ModelProto, inferred: onnx.ModelProto, walker: Walker,
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

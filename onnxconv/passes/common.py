"""What every rewrite pass shares: the result record, node selection, constant lookup and model finishing.

A pass works on an ``onnx_graphsurgeon.Graph``: for each conv it runs a *check* step that returns the reason
the node is left alone (or None), and only then a *rewrite* step. Every conv the pass sees ends up in
:attr:`PassResult.layers`, rewritten or with its skip reason, so a user always learns why a node was left.

:func:`finish_model` exports the edited graph and puts back what onnx-graphsurgeon's export drops (model
metadata, doc strings, IR version, every opset import, model-local functions), then checks the result with
``onnx.checker`` and shape inference so that an invalid model is never written.
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
    "finish_model",
    "NamePool",
    "tensor_shapes",
    "check_model",
    "model_problem",
    "model_problems",
    "declare_initializers",
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


def finish_model(
    original: onnx.ModelProto, graph: gs.Graph, *, check: bool = True, cleanup: bool = True
) -> onnx.ModelProto:
    """Export ``graph`` and restore what export drops, keeping everything the pass did not touch.

    Keeps the original IR version (the installed onnxruntime loaded the input, so it loads this) with the graph
    inputs it asks of initializers (:func:`declare_initializers`), the original graph inputs in their order, all
    opset imports, model metadata, doc strings (model, graph, node), node metadata_props, producer fields,
    model-local functions, value_info of tensors that still exist, and initializers the original did not use
    (onnx-graphsurgeon exports only what some node reads). With ``cleanup`` False nothing is pruned: a pass that
    removes its own dead nodes keeps dead code the model already had. Raises :class:`RewriteError` when the
    result fails ``onnx.checker`` or shape inference.
    """
    if cleanup:
        graph.cleanup(remove_unused_graph_inputs=False)
    graph.toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = original.ir_version
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, name, getattr(original, name))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    del model.functions[:]
    model.functions.extend(original.functions)
    _restore_graph_fields(original.graph, model.graph)
    declare_initializers(model)
    if check:
        check_model(model, original)
    return model


def _restore_graph_fields(orig: onnx.GraphProto, new: onnx.GraphProto) -> None:
    """Put back, in ``new`` and its subgraphs, the fields of ``orig`` that the export loses."""
    new.doc_string = orig.doc_string
    new.name = orig.name
    del new.metadata_props[:]
    new.metadata_props.extend(orig.metadata_props)
    # value_info the export lost, for tensors that survive the rewrite.
    have = {vi.name for vi in new.value_info}
    alive = {o for n in new.node for o in n.output}
    for vi in orig.value_info:
        if vi.name in alive and vi.name not in have:
            new.value_info.append(vi)
    # Graph outputs as the original declared them: the export rebuilds those ValueInfoProtos from its tensors,
    # dropping doc strings and, where a shapeless value_info of the same name exists, the shape.
    declared = {vi.name: vi for vi in orig.output}
    for vi in new.output:
        if vi.name in declared:
            vi.CopyFrom(declared[vi.name])
    # Initializers no node read in the original are dropped by the export; they were part of the model.
    used = {i for n in orig.node for i in n.input} | {o.name for o in orig.output}
    present = {t.name for t in new.initializer}
    for t in orig.initializer:
        if t.name not in used and t.name not in present and not _read_by_subgraph(orig, t.name):
            new.initializer.append(t)
    _restore_inputs(orig, new)
    # Node doc strings and metadata, matched by (name, op, outputs): a replaced node has another producer.
    by_key = {(n.name, n.op_type, tuple(n.output)): n for n in orig.node}
    for n in new.node:
        old = by_key.get((n.name, n.op_type, tuple(n.output)))
        if old is None:
            continue
        if old.doc_string and not n.doc_string:
            n.doc_string = old.doc_string
        if old.metadata_props and not n.metadata_props:
            n.metadata_props.extend(old.metadata_props)
        old_subs = dict(subgraphs_of(old))
        for key, sub in subgraphs_of(n):
            if key in old_subs:
                _restore_graph_fields(old_subs[key], sub)


def _restore_inputs(orig: onnx.GraphProto, new: onnx.GraphProto) -> None:
    """Put back ``orig``'s graph inputs, in their order and as declared (doc strings, shapes), in ``new``.

    The export lists only the inputs that are not also initializers, so an input with an initializer of the same
    name (every weight of an IR < 4 model, where each initializer must be an input too; a default value in
    IR >= 4) would be lost. Such an input stays while its initializer does, and goes with it where a rewrite
    removed the weight; inputs the export added come last.
    """
    inits = {t.name for t in new.initializer}
    exported = [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in new.input]
    exported_names = {vi.name for vi in exported}
    kept = [vi for vi in orig.input if vi.name in exported_names or vi.name in inits]
    kept_names = {vi.name for vi in kept}
    del new.input[:]
    new.input.extend(kept)
    new.input.extend(vi for vi in exported if vi.name not in kept_names)


def declare_initializers(model: onnx.ModelProto) -> None:
    """Give every initializer a graph input of its name, type and shape where the IR version asks for it.

    IR < 4 (the ONNX Model Zoo's classic exports, older PyTorch ones) requires each initializer to be a graph
    input too, in subgraphs as well (``onnx.checker`` applies the rule to every graph; onnxruntime accepts the
    extra inputs of If/Loop/Scan bodies, taking them as initializers). A pass's new weights get an input,
    appended after the existing ones; nothing changes in IR >= 4.
    """
    if model.ir_version >= 4:
        return

    def visit(graph: onnx.GraphProto) -> None:
        have = {vi.name for vi in graph.input}
        for t in graph.initializer:
            if t.name not in have:
                graph.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
                have.add(t.name)
        for n in graph.node:
            for _, sub in subgraphs_of(n):
                visit(sub)

    visit(model.graph)


def _read_by_subgraph(graph: onnx.GraphProto, name: str) -> bool:
    for n in graph.node:
        for _, sub in subgraphs_of(n):
            if any(name in m.input for m in sub.node) or _read_by_subgraph(sub, name):
                return True
    return False


def check_model(model: onnx.ModelProto, original: onnx.ModelProto | None = None) -> None:
    """onnx.checker plus strict shape inference (:func:`model_problems`); one-line :class:`RewriteError` on failure.

    A complaint the ``original`` gets too, from the same one of the two, is not the rewrite's fault and does not
    stop it: the caller says that the input was invalid (``separate`` prints a warning, see
    :func:`onnxconv.requests.run_separate`). Each stops at its first complaint, so a problem of the rewrite's own
    behind the input's in the same one goes unseen; running both halves the chance.
    """
    problems = model_problems(model)
    if problems == (None, None):
        return
    known = model_problems(original) if original is not None else (None, None)
    new = next((p for p, k in zip(problems, known) if p is not None and p != k), None)
    if new is not None:
        raise RewriteError(f"the rewritten model is invalid ({new[:300]}); nothing was written")


def model_problem(model: onnx.ModelProto) -> str | None:
    """The first complaint of :func:`model_problems` (the checker's before shape inference's), or None."""
    return next((p for p in model_problems(model) if p is not None), None)


def model_problems(model: onnx.ModelProto) -> tuple[str | None, str | None]:
    """First lines of onnx.checker's and of strict shape inference's complaints about ``model`` (None for a pass).

    Both run on a weight-free copy (:func:`~onnxconv.weightless.shape_model`): serialising 100 MB of weights to
    check a graph is pure waste, and a pass's new weights are built by numpy_helper. A graph output declared
    without a shape (which many exporters leave to inference and onnxruntime does not need) is given the shape
    inference finds for it before the checker runs, as ``stats`` checks a model: the checker requires one, and
    would otherwise call such a model invalid before looking at anything else.
    """
    light = shape_model(model)
    inference = None
    try:
        inferred = onnx.shape_inference.infer_shapes(light, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - inference raises several types
        inference = _first_line(e)
        try:
            inferred = onnx.shape_inference.infer_shapes(light)
        except Exception:  # noqa: BLE001 - no shapes to lend the outputs then
            inferred = light
    shapes = {o.name: o.type.tensor_type for o in inferred.graph.output if o.type.tensor_type.HasField("shape")}
    for o in light.graph.output:
        if o.type.HasField("tensor_type") and not o.type.tensor_type.HasField("shape") and o.name in shapes:
            o.type.tensor_type.shape.CopyFrom(shapes[o.name].shape)
    try:
        onnx.checker.check_model(light)
    except Exception as e:  # noqa: BLE001 - the checker raises several types
        return _first_line(e), inference
    return None, inference


def _first_line(e: Exception) -> str:
    text = str(e).strip()
    return text.splitlines()[0] if text else type(e).__name__

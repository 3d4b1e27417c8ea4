"""Finishing a rewritten model: what onnx-graphsurgeon's export drops put back, and the checks before a write.

:func:`finish_model` exports the edited graph and puts back what the export drops (model metadata, doc strings,
IR version, every opset import, model-local functions, IR < 4's initializer inputs), then checks the result with
``onnx.checker`` and shape inference (:func:`check_model`) so that an invalid model is never written.
"""

from __future__ import annotations

import onnx
import onnx_graphsurgeon as gs

from ..errors import RewriteError
from ..graph import subgraphs_of
from ..weightless import shape_model

__all__ = ["finish_model", "check_model", "model_problem", "model_problems", "declare_initializers"]


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

"""If/Loop/Scan bodies and model-local function bodies as graphs the walk can enter.

A Loop or Scan body's inputs take their types from the node's inputs (a scan input loses its scan axis); a
function call becomes a graph with the call's attributes substituted for the body's attribute references.
"""

from __future__ import annotations

import onnx

from ..graph import as_int, as_ints, attrs_of
from .scope import Scope

__all__ = ["body_inputs", "body_bindings", "function_body", "function_opsets"]


def body_inputs(node: onnx.NodeProto, body: onnx.GraphProto, scope: Scope) -> dict[str, onnx.TypeProto | None] | None:
    """Types for a Loop/Scan body's inputs from the node's inputs; None for other ops."""
    if node.op_type == "Loop":
        out: dict[str, onnx.TypeProto | None] = {}
        for formal, actual in zip(list(body.input)[2:], list(node.input)[2:]):
            out[formal.name] = scope.types.get(actual)
        return out
    if node.op_type == "Scan":
        at = attrs_of(node)
        n_state = len(body.input) - as_int(at.get("num_scan_inputs", 0))
        axes = as_ints(at.get("scan_input_axes") or [])
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


def body_bindings(node: onnx.NodeProto, body: onnx.GraphProto) -> list[tuple[str, str]]:
    """(body input, node input) pairs that carry the same values (for the receptive field)."""
    if node.op_type == "Loop":
        return [(f.name, a) for f, a in zip(list(body.input)[2:], list(node.input)[2:])]
    if node.op_type == "Scan":
        return [(f.name, a) for f, a in zip(body.input, node.input)]
    return []


def function_body(fn: onnx.FunctionProto, call: onnx.NodeProto) -> onnx.GraphProto:
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


def function_opsets(fn: onnx.FunctionProto, model: onnx.ModelProto) -> list[onnx.OperatorSetIdProto]:
    mine = {o.domain: o for o in fn.opset_import}
    return list(mine.values()) + [o for o in model.opset_import if o.domain not in mine]

"""The weight-free copy of a model that shape inference and counting work on (:func:`shape_model`).

``infer_shapes`` serialises its argument, and copying 100 MB of weights to learn their shapes is pure waste (the
*values* only matter for small shape tensors, which are kept: at most :data:`KEEP_VALUES_BELOW` elements).
Large main-graph initializers become typed graph inputs; large ``Constant`` nodes and large initializers of
subgraphs and functions (whose signatures must not change) become a ``ConstantOfShape`` of the same type and
shape, marked so that :func:`stripped_source` still tells where the weight came from. The user's model is never
touched.
"""

from __future__ import annotations

from collections.abc import Sequence

import onnx

from .counting import prod
from .dtypes import elem_size

__all__ = ["shape_model", "stripped_source", "KEEP_VALUES_BELOW"]

#: Initializers with at most this many elements keep their values for shape inference (shape tensors, axes).
KEEP_VALUES_BELOW = 1024


#: doc_string marking a tensor that shape_model replaced by a ConstantOfShape: "<marker><original kind>".
_STRIPPED = "onnxconv:stripped:"


def stripped_source(node: onnx.NodeProto) -> str | None:
    """'initializer' or 'Constant' when ``node`` stands in for a weight :func:`shape_model` stripped, else None."""
    if node.op_type == "ConstantOfShape" and node.doc_string.startswith(_STRIPPED):
        return node.doc_string[len(_STRIPPED):]
    return None


def _large(t: onnx.TensorProto) -> bool:
    return t.data_location == onnx.TensorProto.EXTERNAL or prod(t.dims) > KEEP_VALUES_BELOW


def _constant_tensor(node: onnx.NodeProto) -> onnx.TensorProto | None:
    """The dense ``value`` (or the values of ``sparse_value``) tensor of a Constant node, else None."""
    if node.op_type != "Constant" or node.domain not in ("", "ai.onnx"):
        return None
    for a in node.attribute:
        if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
            return a.t
        if a.name == "sparse_value" and a.type == onnx.AttributeProto.SPARSE_TENSOR:
            dense = onnx.TensorProto(data_type=a.sparse_tensor.values.data_type, dims=a.sparse_tensor.dims)
            return dense
    return None


def _zeros_like(name: str, t: onnx.TensorProto, kind: str) -> list[onnx.NodeProto] | None:
    """Two nodes (shape Constant -> ConstantOfShape) producing a tensor of ``t``'s type and shape, or None for a
    type ConstantOfShape cannot make (strings). Names derive from ``name`` so they cannot meet other tensors."""
    if t.data_type in (onnx.TensorProto.STRING, onnx.TensorProto.UNDEFINED):
        return None
    shape_name = f"{name}::onnxconv_shape"
    dims = onnx.helper.make_tensor(shape_name, onnx.TensorProto.INT64, [len(t.dims)], [int(d) for d in t.dims])
    value = onnx.helper.make_tensor("value", t.data_type, [1], vals=b"\0" * elem_size(t.data_type), raw=True)
    return [
        onnx.helper.make_node("Constant", [], [shape_name], value=dims),
        onnx.helper.make_node("ConstantOfShape", [shape_name], [name], value=value, doc_string=_STRIPPED + kind),
    ]


def _strip_graph(graph: onnx.GraphProto, top: bool, stub_ok: bool) -> onnx.GraphProto:
    """Copy of ``graph`` without large tensor bytes (see the module docstring).

    ``top``: the main graph, whose large initializers may become graph inputs. ``stub_ok``: ConstantOfShape
    exists at this opset (9+); without it nested weights stay as they are (correct, only slower).
    """
    out = onnx.GraphProto()
    out.name = graph.name
    out.input.extend(graph.input)
    out.output.extend(graph.output)
    out.value_info.extend(graph.value_info)
    input_names = {i.name for i in graph.input}
    stubs: list[onnx.NodeProto] = []
    for t in graph.initializer:
        if not _large(t):
            out.initializer.append(t)
        elif top:
            if t.name not in input_names:
                out.input.append(onnx.helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
        else:
            # A subgraph initializer that is also the subgraph's input (IR < 4 requires it) stays: a stub node
            # would define the same name a second time.
            nodes = _zeros_like(t.name, t, "initializer") if stub_ok and t.name not in input_names else None
            if nodes is None:
                out.initializer.append(t)
            else:
                stubs.extend(nodes)
    out.sparse_initializer.extend(graph.sparse_initializer)
    out.node.extend(stubs)
    for node in graph.node:
        const = _constant_tensor(node)
        if const is not None and node.output and _large(const) and stub_ok:
            nodes = _zeros_like(node.output[0], const, "Constant")
            if nodes is not None:
                out.node.extend(nodes)
                continue
        if any(a.type in (onnx.AttributeProto.GRAPH, onnx.AttributeProto.GRAPHS) for a in node.attribute):
            new = onnx.NodeProto()
            new.CopyFrom(node)
            for a in new.attribute:
                if a.type == onnx.AttributeProto.GRAPH:
                    a.g.CopyFrom(_strip_graph(a.g, False, stub_ok))
                elif a.type == onnx.AttributeProto.GRAPHS:
                    for g in a.graphs:
                        g.CopyFrom(_strip_graph(g, False, stub_ok))
            out.node.append(new)
        else:
            out.node.append(node)
    return out


def _default_opset(opsets: Sequence[onnx.OperatorSetIdProto]) -> int:
    return max((o.version for o in opsets if o.domain in ("", "ai.onnx")), default=0)


def shape_model(model: onnx.ModelProto) -> onnx.ModelProto:
    """A weight-free copy of ``model`` for shape inference (same graph; large tensors as inputs or stubs)."""
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.graph.CopyFrom(_strip_graph(model.graph, True, _default_opset(model.opset_import) >= 9))
    for f in model.functions:
        fn = onnx.FunctionProto()
        fn.CopyFrom(f)
        stub_ok = _default_opset(list(f.opset_import) or list(model.opset_import)) >= 9
        body = _strip_graph(onnx.helper.make_graph(list(f.node), f.name, [], []), False, stub_ok)
        del fn.node[:]
        fn.node.extend(body.node)
        m.functions.append(fn)
    return m

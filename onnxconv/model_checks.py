"""What a model must be before any pass reads it: UTF-8 text, an acyclic graph, tensors whose data fits.

:func:`onnxconv.model_io.load_model` runs :func:`check_graph` on every model it loads (stats reads nothing more);
:func:`check_weights` runs once the weights are in memory (``separate``, :mod:`onnxconv.requests`), because a
tensor whose data does not match its dims makes numpy fail deep inside a rewrite. Each problem is one
:class:`~onnxconv.errors.ModelLoadError` line naming the file and the tensor, node or field.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import onnx
from google.protobuf.descriptor import FieldDescriptor
from google.protobuf.message import Message

from .counting import prod
from .dtypes import elem_size
from .errors import ModelLoadError
from .graph import cyclic_nodes, subgraphs_of

__all__ = ["check_graph", "check_weights", "model_tensors"]


def check_graph(p: Path, model: onnx.ModelProto) -> None:
    """Refuse text that is not UTF-8 (:func:`_bad_text`) and graphs with a cycle, in the main graph, subgraphs and
    functions: a cycle makes every later pass see an order that does not exist."""
    bad = _bad_text(model)
    if bad is not None:
        where, text = bad
        raise ModelLoadError(f"{p}: {where} is not valid UTF-8 text ({ascii(text)[1:]})")

    def check(graph_nodes: Sequence[onnx.NodeProto], where: str) -> None:
        cyclic = cyclic_nodes(graph_nodes)
        if cyclic:
            label = cyclic[0].name or next((o for o in cyclic[0].output if o), cyclic[0].op_type)
            raise ModelLoadError(f"{p}: {where} has a cycle (through node '{label}'); not a valid ONNX model")
        for n in graph_nodes:
            for attr, sub in subgraphs_of(n):
                check(sub.node, f"the {attr} body of a node")

    check(model.graph.node, "the graph")
    for f in model.functions:
        check(f.node, "a model-local function")


#: TensorProto's text and message fields, read one by one: ``ListFields`` would copy raw_data (the weights).
_TENSOR_FIELDS = tuple(f for f in onnx.TensorProto.DESCRIPTOR.fields
                       if f.type in (FieldDescriptor.TYPE_STRING, FieldDescriptor.TYPE_MESSAGE))


def _bad_text(message: Message, path: str = "") -> tuple[str, bytes] | None:
    """(field path, value) of the first text field of ``message`` that is not valid UTF-8, or None.

    protobuf hands back ``bytes`` instead of ``str`` for a proto2 string field that is not UTF-8, and every use
    fails far from here (a table, the rewrites' export, a doc string read): names, doc strings, metadata, dim
    names, string attribute values (bytes fields, which onnx and onnx-graphsurgeon decode as UTF-8), in every
    graph and function. Tensor data (raw_data, string_data) is never read.
    """
    fields: Sequence[tuple[Any, Any]]
    if isinstance(message, onnx.TensorProto):
        fields = [(f, getattr(message, f.name)) for f in _TENSOR_FIELDS
                  if (len(getattr(message, f.name)) if _repeated(f) else message.HasField(f.name))]
    else:
        fields = message.ListFields()  # the fields that are set, in C: a walk of every descriptor costs 4x more
    for f, value in fields:
        if f.type == FieldDescriptor.TYPE_STRING:
            values = [value] if isinstance(value, (str, bytes)) else value
            for i, v in enumerate(values):
                if isinstance(v, bytes):
                    return f"{path}{f.name}" + ("" if values is not value else f"[{i}]"), v
        elif f.type == FieldDescriptor.TYPE_MESSAGE:
            if isinstance(value, Message):
                found = _bad_text(value, f"{path}{f.name}.")
                if found:
                    return found
                continue
            for i, sub in enumerate(value):
                found = _bad_text(sub, f"{path}{f.name}[{i}].")
                if found:
                    return found
    if isinstance(message, onnx.AttributeProto):
        for where, v in [("s", message.s), *((f"strings[{i}]", v) for i, v in enumerate(message.strings))]:
            try:
                v.decode("utf-8")
            except UnicodeDecodeError:
                return f"{path}{where}", v
    return None


def _repeated(f: Any) -> bool:
    """Whether a field descriptor is repeated (``is_repeated`` since protobuf 5.28; ``label`` before)."""
    flag = getattr(f, "is_repeated", None)
    return bool(flag) if flag is not None else getattr(f, "label", None) == FieldDescriptor.LABEL_REPEATED


#: Which typed field holds a tensor's values when raw_data is empty, and how many field entries per element.
_TYPED_FIELD: dict[int, tuple[str, int]] = {
    onnx.TensorProto.FLOAT: ("float_data", 1), onnx.TensorProto.COMPLEX64: ("float_data", 2),
    onnx.TensorProto.DOUBLE: ("double_data", 1), onnx.TensorProto.COMPLEX128: ("double_data", 2),
    onnx.TensorProto.INT64: ("int64_data", 1), onnx.TensorProto.UINT32: ("uint64_data", 1),
    onnx.TensorProto.UINT64: ("uint64_data", 1), onnx.TensorProto.STRING: ("string_data", 1),
}
#: Types packed two elements to a byte (or int32 entry): their sizes are not checked here.
_PACKED = {getattr(onnx.TensorProto, n) for n in ("INT4", "UINT4", "FLOAT4E2M1", "INT2", "UINT2")
           if hasattr(onnx.TensorProto, n)}
_CONV_OPS = ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv")
#: The element types ONNX defines (UNDEFINED, 0, is not one a tensor may have).
_DATA_TYPES = frozenset(onnx.TensorProto.DataType.values()) - {onnx.TensorProto.UNDEFINED}


def check_weights(model: onnx.ModelProto, path: str | os.PathLike[str]) -> None:
    """Refuse tensors of an undefined element type, tensors whose data does not match their dims, and conv
    weights and biases of strings (initializers, Constant nodes, behind Identity).

    ``raw_data`` must hold ``prod(dims) * itemsize`` bytes, a typed field ``prod(dims)`` values (two per complex
    element); anything else makes numpy fail deep inside a rewrite (``cannot reshape array of size ...``).
    Only what is in memory is checked: call it after external data is loaded.

    Raises:
        ModelLoadError: naming the tensor, its dims and what its data holds.
    """
    for t in model_tensors(model):
        if t.data_type not in _DATA_TYPES and t.ByteSize():
            # onnx-graphsurgeon (every rewrite) and numpy cannot even size such a tensor; onnxruntime refuses it.
            what = ("no data type (UNDEFINED)" if not t.data_type
                    else f"data type {t.data_type}, which ONNX does not define")
            raise ModelLoadError(f"{path}: tensor '{t.name}' has {what}; not a valid ONNX model")
        if t.data_location == onnx.TensorProto.EXTERNAL or t.data_type in _PACKED or not t.data_type:
            continue
        n = prod(t.dims)
        if t.HasField("raw_data"):
            if t.data_type == onnx.TensorProto.STRING:
                raise ModelLoadError(f"{path}: tensor '{t.name}' stores strings as raw_data; not a valid ONNX model")
            got, want, unit = len(t.raw_data), n * elem_size(t.data_type), "bytes"
        else:
            field, per = _TYPED_FIELD.get(t.data_type, ("int32_data", 1))
            got, want, unit = len(getattr(t, field)), n * per, f"{field} values"
        if got != want:
            raise ModelLoadError(f"{path}: tensor '{t.name}' of shape {list(t.dims)} holds {got} {unit}, "
                                 f"expected {want}; not a valid ONNX model")

    def check_convs(graph: onnx.GraphProto, outer: frozenset[str]) -> None:
        strings = _string_tensors(graph, outer)
        for node in graph.node:
            if node.op_type in _CONV_OPS and node.domain in ("", "ai.onnx"):
                for what, i in _CONV_CONSTANTS[node.op_type]:
                    name = node.input[i] if len(node.input) > i else ""
                    if name in strings:
                        label = node.name or (node.output[0] if node.output else node.op_type)
                        raise ModelLoadError(f"{path}: node '{label}' ({node.op_type}) has a string-typed {what} "
                                             f"'{name}'; not a valid ONNX model")
            for _, g in subgraphs_of(node):
                check_convs(g, strings)

    check_convs(model.graph, frozenset())


#: (what, input index) of the inputs of each conv op that hold numbers every rewrite reads.
_CONV_CONSTANTS = {"Conv": (("weight", 1), ("bias", 2)), "ConvTranspose": (("weight", 1), ("bias", 2)),
                   "ConvInteger": (("weight", 1),), "QLinearConv": (("weight", 3), ("bias", 8))}


def _string_tensors(graph: onnx.GraphProto, outer: frozenset[str]) -> frozenset[str]:
    """Names of the string constants ``graph`` sees: its own and ``outer``'s (an enclosing graph's), initializers
    and ``Constant`` outputs, also behind ``Identity`` (in any node order)."""
    names = set(outer) | {t.name for t in graph.initializer if t.data_type == onnx.TensorProto.STRING}
    for n in graph.node:
        if n.op_type == "Constant" and n.domain in ("", "ai.onnx") and n.output:
            if any(a.name in ("value_string", "value_strings") or (a.type == onnx.AttributeProto.TENSOR
                   and a.t.data_type == onnx.TensorProto.STRING) for a in n.attribute):
                names.add(n.output[0])
    grew = True
    while grew:
        grew = False
        for n in graph.node:
            if n.op_type == "Identity" and n.input and n.input[0] in names and n.output and n.output[0] not in names:
                names.add(n.output[0])
                grew = True
    return frozenset(names)


def _graph_tensors(graph: onnx.GraphProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``graph``: initializers, sparse ones, tensor attributes, recursively."""
    yield from graph.initializer
    for sp in graph.sparse_initializer:
        yield sp.values
        yield sp.indices
    for node in graph.node:
        yield from _node_tensors(node)


def _node_tensors(node: onnx.NodeProto) -> Iterator[onnx.TensorProto]:
    for a in node.attribute:
        if a.type == onnx.AttributeProto.TENSOR:
            yield a.t
        elif a.type == onnx.AttributeProto.TENSORS:
            yield from a.tensors
        elif a.type == onnx.AttributeProto.SPARSE_TENSOR:
            yield a.sparse_tensor.values
            yield a.sparse_tensor.indices
        elif a.type == onnx.AttributeProto.GRAPH:
            yield from _graph_tensors(a.g)
        elif a.type == onnx.AttributeProto.GRAPHS:
            for g in a.graphs:
                yield from _graph_tensors(g)


def model_tensors(model: onnx.ModelProto) -> Iterator[onnx.TensorProto]:
    """Every tensor stored in ``model``: the main graph's (recursively) and those of model-local functions'
    nodes. One walk, for the checks here and for the external-data locations
    (:func:`onnxconv.model_io.external_data_files`)."""
    yield from _graph_tensors(model.graph)
    for f in model.functions:
        for node in f.node:
            yield from _node_tensors(node)

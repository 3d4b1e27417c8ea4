"""Read-only views of an ONNX graph shared by stats and the rewrite passes.

Everything here works on plain ``onnx`` protos: topological order (exports are not always sorted, and a node
with an If/Loop body depends on the outer tensors its body reads), the names a subgraph reads from outer
scopes, attribute values as Python objects, and shapes from value_info.
"""

from __future__ import annotations

from collections import defaultdict, deque
from collections.abc import Iterable, Iterator

import onnx
from onnx import helper

__all__ = [
    "attrs_of",
    "as_int",
    "as_ints",
    "as_floats",
    "subgraphs_of",
    "outer_names",
    "node_inputs_with_implicit",
    "toposort",
    "cyclic_nodes",
    "shape_of_value_info",
    "shapes_of_graph",
    "node_label",
]


def attrs_of(node: onnx.NodeProto) -> dict[str, object]:
    """A node's attributes as Python values (str for strings, lists for repeated ints)."""
    out: dict[str, object] = {}
    for a in node.attribute:
        v = helper.get_attribute_value(a)
        if isinstance(v, bytes):
            v = v.decode("utf-8", "replace")
        out[a.name] = v
    return out


def as_int(value: object) -> int:
    """``int(value)`` for an attribute value from :func:`attrs_of`.

    Attribute values are typed ``object`` (an int, float, str, list, tensor or graph); this converts exactly
    what ``int()`` converts and raises the TypeError ``int()`` raises for anything else, so callers that catch
    it are unchanged, and a type checker sees an int.
    """
    if isinstance(value, (int, float, str, bytes)):
        return int(value)
    raise TypeError(f"int() argument must be a string, a bytes-like object or a real number, "
                    f"not '{type(value).__name__}'")


def as_ints(value: object) -> list[int]:
    """``[int(v) for v in value]`` for a repeated attribute value from :func:`attrs_of` (see :func:`as_int`)."""
    if not isinstance(value, Iterable):
        raise TypeError(f"'{type(value).__name__}' object is not iterable")
    return [as_int(v) for v in value]


def as_floats(value: object) -> list[float]:
    """``[float(v) for v in value]`` for a repeated attribute value from :func:`attrs_of` (see :func:`as_int`)."""
    if not isinstance(value, Iterable):
        raise TypeError(f"'{type(value).__name__}' object is not iterable")
    out: list[float] = []
    for v in value:
        if not isinstance(v, (int, float, str, bytes)):
            raise TypeError(f"float() argument must be a string or a real number, not '{type(v).__name__}'")
        out.append(float(v))
    return out


def subgraphs_of(node: onnx.NodeProto) -> Iterator[tuple[str, onnx.GraphProto]]:
    """(attribute name, graph) for every subgraph a node holds (If branches, Loop/Scan bodies)."""
    for a in node.attribute:
        if a.type == onnx.AttributeProto.GRAPH:
            yield a.name, a.g
        elif a.type == onnx.AttributeProto.GRAPHS:
            for i, g in enumerate(a.graphs):
                yield f"{a.name}[{i}]", g


def outer_names(graph: onnx.GraphProto) -> set[str]:
    """Names a (sub)graph reads without defining them: they come from an enclosing scope."""
    defined = {i.name for i in graph.input} | {t.name for t in graph.initializer}
    defined |= {t.values.name for t in graph.sparse_initializer}
    used: set[str] = set()
    for node in graph.node:
        used.update(node_inputs_with_implicit(node))
        defined.update(node.output)
    used.update(o.name for o in graph.output)
    return {u for u in used if u and u not in defined}


def node_inputs_with_implicit(node: onnx.NodeProto) -> list[str]:
    """Explicit inputs plus the outer-scope names read by the node's subgraphs."""
    names = [i for i in node.input if i]
    for _, g in subgraphs_of(node):
        names.extend(sorted(outer_names(g)))
    return names


def toposort(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes in a topological order, stable for an already sorted list.

    Names produced by no node of the list (graph inputs, initializers, outer scope) are ready from the start.
    Nodes on a cycle (invalid ONNX) are appended in their original order rather than dropped.
    """
    nodes = list(nodes)
    order = _kahn(nodes)
    if len(order) < len(nodes):
        done = set(order)
        order.extend(i for i in range(len(nodes)) if i not in done)
    return [nodes[i] for i in order]


def cyclic_nodes(nodes: Iterable[onnx.NodeProto]) -> list[onnx.NodeProto]:
    """Nodes that no topological order can place: those on a cycle and those downstream of one (empty for a
    valid graph, whose nodes form a DAG over their tensors)."""
    nodes = list(nodes)
    placed = set(_kahn(nodes))
    # _kahn ignores a node reading its own output (no edge to count); it is a cycle of length one.
    return [n for i, n in enumerate(nodes)
            if i not in placed or {o for o in n.output if o} & set(node_inputs_with_implicit(n))]


def _kahn(nodes: list[onnx.NodeProto]) -> list[int]:
    """Kahn's algorithm over tensor names: indices of the nodes in a topological order, without those on or
    after a cycle."""
    producer: dict[str, int] = {}
    for i, n in enumerate(nodes):
        for o in n.output:
            if o:
                producer[o] = i
    deps: list[set[int]] = []
    users: dict[int, list[int]] = defaultdict(list)
    for i, n in enumerate(nodes):
        d = {producer[x] for x in node_inputs_with_implicit(n) if x in producer and producer[x] != i}
        deps.append(d)
        for j in d:
            users[j].append(i)
    pending = [len(d) for d in deps]
    ready = deque(i for i, c in enumerate(pending) if c == 0)
    order: list[int] = []
    # A heap would give the smallest ready index; a deque seeded in index order keeps sorted input sorted.
    while ready:
        i = ready.popleft()
        order.append(i)
        for u in users[i]:
            pending[u] -= 1
            if pending[u] == 0:
                ready.append(u)
    return order


def shape_of_value_info(vi: onnx.ValueInfoProto) -> tuple[int | str | None, ...] | None:
    """Shape of a tensor value_info: ints for known dims, the dim_param string for symbolic ones, None for
    unknown ones; None when the rank itself is unknown or the value is not a tensor."""
    t = vi.type
    if not t.HasField("tensor_type") or not t.tensor_type.HasField("shape"):
        return None
    dims: list[int | str | None] = []
    for d in t.tensor_type.shape.dim:
        if d.HasField("dim_value"):
            dims.append(int(d.dim_value))
        elif d.HasField("dim_param") and d.dim_param:
            dims.append(d.dim_param)
        else:
            dims.append(None)
    return tuple(dims)


def shapes_of_graph(graph: onnx.GraphProto) -> dict[str, tuple[int | str | None, ...]]:
    """Every shape the graph states: initializers, Constant outputs, inputs, outputs and value_info."""
    shapes: dict[str, tuple[int | str | None, ...]] = {}
    for vi in list(graph.input) + list(graph.value_info) + list(graph.output):
        s = shape_of_value_info(vi)
        if s is not None:
            shapes[vi.name] = s
    for t in graph.initializer:
        shapes[t.name] = tuple(int(d) for d in t.dims)
    for sp in graph.sparse_initializer:
        shapes[sp.values.name] = tuple(int(d) for d in sp.dims)
    for node in graph.node:
        if node.op_type == "Constant" and node.domain in ("", "ai.onnx") and node.output:
            for a in node.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    shapes[node.output[0]] = tuple(int(d) for d in a.t.dims)
    return shapes


def node_label(node: onnx.NodeProto) -> str:
    """A node's name, or its first output's name when it has none (exporters often leave names empty)."""
    if node.name:
        return node.name
    return next((o for o in node.output if o), f"<{node.op_type}>")

"""Keep chosen nodes of a QDQ model in float by editing its graph, without quantizing again.

In onnxruntime's QDQ format a quantized node reads ``DequantizeLinear`` outputs and writes a tensor that a
``QuantizeLinear`` takes; onnxruntime fuses the group ``DQ -> op -> Q`` into an integer kernel at load time.
Keeping node ``N`` in float (what onnxruntime's ``nodes_to_exclude`` does, without a second calibration):

* **weights**: a constant input that ``N`` reads through a DequantizeLinear is replaced by the float tensor the
  quantizer started from (the prepared model's node of the same name, same input position), else by its
  dequantized value;
* **activations in**: ``N`` reads a float tensor ``x`` instead of ``DQ(Q(x))`` where ``x``'s producer is float
  (a graph input, a node kept float, a node the quantizer left float). Where the producer is quantized, ``N``
  still reads ``DQ(Q(x))``: a second, float consumer of ``x`` would stop onnxruntime from fusing the producer
  into its integer kernel (it fuses only a node whose output goes to one QuantizeLinear);
* **activations out**: ``N`` writes float; a graph output that was ``DQ(Q(N's output))`` becomes ``N``'s
  output itself. QuantizeLinear/DequantizeLinear nodes left without consumers are removed.

**Groups.** Nodes whose outputs are quantized with the same scale (onnxruntime gives a Reshape, Transpose,
MaxPool, ... the scale of its input, so that they run on the integer values) only help when kept float
together: a Concat of pixel-scale boxes and [0, 1] scores kept float alone still has its scores rounded by the
Reshape after it, at the Concat's old scale. :func:`float_groups` returns them as one candidate.

Convs (:data:`KEPT_INT8`) are never candidates: they are where int8 pays.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Collection, Iterator
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .passes.finish import declare_initializers

__all__ = ["FloatGroup", "float_groups", "keep_float", "KEPT_INT8"]

#: Op types never kept float: the layers int8 is for.
KEPT_INT8 = ("Conv", "ConvTranspose")
_Q, _DQ = "QuantizeLinear", "DequantizeLinear"


@dataclass(frozen=True)
class FloatGroup:
    """Nodes of a QDQ model kept float together (names and op types, in graph order)."""

    nodes: tuple[str, ...]
    ops: tuple[str, ...]

    @property
    def label(self) -> str:
        """The first node's name, with how many more the group holds (``concat +1``)."""
        return self.nodes[0] + (f" +{len(self.nodes) - 1}" if len(self.nodes) > 1 else "")


class _Graph:
    """Producer and consumer maps of a graph's tensors (rebuilt after each edit that renames)."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.producer = {o: n for n in graph.node for o in n.output if o}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for n in graph.node:
            for t in n.input:
                if t:
                    self.consumers[t].append(n)
        self.inits = {t.name: t for t in graph.initializer}
        self.outputs = {o.name for o in graph.output}

    def made_by(self, tensor: str, op: str) -> onnx.NodeProto | None:
        n = self.producer.get(tensor)
        return n if n is not None and n.op_type == op else None

    def quantized(self, node: onnx.NodeProto) -> bool:
        """Whether ``node`` is part of a ``DQ -> op -> Q`` group: it reads a DequantizeLinear output or writes a
        tensor a QuantizeLinear takes."""
        if node.op_type in (_Q, _DQ):
            return False
        return (any(self.made_by(t, _DQ) is not None for t in node.input)
                or any(c.op_type == _Q for o in node.output for c in self.consumers.get(o, [])))

    def output_quantizers(self, node: onnx.NodeProto) -> Iterator[tuple[str, str]]:
        """(scale, zero point) names of the QuantizeLinear nodes that take ``node``'s outputs."""
        for o in node.output:
            for c in self.consumers.get(o, []):
                if c.op_type == _Q:
                    yield c.input[1], c.input[2] if len(c.input) > 2 else ""


def float_groups(qdq: onnx.ModelProto, kept_int8: Collection[str] = KEPT_INT8) -> list[FloatGroup]:
    """The candidates to keep float in a QDQ model: its quantized nodes (not ``kept_int8`` op types, which need
    names), joined into one group where their outputs share quantization parameters; in graph order."""
    g = _Graph(qdq.graph)
    nodes = [n for n in qdq.graph.node if n.name and n.op_type not in kept_int8 and g.quantized(n)]
    parent = {n.name: n.name for n in nodes}

    def root(a: str) -> str:
        while parent[a] != a:
            parent[a] = parent[parent[a]]
            a = parent[a]
        return a

    owner: dict[tuple[str, str], str] = {}
    for n in nodes:
        for key in g.output_quantizers(n):
            if key in owner:
                parent[root(n.name)] = root(owner[key])
            else:
                owner[key] = n.name
    groups: dict[str, list[onnx.NodeProto]] = defaultdict(list)
    for n in nodes:
        groups[root(n.name)].append(n)
    order = {n.name: i for i, n in enumerate(nodes)}
    out = [FloatGroup(tuple(n.name for n in members), tuple(n.op_type for n in members)) for members in groups.values()]
    return sorted(out, key=lambda grp: order[grp.nodes[0]])


def _unique(name: str, taken: set[str]) -> str:
    out, k = name, 0
    while out in taken:
        k += 1
        out = f"{name}_{k}"
    taken.add(out)
    return out


def _names(model: onnx.ModelProto) -> set[str]:
    g = model.graph
    return ({t for n in g.node for t in (*n.input, *n.output)} | {t.name for t in g.initializer}
            | {v.name for v in (*g.input, *g.output, *g.value_info)})


def _dequantized(dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> np.ndarray:
    """The float value of a DequantizeLinear of constants: ``(q - zero_point) * scale`` along its axis."""
    q = numpy_helper.to_array(inits[dq.input[0]]).astype(np.float64)
    scale = numpy_helper.to_array(inits[dq.input[1]])
    zp = numpy_helper.to_array(inits[dq.input[2]]).astype(np.float64) if len(dq.input) > 2 and dq.input[2] else 0.0
    axis = next((a.i for a in dq.attribute if a.name == "axis"), 1)
    if np.ndim(scale) == 1 and q.ndim > 1:
        shape = [1] * q.ndim
        shape[axis % q.ndim] = -1
        scale = scale.reshape(shape)
        zp = np.reshape(zp, shape) if np.ndim(zp) == 1 else zp
    return ((q - zp) * scale.astype(np.float64)).astype(scale.dtype)


class _Weights:
    """Float weights for kept nodes: the prepared model's tensor (by node name and input position), else the
    dequantized value; each added once to the edited model."""

    def __init__(self, prepared: onnx.ModelProto | None, model: onnx.ModelProto, taken: set[str]) -> None:
        self.model, self.taken = model, taken
        self.nodes = {n.name: n for n in prepared.graph.node if n.name} if prepared is not None else {}
        self.inits = {t.name: t for t in prepared.graph.initializer} if prepared is not None else {}
        self.added: dict[str, str] = {}

    def name_for(self, node: onnx.NodeProto, index: int, dq: onnx.NodeProto, inits: dict[str, onnx.TensorProto]) -> str:
        src = self.nodes.get(node.name)
        original = src.input[index] if src is not None and index < len(src.input) else ""
        key = f"prepared:{original}" if original in self.inits else f"dq:{dq.output[0]}"
        if key not in self.added:
            name = _unique(f"{original or dq.input[0]}_float", self.taken)
            if original in self.inits:
                tensor = onnx.TensorProto()
                tensor.CopyFrom(self.inits[original])
                tensor.name = name
            else:
                tensor = numpy_helper.from_array(_dequantized(dq, inits), name)
            self.model.graph.initializer.append(tensor)
            self.added[key] = name
        return self.added[key]


def _rename_input(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for i, t in enumerate(n.input):
            if t == old:
                n.input[i] = new


def _float_outputs(model: onnx.ModelProto, kept: Collection[str], taken: set[str]) -> None:
    """A kept node whose output reached a graph output through ``Q -> DQ`` writes that graph output itself."""
    g = _Graph(model.graph)
    for node in [n for n in model.graph.node if n.name in kept]:
        for j, o in enumerate(list(node.output)):
            dqs = [d for q in g.consumers.get(o, []) if q.op_type == _Q for d in g.consumers.get(q.output[0], [])
                   if d.op_type == _DQ and d.output[0] in g.outputs]
            for d in dqs:
                final = d.output[0]
                d.output[0] = _unique(final + "_dequantized", taken)  # still read by quantized consumers
                _rename_input(model.graph, final, d.output[0])
                if node.output[j] == o:  # first graph output: the node writes it under its name
                    _rename_input(model.graph, o, final)
                    node.output[j] = final
                else:  # another graph output of the same tensor: a copy under its name
                    model.graph.node.append(helper.make_node("Identity", [node.output[j]], [final],
                                                             name=_unique(final + "_float", taken)))


def _float_inputs(model: onnx.ModelProto, kept: Collection[str], weights: _Weights) -> None:
    """Kept nodes read float weights, and float activations where the producer is not quantized."""
    g = _Graph(model.graph)
    for node in [n for n in model.graph.node if n.name in kept]:
        for i, t in enumerate(node.input):
            dq = g.made_by(t, _DQ)
            if dq is None:
                continue
            if dq.input[0] in g.inits:
                node.input[i] = weights.name_for(node, i, dq, g.inits)
                continue
            q = g.made_by(dq.input[0], _Q)
            if q is None:
                continue
            producer = g.producer.get(q.input[0])
            if producer is None or producer.name in kept or not g.quantized(producer):
                node.input[i] = q.input[0]


def _referenced(graph: onnx.GraphProto) -> set[str]:
    """Tensor names the nodes of ``graph`` and of its subgraphs read (a subgraph may read outer names)."""
    out: set[str] = set()
    for n in graph.node:
        out.update(t for t in n.input if t)
        for a in n.attribute:
            for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                out |= _referenced(sub)
    return out


def _prune(model: onnx.ModelProto) -> None:
    """Drop QuantizeLinear/DequantizeLinear nodes whose outputs nobody reads, then unread initializers."""
    graph = model.graph
    while True:
        used = _referenced(graph) | {o.name for o in graph.output}
        dead = [i for i, n in enumerate(graph.node) if n.op_type in (_Q, _DQ) and not any(o in used for o in n.output)]
        if not dead:
            break
        for i in reversed(dead):
            del graph.node[i]
    used = _referenced(graph) | {o.name for o in graph.output}
    dropped = {t.name for t in graph.initializer if t.name not in used}
    keep = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(keep)
    # IR < 4 declares every initializer as a graph input too: a dropped one must not stay behind as an input
    # that the caller would then have to feed.
    inputs = [vi for vi in graph.input if vi.name not in dropped]
    del graph.input[:]
    graph.input.extend(inputs)


def keep_float(qdq: onnx.ModelProto, nodes: Collection[str], prepared: onnx.ModelProto | None = None,
               ) -> onnx.ModelProto:
    """A copy of the QDQ model ``qdq`` with the named nodes in float (module docstring).

    ``prepared`` is the float model the quantizer quantized (:class:`~onnxconv.quantize.QdqModels`): kept nodes
    get its weights; without it they get the dequantized int8 weights. ``qdq`` is not modified.
    """
    model = onnx.ModelProto()
    model.CopyFrom(qdq)
    kept = set(nodes)
    if not kept:
        return model
    taken = _names(model)
    _float_outputs(model, kept, taken)
    _float_inputs(model, kept, _Weights(prepared, model, taken))
    _prune(model)
    declare_initializers(model)  # IR < 4: the float weights added are graph inputs too
    return model

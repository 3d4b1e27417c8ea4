"""The linear stage of a rewritten layer, and writing refitted weights into the model.

Every rewritten layer ends in a *linear stage*: its output ``Y`` is a sum of convs (one for the concat/multiplier
forms and for a grouped conv, one per branch for the sum form), all with the same group ``g``::

    Y = sum_t conv(Z_t, W_t) + b

At an output position of group ``gi`` the stage is linear in its weights, so the refit writes them as one
``(D + 1) x N/g`` matrix per group (:func:`stage_coefs`: the features of every term, then the bias) and back
(:meth:`Writer.write`: the whole bias on the first term).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import attrs_of, node_label, subgraphs_of
from ..passes.common import NamePool
from .data import FLOAT_TYPES

__all__ = ["ConvTerm", "LinearStage", "find_stage", "stage_coefs", "stage_bias", "Writer"]


@dataclass
class ConvTerm:
    """One conv of a linear stage: it reads ``input`` with weight initializer ``weight``."""

    node: onnx.NodeProto
    input: str
    weight: str
    weight_shape: tuple[int, ...]
    attrs: dict[str, Any]

    @property
    def group(self) -> int:
        return int(self.attrs.get("group", 1) or 1)

    @property
    def c_in_group(self) -> int:
        return self.weight_shape[1]

    @property
    def taps(self) -> int:
        return math.prod(self.weight_shape[2:])


@dataclass
class LinearStage:
    """``output = sum of the terms' convs + bias``: the part of a rewritten layer the refit changes."""

    layer: str
    output: str
    terms: list[ConvTerm]
    elem_type: int
    wave: int = 0

    @property
    def group(self) -> int:
        return self.terms[0].group

    @property
    def c_out(self) -> int:
        return self.terms[0].weight_shape[0]

    @property
    def features(self) -> int:
        """Unknowns per output channel, bias included: ``sum_t C_t/g * prod(k_t) + 1``."""
        return sum(t.c_in_group * t.taps for t in self.terms) + 1


def find_stage(model: onnx.ModelProto, output: str, layer: str) -> LinearStage | str:
    """The linear stage producing ``output`` in ``model`` (top-level graph), or the reason there is none.

    The stage is one Conv, or an Add tree whose leaves are Convs (the sum form); every conv needs an
    initializer weight of a float type, and all need the same group and output channels.
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    inits = {t.name: t for t in model.graph.initializer}
    terms: list[ConvTerm] = []

    def walk(name: str, depth: int) -> str | None:
        node = producers.get(name)
        if node is None:
            return f"'{name}' is not computed by a node of the main graph"
        if node.op_type == "Add" and (node.domain or "") in ("", "ai.onnx") and depth < 64:
            for i in node.input:
                why = walk(i, depth + 1)
                if why:
                    return why
            return None
        if node.op_type != "Conv" or (node.domain or "") not in ("", "ai.onnx"):
            return f"'{name}' comes from {node.op_type}, not from a conv or a sum of convs"
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        if w is None or w.data_type not in FLOAT_TYPES:
            return f"conv '{node_label(node)}' has no float initializer weight"
        terms.append(ConvTerm(node, node.input[0], w.name, tuple(int(d) for d in w.dims), attrs_of(node)))
        return None

    why = walk(output, 0)
    if why:
        return why
    if len({(t.group, t.weight_shape[0]) for t in terms}) != 1:
        return "the stage's convs differ in group or output channels"
    return LinearStage(layer, output, terms, inits[terms[0].weight].data_type)


def stage_coefs(stage: LinearStage, arrays: Mapping[str, np.ndarray], bias: np.ndarray) -> list[np.ndarray]:
    """The stage's current weights as one ``(D + 1) x N/g`` matrix per group (rows: features, then bias)."""
    g, n = stage.group, stage.c_out
    ng = n // g
    out = []
    for gi in range(g):
        rows = [arrays[t.weight][gi * ng:(gi + 1) * ng].reshape(ng, -1).T for t in stage.terms]
        rows.append(bias[None, gi * ng:(gi + 1) * ng])
        out.append(np.concatenate(rows, axis=0).astype(np.float64))
    return out


def stage_bias(stage: LinearStage, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    """The stage's whole bias (float64): the sum of its terms' biases (the sum form may carry one per branch)."""
    total = np.zeros(stage.c_out)
    for t in stage.terms:
        if len(t.node.input) > 2 and t.node.input[2]:
            b = arrays.get(t.node.input[2])
            if b is None:
                raise KeyError(t.node.input[2])
            total = total + b.astype(np.float64)
    return total


class Writer:
    """Writes refitted weights into the model, copying an initializer another node still reads."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.names = NamePool(model)
        self.index = {t.name: i for i, t in enumerate(model.graph.initializer)}
        self.users: dict[str, int] = {}
        self.released: set[str] = set()

        def count(graph: onnx.GraphProto) -> None:
            for n in graph.node:
                for i in n.input:
                    self.users[i] = self.users.get(i, 0) + 1
                for _, sub in subgraphs_of(n):
                    count(sub)

        count(model.graph)
        for o in model.graph.output:
            self.users[o.name] = self.users.get(o.name, 0) + 1

    def array(self, name: str) -> np.ndarray | None:
        i = self.index.get(name)
        return None if i is None else numpy_helper.to_array(self.model.graph.initializer[i])

    def stored(self, name: str) -> np.ndarray:
        """The initializer ``name``, which the caller knows is one (a weight it is about to replace)."""
        return numpy_helper.to_array(self.model.graph.initializer[self.index[name]])

    def put(self, node: onnx.NodeProto, slot: int, value: np.ndarray, base: str) -> None:
        """Make input ``slot`` of ``node`` an initializer holding ``value`` (in place when nobody else reads it)."""
        current = node.input[slot] if len(node.input) > slot else ""
        if current and current in self.index and self.users.get(current, 0) == 1:
            i = self.index[current]
            self.model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, current))
            return
        name = self.names.new(base)
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        self.index[name] = len(self.model.graph.initializer) - 1
        self.users[name] = 1
        if current:
            self._release(current)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name

    def drop_bias(self, node: onnx.NodeProto) -> None:
        """Remove ``node``'s bias input (a sum of convs keeps one bias, on its first term)."""
        if len(node.input) > 2:
            if node.input[2]:
                self._release(node.input[2])
            del node.input[2:]

    def _release(self, name: str) -> None:
        """One reader fewer for ``name``; an initializer nobody reads any more is removed at :meth:`prune`."""
        self.users[name] = self.users.get(name, 1) - 1
        if self.users[name] <= 0 and name in self.index:
            self.released.add(name)

    def prune(self) -> None:
        """Remove the initializers this writer left unread (a bias moved onto another term, a weight replaced by
        a copy). onnxruntime warns about every unused initializer on every session; tensors another node, a
        subgraph or a graph output still reads are counted as users and stay, and so do graph inputs in IR >= 4
        (an initializer there is the input's default: part of the model's interface). In IR < 4 every initializer
        is an input too, by rule rather than as an interface: an unread one goes with its input."""
        graph = self.model.graph
        inputs = {i.name for i in graph.input} if self.model.ir_version >= 4 else set()
        drop = {n for n in self.released if self.users.get(n, 0) <= 0 and n not in inputs}
        if not drop:
            return
        keep = [t for t in graph.initializer if t.name not in drop]
        del graph.initializer[:]
        graph.initializer.extend(keep)
        kept_inputs = [onnx.ValueInfoProto.FromString(vi.SerializeToString()) for vi in graph.input
                       if vi.name not in drop]
        if len(kept_inputs) < len(graph.input):
            del graph.input[:]
            graph.input.extend(kept_inputs)
        self.index = {t.name: i for i, t in enumerate(self.model.graph.initializer)}
        self.released -= drop

    def write(self, stage: LinearStage, coefs: Sequence[np.ndarray]) -> None:
        g, ng = stage.group, stage.c_out // stage.group
        row = 0
        bias = np.concatenate([c[-1] for c in coefs])
        for k, t in enumerate(stage.terms):
            size = t.c_in_group * t.taps
            w = np.concatenate([c[row:row + size].T for c in coefs], axis=0)  # (N, C_t/g * K_t)
            row += size
            dtype = self.stored(t.weight).dtype
            base = node_label(t.node)
            self.put(t.node, 1, w.reshape(t.weight_shape).astype(dtype), f"{base}_refit_W")
            if k == 0:
                self.put(t.node, 2, bias.astype(dtype), f"{base}_refit_B")
            else:
                self.drop_bias(t.node)  # the whole bias now sits on the first term
        assert row + 1 == stage.features and len(coefs) == g and coefs[0].shape[1] == ng

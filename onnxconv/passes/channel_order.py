"""Channel orders for the grouped conv rewrite: which tensor carries which channel permutation, and where it is
realised (folded into a weight, or one shuffle / Gather op). Used by :mod:`onnxconv.passes.shuffle`.

Every tensor carries an *order* ``s``: it holds ``T[:, s[j]]`` at channel ``j`` (no order = the original). A
consumer that needs order ``v`` reads channels ``q = inverse(s)[v]``. Orders are realised at no run-time cost
wherever possible, with one op otherwise:

* Channel-wise ops commute with a channel permutation, so an order flows through them: element-wise activations
  unchanged, per-channel constants permuted (BatchNormalization / InstanceNormalization parameters, PRelu slopes,
  Add/Mul/... operands), pooling and Resize unchanged, a depthwise conv with multiplier ``m`` permuted in blocks
  (order ``s[j]*m + r`` at ``j*m + r``). A needed reordering therefore lands *after* the activation, which keeps
  onnxruntime's Conv+Relu fusion (about 4% faster than the shuffle before the Relu).
* A dense conv folds an order into its weight: an input order permutes its input axis (Conv axis 1,
  ConvTranspose axis 0), an output order its output axis and bias. A dense conv whose output reaches (through
  channel-wise ops) one grouped conv and otherwise only foldable convs produces that conv's ``pin`` directly.
* Between stacked grouped convs ``A -> B`` the orders are chosen so that the reordering is free when ``B``'s
  input groups are ``A``'s output groups, and the ShuffleNet shuffle ``q[p] = (p % a)*(C/a) + p//a`` (Reshape
  ``C -> (a, C/a)``, Transpose, Reshape) when every ``B`` group reads ``C/G^2`` channels of every ``A`` group.
  ``mixing="shuffle"`` constrains ``B``'s assignment to that; ``mixing="energy"`` gets it only when the best
  assignments allow it. Any other ``q`` is a Gather on axis 1.
* Concat on the channel axis concatenates its inputs' orders. Anything else that does not commute (graph outputs,
  Reshape, a residual Add whose operands differ in order, subgraphs) gets the order it needs by one shuffle or
  Gather; graph outputs keep their names.

This module is one concept, the flow of orders through the graph, and reads best whole (~580 lines): the
rules above are applied by one walk whose parts (what commutes, folding, pinning, realising) share its state.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx_graphsurgeon as gs

from ..conv import ConvSpec
from .common import LayerChange, NamePool, constant_array, drop_dead_producers, weight_origin
from .grouping import Assignment, group_order

__all__ = ["ONNX_DOMAINS", "GroupedLayer", "ChannelFlow", "shuffle_order", "shuffle_factor", "optional_input",
           "attr_int", "layer_label"]

ONNX_DOMAINS = ("", "ai.onnx", None)
# Element-wise ops (broadcasting over all inputs): a channel permutation commutes with them once every constant
# operand that spans the channel axis is permuted too.
_ELEMENTWISE = frozenset(
    "Relu LeakyRelu PRelu Sigmoid HardSigmoid HardSwish Tanh Elu Selu Celu ThresholdedRelu Softplus Softsign Mish "
    "Gelu Erf Exp Log Abs Neg Sqrt Reciprocal Floor Ceil Round Sign Sin Cos Identity Cast Clip Dropout IsNaN IsInf "
    "Not Add Sub Mul Div Pow Max Min Sum Mean Where Equal Less Greater LessOrEqual GreaterOrEqual And Or Xor Mod"
    .split()
)
_POOLS = frozenset("MaxPool AveragePool LpPool GlobalAveragePool GlobalMaxPool GlobalLpPool".split())
# Ops with per-channel parameter inputs (1-D, length C).
_CHANNEL_PARAMS = {"BatchNormalization": (1, 2, 3, 4), "InstanceNormalization": (1, 2)}


# --------------------------------------------------------------------------------------------------------------
# Permutations


def shuffle_order(channels: int, a: int) -> np.ndarray:
    """The channel shuffle Reshape ``C -> (a, C/a)`` -> swap -> flatten, as an order: position ``p`` holds
    channel ``(p % a)*(C/a) + p//a``."""
    p = np.arange(channels)
    return (p % a) * (channels // a) + p // a


def shuffle_factor(q: np.ndarray) -> int | None:
    """The ``a`` for which ``q`` is ``shuffle_order(len(q), a)``, or None when ``q`` is no channel shuffle."""
    c = len(q)
    for a in range(2, c):
        if c % a == 0 and q[1] == c // a and np.array_equal(q, shuffle_order(c, a)):
            return a
    return None


def _inverse(order: np.ndarray) -> np.ndarray:
    inv = np.empty_like(order)
    inv[order] = np.arange(order.size)
    return inv


def _expand(order: np.ndarray, m: int) -> np.ndarray:
    """Order after a depthwise conv with multiplier ``m``: outputs ``j*m .. j*m+m-1`` follow input ``j``."""
    return (order[:, None] * m + np.arange(m)[None, :]).ravel() if m > 1 else order


def _is_identity(order: np.ndarray | None) -> bool:
    return order is None or bool(np.array_equal(order, np.arange(order.size)))


# --------------------------------------------------------------------------------------------------------------
# Records


@dataclass
class GroupedLayer:
    """A conv being grouped: constant weight and bias, assignment, and the orders chosen for its two sides."""

    node: gs.Node
    change: LayerChange
    spec: ConvSpec
    weight: np.ndarray
    bias: np.ndarray | None
    assignment: Assignment | None = None
    pin: np.ndarray | None = None
    pout: np.ndarray | None = None

    def set_assignment(self, a: Assignment) -> None:
        self.assignment = a
        self.pin, self.pout = group_order(a.in_groups), group_order(a.out_groups)

    def relabel(self, mapping: np.ndarray) -> None:
        """Rename groups (``mapping[old] = new``) on both sides; the grouped conv computes the same channels."""
        a = self.assignment
        assert a is not None
        self.set_assignment(Assignment(mapping[a.out_groups], mapping[a.in_groups], a.kept, a.identity_kept, a.method))


@dataclass
class _Need:
    """A consumer reached by a source's output through channel-wise ops."""

    node: gs.Node | None
    kind: str  # "target" (a conv being grouped), "fold" (a dense conv), "other"
    mult: int = 1  # product of the depthwise multipliers on the way


@dataclass
class _Commute:
    """How a node commutes with a channel permutation: inputs that carry it, constants to permute along an axis,
    and the depthwise multiplier that expands it."""

    channel_inputs: list[int]
    params: list[tuple[int, int]] = field(default_factory=list)
    multiplier: int = 1


def attr_int(node: gs.Node, name: str, default: int) -> int:
    v = node.attrs.get(name, default)
    return int(default if v is None else v)


def optional_input(node: gs.Node, i: int) -> gs.Tensor | None:
    return node.inputs[i] if len(node.inputs) > i and node.inputs[i].name else None


# --------------------------------------------------------------------------------------------------------------
# Foldable convs


def _foldable(node: gs.Node) -> bool:
    """A dense Conv/ConvTranspose whose constant, unshared weight (and constant bias) can absorb any order."""
    if node.op not in ("Conv", "ConvTranspose") or node.domain not in ONNX_DOMAINS:
        return False
    if attr_int(node, "group", 1) != 1:
        return False
    w_t = optional_input(node, 1)
    if w_t is None or weight_origin(w_t) or len(w_t.outputs) != 1 or constant_array(w_t) is None:
        return False
    b_t = optional_input(node, 2)
    return b_t is None or constant_array(b_t) is not None


# --------------------------------------------------------------------------------------------------------------
# Channel orders in one graph


class ChannelFlow:
    """Decides and realises the channel orders of one (sub)graph whose grouped convs (``targets``) are known.

    Phase A (:meth:`regions`) is structural: the consumers each source (a target or a foldable dense conv) reaches
    through channel-wise ops. :meth:`decide` picks the source orders; :meth:`realise` walks the graph once in
    topological order, rewriting weights and parameters and inserting a shuffle or Gather where an order cannot
    flow on.
    """

    def __init__(
        self, graph: gs.Graph, shapes: Mapping[str, tuple[int | None, ...]], targets: Mapping[int, GroupedLayer],
        names: NamePool,
    ) -> None:
        self.graph = graph
        self.nodes = list(graph.nodes)
        self.node_ids = {id(n) for n in self.nodes}
        self.shapes = dict(shapes)
        self.targets = targets
        self.names = names
        self.folds = {id(n): n for n in self.nodes if id(n) not in targets and _foldable(n)}
        self.order: dict[str, np.ndarray] = {}
        self.rank: dict[str, int] = {}
        self.origin: dict[str, int] = {}  # tensor -> id of the source node whose order it carries
        self.fold_order: dict[int, np.ndarray] = {}
        self.cache: dict[tuple[str, bytes], tuple[gs.Tensor, str]] = {}
        self.created: set[int] = set()
        self.inserted = {"shuffle": 0, "gather": 0}

    # -- what commutes ----------------------------------------------------------------------------------------
    def _shape(self, t: gs.Tensor) -> tuple[Any, ...] | None:
        s = self.shapes.get(t.name)
        return s if s is not None else (tuple(t.shape) if t.shape is not None else None)

    def _extra_outputs_unused(self, node: gs.Node) -> bool:
        outs = {id(t) for t in self.graph.outputs}
        return all(not t.name or (not t.outputs and id(t) not in outs) for t in node.outputs[1:])

    def commute(self, node: gs.Node, c: int, rank: int, channel: set[int]) -> _Commute | None:
        """How ``node`` commutes with a permutation of the ``c`` channels of its inputs ``channel`` (rank
        ``rank``), or None when it does not."""
        if node.domain not in ONNX_DOMAINS or not node.outputs or not self._extra_outputs_unused(node):
            return None
        op = node.op
        if op in _ELEMENTWISE:
            return self._elementwise(node, c, rank, channel)
        if channel != {0}:
            return None
        if op in _CHANNEL_PARAMS:
            for i in _CHANNEL_PARAMS[op]:
                v = constant_array(node.inputs[i]) if i < len(node.inputs) else None
                if v is None or v.shape != (c,):
                    return None
            return _Commute([0], [(i, 0) for i in _CHANNEL_PARAMS[op]])
        if op in _POOLS:
            return _Commute([0]) if len(node.inputs) == 1 else None
        if op in ("Resize", "Upsample"):
            return self._resize(node, c, rank)
        if op == "Conv":
            return self._depthwise(node, c)
        return None

    def _elementwise(self, node: gs.Node, c: int, rank: int, channel: set[int]) -> _Commute | None:
        com = _Commute(sorted(channel))
        for i, t in enumerate(node.inputs):
            if i in channel or not t.name:
                continue
            value = constant_array(t)
            shape = value.shape if value is not None else self._shape(t)
            if shape is None or len(shape) > rank:
                return None
            # Right-aligned broadcasting: an operand spans the channel axis when its rank is rank-1 or more.
            axis = len(shape) - (rank - 1)
            if axis < 0 or shape[axis] == 1:
                continue
            if shape[axis] != c:
                return None
            if value is None:
                com.channel_inputs.append(i)  # a full-channel run-time operand must arrive in the same order
            else:
                com.params.append((i, axis))
        com.channel_inputs.sort()
        return com

    def _resize(self, node: gs.Node, c: int, rank: int) -> _Commute | None:
        mode = node.attrs.get("coordinate_transformation_mode", "")
        if "axes" in node.attrs or mode in ("tf_crop_and_resize", b"tf_crop_and_resize"):
            return None
        scales_t = optional_input(node, 1 if node.op == "Upsample" else 2)
        sizes_t = optional_input(node, 3) if node.op == "Resize" else None
        scales = constant_array(scales_t) if scales_t is not None else None
        sizes = constant_array(sizes_t) if sizes_t is not None else None
        if scales is not None and scales.size == rank and float(scales[1]) == 1.0:
            return _Commute([0])
        if sizes is not None and sizes.size == rank and int(sizes[1]) == c:
            return _Commute([0])
        return None

    def _depthwise(self, node: gs.Node, c: int) -> _Commute | None:
        w_t = optional_input(node, 1)
        if id(node) in self.targets or w_t is None or len(w_t.outputs) != 1 or weight_origin(w_t):
            return None
        w = constant_array(w_t)
        if w is None or attr_int(node, "group", 1) != c or w.shape[1] != 1 or w.shape[0] % c:
            return None
        b_t = optional_input(node, 2)
        if b_t is not None and constant_array(b_t) is None:
            return None
        return _Commute([0], multiplier=w.shape[0] // c)

    # -- phase A ----------------------------------------------------------------------------------------------
    def regions(self) -> tuple[dict[int, list[_Need]], dict[int, tuple[int, int]]]:
        """For each source, the consumers its output reaches through channel-wise ops; for each target and fold,
        the (source, multiplier) of the region its input lies in."""
        region: dict[str, tuple[int, int, int, int]] = {}  # tensor -> (source id, channels, rank, multiplier)
        needs: dict[int, list[_Need]] = {}
        input_region: dict[int, tuple[int, int]] = {}
        for node in self.nodes:
            nid = id(node)
            inside = {i: region[t.name] for i, t in enumerate(node.inputs) if t.name in region}
            if nid in self.targets or nid in self.folds:
                if 0 in inside:
                    src, _, _, mult = inside.pop(0)
                    needs[src].append(_Need(node, "target" if nid in self.targets else "fold", mult))
                    input_region[nid] = (src, mult)
                for r in inside.values():
                    needs[r[0]].append(_Need(node, "other"))
                w = constant_array(node.inputs[1])
                assert w is not None
                needs[nid] = []
                region[node.outputs[0].name] = (nid, w.shape[0] if node.op == "Conv" else w.shape[1], w.ndim, 1)
                continue
            if not inside:
                continue
            keys = set(inside.values())
            if len(keys) == 1:
                src, c, rank, mult = next(iter(keys))
                com = self.commute(node, c, rank, set(inside))
                if com is not None and set(com.channel_inputs) == set(inside):
                    region[node.outputs[0].name] = (src, c * com.multiplier, rank, mult * com.multiplier)
                    continue
            for r in inside.values():
                needs[r[0]].append(_Need(node, "other"))
        tensors = self.graph.tensors()
        outs = {t.name for t in self.graph.outputs}
        for name, r in region.items():
            t = tensors.get(name)
            # Graph outputs and tensors read inside subgraphs keep the original order.
            if name in outs or (t is not None and any(id(n) not in self.node_ids for n in t.outputs)):
                needs[r[0]].append(_Need(None, "other"))
        return needs, input_region

    def decide(self, needs: Mapping[int, list[_Need]], groups: int) -> None:
        """Source orders: a target is paired with the first grouped conv it feeds (:func:`_pair`); a dense conv
        feeding exactly one grouped conv (and otherwise only dense convs) produces that conv's input order."""
        for node in self.nodes:
            nid = id(node)
            if nid not in needs:
                continue
            first = next((n for n in needs[nid] if n.kind == "target" and n.mult == 1), None)
            if nid in self.targets:
                if first is not None and first.node is not None:
                    _pair(self.targets[nid], self.targets[id(first.node)], groups)
                continue
            kinds = [n.kind for n in needs[nid]]
            if first is not None and first.node is not None and kinds.count("target") == 1 and "other" not in kinds:
                pin = self.targets[id(first.node)].pin
                if not _is_identity(pin):
                    assert pin is not None
                    self.fold_order[nid] = pin

    # -- phase B ----------------------------------------------------------------------------------------------
    def realise(self) -> None:
        for node in self.nodes:
            nid = id(node)
            if nid in self.targets:
                self._realise_target(self.targets[nid])
            elif nid in self.folds:
                self._realise_fold(node)
            elif any(t.name in self.order for t in node.inputs):
                self._realise_other(node)
        self._restore_boundaries()

    def _set_order(self, t: gs.Tensor, order: np.ndarray | None, rank: int, origin: int) -> None:
        if not _is_identity(order):
            assert order is not None
            self.order[t.name], self.rank[t.name], self.origin[t.name] = order, rank, origin

    def _replace(self, node: gs.Node, i: int, value: np.ndarray, suffix: str) -> None:
        """Feed ``value`` to input ``i`` as a new constant; the old producer chain goes when nothing else reads it."""
        old = node.inputs[i]
        node.inputs[i] = gs.Constant(self.names.new(f"{old.name or 'param'}_{suffix}"), np.ascontiguousarray(value))
        drop_dead_producers(self.graph, old)

    def _note(self, source: int | None, text: str) -> None:
        layer = self.targets.get(source) if source is not None else None
        if layer is not None:
            assert layer.change.output_reorder is not None  # set with the layer's other figures (shuffle._describe)
            layer.change.output_reorder.append(text)

    def _source_name(self, source: int) -> str:
        node = self.targets[source].node if source in self.targets else self.folds.get(source)
        return layer_label(node) if node is not None else "?"

    def _realise_target(self, layer: GroupedLayer) -> None:
        node, change = layer.node, layer.change
        assert layer.pin is not None and layer.pout is not None and layer.assignment is not None
        src = self.origin.get(node.inputs[0].name)
        kind = self.convert(node, 0, layer.pin)
        if kind != "none":
            change.permutation = kind
            self._note(src, f"{kind} before {layer_label(node)}")
        elif src is not None and src in self.folds:
            change.permutation = f"folded into {self._source_name(src)}"
        elif src is not None:
            change.permutation = f"none (same groups as {self._source_name(src)})"
            self._note(src, f"none: {layer_label(node)} reads the same groups")
        groups = layer.assignment.groups
        w = layer.weight
        co, ci = w.shape[0] // groups, w.shape[1] // groups
        ar = np.arange(groups)
        blocks = w[layer.pout][:, layer.pin].reshape(groups, co, groups, ci, *w.shape[2:])[ar, :, ar]
        self._replace(node, 1, blocks.reshape(w.shape[0], ci, *w.shape[2:]), f"g{groups}")
        if layer.bias is not None:
            self._replace(node, 2, layer.bias[layer.pout], f"g{groups}")
        node.attrs["group"] = groups
        change.in_groups = tuple(layer.assignment.in_groups.tolist())
        change.out_groups = tuple(layer.assignment.out_groups.tolist())
        self._set_order(node.outputs[0], layer.pout, w.ndim, id(node))

    def _realise_fold(self, node: gs.Node) -> None:
        x = node.inputs[0]
        s_in, s_out = self.order.get(x.name), self.fold_order.get(id(node))
        if s_in is None and s_out is None:
            return
        w = constant_array(node.inputs[1])
        assert w is not None
        out_axis, in_axis = (0, 1) if node.op == "Conv" else (1, 0)
        if s_in is not None:
            w = np.take(w, s_in, axis=in_axis)
            self._note(self.origin[x.name], f"folded into {layer_label(node)}")
        if s_out is not None:
            w = np.take(w, s_out, axis=out_axis)
            b_t = optional_input(node, 2)
            if b_t is not None:
                b = constant_array(b_t)
                assert b is not None
                self._replace(node, 2, b[s_out], "perm")
        self._replace(node, 1, w, "perm")
        self._set_order(node.outputs[0], s_out, w.ndim, id(node))

    def _realise_other(self, node: gs.Node) -> None:
        ordered = [i for i, t in enumerate(node.inputs) if t.name in self.order]
        first = node.inputs[ordered[0]].name
        order, rank, origin = self.order[first], self.rank[first], self.origin[first]
        if node.op == "Concat" and node.domain in ONNX_DOMAINS and self._concat(node, rank):
            return
        com = self.commute(node, order.size, rank, set(ordered))
        if com is None:
            for i in ordered:
                self.convert(node, i, None)
            return
        for i in com.channel_inputs:
            if self.order.get(node.inputs[i].name) is not order:
                self.convert(node, i, order)
        for i, axis in com.params:
            v = constant_array(node.inputs[i])
            assert v is not None
            self._replace(node, i, np.take(v, order, axis=axis), "perm")
        out_order = order
        if node.op == "Conv":  # a depthwise conv: its weight and bias follow the expanded order
            out_order = _expand(order, com.multiplier)
            for i in (1, 2):
                v = constant_array(node.inputs[i]) if optional_input(node, i) is not None else None
                if v is not None:
                    self._replace(node, i, v[out_order], "perm")
        self._set_order(node.outputs[0], out_order, rank, origin)

    def _concat(self, node: gs.Node, rank: int) -> bool:
        """Concat on the channel axis concatenates its inputs' orders, offset by the channels before each."""
        axis = attr_int(node, "axis", 0)
        if axis not in (1, 1 - rank):
            return False
        parts, offset = [], 0
        for t in node.inputs:
            s = self.order.get(t.name)
            shape = self._shape(t)
            c = s.size if s is not None else (shape[1] if shape is not None and len(shape) == rank else None)
            if not isinstance(c, int):
                return False
            parts.append((s if s is not None else np.arange(c)) + offset)
            offset += c
        first = next(t.name for t in node.inputs if t.name in self.order)
        self._set_order(node.outputs[0], np.concatenate(parts), rank, self.origin[first])
        return True

    def convert(self, consumer: gs.Node, index: int, need: np.ndarray | None) -> str:
        """Make ``consumer.inputs[index]`` arrive in order ``need`` (None: the original); returns ``none``,
        ``shuffle`` or ``gather``."""
        t = consumer.inputs[index]
        s = self.order.get(t.name)
        q = need if s is None else (_inverse(s) if need is None else _inverse(s)[need])
        if _is_identity(q):
            return "none"
        assert q is not None
        u, kind = self._reorder(t, q, layer_label(consumer))
        consumer.inputs[index] = u
        if id(consumer) not in self.targets:
            self._note(self.origin.get(t.name), f"{kind} before {layer_label(consumer)}")
        return kind

    def _reorder(self, t: gs.Tensor, q: np.ndarray, where: str, out: gs.Tensor | None = None) -> tuple[gs.Tensor, str]:
        """A tensor holding ``t[:, q]``: a Reshape-Transpose-Reshape shuffle when ``q`` is one, else a Gather."""
        key = (t.name, q.tobytes())
        if out is None and key in self.cache:
            return self.cache[key]
        if out is None:
            # No dtype or shape: a value_info without a shape fails the checker; inference fills both in.
            out = gs.Variable(self.names.new(f"{t.name}_reordered"))
        before = len(self.graph.nodes)
        a = shuffle_factor(q)
        if a is not None:
            self._shuffle_nodes(t, out, a, q.size, where)
            kind = "shuffle"
        else:
            idx = gs.Constant(self.names.new(f"{where}_order"), q.astype(np.int64))
            self.graph.nodes.append(gs.Node("Gather", self.names.new(f"{where}_gather"), {"axis": 1}, [t, idx], [out]))
            kind = "gather"
        self.created.update(id(n) for n in self.graph.nodes[before:])
        self.inserted[kind] += 1
        self.cache[key] = (out, kind)
        return out, kind

    def _shuffle_nodes(self, t: gs.Tensor, out: gs.Tensor, a: int, c: int, where: str) -> None:
        shape = self.shapes.get(t.name) if t.name in self.shapes else None
        spatial = list(shape[2:]) if shape is not None and len(shape) >= 3 else None
        base = self.names.new(f"{where}_shuffle")
        mid = gs.Variable(self.names.new(f"{base}_split_out"))
        swapped = gs.Variable(self.names.new(f"{base}_swapped"))
        back: gs.Tensor
        if spatial is not None and all(isinstance(d, int) and d > 0 for d in spatial):
            split = np.array([0, a, c // a, *spatial], dtype=np.int64)
            back = gs.Constant(self.names.new(f"{base}_merge_shape"), np.array([0, c, *spatial], dtype=np.int64))
            perm = [0, 2, 1, *range(3, len(spatial) + 3)]
        else:
            # Spatial size unknown (or symbolic): flatten it, and take the final shape from the input at run time.
            split = np.array([0, a, c // a, -1], dtype=np.int64)
            back = gs.Variable(self.names.new(f"{base}_shape_out"))
            self.graph.nodes.append(gs.Node("Shape", self.names.new(f"{base}_shape"), {}, [t], [back]))
            perm = [0, 2, 1, 3]
        split_c = gs.Constant(self.names.new(f"{base}_split_shape"), split)
        self.graph.nodes.append(gs.Node("Reshape", self.names.new(f"{base}_split"), {}, [t, split_c], [mid]))
        self.graph.nodes.append(gs.Node("Transpose", self.names.new(f"{base}_transpose"), {"perm": perm}, [mid], [swapped]))
        self.graph.nodes.append(gs.Node("Reshape", self.names.new(f"{base}_merge"), {}, [swapped, back], [out]))

    def _restore_boundaries(self) -> None:
        """Graph outputs (names kept) and tensors read inside subgraphs get their original order back."""
        for t in list(self.graph.outputs):
            s = self.order.get(t.name)
            if s is None or not t.inputs:
                continue
            inner = gs.Variable(self.names.new(f"{t.name}_grouped"))
            producer = t.inputs[0]
            producer.outputs[next(i for i, o in enumerate(producer.outputs) if o is t)] = inner
            for consumer in list(t.outputs):
                for i, x in enumerate(consumer.inputs):
                    if x is t:
                        consumer.inputs[i] = inner
            self.order[inner.name] = self.order[t.name]
            self.rank[inner.name] = self.rank[t.name]
            self.origin[inner.name] = self.origin[t.name]
            if t.name in self.shapes:
                self.shapes[inner.name] = self.shapes[t.name]
            _, kind = self._reorder(inner, _inverse(s), f"output_{t.name}", out=t)
            self._note(self.origin[t.name], f"{kind} before graph output {t.name}")
        tensors = self.graph.tensors()
        for name in list(self.order):
            t = tensors.get(name)
            for consumer in list(t.outputs) if t is not None else []:
                if id(consumer) in self.node_ids or id(consumer) in self.created:
                    continue
                for i, x in enumerate(consumer.inputs):
                    if x is t:
                        self.convert(consumer, i, None)


def layer_label(node: gs.Node) -> str:
    return node.name or next((t.name for t in node.outputs if t.name), f"<{node.op}>")


def _pair(a: GroupedLayer, b: GroupedLayer, groups: int) -> None:
    """Orders for stacked grouped convs ``a -> b``: free when ``b``'s input groups are ``a``'s output groups
    (relabel ``b`` so that ``pin_b == pout_a``), a ShuffleNet shuffle when every ``b`` group reads ``C/G^2``
    channels of every ``a`` group (position ``p`` of ``b``'s input takes a channel of ``a``'s group ``p % G``,
    which ``a`` writes at ``(p % G)*(C/G) + p//G``); otherwise the canonical orders, joined by a Gather."""
    assert a.assignment is not None and b.assignment is not None
    ra, cb = a.assignment.out_groups, b.assignment.in_groups
    counts = np.zeros((groups, groups), dtype=np.int64)
    np.add.at(counts, (ra, cb), 1)
    n = ra.size // groups
    if np.all((counts == 0) | (counts == n)):
        b.relabel(counts.argmax(axis=0))
        return
    if n % groups or not np.all(counts == n // groups):
        return
    pool = {(g, h): list(np.flatnonzero((ra == g) & (cb == h))) for g in range(groups) for h in range(groups)}
    pin, pout = np.empty(ra.size, dtype=np.int64), np.empty(ra.size, dtype=np.int64)
    for p in range(ra.size):
        ch = pool[(p % groups, p // n)].pop(0)
        pin[p], pout[(p % groups) * n + p // groups] = ch, ch
    a.pout, b.pin = pout, pin

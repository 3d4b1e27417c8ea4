"""Candidate layers and their options: keep, a depthwise rank ``r`` that saves MACs, a group count ``G``.

The layers are those the pass would rewrite: a dry run of the pass with the user's filter. ``mode`` separable
offers ranks (:data:`RANK_CHOICES`), shuffle offers group counts, mixed offers both per layer (one layer may
become depthwise rank r and the next grouped G).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import as_int, attrs_of, node_label
from ..passes.common import LayerChange, NodeFilter
from ..passes.ranks import RankPolicy
from ..passes.separable import separate
from ..passes.shuffle import group_shuffle

__all__ = ["RANK_CHOICES", "GROUP_CHOICES", "Candidate", "find_candidates", "elem_type"]

#: Depthwise ranks the planner considers (those that save MACs in a layer).
RANK_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16)
#: Group counts the planner considers in shuffle mode when ``--groups`` is not given.
GROUP_CHOICES = (2, 4, 8)


@dataclass
class Candidate:
    """A layer the planner may rewrite: its conv, weights, the options to try and what is measured of them."""

    name: str
    node: onnx.NodeProto
    weight: np.ndarray
    bias: np.ndarray | None
    attrs: dict[str, Any]
    options: list[tuple[str, int]]  # ("rank", r) / ("groups", G) to try
    masks: dict[int, np.ndarray] = field(default_factory=dict)  # G -> kept (C_out x C_in) for groups
    assign: dict[int, tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)  # G -> (out, in) group labels
    weight_errors: dict[tuple[str, int], float] = field(default_factory=dict)  # before the refit estimate
    input_shape: tuple[int, ...] = ()
    errors: dict[tuple[str, int], float] = field(default_factory=dict)
    macs: int | None = None
    params: int | None = None

    def values(self, kind: str) -> list[int]:
        """The ranks (``kind="rank"``) or group counts (``"groups"``) among the options."""
        return [v for k, v in self.options if k == kind]


def _constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers and Constant node values of the main graph by name."""
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def find_candidates(model: onnx.ModelProto, mode: str, form: str, groups: Sequence[int],
                    node_filter: NodeFilter | None, input_shapes: Mapping[str, Sequence[int]] | None,
                    batch: int | None) -> tuple[list[Candidate], dict[str, LayerChange]]:
    """Candidate layers with their options, and a skipped LayerChange (with its reason) for the rest.

    ``mode`` separable offers ranks, shuffle offers group counts, mixed offers both (a layer is a candidate when
    either pass would rewrite it); the options of a layer are listed ranks first, then group counts.
    """
    nodes = {node_label(n): n for n in model.graph.node if n.op_type == "Conv"}
    arrays = _constants(model)
    found: dict[str, Candidate] = {}
    skipped: dict[str, LayerChange] = {}
    order: list[str] = []  # the graph order of the first dry run, which every dry run lists all convs in

    def add(c: LayerChange, options: list[tuple[str, int]], reason: str) -> None:
        if c.name not in order:
            order.append(c.name)
        node = nodes.get(c.name)
        if c.rewritten and node is not None and node.input[1] not in arrays:
            # The passes follow a weight through Cast/Identity (an fp16 initializer cast up); the planner builds
            # its layer models and rewrites from the weight tensor itself. (A rewritten conv has a weight input.)
            options, reason = [], "its weight is computed (Cast/Identity of a constant): not planned"
        if not options or node is None:
            if c.name not in found:
                skipped.setdefault(c.name, LayerChange(c.name, c.op_type, False, c.reason or reason,
                                                       c.params_before, None, c.macs_before))
            return
        skipped.pop(c.name, None)
        cand = found.get(c.name) or _make_candidate(c, node, arrays, [])
        found[c.name] = cand
        cand.options.extend(options)

    if mode in ("separable", "mixed"):
        dry = separate(model, RankPolicy("rank", 1), form=form, force=True, node_filter=node_filter,
                       input_shapes=input_shapes, batch=batch)
        for c in dry.layers:
            node = nodes.get(c.name)
            ranks: list[int] = []
            if c.rewritten and node is not None and node.input[1] in arrays:
                w = arrays[node.input[1]]
                g = as_int(attrs_of(node).get("group", 1) or 1)
                k, ng = math.prod(w.shape[2:]), w.shape[0] // g
                conv_pos, unit_pos = ng * k, k + ng  # per input channel and output position
                ranks = [r for r in RANK_CHOICES if r <= min(ng, k) and r * unit_pos < conv_pos]
            add(c, [("rank", r) for r in ranks],
                "inside a subgraph: not planned" if node is None else "no rank saves MACs")
    if mode in ("shuffle", "mixed"):
        for g in groups:
            dry = group_shuffle(model, groups=g, node_filter=node_filter, force=True, input_shapes=input_shapes)
            for c in dry.layers:
                ok = c.rewritten and c.name in nodes and nodes[c.name].input[1] in arrays
                add(c, [("groups", g)] if ok else [], "inside a subgraph: not planned")
                if ok:
                    out_g, in_g = np.asarray(c.out_groups), np.asarray(c.in_groups)
                    found[c.name].masks[g] = out_g[:, None] == in_g[None, :]
                    found[c.name].assign[g] = (out_g, in_g)
    return [found[n] for n in order if n in found], {n: skipped[n] for n in order if n in skipped}


def _make_candidate(change: LayerChange, node: onnx.NodeProto, arrays: Mapping[str, np.ndarray],
                    options: list[tuple[str, int]]) -> Candidate:
    bias = arrays.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return Candidate(change.name, node, arrays[node.input[1]], bias, attrs_of(node), list(options),
                      macs=change.macs_before, params=change.params_before)


def elem_type(w: np.ndarray) -> int:
    """The ONNX element type of a weight array (float32 unless float16 or float64)."""
    return {np.dtype(np.float16): onnx.TensorProto.FLOAT16, np.dtype(np.float64): onnx.TensorProto.DOUBLE}.get(
        w.dtype, onnx.TensorProto.FLOAT)

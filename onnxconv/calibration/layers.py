"""What the refit changes per layer: its linear stage, its target in the original, the order of its channels.

A separable layer's original output tensor is still produced, by its pointwise stage. A shuffle-mode conv keeps
the node's name and writes the original channels in a grouped order, found by matching its outputs with a
reference the rewrite computes exactly up to channel orders (:func:`grouped_orders`). Layers are refitted in
*waves* (:func:`waves`): those whose inputs depend on no layer still to be refitted go together.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from ..graph import node_inputs_with_implicit, node_label, toposort
from ..passes.common import LayerChange
from . import depthwise as dwfit
from .settings import RefitSettings
from .stage import LinearStage, find_stage

__all__ = ["LayerFit", "waves", "changed_waves", "is_grouped", "plan_layer", "plan_depthwise", "check_depthwise",
           "grouped_orders"]


def waves(model: onnx.ModelProto, stages: Sequence[LinearStage]) -> None:
    """Set ``stage.wave``: 1 + the largest wave of a refitted layer upstream of its inputs (0 when none)."""
    by_output = {s.output: s for s in stages}
    level: dict[str, int] = {}
    for node in toposort(model.graph.node):
        lv = max((level.get(i, 0) for i in node_inputs_with_implicit(node)), default=0)
        for o in node.output:
            level[o] = lv
            s = by_output.get(o)
            if s is not None:
                s.wave = max((level.get(t.input, 0) for t in s.terms), default=0)
                level[o] = s.wave + 1


def changed_waves(model: onnx.ModelProto, plans: Sequence[LayerFit]) -> dict[str, int]:
    """Tensor -> the last wave whose refit changes its value; a tensor absent from the result never changes.

    A wave writes the weights of its layers' stage convs, and of their depthwise convs when those are refitted
    too (``plan.depthwise``, settled by :func:`check_depthwise` before the refit starts); every tensor
    downstream of a written conv changes with it. Once the waves up to ``w`` are refitted, a tensor whose value
    only waves ``<= w`` change is *final*: a later wave may reuse it instead of computing it again.
    """
    written: dict[str, int] = {}  # an output of a written conv -> its wave (outputs name nodes: SSA)
    for p in plans:
        nodes = [t.node for t in p.stage.terms]
        if p.depthwise is not None:
            nodes += [*p.depthwise.nodes, *p.depthwise.pointwise]
        for n in nodes:
            for o in n.output:
                written[o] = max(written.get(o, -1), p.stage.wave)
    changed: dict[str, int] = {}
    for node in toposort(model.graph.node):
        last = max([changed.get(i, -1) for i in node_inputs_with_implicit(node)]
                   + [written.get(o, -1) for o in node.output], default=-1)
        if last >= 0:
            changed.update((o, last) for o in node.output if o)
    return changed


def _top_level_node(model: onnx.ModelProto, label: str, op_type: str = "Conv") -> onnx.NodeProto | None:
    """The node of the main graph the passes call ``label`` (its name, else its first output)."""
    return next((n for n in model.graph.node if n.op_type == op_type and node_label(n) == label), None)


@dataclass
class LayerFit:
    """One layer to refit: its stage in the rewritten model and its target in the original.

    The target is the original tensor ``target`` with its channels taken in ``order`` (the grouped layout of a
    shuffle-mode conv: output ``j`` of the grouped conv is original channel ``order[j]``), or as they are.
    """

    stage: LinearStage
    index: int
    target: str
    order: np.ndarray | None = None
    out_spatial: tuple[int, ...] = ()
    n_fit: int = 0
    n_check: int = 0
    t_fit: np.ndarray | None = None
    t_check: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)
    depthwise: dwfit.Depthwise | None = None  # when its kernels are refitted to the data
    dw_note: str = ""


def is_grouped(change: LayerChange) -> bool:
    """Whether the shuffle pass rewrote this layer (its grouping is recorded), else the separable pass did."""
    return change.in_groups is not None


def plan_layer(original: onnx.ModelProto, model: onnx.ModelProto, change: LayerChange, index: int) -> LayerFit | str:
    """What to refit for one rewritten layer, or why it is not refitted.

    Separable: the layer's original output tensor is still produced, by the pointwise stage. Shuffle: the
    grouped conv keeps the node's name and writes the original channels in a grouped order, which
    :func:`grouped_orders` finds afterwards.
    """
    old = _top_level_node(original, change.name)
    if old is None or not old.output:
        return "inside a subgraph: not refitted"
    target = old.output[0]
    if is_grouped(change):
        new = _top_level_node(model, change.name)
        if new is None or not new.output:
            return "the grouped conv is not found in the rewritten model"
        found = find_stage(model, new.output[0], change.name)
    else:
        found = find_stage(model, target, change.name)
    return found if isinstance(found, str) else LayerFit(found, index, target)


def check_depthwise(model: onnx.ModelProto, plan: LayerFit) -> None:
    """Keep the kernels of a layer a later pass changed (other than by reordering its outputs) as they are."""
    dw = plan.depthwise
    if dw is None:
        return
    if plan.order is not None and dw.group > 1:
        plan.depthwise, plan.dw_note = None, "its output channels were reordered across groups by a later pass"
    elif not dwfit.holds_weight_only(model, dw, plan.order):
        plan.depthwise = None
        plan.dw_note = "its weights are not the weight-only factors of the original (changed by a later pass)"


def plan_depthwise(original: onnx.ModelProto, model: onnx.ModelProto, change: LayerChange, plan: LayerFit) -> None:
    """Attach the layer's depthwise stage to ``plan`` for the data-aware kernels, or note why not."""
    if is_grouped(change):
        return
    found = dwfit.find_depthwise(original, model, change, [t.node for t in plan.stage.terms])
    if isinstance(found, str):
        plan.dw_note = found
    elif found.unknowns > dwfit.MAX_UNKNOWNS:  # read at call time: the limit can be lowered (tests do)
        plan.dw_note = (f"{found.unknowns} kernel taps per group to fit together (more than {dwfit.MAX_UNKNOWNS}): "
                        "the 1x1 stage alone is refitted")
    else:
        plan.depthwise = found


def grouped_orders(reference: onnx.ModelProto, model: onnx.ModelProto, plans: list[LayerFit],
                   settings: RefitSettings) -> dict[int, str]:
    """Set ``plan.order`` by matching channels with ``reference``; returns plan index -> skip reason.

    The shuffle pass's rewrite computes exactly its masked reference (the original with every weight outside
    the groups zeroed), so on any input the grouped conv's output channel ``j`` equals one channel ``order[j]``
    of the reference's output of the same layer. Matching on the first calibration chunk finds that order
    whatever layout the pass chose (folded orders, shuffles, gathers); a channel without an exact, unique match
    leaves the layer unfitted rather than fitted to the wrong channels. The same holds for a separable layer
    whose output the shuffle pass reordered (a plan that mixes both passes), with the separable model as the
    reference's base.
    """
    _, ref = next(settings.activations(reference, {p.target: p.stage.elem_type for p in plans}, first_only=True))
    _, new = next(settings.activations(model, {p.stage.output: p.stage.elem_type for p in plans}, first_only=True))
    skipped: dict[int, str] = {}
    for p in plans:
        a = np.moveaxis(new[p.stage.output], 1, 0).reshape(p.stage.c_out, -1).astype(np.float64)
        b = np.moveaxis(ref[p.target], 1, 0).reshape(p.stage.c_out, -1).astype(np.float64)
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        order = np.argmin(d2, axis=1)
        scale = float(np.mean(b * b)) * b.shape[1] + 1e-30
        best = d2[np.arange(len(order)), order]
        second = np.partition(d2, 1, axis=1)[:, 1] if d2.shape[1] > 1 else np.full(len(order), np.inf)
        if len(set(order.tolist())) != len(order) or np.any(best > 1e-6 * scale) or np.any(second <= 1e-6 * scale):
            skipped[p.index] = "the grouped conv's output channels cannot be matched one to one with the original's"
            continue
        p.order = order
    return skipped

"""Building a plan: the chosen options applied by the passes, and the refit's channel-order reference."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import replace

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import node_label
from ..passes.common import LayerChange, NodeFilter, PassResult
from ..passes.ranks import RankPolicy
from ..passes.separable import separate
from ..passes.shuffle import group_shuffle, masked_reference
from .candidates import Candidate
from .choose import LayerOptions, Picks

__all__ = ["build_plan"]


def build_plan(model: onnx.ModelProto, layers: Sequence[LayerOptions], picks: Picks, cands: Sequence[Candidate],
               skipped: Mapping[str, LayerChange], form: str, input_shapes: Mapping[str, Sequence[int]] | None,
               batch: int | None) -> tuple[PassResult, onnx.ModelProto | None]:
    """Apply the options ``picks`` (one index per layer): one pass per distinct rank, then one per distinct G, each restricted to its
    layers by name; returns the result and, when both kinds were applied, the refit's channel-order reference.

    The shuffle pass runs last because it may reorder the channels of any dense conv next to a grouped one (a
    pointwise stage included) and must see the final graph to do so consistently; its masked reference is then
    taken on the separable model, which the result computes exactly up to channel orders. A later shuffle pass
    sees weights an earlier one permuted (folded orders), so its channel groups are mapped back to the separable
    model's channels before masking (:func:`_in_base_channels`).
    """
    by_option: dict[tuple[str, int], list[str]] = {}
    for lay, pick in zip(layers, picks):
        o = lay.options[pick]
        if o.kind != "keep":
            by_option.setdefault((o.kind, o.value), []).append(lay.name)
    current = model
    changes: dict[str, LayerChange] = {}
    separable_model = model
    grouped: list[LayerChange] = []
    for (kind, value), names in sorted(by_option.items(), key=lambda kv: (kv[0][0] != "rank", kv[0][1])):
        only = NodeFilter(include=[f"^{re.escape(n)}$" for n in names])
        if kind == "rank":
            res = separate(current, RankPolicy("rank", value), form=form, force=True, node_filter=only,
                           input_shapes=input_shapes, batch=batch)
            separable_model = res.model
        else:
            res = group_shuffle(current, groups=value, node_filter=only, force=True, input_shapes=input_shapes)
            grouped.extend(_in_base_channels(c, current, separable_model) for c in res.rewritten)
        changes.update({c.name: c for c in res.rewritten})
        current = res.model
    if current is model:
        current = onnx.ModelProto()
        current.CopyFrom(model)
    out: list[LayerChange] = []
    for lay, pick, c in zip(layers, picks, cands):
        o = lay.options[pick]
        ch = changes.get(lay.name)
        if ch is None:
            ch = LayerChange(lay.name, "Conv", False, "kept by the plan (its options cost more error than they "
                             "save time)", params_before=c.params, macs_before=c.macs)
        ch.plan = f"{o.label} {lay.keep.latency_s * 1e6:.0f}->{o.latency_s * 1e6:.0f}us err={o.error:.3g}"
        out.append(ch)
    out.extend(skipped.values())
    kinds = {kind for kind, _ in by_option}
    pass_name = "mixed" if len(kinds) == 2 else "shuffle" if kinds == {"groups"} else "separable"
    reference = None
    if grouped:
        reference = masked_reference(separable_model, PassResult(current, grouped, "shuffle", {}))
    return PassResult(current, out, pass_name, {}), reference


def _in_base_channels(change: LayerChange, seen: onnx.ModelProto, base: onnx.ModelProto) -> LayerChange:
    """``change`` (of a shuffle pass run on ``seen``) with ``in_groups``/``out_groups`` indexed by ``base``'s
    channels: ``seen`` holds the layer's ``base`` weight with its axes permuted, and each channel is found by
    its sorted values (invariant to the other axis's permutation). Channels with equal values are
    interchangeable for masking only when they are zero, which is the case that occurs (dead channels);
    otherwise the groups are left as they are and the refit reports the layer as unmatched."""
    w_seen, w_base = (_weight_of(m, change.name) for m in (seen, base))
    if w_seen is None or w_base is None or w_seen.shape != w_base.shape or change.in_groups is None or change.out_groups is None:
        return change
    out = replace(change)
    for axis, key, groups in ((1, "in_groups", change.in_groups), (0, "out_groups", change.out_groups)):
        perm = _axis_permutation(w_seen, w_base, axis)
        if perm is None:
            return change
        labels = np.empty(len(perm), dtype=np.int64)
        labels[perm] = np.asarray(groups)  # seen channel j is base channel perm[j]
        setattr(out, key, tuple(int(v) for v in labels))
    return out


def _weight_of(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    node = next((n for n in model.graph.node if n.op_type == "Conv" and node_label(n) == name), None)
    if node is None or len(node.input) < 2:
        return None
    return next((numpy_helper.to_array(t) for t in model.graph.initializer if t.name == node.input[1]), None)


def _axis_permutation(seen: np.ndarray, base: np.ndarray, axis: int) -> np.ndarray | None:
    """``perm`` with ``seen`` channel ``j`` (on ``axis``) equal to ``base`` channel ``perm[j]`` up to the order of
    the other axes' values, or None when some channel has no match."""
    def keys(w: np.ndarray) -> list[bytes]:
        flat = np.moveaxis(w, axis, 0).reshape(w.shape[axis], -1)
        return [np.sort(row).tobytes() for row in flat]

    free: dict[bytes, list[int]] = {}
    for i, k in enumerate(keys(base)):
        free.setdefault(k, []).append(i)
    perm = []
    for k in keys(seen):
        if not free.get(k):
            return None
        perm.append(free[k].pop(0))
    return np.asarray(perm)

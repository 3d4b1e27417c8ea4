"""Grouped conv + channel shuffle rewrite (ShuffleNet style): ``separate --mode shuffle --groups G``.

**Grouping.** A dense Conv ``W`` (``C_out x C_in x k...``) becomes a Conv with ``group=G``. Channels are first
assigned to groups (:mod:`onnxconv.passes.grouping`: balanced labels ``r`` for outputs, ``c`` for inputs that keep
the most squared norm). With ``pin`` / ``pout`` the channels sorted by (group, index), the grouped conv reads the
reordered input ``X'[:, j] = X[:, pin[j]]`` and its weight is the diagonal blocks of the reordered weight,
``Wg[j, t] = W[pout[j], pin[g*C_in/G + t]]`` with ``g = j // (C_out/G)``; the bias becomes ``b[pout]``. Its output
is ``Y'[:, j] = Ym[:, pout[j]]``, where ``Ym`` is the original conv with every weight outside the groups set to
zero (:func:`masked_reference`; exactly ``Y`` when the weight is block diagonal under the assignment).
Params and MACs of the conv are divided by ``G`` (docs/conv-math.md, "Grouped convs and channel shuffles"); the bias is unchanged.

**Channel orders** (:mod:`onnxconv.passes.channel_order`). Every tensor carries an order: the grouped conv reads
its input in order ``pin`` and writes its output in order ``pout``. Orders flow through channel-wise ops, fold
into dense convs, BatchNorm and per-channel constants, and are otherwise realised by one ShuffleNet shuffle or
Gather after the activation; graph outputs keep their names and original order.

Skipped, with the reason in the result (the rules of the separable mode, plus grouping's own): ConvTranspose,
quantized convs (ConvInteger, QLinearConv, a weight from DequantizeLinear), convs not selected by the filter,
weights or biases computed at run time, non-float weights, weights with NaN/Inf values, weights shared with
another node, convs already depthwise or grouped, ``C_in`` or ``C_out`` not divisible by ``G``, convs in
model-local functions, and (unless ``force``) a kept energy below ``min_energy``. Original weights are never
modified in place.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..conv import ConvSpec
from ..errors import OptionError
from .common import (
    LayerChange,
    NamePool,
    NodeFilter,
    PassResult,
    base_check,
    constant_array,
    function_rows,
    graphs_with_paths,
    tensor_shapes,
)
from .finish import finish_model
from .channel_order import (
    ONNX_DOMAINS,
    ChannelFlow,
    GroupedLayer,
    layer_label,
    optional_input,
    shuffle_factor,
    shuffle_order,
)
from .grouping import Assignment, assign_groups

__all__ = ["MIXING", "group_shuffle", "masked_reference", "shuffle_order", "shuffle_factor"]

#: ``mixing`` choices: the best assignment per layer, or ShuffleNet shuffles between stacked grouped convs.
MIXING = ("energy", "shuffle")


@dataclass(frozen=True)
class _Options:
    """The pass options every graph of the model is rewritten with."""

    groups: int
    node_filter: NodeFilter | None
    force: bool
    mixing: str
    min_energy: float
    seed: int


# --------------------------------------------------------------------------------------------------------------
# Checks


def _check(
    node: gs.Node, qualified: str, shapes: Mapping[str, tuple[int | None, ...]], groups: int,
    node_filter: NodeFilter | None,
) -> tuple[str | None, ConvSpec | None, np.ndarray | None]:
    """(skip reason or None, spec when the weight shape is known, weight when the node is a target): the checks
    of :func:`~onnxconv.passes.common.base_check`, then shared weights (the grouped weight would replace it for
    every reader), a bias computed at run time (it is permuted), convs already depthwise or grouped, and channel
    counts ``groups`` does not divide."""
    reason, spec, weight = base_check(node, qualified, shapes, node_filter)
    if reason is not None:
        return reason, spec, None
    w_t = node.inputs[1]
    if len(w_t.outputs) > 1:
        return f"weight '{w_t.name}' is shared with {len(w_t.outputs) - 1} other node(s)", spec, None
    b_t = optional_input(node, 2)
    if b_t is not None and constant_array(b_t) is None:
        return "bias is computed at run time, not a constant", spec, None
    assert spec is not None
    if spec.kind == "depthwise":
        return "already depthwise (group = C_in)", spec, None
    if spec.group > 1:
        return f"already grouped (group = {spec.group})", spec, None
    bad = [f"{name}={c}" for name, c in (("C_in", spec.c_in), ("C_out", spec.c_out)) if c % groups]
    if bad:
        return f"{' and '.join(bad)} not divisible by --groups {groups}", spec, None
    return None, spec, weight


# --------------------------------------------------------------------------------------------------------------
# The pass


def group_shuffle(
    model: onnx.ModelProto,
    *,
    groups: int,
    node_filter: NodeFilter | None = None,
    force: bool = False,
    mixing: str = "energy",
    min_energy: float = 0.0,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    seed: int = 0,
) -> PassResult:
    """Replace dense convs by ``groups``-group convs and realise the channel reorderings they need.

    Args:
        model: the model with its weights loaded; it is not modified.
        groups: G (at least 2).
        node_filter: ``--include``/``--exclude`` selection on (qualified) node names.
        force: group a conv even when its kept energy is below ``min_energy``.
        mixing: ``energy``: every conv keeps the most energy it can; ``shuffle``: a grouped conv fed by another
            takes input groups that read evenly from every producer group, so a ShuffleNet shuffle joins them.
        min_energy: leave a conv dense when grouping keeps less than this share of its weight's squared norm.
        input_shapes, batch: dims for symbolic graph inputs, as in ``stats`` (for MACs only).
        seed: seed of the spectral assignment's k-means and random starts.

    Returns:
        The new model and one :class:`LayerChange` per conv. The fields of a grouped conv: ``groups``,
        ``kept_energy`` (kept share of the weight's squared norm), ``identity_kept`` (the same without
        reordering), ``method`` (which assignment won), ``permutation`` (how its input reordering is realised:
        ``none``, ``folded into <node>``, ``none (same groups as <node>)``, ``shuffle`` or ``gather``),
        ``output_reorder`` (the same for each consumer of its output), and ``in_groups``/``out_groups`` (the
        group of every original channel). ``options["inserted"]`` counts the shuffles and Gathers added.

    Raises:
        OptionError: ``groups`` < 2, an unknown ``mixing``, ``min_energy`` outside [0, 1], a bad input shape.
        ShapeError: a conv contradicts its weight. RewriteError: the result fails the checker.
    """
    if groups < 2:
        raise OptionError(f"--groups must be at least 2, got {groups}")
    if mixing not in MIXING:
        raise OptionError(f"--mixing must be one of {', '.join(MIXING)}, got '{mixing}'")
    if not 0.0 <= min_energy <= 1.0:
        raise OptionError(f"--min-energy must be between 0 and 1, got {min_energy}")
    shapes, notes = tensor_shapes(model, input_shapes, batch)
    # Shuffle Reshapes may bake in the spatial size only where the model itself fixes it, not --input-shape.
    structural = shapes if not input_shapes else tensor_shapes(model)[0]
    graph = gs.import_onnx(model)
    graph.toposort()  # the order flow visits producers before consumers (exports are not always sorted)
    names = NamePool(model)
    layers: list[LayerChange] = []
    inserted = {"shuffle": 0, "gather": 0}
    opts = _Options(groups, node_filter, force, mixing, min_energy, seed)
    # Subgraphs first: a parent's rewrite may hand a body a reordered copy of an outer tensor, under a new name
    # whose shape nobody inferred, and the body's convs would lose their MACs. Bodies only read outer tensors
    # (in their original order), so the order of the passes does not change what is computed.
    graphs = list(graphs_with_paths(graph))
    rows: dict[str, list[LayerChange]] = {path: [] for path, _ in graphs}
    for path, g in reversed(graphs):
        found = _rewrite_graph(g, path, shapes, structural, names, opts, rows[path])
        for k, v in found.items():
            inserted[k] += v
    for path, _ in graphs:  # report in graph order: the main graph, then each body below it
        layers.extend(rows[path])
    layers.extend(function_rows(model))
    out = finish_model(model, graph, cleanup=False)
    options: dict[str, Any] = {"groups": groups, "mixing": mixing, "min_energy": min_energy, "force": force,
                               "inserted": inserted}
    if notes:
        options["notes"] = notes
    return PassResult(model=out, layers=layers, pass_name="shuffle", options=options)


def _rewrite_graph(
    graph: gs.Graph, path: str, shapes: Mapping[str, tuple[int | None, ...]],
    structural: Mapping[str, tuple[int | None, ...]], names: NamePool, opts: _Options, layers: list[LayerChange],
) -> dict[str, int]:
    """Check, assign and rewrite the convs of one graph (rows appended to ``layers``); returns the inserted op
    counts. ``shapes`` count MACs (with --input-shape applied), ``structural`` shapes decide what may be baked into
    the graph (the model's own)."""
    groups = opts.groups
    candidates: dict[int, GroupedLayer] = {}
    for node in list(graph.nodes):
        if node.op not in ("Conv", "ConvTranspose", "ConvInteger", "QLinearConv") or node.domain not in ONNX_DOMAINS:
            continue
        qualified = f"{path}/{layer_label(node)}" if path else layer_label(node)
        change = LayerChange(name=qualified, op_type=node.op, rewritten=False, pass_name="shuffle")
        layers.append(change)
        reason, spec, weight = _check(node, qualified, shapes, groups, opts.node_filter)
        if spec is not None:
            change.params_before, change.macs_before = spec.params, spec.macs
        if reason is not None:
            change.reason = reason
            continue
        assert spec is not None and weight is not None
        bias_t = optional_input(node, 2)
        bias = constant_array(bias_t) if bias_t is not None else None
        candidates[id(node)] = GroupedLayer(node, change, spec, weight, bias)
    if not candidates:
        return {"shuffle": 0, "gather": 0}
    # Regions are structural: every dense constant conv is a source whether or not it ends up grouped.
    _, input_region = ChannelFlow(graph, structural, candidates, names).regions()
    targets: dict[int, GroupedLayer] = {}
    for node in list(graph.nodes):
        layer = candidates.get(id(node))
        if layer is None:
            continue
        strata = _shuffle_strata(layer, input_region, targets, groups) if opts.mixing == "shuffle" else None
        a = assign_groups(layer.weight, groups, in_strata=strata, seed=opts.seed)
        _describe(layer, a, groups, strata is not None)
        if a.kept < opts.min_energy and not opts.force:
            layer.change.reason = f"kept energy {a.kept:.3f} is below --min-energy {opts.min_energy:g} (use --force)"
            continue
        layer.set_assignment(a)
        layer.change.rewritten = True
        targets[id(node)] = layer
    if not targets:
        return {"shuffle": 0, "gather": 0}
    flow = ChannelFlow(graph, structural, targets, names)
    needs, _ = flow.regions()
    flow.decide(needs, groups)
    flow.realise()
    return flow.inserted


def _shuffle_strata(
    layer: GroupedLayer, input_region: Mapping[int, tuple[int, int]], targets: Mapping[int, GroupedLayer], groups: int
) -> np.ndarray | None:
    """Under ``mixing="shuffle"``: the producer's output groups, when ``layer`` is the first grouped conv fed
    (through channel-wise ops, no depthwise multiplier) by an already grouped conv and ``G`` divides ``C/G``."""
    src = input_region.get(id(layer.node))
    if src is None or src[1] != 1 or src[0] not in targets or (layer.spec.c_in // groups) % groups:
        return None
    if any(input_region.get(t) == src for t in targets):
        return None  # an earlier grouped conv is already paired with this producer
    a = targets[src[0]].assignment
    return None if a is None else a.out_groups


def _describe(layer: GroupedLayer, a: Assignment, groups: int, constrained: bool) -> None:
    ch, spec = layer.change, layer.spec
    ch.params_after = spec.weight_params // groups + spec.bias_params
    ch.macs_after = None if spec.macs is None else spec.macs // groups
    ch.groups, ch.kept_energy, ch.identity_kept = groups, a.kept, a.identity_kept
    ch.method = a.method + (" (shuffle-constrained)" if constrained else "")
    ch.permutation, ch.output_reorder = "none", []  # until ChannelFlow.realise says how the orders are realised


def masked_reference(model: onnx.ModelProto, result: PassResult) -> onnx.ModelProto:
    """The original model with every grouped conv's weight zeroed outside its groups (still dense).

    The rewrite computes exactly this function, up to float rounding: it separates the approximation (the dropped
    weights) from the reordering machinery, which must be exact.
    """
    done = {c.name: c for c in result.rewritten if c.in_groups is not None and c.out_groups is not None}
    graph = gs.import_onnx(model)
    names = NamePool(model)
    for path, g in graphs_with_paths(graph):
        for node in g.nodes:
            change = done.get(f"{path}/{layer_label(node)}" if path else layer_label(node))
            if change is None or node.op != "Conv":
                continue
            w = constant_array(node.inputs[1])
            assert w is not None
            keep = np.array(change.out_groups)[:, None] == np.array(change.in_groups)[None, :]
            masked = w * keep.reshape(keep.shape + (1,) * (w.ndim - 2)).astype(w.dtype)
            node.inputs[1] = gs.Constant(names.new(f"{node.inputs[1].name}_masked"), masked)
    return finish_model(model, graph)

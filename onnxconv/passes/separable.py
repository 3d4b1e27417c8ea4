"""Depthwise-separable rewrite: replace standard convs by depthwise + pointwise subgraphs derived from their weights.

The math (``docs/conv-math.md``, "Depthwise separable and the rank-r form"):

A Conv with weight ``W`` (``N x M/g x k...``, ``K = prod(k)``, group ``g``, ``Ng = N/g`` outputs per group) is a
sum over input channels ``m`` of ``W[:, m] * X_m``. Each slice ``S_m`` (the ``Ng x K`` block of the outputs of
``m``'s group) is factored by SVD, ``S_m = sum_t s_t u_t v_t^T``, so::

    Y_n = sum_m sum_t (s_t u_t[n]) * (v_t * X_m)

``v_t * X_m`` is a depthwise conv of channel ``m`` with kernel ``v_t`` (it carries the strides, dilations and
pads of the original conv), and the ``s_t u_t[n]`` form a 1x1 conv (with the original bias). Keeping ``r``
terms gives the best rank-r approximation of every slice (Eckart-Young); ``r = min(Ng, K)`` is exact.
Grouped convs are separated group by group: the 1x1 stage keeps group ``g``. MACs become
``r * N_batch * prod(O) * M * (K + Ng)`` against ``N_batch * prod(O) * N * (M/g) * K`` before; since
``min(Ng, K) >= Ng*K/(Ng + K)`` the exact rank never saves MACs, so ``exact`` rewrites regardless (it is for
checking, or as a lossless start for fine-tuning).

Four equivalent forms (``FORMS``) differ only in how onnxruntime runs them:

* ``concat``: ``r`` depthwise convs of multiplier 1 (kernel ``v_t`` for every channel), Concat on channels, one
  1x1 conv. Needs group 1 for the 1x1 stage (a grouped conv is emitted in the ``sum`` form instead).
* ``sum``: ``r`` branches depthwise (multiplier 1) -> 1x1, joined by Add (the bias on the first branch). The
  nodes are kept in the order dw0, pw0, dw1, pw1, add1, ... and each Add reads its branch first, so that
  onnxruntime runs every 1x1 conv right after the depthwise conv it reads and fuses the Add into it.
* ``multiplier``: one depthwise conv with depth multiplier ``r`` -> one 1x1 conv: fewest nodes, but onnxruntime's
  NCHWc layout optimiser rejects depthwise convs with a multiplier above 1, and it runs slower.
* ``tiled``: Concat of ``r`` copies of the input on channels -> one depthwise conv of multiplier 1 over
  ``r * M`` channels (channel ``t*M + m`` has kernel ``v_t`` of ``m``) -> one 1x1 conv. One depthwise node in
  the NCHWc layout instead of ``r``, but the copy costs more than that saves (measured slower than ``sum`` on
  every layer shape tried). Needs group 1, like ``concat``.

At ``r = 1`` all of them are one depthwise conv followed by one 1x1 conv. The default (``DEFAULT_FORM``, sum) is
the form measured fastest with onnxruntime on CPU (``tools/bench_separate.py``, BENCHMARKS.md "separate").

Nodes left alone, each with its reason: ConvTranspose (not a target), quantized convs (ConvInteger,
QLinearConv, or a weight from DequantizeLinear), weights computed at run time, non-float weights, weights with
NaN/Inf values, depthwise convs, 1x1 kernels, under ``exact`` weights whose factors stored in their own dtype do
not rebuild them (:func:`reconstruction_error`, e.g. outliers 1e16 times the other values; each kernel tap weighted
by how many outputs read data through it where the input size is known, so that taps that only ever read padding
cannot hide an error on the ones that read data), convs in
model-local functions (the body is shared by every call), and, unless ``force``, layers whose chosen rank saves
no MACs and layers with fewer than ``min_channels`` input channels (stems).
The original weights are never modified (a weight shared with another node keeps serving it); new weights keep
the original dtype (fp16 stays fp16; the SVD runs in float64).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from .. import counting as C
from ..conv import CONV_OPS, ConvSpec
from ..errors import OptionError, ShapeError
from .common import (
    LayerChange,
    NamePool,
    NodeFilter,
    PassResult,
    base_check,
    drop_dead_producers,
    function_rows,
    graphs_with_paths,
    tensor_shapes,
)
from .finish import finish_model
from .factoring import FORMS, Factors, factor_weight, reconstruction_error, separable_weights
from .ranks import (
    BudgetLayer,
    RankPolicy,
    allocate_budget,
    exact_tolerance,
    rank_for_energy,
    rank_for_error,
    relative_error,
)

__all__ = [
    "FORMS", "DEFAULT_FORM", "MIN_CHANNELS", "Factors", "factor_weight", "separable_weights", "reconstruction_error",
    "separate", "RankPolicy",
]

#: Chosen by measurement (BENCHMARKS.md "separate"): on onnxruntime's CPU provider (1 thread) ``sum`` realised
#: the largest share of the MAC saving on ResNet-18 and VGG-16 at every rank (its Adds fuse into the NCHWc 1x1
#: convs, where ``concat`` pays a copy of all r depthwise outputs and ``tiled`` one of r copies of the input),
#: and it needs no fallback for grouped convs.
DEFAULT_FORM = "sum"
#: Convs with fewer input channels are left alone unless forced. A depthwise conv over a channel count below
#: onnxruntime's NCHWc block (8 or 16 floats) runs outside that layout at a few GMAC/s, and a stem (3 RGB
#: channels, 7x7, stride 2) rewritten at rank 4 measured slower than the conv it replaced on ResNet-18
#: (BENCHMARKS.md "separate"); MobileNets keep their first conv standard for the same reason.
MIN_CHANNELS = 8


# --------------------------------------------------------------------------------------------------------------
# Checks


@dataclass
class _Candidate:
    """A conv that passed every check but the MAC one: its spec, factors and report row."""

    graph: gs.Graph
    node: gs.Node
    spec: ConvSpec
    dtype: np.dtype
    factors: Factors
    change: LayerChange
    weight_key: str
    weight: np.ndarray

    @property
    def unit_pos(self) -> int:
        """MACs of one rank term per batch item and output position: ``M * (K + Ng)``."""
        k = C.prod(self.spec.kernel_shape)
        return self.spec.c_in * (k + self.spec.c_out // self.spec.group)

    @property
    def conv_pos(self) -> int:
        """The conv's MACs per batch item and output position: ``N * (M/g) * K``."""
        return self.spec.c_out * self.spec.weight_shape[1] * C.prod(self.spec.kernel_shape)

    def macs_at(self, r: int) -> int | None:
        before = self.spec.macs
        return None if before is None else before // self.conv_pos * self.unit_pos * r


def _check(
    node: gs.Node, qualified: str, shapes: Mapping[str, tuple[int | None, ...]], node_filter: NodeFilter | None
) -> tuple[str | None, ConvSpec | None, np.ndarray | None]:
    """(skip reason or None, spec when known, weight when usable) for one conv-family node: the checks of
    :func:`~onnxconv.passes.common.base_check`, then depthwise convs and 1x1 kernels (nothing to separate)."""
    reason, spec, weight = base_check(node, qualified, shapes, node_filter)
    if reason is not None:
        return reason, spec, None
    assert spec is not None  # the weight's shape is known, so the spec is
    if spec.kind == "depthwise":
        return "already depthwise (group = C_in)", spec, None
    if spec.kind == "pointwise" or C.prod(spec.kernel_shape) == 1:
        return "1x1 kernel: already pointwise, nothing to separate", spec, None
    return None, spec, weight


# --------------------------------------------------------------------------------------------------------------
# Rewrite


class _Emitter:
    """Builds the replacement subgraphs; shares new weights between convs that shared a weight."""

    def __init__(self, names: NamePool) -> None:
        self.names = names
        self.cache: dict[tuple[int, str, int, str], tuple[list[gs.Constant], list[gs.Constant]]] = {}
        #: Node names of each ``sum`` subgraph in emission order (dw0, pw0, dw1, pw1, add1, ...).
        self.blocks: list[list[str]] = []
        #: Replaced nodes (by id) and their graphs, dropped by :meth:`compact` in one pass per graph:
        #: ``graph.nodes.remove(node)`` compares with onnx-graphsurgeon's ``Node.__eq__`` (attributes, inputs,
        #: outputs and a log call) until it meets ``node``, 4.5 million comparisons and 80 s on a 3,000-conv chain.
        self._replaced: set[int] = set()
        self._graphs: dict[int, gs.Graph] = {}

    def _consts(self, c: _Candidate, r: int, form: str, base: str) -> tuple[list[gs.Constant], list[gs.Constant]]:
        key = (id(c.graph), c.weight_key, r, form)
        if key not in self.cache:
            dw, pw = separable_weights(c.factors, r, form)
            dwc = [gs.Constant(self.names.new(f"{base}_dw{i}_W"), np.ascontiguousarray(a.astype(c.dtype)))
                   for i, a in enumerate(dw)]
            pwc = [gs.Constant(self.names.new(f"{base}_pw{i}_W"), np.ascontiguousarray(a.astype(c.dtype)))
                   for i, a in enumerate(pw)]
            self.cache[key] = (dwc, pwc)
        return self.cache[key]

    def emit(self, c: _Candidate, r: int, form: str) -> str:
        """Replace ``c.node`` by its rank-r form; returns the form actually used (at rank 1 every form is the
        same graph, one depthwise + one 1x1 conv, and the requested name is kept for the report)."""
        spec, node, graph = c.spec, c.node, c.graph
        requested = form
        if r == 1:
            form = "multiplier"  # the one-depthwise code path builds that common graph
        elif form in ("concat", "tiled") and spec.group > 1:
            form = "sum"
        base = node.name or node.outputs[0].name
        dwc, pwc = self._consts(c, r, form, base)
        x, y = node.inputs[0], node.outputs[0]
        w_t = node.inputs[1]
        bias = node.inputs[2] if len(node.inputs) > 2 and node.inputs[2].name else None
        self._replaced.add(id(node))
        self._graphs[id(graph)] = graph
        node.inputs.clear()
        node.outputs.clear()
        drop_dead_producers(graph, w_t)

        k = spec.spatial_rank
        dw_attrs: dict[str, object] = {
            "kernel_shape": list(spec.kernel_shape), "strides": list(spec.strides),
            "dilations": list(spec.dilations), "group": spec.c_in,
        }
        if spec.pads is not None:
            # Explicit pads: onnxruntime refuses SAME_* auto_pad with dilation > 1 (docs/conv-math.md, "onnxruntime facts").
            dw_attrs["pads"] = list(spec.pads)
        else:
            dw_attrs["auto_pad"] = spec.auto_pad  # input size unknown: the same auto_pad resolves the same pads
        pw_group = 1 if form in ("concat", "tiled") else spec.group
        pw_attrs = {"kernel_shape": [1] * k, "group": pw_group}

        def var(suffix: str) -> gs.Variable:
            # No dtype: a value_info without a shape fails the checker; shape inference fills both in.
            return gs.Variable(self.names.new(f"{base}_{suffix}"))

        def conv(name: str, inputs: list[gs.Tensor], output: gs.Tensor, attrs: dict[str, object]) -> None:
            graph.nodes.append(gs.Node("Conv", self.names.new(name), dict(attrs), inputs, [output]))

        tail = [bias] if bias is not None else []
        if form == "multiplier":
            mid = var("dw")
            conv(f"{base}/dw", [x, dwc[0]], mid, dw_attrs)
            conv(f"{base}/pw", [mid, pwc[0], *tail], y, pw_attrs)
        elif form == "concat":
            mids = [var(f"dw{t}") for t in range(r)]
            for t in range(r):
                conv(f"{base}/dw{t}", [x, dwc[t]], mids[t], dw_attrs)
            cat = var("concat")
            graph.nodes.append(gs.Node("Concat", self.names.new(f"{base}/concat"), {"axis": 1}, mids, [cat]))
            conv(f"{base}/pw", [cat, pwc[0], *tail], y, pw_attrs)
        elif form == "tiled":
            tiled = var("tiled")
            graph.nodes.append(gs.Node("Concat", self.names.new(f"{base}/tile"), {"axis": 1}, [x] * r, [tiled]))
            mid = var("dw")
            conv(f"{base}/dw", [tiled, dwc[0]], mid, {**dw_attrs, "group": r * spec.c_in})
            conv(f"{base}/pw", [mid, pwc[0], *tail], y, pw_attrs)
        else:
            first = len(graph.nodes)
            acc: gs.Tensor | None = None
            for t in range(r):
                mid = var(f"dw{t}")
                conv(f"{base}/dw{t}", [x, dwc[t]], mid, dw_attrs)
                out = var(f"pw{t}")
                conv(f"{base}/pw{t}", [mid, pwc[t], *(tail if t == 0 else [])], out, pw_attrs)
                if acc is None:
                    acc = out
                    continue
                dest = y if t == r - 1 else var(f"sum{t}")
                # Branch first, running sum second: onnxruntime's NCHWc pass fuses an Add into the conv that
                # makes its first input, so pw_t adds the sum of branches 0..t-1 as it writes (see _keep_order).
                graph.nodes.append(gs.Node("Add", self.names.new(f"{base}/add{t}"), {}, [out, acc], [dest]))
                acc = dest
            self.blocks.append([n.name for n in graph.nodes[first:]])
        return requested if r == 1 else form

    def compact(self) -> None:
        """Drop the replaced nodes (inputs and outputs already cleared by :meth:`emit`) from their graphs."""
        for graph in self._graphs.values():
            graph.nodes = [n for n in graph.nodes if id(n) not in self._replaced]


def _keep_order(graph: onnx.GraphProto, block_of: Mapping[str, int], blocks: Sequence[Sequence[str]]) -> None:
    """Put each ``sum`` subgraph's nodes back together in emission order, where its last node stands.

    The export's topological sort goes level by level, so all r depthwise convs of a layer come before its 1x1
    convs; onnxruntime then keeps all r depthwise outputs alive at once and runs dw0..dw{r-1} before any 1x1.
    In the order dw0, pw0, dw1, pw1, add1, ... it runs each 1x1 conv right after the depthwise conv it reads,
    while that output is still in cache (measured in BENCHMARKS.md "separate"). The order stays topological:
    a block node reads the block's input, a bias (maybe made at run time) and its weights, all made before that
    node, so before the block's last one, or nodes of the block; what reads the block's output (made by its
    last Add, which depends on every other node of the block) already came after the last node.
    """
    for node in graph.node:  # If/Loop/Scan bodies
        for attr in node.attribute:
            for sub in ([attr.g] if attr.HasField("g") else list(attr.graphs)):
                _keep_order(sub, block_of, blocks)
    if not any(n.name in block_of for n in graph.node):
        return
    by_name = {n.name: n for n in graph.node if n.name in block_of}
    ordered: list[onnx.NodeProto] = []
    left = {b: len(names) for b, names in enumerate(blocks)}
    for node in graph.node:
        b = block_of.get(node.name)
        if b is None:
            ordered.append(node)
            continue
        left[b] -= 1
        if not left[b]:  # the block's last node in the exported order
            ordered.extend(by_name[name] for name in blocks[b])
    copies = [onnx.NodeProto() for _ in ordered]
    for copy, node in zip(copies, ordered):
        copy.CopyFrom(node)
    del graph.node[:]
    graph.node.extend(copies)


# --------------------------------------------------------------------------------------------------------------
# The pass


def _collect(
    graph: gs.Graph, shapes: Mapping[str, tuple[int | None, ...]], node_filter: NodeFilter | None
) -> tuple[list[LayerChange], list[_Candidate]]:
    layers: list[LayerChange] = []
    candidates: list[_Candidate] = []
    for path, g in graphs_with_paths(graph):
        for node in list(g.nodes):
            if node.op not in CONV_OPS or (node.domain or "") not in ("", "ai.onnx"):
                continue
            label = node.name or (node.outputs[0].name if node.outputs else f"<{node.op}>")
            qualified = f"{path}/{label}" if path else label
            change = LayerChange(name=qualified, op_type=node.op, rewritten=False)
            layers.append(change)
            reason, spec, weight = _check(node, qualified, shapes, node_filter)
            if spec is not None:
                change.params_before, change.macs_before = spec.params, spec.macs
            if reason is not None:
                change.reason = reason
                continue
            assert spec is not None and weight is not None  # _check returns both when there is no reason
            factors = factor_weight(weight, spec.group)
            candidates.append(_Candidate(g, node, spec, weight.dtype, factors, change, node.inputs[1].name, weight))
    return layers, candidates


def _inexact(c: _Candidate) -> str | None:
    """Why ``c``'s exact-rank factors, stored in its dtype, do not reproduce its weight (None when they do).

    ``--exact`` promises a lossless rewrite; the SVD runs in float64, but the factors are stored in the weight's
    dtype, and a weight with outliers far above its other values loses those in the factoring. Checked per
    layer against :func:`~onnxconv.passes.ranks.exact_tolerance`, so such a layer stays as it was.
    """
    tol = exact_tolerance(c.dtype, c.factors.max_rank)
    err = reconstruction_error(c.factors, c.weight, coverage=_tap_coverage(c.spec))
    if err <= tol:
        return None
    shown = "overflows" if math.isnan(err) else f"differs by relative error {err:.2e} > {tol:.2e}"
    return (f"not exactly factorable in {c.dtype}: the rebuilt weight {shown} in some output channel "
            "(values of very different scales?)")


def _tap_coverage(spec: ConvSpec) -> np.ndarray | None:
    """How many outputs read data (not padding) through each kernel tap, flattened like the weight's taps
    (:func:`~onnxconv.counting.conv_tap_coverage` per axis, multiplied), or None when an input dim or the pads are
    unknown (then every tap counts the same, as on a large input)."""
    dims = spec.input_shape[2:] if spec.input_shape else ()
    if spec.pads is None or len(dims) != spec.spatial_rank or any(d is None for d in dims):
        return None
    k = spec.spatial_rank
    cover = np.ones(1)
    for axis, d in enumerate(dims):
        assert d is not None  # checked above
        counts = C.conv_tap_coverage(d, spec.kernel_shape[axis], spec.strides[axis], spec.dilations[axis],
                                     spec.pads[axis], spec.pads[axis + k])
        cover = np.multiply.outer(cover, np.asarray(counts, dtype=np.float64)).reshape(-1)
    return cover


def _choose_ranks(policy: RankPolicy, cands: Sequence[_Candidate], layers: Sequence[LayerChange]) -> list[int]:
    """Rank per candidate (0 = leave as it is) before the MAC-saving check."""
    if policy.kind == "rank":
        return [min(int(policy.value or 1), c.factors.max_rank) for c in cands]
    if policy.kind == "exact":
        return [c.factors.max_rank for c in cands]
    if policy.kind == "energy":
        return [rank_for_energy(c.factors.kept, float(policy.value or 1.0)) for c in cands]
    if policy.kind == "max-error":
        return [rank_for_error(c.factors.kept, float(policy.value or 0.0)) for c in cands]
    unknown = [c.change.name for c in cands if c.spec.macs is None]
    if unknown:
        raise ShapeError(
            f"--budget needs every layer's MACs, but the input shape of '{unknown[0]}' is unknown: "
            "set the model's input dims with --input-shape NAME=1x3x<height>x<width> (or give --calibration or --inputs, "
            "whose arrays fix them)"
        )
    cand_ids = {id(c.change) for c in cands}
    fixed = sum(lay.macs_before or 0 for lay in layers if id(lay) not in cand_ids)
    budget_layers = [
        BudgetLayer(conv_macs=c.spec.macs or 0, unit_macs=c.macs_at(1) or 0, kept=list(c.factors.kept))
        for c in cands
    ]
    return allocate_budget(budget_layers, fixed, float(policy.value or 1.0))


def separate(
    model: onnx.ModelProto,
    policy: RankPolicy,
    *,
    form: str = DEFAULT_FORM,
    node_filter: NodeFilter | None = None,
    force: bool = False,
    min_channels: int = MIN_CHANNELS,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
) -> PassResult:
    """Rewrite the standard and grouped convs of ``model`` as depthwise + pointwise subgraphs.

    Args:
        model: the model with its weights loaded; it is not modified.
        policy: how ranks are chosen (:class:`~onnxconv.passes.ranks.RankPolicy`).
        form: concat / sum / multiplier (see the module docstring).
        node_filter: ``--include``/``--exclude`` selection on (qualified) node names.
        force: rewrite layers whose rank saves no MACs, or with fewer than ``min_channels`` inputs, too
            (``exact`` always does).
        min_channels: leave convs with fewer input channels (stems) as they are (see :data:`MIN_CHANNELS`).
        input_shapes, batch: dims for symbolic graph inputs, as in ``stats`` (MACs, explicit SAME pads).

    Returns:
        The new model and one :class:`LayerChange` per conv, with its ``rank``, ``max_rank``, ``weight_error``
        (relative Frobenius weight error), ``energy`` (kept), ``form`` and ``forced`` set where they apply.

    Raises:
        OptionError: a bad form or an unreachable budget. ShapeError: a conv contradicts its weight, or
        ``budget`` needs a shape that is unknown. RewriteError: the result fails the checker.
    """
    if form not in FORMS:
        raise OptionError(f"--form {form}: choose from {', '.join(FORMS)}")
    shapes, notes = tensor_shapes(model, input_shapes, batch)
    graph = gs.import_onnx(model)
    layers, cands = _collect(graph, shapes, node_filter)
    for change in layers:
        change.pass_name = "separable"
    layers.extend(function_rows(model))
    forced = force or policy.kind == "exact"
    if not forced:
        for c in cands:
            if c.spec.c_in < min_channels:
                c.change.reason = (f"only {c.spec.c_in} input channels (< {min_channels}): a depthwise stage this "
                                   "narrow runs far below onnxruntime's fast path; use --min-channels or --force")
        cands = [c for c in cands if not c.change.reason]
    ranks = _choose_ranks(policy, cands, layers)
    emitter = _Emitter(NamePool(model))
    unsized = 0  # --exact layers checked without their input size (every tap weighted alike)
    for c, r in zip(cands, ranks):
        ch, f = c.change, c.factors
        kept = f.kept
        if r == 0:  # only the budget leaves a candidate at rank 0
            ch.reason = ("no rank saves MACs" if c.unit_pos >= c.conv_pos
                         else "left as it is: the budget is met without it")
            continue
        if policy.kind == "exact":
            why = _inexact(c)
            if why:
                ch.reason = why
                continue
            unsized += _tap_coverage(c.spec) is None
        ch.rank, ch.max_rank, ch.weight_error, ch.energy = r, f.max_rank, relative_error(kept, r), float(kept[r])
        saves = r * c.unit_pos < c.conv_pos
        if not saves and not forced:
            ch.reason = (f"rank {r} saves no MACs ({r} x (K + C_out/g) = {r * c.unit_pos // c.spec.c_in} "
                         f">= C_out/g x K = {c.conv_pos // c.spec.c_in} per input channel); use --force")
            continue
        ch.form = emitter.emit(c, r, form)
        ch.forced = not saves
        ch.rewritten = True
        ch.macs_after = c.macs_at(r)
        k = C.prod(c.spec.kernel_shape)
        ch.params_after = r * c.spec.c_in * k + r * c.spec.weight_shape[1] * c.spec.c_out + c.spec.bias_params
    emitter.compact()
    out = finish_model(model, graph, cleanup=False)
    _keep_order(out.graph, {name: i for i, names in enumerate(emitter.blocks) for name in names}, emitter.blocks)
    options: dict[str, object] = {"policy": policy.describe(), "form": form, "force": force,
                                  "min_channels": min_channels}
    if unsized:
        notes.append(f"--exact checked {unsized} layer(s) of unknown input size as if every kernel tap read data "
                     "(true of inputs larger than the kernel); --input-shape, or --verify on the outputs, checks "
                     "them as run")
    if notes:
        options["notes"] = notes
    return PassResult(model=out, layers=layers, pass_name="separable", options=options)

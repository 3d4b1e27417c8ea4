"""Hardware-aware planning: per layer keep, depthwise rank r or grouped G, to reach a measured speed-up.

``--budget`` counts MACs, but a rewrite's worth depends on the provider, threads and batch (conv-math.md: a
rank-4 rewrite of ResNet-18 is *slower* on a 16-thread CPU). :func:`plan_rewrite` measures instead:

1. **Candidates and options.** The layers the pass would rewrite (a dry run of the pass with the user's
   filter), each with its options: *keep*, every depthwise rank ``r`` in :data:`RANK_CHOICES` that saves MACs
   (``mode="separable"``), every ``G`` in ``groups`` that divides its channels (``"shuffle"``), or both
   (``"mixed"``: one layer may become depthwise rank r and the next grouped G).
2. **Error** of each option on the calibration set: one onnxruntime pass of the original model collects each
   candidate's input patches at sampled output positions (:func:`onnxconv.calibrate.sample_patches`); the
   option's error is the relative output error ``||P (W - W_o)^T|| / ||P W^T + b||`` of the layer on them,
   with ``W_o`` the rank-r (separable) or block-diagonal (grouped) weight. Rank errors for all ``r`` come from one
   projection: with the SVD of every input channel's slice, the output splits into terms ``Y_t`` and the rank-r
   error is ``||sum_{t >= r} Y_t||``. This is the weight-only error. The refit afterwards lowers it, by very
   different amounts per layer and option, so by default the choice uses the error *after the per-layer
   refit*, estimated from normal equations accumulated on the same patches (:func:`_option_errors`).
3. **Latency** of each option: the layer alone (its real input shape, attributes and the rewrite's exact
   graph form; a plain grouped conv for G) timed with :func:`onnxconv.bench.bench` on the provider, all options
   of a layer in one interleaved run, cached per (provider, threads, shapes, attributes, option) in a
   :class:`LatencyCache` (optionally a JSON file) so that layers of the same shape are timed once.
4. **Choice.** With ``T`` the measured latency of the whole model and ``d_o = t_keep - t_o`` the time an option
   saves, pick one option per layer minimising ``sum e_o^2`` subject to ``sum d_o >= T (1 - 1/S)`` (a
   multiple-choice knapsack, solved exactly by dynamic programming over :data:`BUCKETS` time buckets, rounding
   savings down). Options slower than keeping the layer are dropped. Predicted speed-up: ``T / (T - sum d_o)``.
5. **Verify.** The rewritten model is timed against the original with the bench code (interleaved rounds, the
   calibration inputs). Layers timed alone do not add up exactly (fusions, layout conversions, caches), so when
   the measured speed-up misses the target (by more than ``tolerance``) or overshoots it (by more than three),
   the layer savings are scaled by ``measured saving / predicted saving`` and the plan is made again, at most
   ``rounds`` times; the least-error plan that reached the target is kept (else the fastest). A target the
   layer timings call unreachable is checked by measuring the plan with every layer at its fastest option.
   Then the chosen layers are refitted (:func:`onnxconv.calibrate.refit`) and the result records predicted vs
   measured speed-up. A plan is built by one separable pass per chosen rank, then one shuffle pass per chosen G
   on its result (each restricted to its layers by name); when grouped layers exist, the model the rewrite
   computes exactly up to channel orders is kept as the refit's ``reference`` (:class:`PlanReport`).
"""

from __future__ import annotations

import json
import math
import os
import re
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .calibrate import CalibrationSet, ConvTerm, activations, load_calibration, refit, sample_patches
from .errors import OptionError
from .graph import attrs_of, node_label
from .passes.common import LayerChange, NodeFilter, PassResult

__all__ = ["RANK_CHOICES", "GROUP_CHOICES", "BUCKETS", "Option", "LayerOptions", "PlanReport", "LatencyCache",
           "choose", "plan_rewrite", "plan_from_file"]

#: Depthwise ranks the planner considers (those that save MACs in a layer).
RANK_CHOICES = (1, 2, 3, 4, 6, 8, 12, 16)
#: Group counts the planner considers in shuffle mode when ``--groups`` is not given.
GROUP_CHOICES = (2, 4, 8)
#: The option that leaves a layer as it is (option keys are ``(kind, value)``: ``("rank", r)``, ``("groups", G)``).
KEEP = ("keep", 0)
#: Time buckets of the knapsack: savings are rounded down to ``T (1 - 1/S) / BUCKETS``.
BUCKETS = 2000


@dataclass
class Option:
    """One way to run a layer: ``kind`` keep / rank / groups with its ``value``, measured time and error."""

    kind: str
    value: int
    latency_s: float
    error: float

    @property
    def label(self) -> str:
        return "keep" if self.kind == "keep" else f"{'r' if self.kind == 'rank' else 'G'}={self.value}"


@dataclass
class LayerOptions:
    """A candidate layer and its options (the first is keep)."""

    name: str
    options: list[Option]
    chosen: int = 0

    @property
    def keep(self) -> Option:
        return self.options[0]


@dataclass
class PlanReport:
    """What the planner decided and how the prediction compared with the measurement."""

    target: float
    provider: str
    model_s: float
    predicted: float
    measured: float | None
    rounds: list[dict[str, float]] = field(default_factory=list)
    layers: list[LayerOptions] = field(default_factory=list)
    #: What the rewrite computes exactly up to channel orders when the plan mixes ranks and groups: pass it to
    #: :func:`onnxconv.calibrate.refit` as ``reference`` (None otherwise).
    reference: onnx.ModelProto | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layers", "reference")}
        out["rounds"] = [dict(r) for r in self.rounds]
        out["layers"] = [{"name": lay.name, "chosen": lay.options[lay.chosen].label,
                          "options": [asdict(o) for o in lay.options]} for lay in self.layers]
        return out


class LatencyCache:
    """Measured seconds per (provider, threads, shapes, attributes, option) key, optionally kept in a JSON file."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self.times: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.times = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self.times = {}  # an unreadable cache is only a cache: measure again

    def get(self, key: str) -> float | None:
        return self.times.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.times[key] = seconds

    def save(self) -> None:
        if self.path is None:
            return
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", suffix=".tmp", dir=self.path.parent)
        with os.fdopen(fd, "w") as f:
            json.dump(self.times, f, indent=1, sort_keys=True)
        os.replace(tmp, self.path)


# --------------------------------------------------------------------------------------------------------------
# The choice


def choose(layers: Sequence[LayerOptions], model_s: float, target: float, buckets: int = BUCKETS,
           scale: float = 1.0) -> float:
    """Pick ``layers[i].chosen`` to save at least ``model_s * (1 - 1/target)`` seconds with the least
    ``sum error^2``; returns the predicted speed-up ``model_s / (model_s - saved)``.

    ``scale`` is how much of the time the layers save alone the whole model actually saves (measured by
    :func:`plan_rewrite`; 1 = layer savings add up as timed).

    Raises:
        OptionError: the target cannot be reached even with every layer at its fastest option (the message gives
            the largest predicted speed-up).
    """
    need = model_s * (1.0 - 1.0 / target) / scale
    best_saving = sum(max(lay.keep.latency_s - o.latency_s for o in lay.options) for lay in layers)
    if best_saving < need:
        reach = model_s / max(model_s - best_saving * scale, 1e-9 * model_s)
        raise OptionError(f"--target-speedup {target:g}: the largest predicted speed-up is {reach:.3f}x "
                          f"(every candidate layer at its fastest option, measured layer by layer)")
    for lay in layers:
        lay.chosen = 0
    if need <= 0:
        return 1.0
    unit = need / buckets
    best = np.full(buckets + 1, np.inf)
    best[0] = 0.0
    trace: list[tuple[np.ndarray, np.ndarray]] = []
    for lay in layers:
        new = np.full(buckets + 1, np.inf)
        pick = np.zeros(buckets + 1, dtype=np.int64)
        prev = np.arange(buckets + 1)
        for oi, o in enumerate(lay.options):
            saved = lay.keep.latency_s - o.latency_s
            if oi and saved <= 0:
                continue
            s = min(buckets, int(math.floor(saved / unit))) if oi else 0
            val = np.full(buckets + 1, np.inf)
            src = np.arange(buckets + 1)
            cost = o.error ** 2
            if s == 0:
                val = best + cost
            else:
                val[s:buckets] = best[:buckets - s] + cost
                src[s:buckets] = np.arange(buckets - s)
                tail = best[buckets - s:]  # every state from here on reaches the cap
                j = int(np.argmin(tail))
                val[buckets] = tail[j] + cost
                src[buckets] = buckets - s + j
            better = val < new
            new[better], pick[better], prev[better] = val[better], oi, src[better]
        trace.append((pick, prev))
        best = new
    if not math.isfinite(best[buckets]):
        # Savings rounded down to buckets can fall short of a target the raw sum just reaches.
        reach = model_s / max(model_s - best_saving * scale, 1e-9 * model_s)
        raise OptionError(f"--target-speedup {target:g}: the largest predicted speed-up is {reach:.3f}x "
                          f"(every candidate layer at its fastest option, measured layer by layer)")
    state = buckets
    for lay, (pick, prev) in zip(reversed(layers), reversed(trace)):
        lay.chosen = int(pick[state])
        state = int(prev[state])
    saved = scale * sum(lay.keep.latency_s - lay.options[lay.chosen].latency_s for lay in layers)
    # Layers timed alone can add up to more than the whole model (fusions, per-run overhead): the prediction is
    # then unbounded, and only the end-to-end measurement says where the plan lands.
    return model_s / max(model_s - saved, 1e-9 * model_s)


# --------------------------------------------------------------------------------------------------------------
# Candidates


@dataclass
class _Candidate:
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

    def values(self, kind: str) -> list[int]:
        """The ranks (``kind="rank"``) or group counts (``"groups"``) among the options."""
        return [v for k, v in self.options if k == kind]
    macs: int | None = None
    params: int | None = None


def _arrays(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    out = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    out[n.output[0]] = numpy_helper.to_array(a.t)
    return out


def _candidates(model: onnx.ModelProto, mode: str, form: str, groups: Sequence[int], node_filter: NodeFilter | None,
                input_shapes: Mapping[str, Sequence[int]] | None, batch: int | None,
                ) -> tuple[list[_Candidate], dict[str, LayerChange]]:
    """Candidate layers with their options, and a skipped LayerChange (with its reason) for the rest.

    ``mode`` separable offers ranks, shuffle offers group counts, mixed offers both (a layer is a candidate when
    either pass would rewrite it); the options of a layer are listed ranks first, then group counts.
    """
    nodes = {node_label(n): n for n in model.graph.node if n.op_type == "Conv"}
    arrays = _arrays(model)
    found: dict[str, _Candidate] = {}
    skipped: dict[str, LayerChange] = {}
    order: list[str] = []  # the graph order of the first dry run, which every dry run lists all convs in

    def add(c: LayerChange, options: list[tuple[str, int]], reason: str) -> None:
        if c.name not in order:
            order.append(c.name)
        node = nodes.get(c.name)
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
        from .passes.ranks import RankPolicy
        from .passes.separable import separate

        dry = separate(model, RankPolicy("rank", 1), form=form, force=True, node_filter=node_filter,
                       input_shapes=input_shapes, batch=batch)
        for c in dry.layers:
            node = nodes.get(c.name)
            ranks: list[int] = []
            if c.rewritten and node is not None:
                w = arrays[node.input[1]]
                g = int(attrs_of(node).get("group", 1) or 1)  # type: ignore[call-overload]
                k, ng = math.prod(w.shape[2:]), w.shape[0] // g
                conv_pos, unit_pos = ng * k, k + ng  # per input channel and output position
                ranks = [r for r in RANK_CHOICES if r <= min(ng, k) and r * unit_pos < conv_pos]
            add(c, [("rank", r) for r in ranks],
                "inside a subgraph: not planned" if node is None else "no rank saves MACs")
    if mode in ("shuffle", "mixed"):
        from .passes.shuffle import group_shuffle

        for g in groups:
            dry = group_shuffle(model, groups=g, node_filter=node_filter, force=True, input_shapes=input_shapes)
            for c in dry.layers:
                ok = c.rewritten and c.name in nodes
                add(c, [("groups", g)] if ok else [], "inside a subgraph: not planned")
                if ok:
                    out_g, in_g = np.asarray(c.details["out_groups"]), np.asarray(c.details["in_groups"])
                    found[c.name].masks[g] = out_g[:, None] == in_g[None, :]
                    found[c.name].assign[g] = (out_g, in_g)
    return [found[n] for n in order if n in found], {n: skipped[n] for n in order if n in skipped}


def _make_candidate(change: LayerChange, node: onnx.NodeProto, arrays: Mapping[str, np.ndarray],
                    options: list[tuple[str, int]]) -> _Candidate:
    bias = arrays.get(node.input[2]) if len(node.input) > 2 and node.input[2] else None
    return _Candidate(change.name, node, arrays[node.input[1]], bias, attrs_of(node), list(options),
                      macs=change.macs_before, params=change.params_before)


# --------------------------------------------------------------------------------------------------------------
# Errors on the calibration set


#: Largest number of unknowns per output channel for which the refit of an option is estimated (a Gram matrix of
#: that size per layer is accumulated); options above it get their weight-only error scaled (see
#: :func:`_option_errors`).
MAX_REFIT_FEATURES = 1536


def _option_errors(model: onnx.ModelProto, cands: Sequence[_Candidate], calib: CalibrationSet, positions: int,
                   seed: int, providers: Sequence[str], threads: int | None, refit_aware: bool = True) -> None:
    """Fill ``cand.errors`` (option -> relative output error), ``cand.weight_errors`` and ``cand.input_shape``.

    ``weight_errors`` are the weight-only errors (module docstring, step 2). With ``refit_aware`` the ``errors``
    the choice uses are the errors *after the per-layer refit* instead, estimated on the same patches: the
    refit fits the option's linear stage ``[X_o, 1] A`` to the original output ``T`` by ridge least squares, and
    every option's ``X_o`` is a linear function of the patches, so one set of normal equations per layer gives
    all of them. Rank r: ``X_r`` = the depthwise outputs ``z_{m,t} = v_{m,t} . p_m`` for ``t < r``, so the
    normal equations of the largest rank hold every smaller rank's as a sub-block. G: per group, the patches of
    the group's input channels against its output channels. The error is the relative held-out error of the
    best ridge of :data:`onnxconv.calibrate.RIDGE_GRID` (what :func:`onnxconv.calibrate.refit` does, without the
    upstream layers' errors), never above the weight-only one. Options with more than
    :data:`MAX_REFIT_FEATURES` unknowns keep their weight-only error times the ratio refit / weight-only of the
    layer's largest estimated option of the same kind (1 when there is none).
    """
    from .passes.separable import factor_weight

    elem = {c.name: _elem_type(c.weight) for c in cands}
    names = {c.node.input[0]: elem[c.name] for c in cands}
    factors = {c.name: factor_weight(c.weight, int(c.attrs.get("group", 1) or 1)) for c in cands
               if c.values("rank")}
    err2: dict[str, dict[tuple[str, int], float]] = {c.name: dict.fromkeys(c.options, 0.0) for c in cands}
    total = dict.fromkeys(err2, 0.0)
    refits = {c.name: _RefitEstimate(c, factors.get(c.name)) for c in cands} if refit_aware else {}
    per = max(1, math.ceil(positions / calib.size))
    per_check = max(1, per // 4) if refit_aware else 0
    for start, outs in activations(model, names, calib, providers, threads):
        for ci, c in enumerate(cands):
            x = outs[c.node.input[0]]
            if not c.input_shape:
                c.input_shape = (calib.chunk, *x.shape[1:])
            term = ConvTerm(c.node, c.node.input[0], c.node.input[1], tuple(c.weight.shape), c.attrs)
            ranks, groups = c.values("rank"), c.values("groups")
            for i in range(x.shape[0]):
                out_spatial = _out_spatial(term, x.shape[1:])
                count = math.prod(out_spatial)
                rng = np.random.default_rng((seed, ci, start + i))
                drawn = rng.choice(count, size=min(per + per_check, count), replace=False)
                cut = min(per, max(1, len(drawn) - per_check)) if per_check else len(drawn)
                pos, chk = np.sort(drawn[:cut]), np.sort(drawn[cut:])
                p = sample_patches(x[i], term, out_spatial, pos).astype(np.float64)
                errs: dict[tuple[str, int], float] = {}
                full = None
                if ranks:
                    full, by_rank = _rank_errors(p, factors[c.name], ranks)
                    errs.update({("rank", r): e for r, e in by_rank.items()})
                if groups:
                    full, by_g = _group_errors(p, c.weight, c.masks, groups)
                    errs.update({("groups", g): e for g, e in by_g.items()})
                assert full is not None
                if c.bias is not None:
                    full = full + c.bias.astype(np.float64)[None, :]
                total[c.name] += float(np.sum(full * full))
                for key, e in errs.items():
                    err2[c.name][key] += e
                if refit_aware:
                    refits[c.name].add("fit", p, full)
                    if len(chk):
                        q = sample_patches(x[i], term, out_spatial, chk).astype(np.float64)
                        y = (_rank_errors(q, factors[c.name], [])[0] if ranks
                             else _group_errors(q, c.weight, c.masks, [])[0])
                        refits[c.name].add("check", q, y + (0.0 if c.bias is None else c.bias[None, :]))
    for c in cands:
        t = total[c.name]
        c.weight_errors = {key: math.sqrt(e / t) if t > 0 else 0.0 for key, e in err2[c.name].items()}
        c.errors = refits[c.name].errors(c.weight_errors) if refit_aware else dict(c.weight_errors)


class _RefitEstimate:
    """Normal equations of a candidate's options on sampled patches (see :func:`_option_errors`)."""

    def __init__(self, c: _Candidate, factors: Any) -> None:
        from .calibrate import _Normal

        self.c, self.f = c, factors
        self.g = int(c.attrs.get("group", 1) or 1)  # type: ignore[call-overload]
        m, k = c.weight.shape[1] * self.g, math.prod(c.weight.shape[2:])
        self.mg = m // self.g
        ranks = [r for r in c.values("rank") if self.mg * r <= MAX_REFIT_FEATURES]
        self.rmax = max(ranks, default=0)
        self.rank = _Normal(self.g, self.mg * self.rmax + 1, c.weight.shape[0] // self.g) if self.rmax else None
        n = c.weight.shape[0]
        # Balanced groups (what grouping assigns) give every group the same shape of normal equations.
        self.groups = {G: _Normal(G, m // G * k + 1, n // G) for G in c.values("groups")
                       if m // G * k <= MAX_REFIT_FEATURES
                       and np.all(np.bincount(c.assign[G][0], minlength=G) == n // G)
                       and np.all(np.bincount(c.assign[G][1], minlength=G) == m // G)}

    def add(self, which: str, p: np.ndarray, y: np.ndarray) -> None:
        """Add patches ``p`` (``S x M x K``) with the original outputs ``y`` (``S x N``, bias included)."""
        s = p.shape[0]
        if self.rank is not None:
            z = np.matmul(p.transpose(1, 0, 2), self.f.vt[:, : self.rmax].transpose(0, 2, 1))  # (M, S, rmax)
            z = z.transpose(1, 0, 2).reshape(s, self.g, self.mg * self.rmax)
            ng = y.shape[1] // self.g
            for gi in range(self.g):
                self.rank.add(which, gi, z[:, gi], y[:, gi * ng:(gi + 1) * ng])
        for G, acc in self.groups.items():
            out_g, in_g = self.c.assign[G]
            for gi in range(G):
                acc.add(which, gi, p[:, in_g == gi].reshape(s, -1), y[:, out_g == gi])

    def _best(self, acc: Any, a0: list[np.ndarray]) -> float | None:
        from .calibrate import RIDGE_GRID

        errs = [acc.check_error(a) for a in (acc.solve(a0, lam) for lam in RIDGE_GRID) if a is not None]
        errs = [e for e in errs if e is not None]
        return min(errs) if errs else None

    def errors(self, weight: Mapping[tuple[str, int], float]) -> dict[tuple[str, int], float]:
        from .calibrate import _Normal

        c, out = self.c, dict(weight)
        done: set[tuple[str, int]] = set()
        n = c.weight.shape[0]
        bias = np.zeros(n) if c.bias is None else c.bias.astype(np.float64)
        if self.rank is not None:
            ng = n // self.g
            for r in (r for r in c.values("rank") if r <= self.rmax):
                idx = np.array([m * self.rmax + t for m in range(self.mg) for t in range(r)] + [self.rank.d - 1])
                sub = _Normal(self.g, len(idx), ng)
                sub.fit = [[xx[np.ix_(idx, idx)], xt[idx]] for xx, xt in self.rank.fit]
                sub.check = [[xx[np.ix_(idx, idx)], xt[idx]] for xx, xt in self.rank.check]
                sub.tt_check = self.rank.tt_check
                a0 = [np.concatenate([self.f.p[gi * self.mg:(gi + 1) * self.mg, :, :r].transpose(0, 2, 1)
                                      .reshape(self.mg * r, ng), bias[None, gi * ng:(gi + 1) * ng]])
                      for gi in range(self.g)]
                e = self._best(sub, a0)
                if e is not None:
                    out["rank", r] = min(e, weight["rank", r])
                    done.add(("rank", r))
        w64 = c.weight.astype(np.float64)
        for G, acc in self.groups.items():
            out_g, in_g = c.assign[G]
            a0 = [np.concatenate([w64[out_g == gi][:, in_g == gi].reshape(int(np.sum(out_g == gi)), -1).T,
                                  bias[None, out_g == gi]]) for gi in range(G)]
            e = self._best(acc, a0)
            if e is not None:
                out["groups", G] = min(e, weight["groups", G])
                done.add(("groups", G))
        for kind in ("rank", "groups"):
            # The largest estimated option is the closest in size to the ones too large to estimate.
            last = max((v for k, v in done if k == kind), default=None)
            ratio = out[kind, last] / weight[kind, last] if last is not None and weight[kind, last] > 0 else 1.0
            for v in c.values(kind):
                if (kind, v) not in done:
                    out[kind, v] = weight[kind, v] * ratio
        return out


def _elem_type(w: np.ndarray) -> int:
    return {np.dtype(np.float16): onnx.TensorProto.FLOAT16, np.dtype(np.float64): onnx.TensorProto.DOUBLE}.get(
        w.dtype, onnx.TensorProto.FLOAT)


def _out_spatial(term: ConvTerm, shape: Sequence[int]) -> tuple[int, ...]:
    from .conv import conv_spec

    spec = conv_spec("Conv", term.attrs, term.weight_shape, False, (1, *shape))
    return tuple(int(d) for d in spec.output_shape[2:])  # type: ignore[arg-type]


def _rank_errors(p: np.ndarray, f: Any, ranks: Sequence[int]) -> tuple[np.ndarray, dict[int, float]]:
    """(output without bias ``S x N``, rank -> squared output error) from patches ``p`` (``S x M x K``).

    Slice ``m`` contributes ``sum_t f.p[m,:,t] (v[m,t] . p_m)`` (``f.p`` = singular vectors times singular values,
    :class:`~onnxconv.passes.separable.Factors`); the rank-r error is the part with t >= r.
    """
    m, ng, q = f.p.shape
    g = f.group
    mg = m // g
    z = np.matmul(p.transpose(1, 0, 2), f.vt.transpose(0, 2, 1))  # (M, S, q)
    z = z.reshape(g, mg, -1, q).transpose(0, 3, 2, 1)  # (g, q, S, Mg)
    u = f.p.reshape(g, mg, ng, q).transpose(0, 3, 1, 2)  # (g, q, Mg, Ng)
    terms = np.matmul(z, u)  # (g, q, S, Ng): output of term t
    tail = np.cumsum(terms[:, ::-1], axis=1)[:, ::-1]  # tail[:, t] = sum of terms t..q-1
    full = tail[:, 0].transpose(1, 0, 2).reshape(p.shape[0], g * ng)
    errs = {r: float(np.sum(tail[:, r] ** 2)) if r < q else 0.0 for r in ranks}
    return full, errs


def _group_errors(p: np.ndarray, w: np.ndarray, masks: Mapping[int, np.ndarray], groups: Sequence[int],
                  ) -> tuple[np.ndarray, dict[int, float]]:
    """(output without bias, G -> squared output error of dropping the weights outside the groups)."""
    flat = p.reshape(p.shape[0], -1)
    w64 = w.astype(np.float64)
    full = flat @ w64.reshape(w.shape[0], -1).T
    errs = {}
    for g in groups:
        drop = w64 * (~masks[g]).reshape(masks[g].shape + (1,) * (w.ndim - 2))
        d = flat @ drop.reshape(w.shape[0], -1).T
        errs[g] = float(np.sum(d * d))
    return full, errs


# --------------------------------------------------------------------------------------------------------------
# Latency


def _layer_model(c: _Candidate, weight: np.ndarray, attrs: Mapping[str, Any]) -> onnx.ModelProto:
    """The layer alone: X (its real input shape) -> Conv -> Y."""
    inits = [numpy_helper.from_array(weight, "W")]
    ins = ["X", "W"]
    if c.bias is not None:
        inits.append(numpy_helper.from_array(c.bias, "B"))
        ins.append("B")
    node = helper.make_node("Conv", ins, ["Y"], name=c.name, **attrs)
    elem = _elem_type(c.weight)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("X", elem, list(c.input_shape))],
                              [helper.make_tensor_value_info("Y", elem, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def _option_models(c: _Candidate, form: str) -> dict[tuple[str, int], onnx.ModelProto]:
    """Option (``("keep", 0)`` first) -> the layer alone in that form."""
    base = _layer_model(c, c.weight, c.attrs)
    out = {KEEP: base}
    for kind, v in c.options:
        if kind == "rank":
            from .passes.ranks import RankPolicy
            from .passes.separable import separate

            out[kind, v] = separate(base, RankPolicy("rank", v), form=form, force=True).model
        else:
            w = c.weight[:, : c.weight.shape[1] // v]  # the values do not matter for the time; the shape does
            out[kind, v] = _layer_model(c, np.ascontiguousarray(w), {**c.attrs, "group": v})
    return out


def _latency_key(c: _Candidate, provider: str, threads: int | None, form: str, option: tuple[str, int]) -> str:
    attrs = {k: v for k, v in sorted(c.attrs.items())}
    kind, value = option
    return json.dumps([provider, threads, list(c.input_shape), list(c.weight.shape), c.bias is not None, attrs,
                       kind, form if kind == "rank" else "", value], default=str)


def _measure(cands: Sequence[_Candidate], form: str, provider: str, threads: int | None,
             cache: LatencyCache, iters: int) -> dict[str, dict[tuple[str, int], float]]:
    """Candidate -> option (:data:`KEEP` first) -> seconds, through the cache: keep's fastest run, and each option
    that time divided by its median speed-up over keep in interleaved rounds."""
    from .bench import BenchConfig, bench

    out: dict[str, dict[tuple[str, int], float]] = {}
    for c in cands:
        keys = {o: _latency_key(c, provider, threads, form, o) for o in [KEEP, *c.options]}
        if any(cache.get(k) is None for k in keys.values()):
            models = _option_models(c, form)
            values = list(keys)  # keep first: the reference of the speed-ups
            cfg = BenchConfig(providers=(provider,), iters=iters, warmup=3, threads=threads)
            report = bench([models[v] for v in values], cfg, names=[f"{c.name}:{k}{v}" for k, v in values])
            results = report.runs[0].models
            # A shared machine slows runs at random: the fastest run is the steadiest absolute figure, and each
            # option is placed against it by its median per-round ratio to keep (interleaved, so drift cancels).
            keep_s = results[0].timing.min_s
            cache.put(keys[KEEP], keep_s)
            for v, res in zip(values[1:], results[1:]):
                ratio = res.speedup.median if res.speedup is not None else keep_s / res.timing.min_s
                cache.put(keys[v], keep_s / ratio)
        out[c.name] = {v: cache.get(k) for v, k in keys.items()}  # type: ignore[misc]
    cache.save()
    return out


def _bench_pair(original: onnx.ModelProto, rewritten: onnx.ModelProto | None, calib: CalibrationSet,
                provider: str, threads: int | None, iters: int) -> tuple[float, float | None]:
    """(fastest run of the original in seconds, median speed-up of ``rewritten``) on the first calibration chunk."""
    from .bench import BenchConfig, bench

    _, feeds = next(calib.chunks())
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "inputs.npz")
        np.savez(path, **feeds)
        cfg = BenchConfig(providers=(provider,), iters=iters, warmup=3, threads=threads, inputs=path)
        models = [original] if rewritten is None else [original, rewritten]
        report = bench(models, cfg, names=["original", "rewritten"][: len(models)])
    run = report.runs[0]
    speed = run.models[1].speedup.median if rewritten is not None and run.models[1].speedup else None
    return run.models[0].timing.min_s, speed  # the fastest run, as for the layers (see _measure)


# --------------------------------------------------------------------------------------------------------------
# Build


def _build(model: onnx.ModelProto, layers: Sequence[LayerOptions], cands: Sequence[_Candidate],
           skipped: Mapping[str, LayerChange], form: str, input_shapes: Mapping[str, Sequence[int]] | None,
           batch: int | None) -> tuple[PassResult, onnx.ModelProto | None]:
    """Apply the chosen options: one pass per distinct rank, then one per distinct G, each restricted to its
    layers by name; returns the result and, when both kinds were applied, the refit's channel-order reference.

    The shuffle pass runs last because it may reorder the channels of any dense conv next to a grouped one (a
    pointwise stage included) and must see the final graph to do so consistently; its masked reference is then
    taken on the separable model, which the result computes exactly up to channel orders. A later shuffle pass
    sees weights an earlier one permuted (folded orders), so its channel groups are mapped back to the separable
    model's channels before masking (:func:`_in_base_channels`).
    """
    by_option: dict[tuple[str, int], list[str]] = {}
    for lay in layers:
        o = lay.options[lay.chosen]
        if o.kind != "keep":
            by_option.setdefault((o.kind, o.value), []).append(lay.name)
    current = model
    changes: dict[str, LayerChange] = {}
    separable_model = model
    grouped: list[LayerChange] = []
    for (kind, value), names in sorted(by_option.items(), key=lambda kv: (kv[0][0] != "rank", kv[0][1])):
        only = NodeFilter(include=[f"^{re.escape(n)}$" for n in names])
        if kind == "rank":
            from .passes.ranks import RankPolicy
            from .passes.separable import separate

            res = separate(current, RankPolicy("rank", value), form=form, force=True, node_filter=only,
                           input_shapes=input_shapes, batch=batch)
            separable_model = res.model
        else:
            from .passes.shuffle import group_shuffle

            res = group_shuffle(current, groups=value, node_filter=only, force=True, input_shapes=input_shapes)
            grouped.extend(_in_base_channels(c, current, separable_model) for c in res.rewritten)
        changes.update({c.name: c for c in res.rewritten})
        current = res.model
    if current is model:
        current = onnx.ModelProto()
        current.CopyFrom(model)
    out: list[LayerChange] = []
    for lay, c in zip(layers, cands):
        o = lay.options[lay.chosen]
        ch = changes.get(lay.name)
        if ch is None:
            ch = LayerChange(lay.name, "Conv", False, "kept by the plan (its options cost more error than they "
                             "save time)", params_before=c.params, macs_before=c.macs)
        ch.details["plan"] = f"{o.label} {lay.keep.latency_s * 1e6:.0f}->{o.latency_s * 1e6:.0f}us err={o.error:.3g}"
        out.append(ch)
    out.extend(skipped.values())
    kinds = {kind for kind, _ in by_option}
    pass_name = "mixed" if len(kinds) == 2 else "shuffle" if kinds == {"groups"} else "separable"
    reference = None
    if grouped:
        from .passes.shuffle import masked_reference

        reference = masked_reference(separable_model, PassResult(current, grouped, "shuffle", {}))
    return PassResult(current, out, pass_name, {}), reference


def _in_base_channels(change: LayerChange, seen: onnx.ModelProto, base: onnx.ModelProto) -> LayerChange:
    """``change`` (of a shuffle pass run on ``seen``) with ``in_groups``/``out_groups`` indexed by ``base``'s
    channels: ``seen`` holds the layer's ``base`` weight with its axes permuted, and each channel is found by
    its sorted values (invariant to the other axis's permutation). Channels with equal values are
    interchangeable for masking only when they are zero, which is the case that occurs (dead channels);
    otherwise the groups are left as they are and the refit reports the layer as unmatched."""
    w_seen, w_base = (_weight_of(m, change.name) for m in (seen, base))
    if w_seen is None or w_base is None or w_seen.shape != w_base.shape or "in_groups" not in change.details:
        return change
    out = replace(change, details=dict(change.details))
    for axis, key in ((1, "in_groups"), (0, "out_groups")):
        perm = _axis_permutation(w_seen, w_base, axis)
        if perm is None:
            return change
        labels = np.empty(len(perm), dtype=np.int64)
        labels[perm] = np.asarray(change.details[key])  # seen channel j is base channel perm[j]
        out.details[key] = labels.tolist()
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


def _saved(layers: Sequence[LayerOptions]) -> float:
    """Seconds the chosen options save, as timed layer by layer."""
    return sum(lay.keep.latency_s - lay.options[lay.chosen].latency_s for lay in layers)


# --------------------------------------------------------------------------------------------------------------
# Entry points


def plan_rewrite(
    model: onnx.ModelProto,
    calibration: CalibrationSet,
    *,
    target_speedup: float,
    provider: str = "cpu",
    mode: str = "separable",
    form: str | None = None,
    groups: Sequence[int] | None = None,
    node_filter: NodeFilter | None = None,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    batch: int | None = None,
    threads: int | None = None,
    positions: int = 2048,
    layer_iters: int = 20,
    model_iters: int = 20,
    rounds: int = 3,
    tolerance: float = 0.03,
    cache: LatencyCache | None = None,
    do_refit: bool = True,
    refit_kernels: bool = True,
    seed: int = 0,
    refit_aware: bool = True,
) -> tuple[PassResult, PlanReport]:
    """Choose per layer keep / rank / G to reach ``target_speedup`` on ``provider`` with the least error.

    Args:
        model: the original model (weights loaded); not modified.
        calibration: inputs from :func:`~onnxconv.calibrate.load_calibration`; they give the errors, the layer
            input shapes and the inputs the whole model is timed on (the first chunk).
        target_speedup: S > 1, the wanted latency ratio original / rewritten.
        provider: cpu / cuda / tensorrt (:func:`onnxconv.bench.resolve_provider`).
        mode: separable (options: ranks), shuffle (options: ``groups``, default :data:`GROUP_CHOICES`) or mixed
            (both, per layer: keep, a rank or a G in the same model).
        form: the separable graph form (default: the pass's).
        positions: output positions per layer for the errors.
        layer_iters, model_iters: timed runs per option and per whole-model comparison.
        rounds: plan-measure rounds at most (see the module docstring); tolerance: accepted shortfall (a plan
            more than 3 tolerances above the target is re-planned too: the overshoot costs error).
        cache: latency cache (a fresh in-memory one by default).
        do_refit: refit the chosen layers on the calibration set.
        refit_kernels: with ``do_refit``, refit separable layers' depthwise kernels too (``calibrate.refit``'s
            ``depthwise``).
        refit_aware: rank options by their estimated error after the per-layer refit (:func:`_option_errors`),
            else by the weight-only error.

    Returns:
        The pass result (per-layer ``details["plan"]``: chosen option, layer time before -> after, error) and the
        :class:`PlanReport`; ``result.options["plan"]`` holds the report's figures and ``notes`` a summary line.

    Raises:
        OptionError: S <= 1, a bad mode or provider, or a target no option set can reach.
    """
    from .bench import resolve_provider

    if not (target_speedup > 1 and math.isfinite(target_speedup)):
        raise OptionError(f"--target-speedup {target_speedup}: must be a number above 1")
    if mode not in ("separable", "shuffle", "mixed"):
        raise OptionError(f"mode '{mode}': choose separable, shuffle or mixed")
    from .passes.separable import DEFAULT_FORM

    form = form or DEFAULT_FORM
    groups = tuple(groups or GROUP_CHOICES)
    chain = resolve_provider(provider).chain
    cache = cache or LatencyCache()
    cands, skipped = _candidates(model, mode, form, groups, node_filter, input_shapes, batch)
    if not cands:
        raise OptionError(f"--target-speedup: no layer of the model can be rewritten in {mode} mode")
    _option_errors(model, cands, calibration, positions, seed, chain, threads, refit_aware=refit_aware)
    times = _measure(cands, form, provider, threads, cache, layer_iters)
    layers = [
        LayerOptions(c.name, [Option("keep", 0, times[c.name][KEEP], 0.0)]
                     + [Option(kind, v, times[c.name][kind, v], c.errors[kind, v]) for kind, v in c.options])
        for c in cands
    ]
    model_s, _ = _bench_pair(model, None, calibration, provider, threads, model_iters)
    report = PlanReport(target_speedup, provider, model_s, 0.0, None, layers=layers)
    scale, fastest = 1.0, False
    best: tuple[float, PassResult, float, list[int], float, onnx.ModelProto | None] | None = None
    goal = target_speedup * (1 - tolerance)
    for _ in range(max(1, rounds)):
        try:
            predicted = choose(layers, model_s, target_speedup, scale=scale)
        except OptionError:
            if fastest or (best is not None and best[0] >= goal):
                break  # out of reach with the measured scale, and a plan that reached the goal is kept
            # Layer timings alone say no; measure the fastest plan before believing them.
            for lay in layers:
                lay.chosen = int(np.argmin([o.latency_s for o in lay.options]))
            fastest = True
            predicted = model_s / max(model_s - scale * _saved(layers), 1e-9 * model_s)
        result, reference = _build(model, layers, cands, skipped, form, input_shapes, batch)
        _, measured = _bench_pair(model, result.model, calibration, provider, threads, model_iters)
        got = measured or 0.0
        cost = sum(lay.options[lay.chosen].error ** 2 for lay in layers)
        report.rounds.append({"scale": scale, "predicted": predicted, "measured": got, "cost": cost})
        # Best: a plan that reaches the goal with the least error; failing that, the fastest measured.
        if best is None or (got >= goal and (best[0] < goal or cost < best[4])) or (best[0] < goal and got > best[0]):
            best = (got, result, predicted, [lay.chosen for lay in layers], cost, reference)
        if fastest or _saved(layers) <= 0 or goal <= got <= target_speedup * (1 + 3 * tolerance):
            break
        # The whole model saved (1 - 1/got) of its time where the layers alone promised more (or less): rescale
        # the layer savings by what was measured and plan again (an overshoot costs error for nothing).
        scale = max(model_s * (1.0 - 1.0 / max(got, 1e-9)), 0.05 * scale * _saved(layers)) / _saved(layers)
    assert best is not None
    if fastest and best[0] < goal:
        raise OptionError(f"--target-speedup {target_speedup:g}: the largest measured speed-up is {best[0]:.2f}x "
                          f"(every candidate layer at its fastest option)")
    report.measured, result, report.predicted, picks, _, report.reference = best
    for lay, pick in zip(layers, picks):
        lay.chosen = pick
    if do_refit:
        result = refit(model, result, calibration, providers=chain, threads=threads, reference=report.reference,
                       depthwise=refit_kernels)
    note = (f"plan: target {target_speedup:g}x on {provider}; predicted {report.predicted:.2f}x from layer "
            f"timings, measured {report.measured:.2f}x end to end (median of {model_iters} interleaved rounds)")
    result.options = {**result.options, "plan": report.to_dict(),
                      "notes": [*result.options.get("notes", []), note]}
    return result, report


def plan_from_file(model: onnx.ModelProto, calibration: str | os.PathLike[str], **kwargs: Any) -> PassResult:
    """:func:`plan_rewrite` with calibration inputs read from a file or folder; returns the pass result."""
    return plan_rewrite(model, load_calibration(calibration, model), **kwargs)[0]

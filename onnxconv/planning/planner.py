"""Hardware-aware planning: per layer keep, depthwise rank r or grouped G, to reach a measured speed-up.

``--budget`` counts MACs, but a rewrite's worth depends on the provider, threads and batch (docs/conv-math.md,
"onnxruntime facts": a rank-4 rewrite of ResNet-18 is *slower* on a 16-thread CPU). :func:`plan_rewrite` measures
instead:

1. **Candidates and options.** The layers the pass would rewrite (a dry run of the pass with the user's
   filter), each with its options: *keep*, every depthwise rank ``r`` in :data:`RANK_CHOICES` that saves MACs
   (``mode="separable"``), every ``G`` in ``groups`` that divides its channels (``"shuffle"``), or both
   (``"mixed"``: one layer may become depthwise rank r and the next grouped G).
2. **Error** of each option on the calibration set: one onnxruntime pass of the original model collects each
   candidate's input patches at sampled output positions (:mod:`.estimate`); the
   option's error is the relative output error ``||P (W - W_o)^T|| / ||P W^T + b||`` of the layer on them,
   with ``W_o`` the rank-r (separable) or block-diagonal (grouped) weight. Rank errors for all ``r`` come from one
   projection: with the SVD of every input channel's slice, the output splits into terms ``Y_t`` and the rank-r
   error is ``||sum_{t >= r} Y_t||``. This is the weight-only error. The refit afterwards lowers it, by very
   different amounts per layer and option, so by default the choice uses the error *after the per-layer
   refit*, estimated from normal equations accumulated on the same patches.
3. **Latency** of each option: the layer alone (its real input shape, attributes and the rewrite's exact
   graph form; a plain grouped conv for G) timed with :func:`onnxconv.bench.bench` on the provider, all options
   of a layer in one interleaved run, cached per (provider, threads, shapes, attributes, option) in a
   :class:`LatencyCache` (optionally a JSON file) so that layers of the same shape are timed once.
4. **Choice.** With ``T`` the measured latency of the whole model and ``d_o = t_keep - t_o`` the time an option
   saves, pick one option per layer minimising ``sum e_o^2`` subject to ``sum d_o >= T (1 - 1/S)`` (a
   multiple-choice knapsack, solved exactly by dynamic programming over :data:`BUCKETS` time buckets, rounding
   savings down). Options slower than keeping the layer are dropped. Predicted speed-up: ``T / (T - sum d_o)``.
5. **Search on measurements.** Layers timed alone do not add up exactly (fusions, layout conversions, caches:
   on a YOLOv8n they under-predicted the savings twofold), so every plan is *measured*: the rewritten model is
   timed against the original with the bench code (interleaved rounds, the calibration inputs), refitted
   (:func:`onnxconv.calibration.refit`) and run on the held-out calibration samples
   (:func:`onnxconv.calibration.held_out_feeds`), giving one point (measured speed-up, end-to-end error, MACs)
   of the frontier (:class:`PlanPoint`). The end-to-end error is judged by :class:`~.judge.Judge` over all
   held-out samples, against the original run by onnxruntime: the worst output's error, each output's worst
   channel at its own scale included (:attr:`onnxconv.compare.Agreement.error`; the whole-tensor figure is kept
   beside it), and the user's task metric when ``--metric`` gives one.

   *Target S* (``target_speedup``): a plan *reaches* S when it measures at least ``S (1 - tolerance)``; one
   within ``S (1 +- tolerance)`` ends the search. Otherwise the layer savings are rescaled by what the last
   plan measured (``scale = measured saving / layer-timed saving``) and the plan is made again, bracketed by the
   layer-timed savings of the plans measured too slow and too fast (a rescaled step outside the bracket, or one
   that repeats a measured plan, bisects it). A target the layer timings call unreachable is checked by measuring
   the plan with every layer at its fastest option, and the search continues from there on the measured scale.
   Of the measured plans that reach S the least end-to-end error wins; the fastest is returned only when nothing
   slower reaches S (when the rounds run out short of S, the fastest plan is measured before giving up), and when
   even it misses, the target is refused with its figure.

   *Error budget E* (``max_output_error``) and/or *metric floor M* (``judge.min_metric``): the fastest measured
   plan whose end-to-end error is at most E and whose metric is at least M: the fastest plan first, then regula
   falsi on the plans' estimated errors between the original and the plans measured within and over the bounds
   (:func:`_search_error`, on :meth:`~.judge.Judge.badness`, which is 1 at the bounds). A plan measuring under ``1 + tolerance`` is no faster
   than the original within the timing noise: when that is the best within E, one line says so instead. With S
   too, a plan must satisfy every bound, or one line says which cannot hold and what the closest plans measure;
   of the plans that reach S and meet the bounds, the best metric (when ``--metric`` is given) or else the least
   error wins. A
   refused plan raises :class:`PlanRefused`, which carries the report of what the search measured.

   *int8* (``precision="int8"``): the model ships quantized, and there the picture flips (onnxruntime CPU, QDQ
   uint8/int8, one thread, 64 channels at 52x52: a dense 3x3 conv runs 2.6x faster in int8 than in fp32, a
   depthwise 3x3 0.59x and a G=4 grouped conv 0.64x as fast, so a rank-2 rewrite that saves 2.75x in fp32 saves
   nothing in int8). Every latency is therefore taken on quantized models
   (:class:`~onnxconv.planning.latency.Quantizer`: each layer alone, and each plan after its refit, calibrated on
   the samples the refit fits on), speed-ups are over the quantized original, errors against the fp32 original,
   and the quantized rewrite is what is returned. The quantized original is also timed against the fp32 one, so
   every speed-up is given over fp32 too (the product of the two interleaved ratios).

   A plan is built by one separable pass per chosen rank, then one shuffle pass per chosen G
   on its result (each restricted to its layers by name); when grouped layers exist, the model the rewrite
   computes exactly up to channel orders is kept as the refit's ``reference`` (:class:`PlanReport`).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

import numpy as np
import onnx

from .. import compare
from ..calibration import CalibrationSet, held_out_feeds, load_calibration, refit
from ..errors import OptionError
from ..passes.common import NodeFilter, PassResult
from ..passes.separable import DEFAULT_FORM
from .. import progress
from ..providers import resolve_provider
from ..stats import analyze
from ..tables import format_count
from .build import build_plan
from .candidates import GROUP_CHOICES, find_candidates
from .choose import BUCKETS, KEEP, LayerOptions, Option, choose, saved
from .estimate import option_errors
from .judge import Judge, Verdict, concat_runs
from .latency import LatencyCache, Quantizer, bench_pair, measure_latencies

__all__ = ["PlanPoint", "PlanReport", "PlanRefused", "plan_rewrite", "plan_from_file", "frontier_rows",
           "concat_runs"]


@dataclass
class PlanPoint:
    """One plan the search measured: a point of the frontier.

    ``predicted`` is the speed-up the layer timings alone promise (``T / (T - sum d_o)``, unscaled),
    ``measured`` the end-to-end median speed-up, ``error`` the worst output's error on the held-out samples
    (worst channel included; after the refit when the plan refits), ``whole_error`` its whole-tensor relative
    error, ``worst_channel`` where the error sits (output, axis, index, rel_error), ``metric`` the task metric
    (None without ``--metric``), ``cost`` the estimated ``sum e_o^2`` the choice minimised,
    ``timing_ratio`` the measured saving over the layer-timed saving (1: layer timings add up; 2: the model
    saved twice what they promised), ``how`` why the plan was made (target, rescaled, bisect, fastest, budget).
    """

    round: int
    how: str
    scale: float
    predicted: float
    measured: float
    error: float
    cost: float
    macs: int
    rewritten: int
    timing_ratio: float
    picks: list[int] = field(default_factory=list)
    whole_error: float = 0.0
    metric: float | None = None
    worst_channel: dict[str, Any] | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class PlanReport:
    """What the planner decided and how the prediction compared with the measurement."""

    target: float | None
    provider: str
    model_s: float
    predicted: float
    measured: float | None
    rounds: list[dict[str, Any]] = field(default_factory=list)
    layers: list[LayerOptions] = field(default_factory=list)
    #: What the rewrite computes exactly up to channel orders when the plan mixes ranks and groups: pass it to
    #: :func:`onnxconv.calibration.refit` as ``reference`` (None otherwise).
    reference: onnx.ModelProto | None = field(default=None, repr=False)
    max_output_error: float | None = None
    #: End-to-end error of the chosen plan (worst output, worst channel included, held-out samples), its
    #: whole-tensor error, each output's worst channel, and which inputs gave them.
    error: float | None = None
    whole_error: float | None = None
    worst_channels: dict[str, Any] = field(default_factory=dict)
    error_inputs: str = ""
    #: ``--metric``: its spec, the floor asked (``min``), the chosen plan's value, its support and note.
    metric: dict[str, Any] | None = None
    #: int8: the quantized original's speed-up over the fp32 original (every plan's speed-up over fp32 is its
    #: ``measured`` times this) and its metric.
    quantized_speedup: float | None = None
    quantized_original_metric: float | None = None
    #: Index into ``rounds`` of the chosen plan; conv MACs of the original.
    chosen_round: int | None = None
    macs_before: int = 0
    #: fp32, or the int8 quantization every latency and error was taken on (speed-ups over the quantized original).
    precision: str = "fp32"
    #: int8: the quantized original's error against the fp32 original (the floor every plan's error sits on).
    quantized_original_error: float | None = None
    #: The model each round measured (refitted; int8: quantized), in round order: to judge every point of the
    #: frontier on a task metric, not only the chosen one.
    round_models: list[onnx.ModelProto] = field(default_factory=list, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready figures (without the models); ``rounds`` is the frontier."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("layers", "reference", "round_models")}
        out["rounds"] = [dict(r) for r in self.rounds]
        out["layers"] = [{"name": lay.name, "chosen": lay.options[lay.chosen].label,
                          "options": [asdict(o) for o in lay.options]} for lay in self.layers]
        return out


class PlanRefused(OptionError):
    """No plan meets what was asked (one line, with the closest measured figures); ``report`` holds every plan
    the search measured (its ``rounds``), so a caller can still show or keep the frontier."""

    def __init__(self, message: str, report: PlanReport) -> None:
        super().__init__(message)
        self.report = report


class _Measurer:
    """Builds, times, refits and evaluates plans, once per distinct choice (the search may come back to one).

    The original's outputs on the error inputs are computed once; each plan costs one build, one interleaved
    timing against the original, one refit and one run of the rewrite on the error inputs.
    """

    def __init__(self, model: onnx.ModelProto, layers: Sequence[LayerOptions], cands: Sequence[Any],
                 skipped: Mapping[str, Any], form: str, input_shapes: Mapping[str, Sequence[int]] | None,
                 batch: int | None, calibration: CalibrationSet, provider: str, chain: Sequence[str],
                 threads: int | None, iters: int, do_refit: bool, refit_kernels: bool, seed: int,
                 model_s: float, base: onnx.ModelProto | None = None, bench_cal: CalibrationSet | None = None,
                 quantizer: Quantizer | None = None, judge: Judge | None = None) -> None:
        self.model, self.layers, self.cands, self.skipped = model, layers, cands, skipped
        self.form, self.input_shapes, self.batch = form, input_shapes, batch
        self.calibration, self.provider, self.chain, self.threads = calibration, provider, chain, threads
        self.iters, self.do_refit, self.refit_kernels, self.seed = iters, do_refit, refit_kernels, seed
        self.model_s = model_s
        self.judge = judge or Judge()
        # int8: plans are timed against the quantized original (``base``) on ``bench_cal``'s first chunk (the
        # quantized models' static batch), and every plan is quantized after its refit.
        self.base, self.bench_cal, self.quantizer = base or model, bench_cal or calibration, quantizer
        self.points: list[PlanPoint] = []
        self.models: list[onnx.ModelProto] = []  # each point's model, in round order
        self.verdicts: list[Verdict] = []  # each point's verdict, in round order
        self.rounds = 1  # the most plans the search measures (set by plan_rewrite), for the progress line
        self._spent: list[float] = []  # seconds each measured plan took
        self._macs_before: int | None = None
        #: Conv MACs of the original, as the measured plans' MACs count them (set by :meth:`measure`).
        self.macs_before = 0
        self.built: dict[tuple[int, ...], tuple[PassResult, onnx.ModelProto | None]] = {}
        feeds = held_out_feeds(calibration, model, seed=seed)
        if feeds:
            self.error_inputs = f"{sum(_samples(f) for f in feeds)} held-out calibration samples"
        else:
            # Too few samples to hold any out: the fitted samples are still closer to real inputs than random ones.
            feeds = [f for _, f in calibration.chunks()]
            self.error_inputs = (f"the {calibration.size} calibration samples themselves (too few to hold any "
                                 "out: the error is optimistic)")
        if quantizer is not None:
            step = self.bench_cal.chunk  # the quantized models take exactly this many samples per run
            feeds = [{k: v[i:i + step] for k, v in f.items()} for f in feeds for i in range(0, _samples(f), step)]
            feeds = [f for f in feeds if _samples(f) == step]
        self.feeds = feeds
        ref = compare.session(model, list(chain), threads)
        self.ref_runs = [compare.run_model(ref, f) for f in feeds]
        #: int8: the quantized original judged against the fp32 original (what quantization alone costs).
        self.base_verdict = self.verdict_of(self.base) if quantizer is not None else None
        self.base_error = self.base_verdict.error if self.base_verdict is not None else 0.0

    def verdict_of(self, model: onnx.ModelProto) -> Verdict:
        """``model``'s outputs judged against the fp32 original's on the error inputs."""
        sess = compare.session(model, list(self.chain), self.threads)
        return self.judge.verdict(self.ref_runs, [compare.run_model(sess, f) for f in self.feeds])

    def macs(self, result: PassResult) -> tuple[int, int]:
        """Conv MACs (before, after) of a built plan: the pass's own counts, or, when they miss layers (a spatial
        dim the model leaves symbolic and the user did not set: on ppocr_det all but 111,744 of 3.04G MACs), both
        models counted by :func:`onnxconv.stats.analyze` at the calibration samples' shape, batch 1."""
        if all(c.macs_before is not None for c in result.layers):
            tot = result.totals()
            return int(tot["macs_before"]), int(tot["macs_after"])
        shapes = {k: [self.calibration.batch or 1, *v.shape[1:]] for k, v in self.calibration.arrays.items()}
        if self._macs_before is None:
            self._macs_before = int(analyze(self.model, input_shapes=shapes).totals["macs"])
        return self._macs_before, int(analyze(result.model, input_shapes=shapes).totals["macs"])

    def seen(self) -> set[tuple[int, ...]]:
        return {tuple(p.picks) for p in self.points}

    def measure(self, how: str, scale: float) -> PlanPoint:
        """Measure the plan ``self.layers`` now choose; returns (and records) its point."""
        picks = tuple(lay.chosen for lay in self.layers)
        started = time.perf_counter()
        k = len(self.points) + 1
        left = (sum(self._spent) / len(self._spent) * (max(self.rounds, k) - k + 1)) if self._spent else None
        progress.report(f"plan {k} of at most {max(self.rounds, k)}: measuring the {how} plan "
               f"({sum(1 for p in picks if p)} of {len(picks)} layers rewritten)"
               + (f", {progress.eta_text(left)}" if left is not None else ""), k - 1, max(self.rounds, k))
        layer_saved = saved(self.layers)
        predicted = self.model_s / max(self.model_s - layer_saved, 1e-9 * self.model_s)
        result, reference = build_plan(self.model, self.layers, self.cands, self.skipped, self.form,
                                       self.input_shapes, self.batch)
        if self.do_refit and result.rewritten:
            result = refit(self.model, result, self.calibration, providers=self.chain, threads=self.threads,
                           reference=reference, depthwise=self.refit_kernels, seed=self.seed)
        if self.quantizer is not None:  # what ships: the refitted rewrite, quantized; errors vs the fp32 original
            result = replace(result, model=self.quantizer.model(result.model),
                             options={**result.options, "precision": self.quantizer.tag})
        _, got = bench_pair(self.base, result.model, self.bench_cal, self.provider, self.threads, self.iters)
        measured = got or 0.0
        verdict = self.verdict_of(result.model)
        self.built[picks] = (result, reference)
        measured_saving = self.model_s * (1.0 - 1.0 / max(measured, 1e-9))
        self.macs_before, macs_after = self.macs(result)
        point = PlanPoint(
            round=len(self.points), how=how, scale=scale, predicted=predicted, measured=measured,
            error=verdict.error, cost=sum(lay.options[lay.chosen].error ** 2 for lay in self.layers),
            macs=macs_after, rewritten=len(result.rewritten),
            timing_ratio=measured_saving / layer_saved if layer_saved > 0 else 0.0, picks=list(picks),
            whole_error=verdict.whole_error, metric=verdict.metric.value if verdict.metric else None,
            worst_channel=verdict.worst_channel)
        self.verdicts.append(verdict)
        self.points.append(point)
        self.models.append(result.model)
        self._spent.append(time.perf_counter() - started)
        return point


def _samples(feeds: Mapping[str, np.ndarray]) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


def _set(layers: Sequence[LayerOptions], picks: Sequence[int]) -> None:
    for lay, pick in zip(layers, picks):
        lay.chosen = pick


def _fastest(layers: Sequence[LayerOptions]) -> None:
    for lay in layers:
        lay.chosen = int(np.argmin([o.latency_s for o in lay.options]))


def _choose_saving(layers: Sequence[LayerOptions], model_s: float, need: float) -> bool:
    """Choose the least-error options that save at least ``need`` seconds as timed layer by layer (False when no
    choice does). :func:`choose` takes the need as a target and a scale: ``model_s (1 - 1/2) / scale = need``.

    The knapsack rounds each saving down to ``need / BUCKETS``, losing up to one bucket per layer: asking for that
    much less keeps a bisection step that lands exactly on a plan's saving from being called unreachable."""
    need -= need * len(layers) / BUCKETS
    if need <= 0:
        for lay in layers:
            lay.chosen = 0
        return True
    try:
        choose(layers, model_s, 2.0, scale=0.5 * model_s / need)
    except OptionError:
        return False
    return True


def _search_target(m: _Measurer, target: float, tolerance: float, rounds: int) -> None:
    """Measure plans until one lands within ``target (1 +- tolerance)`` (see the module docstring)."""
    layers, model_s = m.layers, m.model_s
    goal, ceiling = target * (1 - tolerance), target * (1 + tolerance)
    need_model = model_s * (1.0 - 1.0 / target)  # seconds the whole model must save
    _fastest(layers)
    most = saved(layers)  # the largest layer-timed saving any plan has
    slow, fast = 0.0, math.inf  # bracket of layer-timed savings: measured too slow at <= slow, too fast at >= fast
    scale, how = 1.0, "target"
    fastest_seen = False
    for _ in range(max(1, rounds)):
        need = need_model / scale
        if how != "fastest" and not (slow < need < fast):
            need, how = 0.5 * (slow + min(fast, most)), "bisect"
        if need > most or not _choose_saving(layers, model_s, need):
            if fastest_seen:
                break  # out of reach on the measured scale: the fastest plan was measured already
            _fastest(layers)  # the layer timings say no: measure the fastest plan before believing them
            how = "fastest"
        if tuple(lay.chosen for lay in layers) in m.seen():
            # The step lands on a plan measured already: bisect the bracket once, else the search is done.
            if how == "bisect" or not _choose_saving(layers, model_s, 0.5 * (slow + min(fast, most))) \
                    or tuple(lay.chosen for lay in layers) in m.seen():
                break
            how = "bisect"
        p = m.measure(how, scale)
        fastest_seen = fastest_seen or how == "fastest" or saved(layers) >= most
        layer_saved = saved(layers)
        if goal <= p.measured <= ceiling:
            break
        if p.measured < goal:
            slow = max(slow, layer_saved)
            if fastest_seen and layer_saved >= most:
                break  # the fastest plan misses: nothing reaches the target
        else:
            fast = min(fast, layer_saved)
        if layer_saved <= 0:
            break
        # Rescale the layer savings by what the whole model saved with this plan (an overshoot costs error for
        # nothing, a shortfall misses the target) and plan again on the measured curve.
        measured_saving = model_s * (1.0 - 1.0 / max(p.measured, 1e-9))
        scale = max(measured_saving, 0.05 * scale * layer_saved) / layer_saved
        how = "rescaled"


def _estimated(layers: Sequence[LayerOptions]) -> float:
    """The chosen plan's estimated error ``sqrt(sum e_o^2)`` (the per-layer errors the choice minimises)."""
    return math.sqrt(sum(lay.options[lay.chosen].error ** 2 for lay in layers))


def _choose_within(layers: Sequence[LayerOptions], model_s: float, most: float, limit: float) -> bool:
    """Choose the plan with the largest layer-timed saving whose estimated error is at most ``limit`` (False when
    no plan that saves time is). The least estimated error for a saving ``need`` (:func:`_choose_saving`) grows
    with ``need``, so a bisection on ``need`` finds the largest feasible one; 24 halvings of ``[0, most]`` put it
    within 1e-7 of ``most``, each one knapsack of milliseconds."""
    lo, hi, best = 0.0, most, None
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        if _choose_saving(layers, model_s, mid) and _estimated(layers) <= limit:
            lo, best = mid, [lay.chosen for lay in layers]
        else:
            hi = mid
    if best is None or not any(best):
        return False
    _set(layers, best)
    return True


def _search_error(m: _Measurer, max_error: float | None, rounds: int) -> None:
    """The fastest plan within ``max_error`` and the metric floor: the fastest plan first; when it misses, regula
    falsi on the plans' *estimated* errors ``est = sqrt(sum e_o^2)``, between a plan within and one outside.

    The end-to-end error a plan adds grows with its estimated error (in int8 on top of the quantized original's
    own error ``q``, the two adding like independent noise: the search works on ``excess = sqrt(error^2 - q^2)``),
    and its metric falls; :meth:`~.judge.Judge.badness` folds both into one figure that is 1 at the bounds.
    The bracket starts at the original (``est`` 0; badness 0, or the quantized original's) and the fastest plan;
    the next plan is the one saving most (layer-timed) with ``est`` at most where the line between the bracket's
    ends crosses badness 1, kept at
    least a tenth of the bracket from either end; after the same end moved twice in a row it bisects instead
    (the Illinois remedy: near the fastest plan the error flattens, and the line kept landing just over E). A
    step onto a plan measured already bisects; when no plan saving time fits under a limit the smallest plan
    (the one least-error option that saves time) is measured. Tried and dropped: interpolating on the
    layer-timed saving (on ppocr_det, where a small saving already costs most of the error, every plan landed
    over E = 0.1 though a one-layer plan at 0.04 existed) and rescaling the estimated errors by the latest
    plan alone (one-sided from above: on ddddocr_det four plans at 0.100-0.108 for E = 0.1)."""
    layers, model_s, judge = m.layers, m.model_s, m.judge
    _fastest(layers)
    most = saved(layers)
    p = m.measure("fastest", 1.0)
    if judge.within(p.error, p.metric, max_error):
        return
    q = m.base_error

    def bad(point: PlanPoint) -> float:
        return judge.badness(point.error, point.metric, max_error, q)

    base = m.base_verdict
    goal = 1.0
    lo_x = judge.badness(q, base.metric.value if base and base.metric else None, max_error, q) if base else 0.0
    lo, hi, hi_x = 0.0, _estimated(layers), min(bad(p), 1e6)
    moved: list[str] = []
    for _ in range(max(1, rounds) - 1):
        if hi <= 0 or hi - lo <= 0.02 * hi:
            break
        frac = (goal - lo_x) / (hi_x - lo_x) if hi_x > lo_x else 0.5
        if moved[-2:] in (["lo", "lo"], ["hi", "hi"]):
            frac = 0.5
        found = _choose_within(layers, model_s, most, lo + min(max(frac, 0.1), 0.9) * (hi - lo))
        if found and tuple(lay.chosen for lay in layers) in m.seen():
            found = _choose_within(layers, model_s, most, 0.5 * (lo + hi))
        if not found:  # nothing saves time within the limit: the smallest plan, unless measured already
            found = _choose_saving(layers, model_s, 1e-6 * most)
        if not found or tuple(lay.chosen for lay in layers) in m.seen():
            break
        est = _estimated(layers)
        p = m.measure("budget", 1.0)
        if judge.within(p.error, p.metric, max_error):
            lo, lo_x = max(lo, est), bad(p)
            moved.append("lo")
        else:
            hi, hi_x = min(hi, est), min(bad(p), 1e6)  # an infinite badness (budget 0) still orders the bracket
            moved.append("hi")


#: A plan may measure this much slower than it really runs (timing noise on a shared machine): the quick bound
#: refuses a target only when the cheapest plan misses it by more.
QUICK_MARGIN = 1.10


def _relative_macs(c: Any, kind: str, value: int) -> float:
    """An option's MACs over the layer's: rank r of an ``N x K^2`` slice costs ``r (K^2 + N) / (N K^2)``
    (docs/conv-math.md, "Depthwise separable"); G groups cost ``1 / G``."""
    if kind == "groups":
        return 1.0 / value
    n, k2 = int(c.weight.shape[0]), int(np.prod(c.weight.shape[2:]))
    return value * (k2 + n) / (n * k2)


def _quick_bound(model: onnx.ModelProto, cands: Sequence[Any], skipped: Mapping[str, Any], form: str,
                 input_shapes: Mapping[str, Sequence[int]] | None, batch: int | None, target: float,
                 tolerance: float, timing: tuple[Any, ...]) -> None:
    """Refuse, within seconds, a target that even the cheapest plan misses: every candidate layer at its option
    of fewest MACs (rank 1, or the largest G), built without the refit (which changes weights, not the time) and
    timed against the original before any error is estimated. The cheapest plan stands in for the fastest one
    (layer timings are not measured yet); a miss by more than :data:`QUICK_MARGIN` is refused with its figure,
    anything closer goes to the full search.

    ``timing`` is (the model timed against, its calibration chunk, provider, threads, iters, quantizer)."""
    base, bench_cal, provider, threads, iters, quantizer = timing
    layers = []
    for c in cands:
        costs = [_relative_macs(c, kind, value) for kind, value in c.options]
        layers.append(LayerOptions(c.name, [Option("keep", 0, 0.0, 0.0)]
                                   + [Option(kind, v, 0.0, 0.0) for kind, v in c.options],
                                   chosen=1 + int(np.argmin(costs))))
    progress.report(f"timing the cheapest plan ({len(layers)} layer(s) at their fewest MACs) against the target")
    result, _ = build_plan(model, layers, cands, skipped, form, input_shapes, batch)
    rewritten = quantizer.model(result.model) if quantizer is not None else result.model
    _, speed = bench_pair(base, rewritten, bench_cal, provider, threads, iters)
    if speed is not None and speed * QUICK_MARGIN < target * (1 - tolerance):
        over = "the quantized original" if quantizer is not None else "the original"
        raise OptionError(f"--target-speedup {target:g}: out of reach: the cheapest plan (all {len(layers)} "
                          f"candidate layer(s) at their fewest MACs) measures {speed:.2f}x of {over}, before any "
                          "refit")


def _metric_text(p: PlanPoint) -> str:
    return f", metric {p.metric:.3g}" if p.metric is not None else ""


def _pick(points: Sequence[PlanPoint], target: float | None, tolerance: float, max_error: float | None,
          fastest_measured: bool, int8: bool = False, judge: Judge | None = None) -> PlanPoint:
    """The plan to return (see the module docstring), or the one line that says why none can be."""
    judge = judge or Judge()
    floor = judge.min_metric
    within = [p for p in points if judge.within(p.error, p.metric, max_error)]
    bounds = " and ".join(s for s in (f"--max-output-error {max_error:g}" if max_error is not None else "",
                                      f"--min-metric {floor:g}" if floor is not None else "") if s)
    if target is None:
        assert bounds
        if not within:
            if floor is not None and max_error is None:
                top = max(points, key=lambda p: p.metric if p.metric is not None else -math.inf)
                raise OptionError(f"{bounds}: no measured plan reaches it (the best metric measured is "
                                  f"{top.metric if top.metric is not None else float('nan'):.3g}, at "
                                  f"{top.measured:.2f}x with {top.rewritten} layer(s) rewritten)")
            least = min(points, key=lambda p: p.error)
            raise OptionError(f"{bounds}: no measured plan is within it (the least held-out error measured is "
                              f"{least.error:.3g}{_metric_text(least)}, at {least.measured:.2f}x with "
                              f"{least.rewritten} layer(s) rewritten)")
        top = max(within, key=lambda p: p.measured)
        if top.measured < 1 + tolerance:
            # A plan no faster than the original (within the timing tolerance) is not worth shipping: say so, with
            # the plan that comes closest from outside the bounds.
            over = [p for p in points if p not in within]
            closest = min(over, key=lambda p: p.error) if over else None
            word = "over" if floor is None else "outside"
            nearest = (f"; the least error {word} it is {closest.error:.3g}{_metric_text(closest)}, at "
                       f"{closest.measured:.2f}x" if closest else "")
            raise OptionError(f"{bounds}: no measured plan within it is faster than the "
                              f"{'quantized ' if int8 else ''}original (the fastest within it measures "
                              f"{top.measured:.2f}x, error {top.error:.3g}{_metric_text(top)}{nearest})")
        return top
    goal = target * (1 - tolerance)
    reach = [p for p in points if p.measured >= goal]
    if not reach:
        top = max(points, key=lambda p: p.measured)
        if fastest_measured and int8:
            raise OptionError(f"--precision int8: the fastest plan measures {top.measured:.2f}x of the quantized "
                              f"original (--target-speedup {target:g} asked)")
        if fastest_measured:
            raise OptionError(f"--target-speedup {target:g}: the largest measured speed-up is {top.measured:.2f}x "
                              f"(every candidate layer at its fastest option)")
        return top  # not reached (the caller measures the fastest plan before giving up): the fastest measured
    both = [p for p in reach if p in within]
    if both:
        if judge.metric is not None:  # the best metric, then the least error
            return max(both, key=lambda p: (p.metric if p.metric is not None else -math.inf, -p.error))
        return min(both, key=lambda p: p.error)
    least = min(reach, key=lambda p: p.error)
    inside = (f"the fastest measured within it is {max(within, key=lambda p: p.measured).measured:.2f}x" if within
              else "no measured plan is within it")
    if floor is not None:
        top_metric = max(reach, key=lambda p: p.metric if p.metric is not None else -math.inf)
        raise OptionError(f"--target-speedup {target:g} and {bounds} cannot all hold: the plans that reach "
                          f"{target:g}x measure metric {top_metric.metric:.3g} at best and held-out error "
                          f"{least.error:.3g} at least; {inside}")
    raise OptionError(f"--target-speedup {target:g} and --max-output-error {max_error:g} cannot both hold: the "
                      f"plans that reach {target:g}x measure held-out error {least.error:.3g} at least (at "
                      f"{least.measured:.2f}x); {inside}")


def plan_rewrite(
    model: onnx.ModelProto,
    calibration: CalibrationSet,
    *,
    target_speedup: float | None = None,
    max_output_error: float | None = None,
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
    rounds: int = 5,
    tolerance: float = 0.03,
    cache: LatencyCache | None = None,
    do_refit: bool = True,
    refit_kernels: bool = True,
    seed: int = 0,
    refit_aware: bool = True,
    precision: str = "fp32",
    activation_type: str = "uint8",
    weight_type: str = "int8",
    judge: Judge | None = None,
) -> tuple[PassResult, PlanReport]:
    """Choose per layer keep / rank / G to reach ``target_speedup`` on ``provider`` with the least error, or the
    fastest plan within ``max_output_error``, or both.

    Args:
        model: the original model (weights loaded); not modified.
        calibration: inputs from :func:`~onnxconv.calibration.load_calibration`; they give the errors, the layer
            input shapes and the inputs the whole model is timed on (the first chunk); the held-out share
            (:func:`~onnxconv.calibration.held_out_feeds` with ``seed``) gives each plan's end-to-end error.
        target_speedup: S > 1, the wanted latency ratio original / rewritten (None: only the error budget).
        max_output_error: E >= 0, the largest end-to-end relative output error (worst output, worst channel
            included) allowed on the held-out samples (None: no error budget).
        provider: cpu / cuda / tensorrt (:func:`onnxconv.providers.resolve_provider`).
        mode: separable (options: ranks), shuffle (options: ``groups``, default :data:`GROUP_CHOICES`) or mixed
            (both, per layer: keep, a rank or a G in the same model).
        form: the separable graph form (default: the pass's).
        positions: output positions per layer for the errors.
        layer_iters, model_iters: timed runs per option and per whole-model comparison.
        rounds: measured plans at most (see the module docstring); tolerance: how far from S a measured
            speed-up may land, either side.
        cache: latency cache (a fresh in-memory one by default).
        do_refit: refit every measured plan on the calibration set (its error is then the refitted model's).
        refit_kernels: with ``do_refit``, refit separable layers' depthwise kernels too
            (:func:`~onnxconv.calibration.refit`'s ``depthwise``).
        refit_aware: rank options by their estimated error after the per-layer refit
            (:func:`~onnxconv.planning.estimate.option_errors`),
            else by the weight-only error.
        precision: fp32, or int8: every latency (layers alone and whole models) is taken on models quantized by
            :func:`onnxconv.quantize.quantize_static_qdq` (QDQ, ``activation_type``/``weight_type``), calibrated on
            the samples the refit fits on; speed-ups are over the quantized original, errors against the fp32
            original; the returned model is the quantized rewrite.
        judge: how outputs are judged (:class:`~.judge.Judge`): channel axes, the task metric and its floor
            ``min_metric`` (the fastest plan whose metric is at least it; with a target, the best-metric plan
            that reaches it). Default: per-channel error only.

    Returns:
        The pass result (per-layer ``details["plan"]``: chosen option, layer time before -> after, error) and the
        :class:`PlanReport`; ``result.options["plan"]`` holds the report's figures (``rounds``: every measured
        plan, the frontier) and ``notes`` a summary line.

    Raises:
        OptionError: S <= 1, E < 0, neither given, a bad mode or provider, a target no plan reaches, an error
            budget no measured plan meets, or both together not met (one line each, with the closest figures).
    """
    judge = judge or Judge()
    if target_speedup is None and max_output_error is None and judge.min_metric is None:
        raise OptionError("say what the plan must reach: --target-speedup S, --max-output-error E and/or "
                          "--min-metric M")
    if target_speedup is not None and not (target_speedup > 1 and math.isfinite(target_speedup)):
        raise OptionError(f"--target-speedup {target_speedup}: must be a number above 1")
    if max_output_error is not None and not (max_output_error >= 0 and math.isfinite(max_output_error)):
        raise OptionError(f"--max-output-error {max_output_error}: must be a number >= 0")
    if mode not in ("separable", "shuffle", "mixed"):
        raise OptionError(f"mode '{mode}': choose separable, shuffle or mixed")
    if precision not in ("fp32", "int8"):
        raise OptionError(f"--precision {precision}: choose fp32 or int8")
    form = form or DEFAULT_FORM
    groups = tuple(groups or GROUP_CHOICES)
    chain = resolve_provider(provider).chain
    cache = cache or LatencyCache()
    flag = ("--target-speedup" if target_speedup is not None
            else "--max-output-error" if max_output_error is not None else "--min-metric")
    cands, skipped = find_candidates(model, mode, form, groups, node_filter, input_shapes, batch)
    if not cands:
        raise OptionError(f"{flag}: no layer of the model can be rewritten in {mode} mode")
    quantizer, base, bench_cal = None, model, calibration
    if precision == "int8":
        fit, _ = calibration.split(seed)
        step = calibration.batch or 1  # the quantized models get static shapes: one sample (or batch) per run
        quantizer = Quantizer([{k: v[i:i + step] for k, v in fit.arrays.items()} for i in range(0, fit.size, step)],
                              activation_type, weight_type)
        progress.report("quantizing the original (int8 QDQ)")
        base = quantizer.model(model)
        bench_cal = CalibrationSet(calibration.arrays, calibration.source, step, calibration.batch)
    if target_speedup is not None:
        _quick_bound(model, cands, skipped, form, input_shapes, batch, target_speedup, tolerance,
                     (base, bench_cal, provider, threads, model_iters, quantizer))
    # The errors the choice ranks options by come from the samples the refit fits on: the held-out ones are
    # kept for the end-to-end error that judges each plan.
    progress.report(f"estimating the error of every option of {len(cands)} layer(s) on the calibration samples")
    option_errors(model, cands, calibration.split(seed)[0], positions, seed, chain, threads, refit_aware=refit_aware)
    progress.report(f"timing every option of {len(cands)} layer(s) alone on {provider}")
    times = measure_latencies(cands, form, provider, threads, cache, layer_iters, quantize=quantizer)
    layers = [
        LayerOptions(c.name, [Option("keep", 0, times[c.name][KEEP], 0.0)]
                     + [Option(kind, v, times[c.name][kind, v], c.errors[kind, v]) for kind, v in c.options])
        for c in cands
    ]
    model_s, _ = bench_pair(base, None, bench_cal, provider, threads, model_iters)
    report = PlanReport(target_speedup, provider, model_s, 0.0, None, layers=layers,
                        max_output_error=max_output_error)
    m = _Measurer(model, layers, cands, skipped, form, input_shapes, batch, calibration, provider, chain, threads,
                  model_iters, do_refit, refit_kernels, seed, model_s, base, bench_cal, quantizer, judge)
    m.rounds = rounds
    report.error_inputs = m.error_inputs
    report.precision = "fp32" if quantizer is None else quantizer.tag
    report.quantized_original_error = None if quantizer is None else m.base_error
    base_metric = m.base_verdict.metric if m.base_verdict is not None else None
    report.quantized_original_metric = base_metric.value if base_metric is not None else None
    if quantizer is not None:
        # The quantized original against the fp32 one, interleaved as every plan is: speed-ups over fp32.
        report.quantized_speedup = bench_pair(model, base, bench_cal, provider, threads, model_iters)[1]
    if max_output_error is not None and m.base_error > max_output_error:
        raise OptionError(f"--max-output-error {max_output_error:g}: the quantized original alone measures "
                          f"{m.base_error:.3g} on {m.error_inputs} (every int8 plan's error sits on it)")
    if judge.min_metric is not None and base_metric is not None and base_metric.value < judge.min_metric:
        raise OptionError(f"--min-metric {judge.min_metric:g}: the quantized original alone measures "
                          f"{base_metric.value:.3g} on {m.error_inputs} (every int8 plan starts from it)")
    if target_speedup is not None:
        _search_target(m, target_speedup, tolerance, rounds)  # the bounds apply in _pick
    else:
        _search_error(m, max_output_error, rounds)
    _fastest(layers)
    fastest = tuple(lay.chosen for lay in layers)
    fastest_measured = any(tuple(p.picks) == fastest for p in m.points)
    if (target_speedup is not None and not fastest_measured
            and all(p.measured < target_speedup * (1 - tolerance) for p in m.points)):
        # The rounds ran out short of the target: a plan that misses is never returned while the fastest plan,
        # which may reach it, is unmeasured (one more round settles it).
        m.measure("fastest", 1.0)
        fastest_measured = True
    report.rounds = [p.to_dict() for p in m.points]
    report.round_models = m.models
    report.macs_before = m.macs_before
    try:
        best = _pick(m.points, target_speedup, tolerance, max_output_error, fastest_measured, quantizer is not None,
                     judge)
    except OptionError as e:
        raise PlanRefused(str(e), report) from None
    _set(layers, best.picks)
    result, report.reference = m.built[tuple(best.picks)]
    report.measured, report.predicted, report.error = best.measured, best.predicted, best.error
    report.chosen_round = best.round
    verdict = m.verdicts[best.round]
    report.whole_error, report.worst_channels = verdict.whole_error, dict(verdict.worst_channels)
    if judge.metric is not None:
        value = verdict.metric
        report.metric = {"spec": judge.metric.spec, "min": judge.min_metric,
                         **(value.to_dict() if value is not None else {"value": None})}
    asked = " and ".join(s for s in (f"target {target_speedup:g}x" if target_speedup else "",
                                     f"error <= {max_output_error:g}" if max_output_error is not None else "",
                                     f"metric >= {judge.min_metric:g}" if judge.min_metric is not None else "")
                         if s)
    ratios = [p.timing_ratio for p in m.points if p.timing_ratio > 0]
    off = (f"; the whole model saved {min(ratios):.2f}-{max(ratios):.2f}x what the layer timings promised"
           if ratios else "")
    fp32 = (f", {best.measured * report.quantized_speedup:.2f}x over the fp32 original"
            if report.quantized_speedup else "")
    on = provider if quantizer is None else (f"{provider}, {quantizer.tag} (speed-ups over the quantized original, "
                                             f"whose own error is {m.base_error:.3g})")
    worst = verdict.worst_channel
    where = (f" (worst channel: output '{worst['output']}' axis {worst['axis']} channel {worst['index']}; "
             f"whole-tensor {verdict.whole_error:.3g})" if worst else "")
    metric = (f", metric {verdict.metric.value:.3g}" + (f" ({verdict.metric.note})" if verdict.metric.note else "")
              if verdict.metric is not None else "")
    predicted = (f"predicted {speed_text(best.predicted)} from layer timings" if best.predicted < 1e6 else
                 "no prediction (the layers timed alone save more than the whole model takes)")
    note = (f"plan: {asked} on {on}; {len(m.points)} plan(s) measured{off}; chosen: {predicted}, measured {best.measured:.2f}x end to end (median "
            f"of {model_iters} interleaved rounds){fp32}, error {best.error:.3g}{where}{metric} on "
            f"{m.error_inputs}")
    result.options = {**result.options, "plan": report.to_dict(),
                      "notes": [*result.options.get("notes", []), note]}
    return result, report


def speed_text(x: float) -> str:
    """A speed-up as ``1.23x``; ``n/a`` where the layers timed alone save more than the whole model takes
    (:func:`~onnxconv.planning.choose.choose` then predicts ``T / (1e-9 T)``: no figure, only the measured one
    means anything; int8 layers timed alone often add up past the whole quantized model)."""
    return f"{x:.2f}x" if x < 1e6 else "n/a"


def frontier_rows(plan: Mapping[str, Any]) -> tuple[list[str], list[list[str]]]:
    """Headers and rows of the frontier table from a report's ``plan`` figures (:meth:`PlanReport.to_dict`):
    one row per measured plan, the original first, the chosen plan marked. ``error`` is the held-out error with
    every output's worst channel counted, ``whole`` the whole-tensor figure; ``metric`` appears with
    ``--metric``, ``fp32`` (the speed-up over the fp32 original) in int8 plans."""
    rounds = list(plan.get("rounds", []))
    with_metric = plan.get("metric") is not None or any(r.get("metric") is not None for r in rounds)
    qspeed = plan.get("quantized_speedup")
    headers = ["plan", "how", "layers", "predicted", "measured", *(["fp32"] if qspeed else []), "error", "whole",
               *(["metric"] if with_metric else []), "MACs", "chosen"]

    def row(name: str, how: str, layers: str, predicted: str, measured: float, error: str, whole: str,
            metric: Any, macs: int, chosen: str) -> list[str]:
        fp32 = [f"{measured * float(qspeed):.2f}x"] if qspeed else []
        shown = ["-" if metric is None else f"{float(metric):.3g}"] if with_metric else []
        return [name, how, layers, predicted, f"{measured:.2f}x", *fp32, error, whole, *shown, format_count(macs),
                chosen]

    before = int(plan.get("macs_before") or 0)
    rows = [[*row("original", "", "0", "1.00x", 1.0, "0", "0", 1.0 if with_metric else None, before, "")]]
    if qspeed:
        rows[0][5] = "1.00x"  # the fp32 original over itself
    if plan.get("quantized_original_error") is not None:  # int8: speed-ups are over this one
        q = f"{float(plan['quantized_original_error']):.3g}"
        rows.append(row("quantized original", "", "0", "1.00x", 1.0, q, "", plan.get("quantized_original_metric"),
                        before, ""))
    for r in rounds:
        rows.append(row(str(int(r["round"]) + 1), str(r["how"]), str(r["rewritten"]),
                        speed_text(float(r["predicted"])), float(r["measured"]), f"{float(r['error']):.3g}",
                        f"{float(r.get('whole_error', r['error'])):.3g}", r.get("metric"), int(r["macs"]),
                        "*" if r["round"] == plan.get("chosen_round") else ""))
    return headers, rows


def plan_from_file(model: onnx.ModelProto, calibration: str | os.PathLike[str], **kwargs: Any) -> PassResult:
    """:func:`plan_rewrite` with calibration inputs read from a file or folder; returns the pass result."""
    return plan_rewrite(model, load_calibration(calibration, model), **kwargs)[0]

"""Measuring plans: each one built, refitted, (int8) quantized, timed against the original and judged.

:class:`PlanSpace` holds what every plan of one search shares (the candidates and their options, the timer,
the model timed against); :class:`Measurer` turns a plan (one option index per layer) into a
:class:`~.report.PlanPoint` of the frontier, once per distinct plan (the search may come back to one).
:func:`quick_bound` refuses, within seconds, a target that even the cheapest plan misses.
"""

from __future__ import annotations

import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np
import onnx

from .. import compare, progress
from ..calibration import CalibrationSet, FitOptions, held_out_feeds, refit
from ..errors import OptionError
from ..passes.common import LayerChange, PassResult
from ..stats import analyze
from .build import build_plan
from .candidates import Candidate
from .choose import LayerOptions, Option, Picks, saved
from .judge import Verdict
from .latency import Quantizer
from .options import PlanOptions
from .report import PlanPoint
from .timer import Timer

__all__ = ["PlanSpace", "Measurer", "quick_bound", "QUICK_MARGIN", "samples"]

#: A plan may measure this much slower than it really runs (timing noise on a shared machine): the quick bound
#: refuses a target only when the cheapest plan misses it by more.
QUICK_MARGIN = 1.10


@dataclass
class PlanSpace:
    """What every plan of one search shares: the original ``model``, the candidate layers (``cands``, the
    pass's ``skipped`` rows) and their options (``layers``), the options asked, the provider chain the error
    runs use, the calibration set, the timer, and the model every plan is timed against (``base``: the
    original, or in int8 the quantized original, on ``bench_cal``'s first chunk) with its time ``model_s``."""

    model: onnx.ModelProto
    cands: Sequence[Candidate]
    skipped: Mapping[str, LayerChange]
    layers: Sequence[LayerOptions]
    options: PlanOptions
    chain: Sequence[str]
    calibration: CalibrationSet
    timer: Timer
    quantizer: Quantizer | None = None
    base: onnx.ModelProto | None = None
    bench_cal: CalibrationSet | None = None
    model_s: float = 0.0

    def time_pair(self, rewritten: onnx.ModelProto | None, original: onnx.ModelProto | None = None,
                  ) -> tuple[float, float | None]:
        """:meth:`~.timer.Timer.pair` of ``rewritten`` against ``original`` (default: ``base``) on the first
        chunk of the timing calibration set."""
        _, feeds = next((self.bench_cal or self.calibration).chunks())
        return self.timer.pair(original or self.base or self.model, rewritten, feeds)

    def build(self, picks: Picks) -> tuple[PassResult, onnx.ModelProto | None]:
        """The plan ``picks`` applied (:func:`~.build.build_plan`), not refitted."""
        shapes = self.options.shapes
        return build_plan(self.model, self.layers, picks, self.cands, self.skipped, self.options.mode.form,
                          shapes.input_shapes, shapes.batch)


def samples(feeds: Mapping[str, np.ndarray]) -> int:
    """Samples in one set of feeds (the first axis of its first array)."""
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


class Measurer:
    """Builds, times, refits and evaluates plans, once per distinct choice (the search may come back to one).

    The original's outputs on the error inputs are computed once; each plan costs one build, one interleaved
    timing against the original, one refit and one run of the rewrite on the error inputs.
    """

    def __init__(self, space: PlanSpace, rounds: int) -> None:
        self.space = space
        self.layers, self.model_s, self.judge = space.layers, space.model_s, space.options.judge
        self.rounds = rounds  # the most plans the search measures, for the progress line
        self.points: list[PlanPoint] = []
        self.models: list[onnx.ModelProto] = []  # each point's model, in round order
        self.verdicts: list[Verdict] = []  # each point's verdict, in round order
        self._spent: list[float] = []  # seconds each measured plan took
        self._macs_before: int | None = None
        #: Conv MACs of the original, as the measured plans' MACs count them (set by :meth:`measure`).
        self.macs_before = 0
        self.built: dict[Picks, tuple[PassResult, onnx.ModelProto | None]] = {}
        calibration, seed = space.calibration, space.options.refit.seed
        feeds = held_out_feeds(calibration, space.model, seed=seed)
        if feeds:
            self.error_inputs = f"{sum(samples(f) for f in feeds)} held-out calibration samples"
        else:
            # Too few samples to hold any out: the fitted samples are still closer to real inputs than random ones.
            feeds = [f for _, f in calibration.chunks()]
            self.error_inputs = (f"the {calibration.size} calibration samples themselves (too few to hold any "
                                 "out: the error is optimistic)")
        if space.quantizer is not None and space.bench_cal is not None:
            step = space.bench_cal.chunk  # the quantized models take exactly this many samples per run
            feeds = [{k: v[i:i + step] for k, v in f.items()} for f in feeds for i in range(0, samples(f), step)]
            feeds = [f for f in feeds if samples(f) == step]
        self.feeds = feeds
        ref = compare.session(space.model, list(space.chain), space.options.timing.threads)
        self.ref_runs = [compare.run_model(ref, f) for f in feeds]
        #: int8: the quantized original judged against the fp32 original (what quantization alone costs).
        self.base_verdict = (self.verdict_of(space.base) if space.quantizer is not None and space.base is not None
                             else None)
        self.base_error = self.base_verdict.error if self.base_verdict is not None else 0.0

    def verdict_of(self, model: onnx.ModelProto) -> Verdict:
        """``model``'s outputs judged against the fp32 original's on the error inputs."""
        sess = compare.session(model, list(self.space.chain), self.space.options.timing.threads)
        return self.judge.verdict(self.ref_runs, [compare.run_model(sess, f) for f in self.feeds])

    def macs(self, result: PassResult) -> tuple[int, int]:
        """Conv MACs (before, after) of a built plan: the pass's own counts, or, when they miss layers (a spatial
        dim the model leaves symbolic and the user did not set: on ppocr_det all but 111,744 of 3.04G MACs), both
        models counted by :func:`onnxconv.stats.analyze` at the calibration samples' shape, batch 1."""
        if all(c.macs_before is not None for c in result.layers):
            tot = result.totals()
            return int(tot["macs_before"]), int(tot["macs_after"])
        cal = self.space.calibration
        shapes = {k: [cal.batch or 1, *v.shape[1:]] for k, v in cal.arrays.items()}
        if self._macs_before is None:
            self._macs_before = int(analyze(self.space.model, input_shapes=shapes).totals["macs"])
        return self._macs_before, int(analyze(result.model, input_shapes=shapes).totals["macs"])

    def seen(self) -> set[Picks]:
        return {tuple(p.picks) for p in self.points}

    def measure(self, picks: Picks, how: str, scale: float) -> PlanPoint:
        """Measure the plan ``picks``; returns (and records) its point."""
        space, refit_options = self.space, self.space.options.refit
        started = time.perf_counter()
        k = len(self.points) + 1
        left = (sum(self._spent) / len(self._spent) * (max(self.rounds, k) - k + 1)) if self._spent else None
        progress.report(f"plan {k} of at most {max(self.rounds, k)}: measuring the {how} plan "
                        f"({sum(1 for p in picks if p)} of {len(picks)} layers rewritten)"
                        + (f", {progress.eta_text(left)}" if left is not None else ""), k - 1, max(self.rounds, k))
        layer_saved = saved(self.layers, picks)
        predicted = self.model_s / max(self.model_s - layer_saved, 1e-9 * self.model_s)
        result, reference = space.build(picks)
        if refit_options.enabled and result.rewritten:
            fit = FitOptions(seed=refit_options.seed, providers=tuple(space.chain),
                             threads=space.options.timing.threads, depthwise=refit_options.kernels)
            result = refit(space.model, result, space.calibration, fit, reference=reference)
        if space.quantizer is not None:  # what ships: the refitted rewrite, quantized; errors vs the fp32 original
            result = replace(result, model=space.quantizer.model(result.model),
                             options={**result.options, "precision": space.quantizer.tag})
        _, got = space.time_pair(result.model)
        measured = got or 0.0
        verdict = self.verdict_of(result.model)
        self.built[picks] = (result, reference)
        measured_saving = self.model_s * (1.0 - 1.0 / max(measured, 1e-9))
        self.macs_before, macs_after = self.macs(result)
        point = PlanPoint(
            round=len(self.points), how=how, scale=scale, predicted=predicted, measured=measured,
            error=verdict.error, cost=sum(lay.options[p].error ** 2 for lay, p in zip(self.layers, picks)),
            macs=macs_after, rewritten=len(result.rewritten),
            timing_ratio=measured_saving / layer_saved if layer_saved > 0 else 0.0, picks=list(picks),
            whole_error=verdict.whole_error, metric=verdict.metric.value if verdict.metric else None,
            worst_channel=verdict.worst_channel)
        self.verdicts.append(verdict)
        self.points.append(point)
        self.models.append(result.model)
        self._spent.append(time.perf_counter() - started)
        return point


def _relative_macs(c: Any, kind: str, value: int) -> float:
    """An option's MACs over the layer's: rank r of an ``N x K^2`` slice costs ``r (K^2 + N) / (N K^2)``
    (docs/conv-math.md, "Depthwise separable"); G groups cost ``1 / G``."""
    if kind == "groups":
        return 1.0 / value
    n, k2 = int(c.weight.shape[0]), int(np.prod(c.weight.shape[2:]))
    return value * (k2 + n) / (n * k2)


def quick_bound(space: PlanSpace, target: float, tolerance: float) -> None:
    """Refuse, within seconds, a target that even the cheapest plan misses: every candidate layer at its option
    of fewest MACs (rank 1, or the largest G), built without the refit (which changes weights, not the time) and
    timed against the original before any error is estimated. The cheapest plan stands in for the fastest one
    (layer timings are not measured yet); a miss by more than :data:`QUICK_MARGIN` is refused with its figure,
    anything closer goes to the full search.

    ``space.layers`` need not be filled yet: the cheapest options come from the candidates."""
    layers, picks = [], []
    for c in space.cands:
        costs = [_relative_macs(c, kind, value) for kind, value in c.options]
        layers.append(LayerOptions(c.name, [Option("keep", 0, 0.0, 0.0)]
                                   + [Option(kind, v, 0.0, 0.0) for kind, v in c.options]))
        picks.append(1 + int(np.argmin(costs)))
    progress.report(f"timing the cheapest plan ({len(layers)} layer(s) at their fewest MACs) against the target")
    shapes = space.options.shapes
    result, _ = build_plan(space.model, layers, tuple(picks), space.cands, space.skipped, space.options.mode.form,
                           shapes.input_shapes, shapes.batch)
    rewritten = space.quantizer.model(result.model) if space.quantizer is not None else result.model
    _, speed = space.time_pair(rewritten)
    if speed is not None and speed * QUICK_MARGIN < target * (1 - tolerance):
        over = "the quantized original" if space.quantizer is not None else "the original"
        raise OptionError(f"--target-speedup {target:g}: out of reach: the cheapest plan (all {len(layers)} "
                          f"candidate layer(s) at their fewest MACs) measures {speed:.2f}x of {over}, before any "
                          "refit")

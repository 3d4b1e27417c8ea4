"""Static int8 that keeps every output channel alive: quantize, measure against fp32, keep the fewest nodes float.

One scale for a tensor that joins pixel-scale boxes and [0, 1] scores rounds every score to 0; a whole-tensor
error hardly moves (0.01-0.06) while each class channel errs 1.00. :func:`quantize_with_accuracy` therefore
judges the quantized model the way a user would, and keeps in float what it must (NNCF's accuracy control,
``quantize_with_accuracy_control``, on onnxruntime's QDQ model):

1. **Settings for this CPU** (:func:`~onnxconv.quantize.settings_for_cpu`: 7-bit weights where uint8 x int8
   products would saturate), then everything quantized (:func:`~onnxconv.quantize.quantize_qdq`) on the fitting
   samples.
2. **Measure** against the fp32 model on held-out samples: per output the whole-tensor and the worst channel's
   relative error, each channel at its own scale (:func:`~onnxconv.compare.compare_outputs`;
   :attr:`~onnxconv.compare.Agreement.error` is the larger), and the task metric when one is given
   (:mod:`onnxconv.metrics`). The criterion: the worst output's error <= ``max_output_error`` (default
   :data:`DEFAULT_MAX_OUTPUT_ERROR` unless only a metric bound is given) and the metric >= ``min_metric``.
3. **Candidates** (:func:`~onnxconv.keep_float.float_groups`): every quantized node but the convs, nodes that
   share their output's quantization scale joined into one group. Keeping *all* of them float must meet the
   criterion, else :class:`AccuracyNotMet` is raised with that model's figures (the closest there is).
4. **Order** the groups by their local damage (:func:`local_damage`, one run of the quantized model): the
   worst per-channel relative error between the tensors a group writes and their quantized values. A Concat
   of boxes and scores reads 1.0 there.
5. **Keep** the fewest groups that meet the criterion, each choice measured at the outputs on all held-out
   samples: QuickXplain's bisection (Junker 2004) over that order finds a minimal set, one no group of which
   can go back to int8, in O(k log n) measured models for k kept groups of n (the order only makes it
   faster). A group is kept float by editing the QDQ model (:func:`~onnxconv.keep_float.keep_float`), not by
   quantizing again.
6. **Contribution** of each kept group, measured: the figures with that group back in int8 and the others
   float (how much of the criterion it carries); a group the criterion holds without goes back to int8 (a
   metric on a few dozen boxes is not monotone enough for the bisection alone), and the groups are reported
   largest contribution first.

NNCF ranks every group by a measured model before choosing; at 0.5-2 s a model (a 416 x 416 detector on a few
samples), that is minutes for the 180 candidate groups of a YOLOX, while the bisection needs a few dozen.

The gap that contributions are given in puts both bounds on one scale: ``error / max_output_error`` and
``1 + (min_metric - metric) / max(1 - min_metric, 1e-3)``, the larger of them; the criterion holds when each
bound holds (both parts <= 1).
"""

from __future__ import annotations

import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import onnx

from .bench import BenchConfig, SpeedUp, bench
from .calibration import CalibrationSet
from .compare import CHANNEL_FLOOR, Agreement, channel_axis, compare_outputs, run_model, session, write_npz
from .errors import OptionError
from .keep_float import FloatGroup, float_groups, keep_float
from .metrics import MetricValue, TaskMetric
from .progress import report
from .quantize import CpuInt8, QdqModels, QuantSettings, cpu_int8, quantize_qdq, settings_for_cpu

__all__ = ["AccuracyOptions", "AccuracyNotMet", "KeptFloat", "Measurement", "QuantizeResult", "quantize_with_accuracy",
           "speedup_over_fp32", "timing_feeds", "local_damage", "DEFAULT_MAX_OUTPUT_ERROR", "RANKING_SAMPLES", "CLOSEST_MARGIN"]

#: The worst output channel's relative error allowed when neither a bound nor a metric bound is given.
DEFAULT_MAX_OUTPUT_ERROR = 0.05
#: With ``closest``: how far over the closest reachable gap (every candidate float) the result may be.
CLOSEST_MARGIN = 0.1
#: Held-out samples the local-damage run that orders the candidates takes (the criterion always uses all of them).
RANKING_SAMPLES = 8

Feeds = Mapping[str, np.ndarray]


@dataclass(frozen=True)
class AccuracyOptions:
    """What the quantized model must keep, and how it is quantized and measured.

    ``max_output_error`` bounds the worst output's :attr:`~onnxconv.compare.Agreement.error` (the larger of the
    whole-tensor and the worst channel's relative error); None means :data:`DEFAULT_MAX_OUTPUT_ERROR` unless
    ``min_metric`` is given, which then is the only bound. ``metric`` is reported whenever given.
    ``cpu`` (default: this one, :func:`~onnxconv.quantize.cpu_int8`) decides ``reduce_range``.
    The quantized model has static input shapes: ``input_shapes``, else the calibration samples' with a batch
    of ``batch`` (default: the model's fixed batch, else 1). ``closest``: where not even every candidate
    in float meets the criterion, keep float the fewest groups that come within :data:`CLOSEST_MARGIN` of that
    model's gap instead of raising :class:`AccuracyNotMet` (the result's ``met`` is then False).
    """

    max_output_error: float | None = None
    metric: TaskMetric | None = None
    min_metric: float | None = None
    activation_type: str = "uint8"
    weight_type: str = "int8"
    channel_axes: Mapping[str, int] = field(default_factory=dict)
    seed: int = 0
    threads: int | None = None
    input_shapes: Mapping[str, Sequence[int]] | None = None
    batch: int | None = None
    ranking_samples: int = RANKING_SAMPLES
    cpu: CpuInt8 | None = None
    closest: bool = False

    @property
    def error_bound(self) -> float | None:
        """The error bound in force (see the class docstring)."""
        if self.max_output_error is not None:
            return self.max_output_error
        return None if self.min_metric is not None else DEFAULT_MAX_OUTPUT_ERROR

    def validate(self) -> None:
        """Raises OptionError (one line) for a bound that is not a number in range or a bound without its metric."""
        e = self.max_output_error
        if e is not None and not (math.isfinite(e) and e > 0):
            raise OptionError(f"--max-output-error {e}: must be a number above 0 (only the float model errs 0)")
        if self.min_metric is not None:
            if self.metric is None:
                raise OptionError("--min-metric needs --metric SPEC: the metric it bounds")
            if not math.isfinite(self.min_metric):
                raise OptionError(f"--min-metric {self.min_metric}: must be a finite number")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads {self.threads}: must be at least 1")
        if self.batch is not None and self.batch < 1:
            raise OptionError(f"--batch {self.batch}: must be at least 1")
        if self.ranking_samples < 1:
            raise OptionError(f"ranking_samples {self.ranking_samples}: must be at least 1")
        QuantSettings(self.activation_type, self.weight_type).validate()

    def criterion(self) -> str:
        """The criterion in words, e.g. ``worst output error (channel or tensor) <= 0.05``."""
        parts = []
        if self.error_bound is not None:
            parts.append(f"worst output error (channel or tensor) <= {self.error_bound:g}")
        if self.min_metric is not None and self.metric is not None:
            parts.append(f"metric {self.metric.name} >= {self.min_metric:g}")
        return " and ".join(parts)


@dataclass
class Measurement:
    """A candidate model against fp32: one :class:`~onnxconv.compare.Agreement` per output, and the metric."""

    outputs: list[Agreement]
    metric: MetricValue | None = None

    @property
    def error(self) -> float:
        """The worst output's error (the larger of its whole-tensor and worst channel's relative error)."""
        return max((a.error for a in self.outputs), default=0.0)

    def worst(self) -> str:
        """The worst output in words: ``0.31 (output 'Y', channel 4 of axis 1)``."""
        if not self.outputs:
            return "0"
        a = max(self.outputs, key=lambda x: x.error)
        where = (f", channel {a.worst_channel.index} of axis {a.worst_channel.axis}"
                 if a.worst_channel is not None and a.worst_channel.rel_error >= a.rel_error else ", whole tensor")
        return f"{a.error:.3g} (output '{a.output}'{where})"

    def to_dict(self) -> dict[str, Any]:
        return {"error": self.error, "outputs": [a.to_dict() for a in self.outputs],
                "metric": self.metric.to_dict() if self.metric is not None else None}


@dataclass(frozen=True)
class KeptFloat:
    """A group of nodes kept in float and its measured contribution: how much worse the result is with this
    group back in int8 (the others still float), on the held-out samples: the worst output error it removes,
    the metric it gains (None without a metric) and the gap to the criterion it closes (module docstring)."""

    nodes: tuple[str, ...]
    ops: tuple[str, ...]
    error_drop: float
    metric_gain: float | None = None
    gap_closed: float = 0.0

    def to_dict(self) -> dict[str, Any]:
        return {"nodes": list(self.nodes), "ops": list(self.ops), "error_drop": self.error_drop,
                "metric_gain": self.metric_gain, "gap_closed": self.gap_closed}


@dataclass
class QuantizeResult:
    """What :func:`quantize_with_accuracy` made and measured.

    ``model`` is the QDQ model with ``kept_float`` in float; ``measured`` its figures and ``quantized_all``
    those of everything quantized (same settings), both on ``held_out``. ``met`` says whether ``criterion``
    holds (False only on :class:`AccuracyNotMet`'s result). ``candidates``: groups that could be kept float;
    ``evaluations``: candidate models run.
    """

    model: onnx.ModelProto
    kept_float: list[KeptFloat]
    measured: Measurement
    quantized_all: Measurement
    settings: QuantSettings
    settings_reason: str
    held_out: str
    criterion: str
    met: bool
    candidates: int = 0
    evaluations: int = 0

    def to_dict(self) -> dict[str, Any]:
        return {"criterion": self.criterion, "met": self.met, "held_out": self.held_out,
                "settings": self.settings.to_dict(), "settings_reason": self.settings_reason,
                "measured": self.measured.to_dict(), "quantized_all": self.quantized_all.to_dict(),
                "kept_float": [k.to_dict() for k in self.kept_float], "candidates": self.candidates,
                "evaluations": self.evaluations}


class AccuracyNotMet(OptionError):
    """Even with every candidate in float the criterion does not hold; ``result`` is that model (the closest)."""

    def __init__(self, message: str, result: QuantizeResult) -> None:
        super().__init__(message)
        self.result = result


def _samples(feeds: Feeds) -> int:
    return int(next(iter(feeds.values())).shape[0]) if feeds else 0


def _joined(runs: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Outputs of several runs joined on the sample axis (a scalar output is stacked)."""
    return {k: np.concatenate([np.atleast_1d(r[k]) for r in runs]) for k in runs[0]} if runs else {}


class _Judge:
    """Runs candidate models on the held-out feeds and holds them to the criterion."""

    def __init__(self, model: onnx.ModelProto, feeds: Sequence[Feeds], options: AccuracyOptions) -> None:
        self.options, self.feeds = options, list(feeds)
        ranked: list[Feeds] = []
        count = 0
        for f in self.feeds:  # whole runs, at least one
            if ranked and count + _samples(f) > options.ranking_samples:
                break
            ranked.append(f)
            count += _samples(f)
        self.rank_feeds = ranked
        ref = session(model, threads=options.threads)
        self.ref = [run_model(ref, f) for f in self.feeds]
        self.evaluations = 0
        #: Set where the criterion cannot hold (``closest``): the gap a model may have instead.
        self.gap_limit: float | None = None

    def measure(self, model: onnx.ModelProto, ranking: bool = False) -> Measurement:
        feeds = self.rank_feeds if ranking else self.feeds
        ref = self.ref[: len(feeds)]
        report(f"quantize: measuring candidate {self.evaluations + 1} (which nodes stay float) on "
               f"{'the ranking' if ranking else 'the held-out'} samples", self.evaluations, self.evaluations + 1)
        sess = session(model, threads=self.options.threads)
        got = [run_model(sess, f) for f in feeds]
        self.evaluations += 1
        outputs = compare_outputs(_joined(ref), _joined(got), self.options.channel_axes)
        metric = self.options.metric.evaluate(ref, got) if self.options.metric is not None else None
        return Measurement(outputs, metric)

    def gap(self, m: Measurement) -> float:
        """Distance to the criterion on one scale (module docstring): <= 1 where every bound holds."""
        parts = []
        bound = self.options.error_bound
        if bound is not None:
            parts.append(m.error / bound)
        low = self.options.min_metric
        if low is not None and m.metric is not None:
            parts.append(1.0 + (low - m.metric.value) / max(1.0 - low, 1e-3))
        return max(parts, default=0.0)

    def met(self, m: Measurement) -> bool:
        if self.gap_limit is not None:
            return self.gap(m) <= self.gap_limit
        bound, low = self.options.error_bound, self.options.min_metric
        return ((bound is None or m.error <= bound)
                and (low is None or (m.metric is not None and m.metric.value >= low)))


def local_damage(qdq: onnx.ModelProto, groups: Sequence[FloatGroup], feeds: Sequence[Feeds],
                 threads: int | None = None) -> dict[FloatGroup, float]:
    """Each group's worst per-channel relative error between the tensors it writes and their quantized values
    ``DQ(Q(x))``, on ``feeds``: one run of ``qdq`` with those tensors as outputs (no candidate models). A
    Concat of pixel-scale boxes and [0, 1] scores reads 1.0: its scores round to 0 at its one scale."""
    names = {n.name: n for n in qdq.graph.node}
    consumers: dict[str, list[onnx.NodeProto]] = {}
    for n in qdq.graph.node:
        for t in n.input:
            consumers.setdefault(t, []).append(n)
    pairs: dict[FloatGroup, list[tuple[str, str]]] = {}
    for g in groups:
        pairs[g] = [(q.input[0], d.output[0]) for name in g.nodes for o in names[name].output
                    for q in consumers.get(o, []) if q.op_type == "QuantizeLinear"
                    for d in consumers.get(q.output[0], []) if d.op_type == "DequantizeLinear"]
    probe = onnx.ModelProto()
    probe.CopyFrom(qdq)
    shown = {o.name for o in probe.graph.output}
    for x, y in {p for ps in pairs.values() for p in ps}:
        for t in (x, y):
            if t not in shown:
                probe.graph.output.append(onnx.helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
                shown.add(t)
    sess = session(probe, threads=threads)
    sums: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = {}
    for f in feeds:
        out = run_model(sess, f)
        for x, y in {p for ps in pairs.values() for p in ps}:
            a, b = np.asarray(out[x], np.float64), np.asarray(out[y], np.float64)
            axis = channel_axis(a) if a.shape == b.shape else None
            a2 = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1) if axis is not None else a.reshape(1, -1)
            b2 = np.moveaxis(b, axis, 0).reshape(a2.shape) if axis is not None else b.reshape(1, -1)
            norms, diffs = (a2 * a2).sum(1), ((a2 - b2) ** 2).sum(1)
            if (x, y) in sums and sums[x, y][0].shape == norms.shape:
                norms, diffs = norms + sums[x, y][0], diffs + sums[x, y][1]
            sums[x, y] = (norms, diffs)
    damage = {}
    for g, ps in pairs.items():
        worst = 0.0
        for p in ps:
            norms, diffs = np.sqrt(sums[p][0]), np.sqrt(sums[p][1])
            floor = CHANNEL_FLOOR * float(norms.max()) if norms.size else 0.0
            denom = np.maximum(norms, floor)
            errs = np.where(denom > 0, diffs / np.where(denom > 0, denom, 1.0), diffs)
            worst = max(worst, float(errs.max()) if errs.size else 0.0)
        damage[g] = worst
    return damage


class _Search:
    """The order, selection and contribution steps of the module docstring over one quantized model."""

    def __init__(self, judge: _Judge, qdq: QdqModels, groups: Sequence[FloatGroup]) -> None:
        self.judge, self.qdq, self.groups = judge, qdq, list(groups)
        self._met: dict[frozenset[FloatGroup], bool] = {}

    def known_met(self, kept: Sequence[FloatGroup]) -> None:
        """Record that keeping ``kept`` float meets the criterion (measured by the caller)."""
        self._met[frozenset(kept)] = True

    def model(self, kept: Sequence[FloatGroup]) -> onnx.ModelProto:
        return keep_float(self.qdq.model, [n for g in kept for n in g.nodes], self.qdq.prepared)

    def met(self, kept: Sequence[FloatGroup]) -> bool:
        key = frozenset(kept)
        if key not in self._met:
            self._met[key] = self.judge.met(self.judge.measure(self.model(kept)))
        return self._met[key]

    def order(self, threads: int | None) -> list[FloatGroup]:
        """The groups by local damage (:func:`local_damage`), largest first; equals nearest the outputs first."""
        damage = local_damage(self.qdq.model, self.groups, self.judge.rank_feeds, threads)
        position = {n.name: i for i, n in enumerate(self.qdq.model.graph.node)}
        last = {g: max(position.get(n, -1) for n in g.nodes) for g in self.groups}
        return sorted(self.groups, key=lambda g: (-damage[g], -last[g]))

    def minimal(self, base: list[FloatGroup], cands: list[FloatGroup], changed: bool = False) -> list[FloatGroup]:
        """The part of ``cands`` that ``base`` needs to meet the criterion, given that ``base + cands`` meets it
        (QuickXplain: O(k log n) checks for k needed groups of n, the earlier of ``cands`` preferred)."""
        if changed and self.met(base):
            return []
        if len(cands) <= 1:
            return cands
        half = len(cands) // 2
        first, second = cands[:half], cands[half:]
        need_second = self.minimal([*base, *first], second, bool(first))
        need_first = self.minimal([*base, *need_second], first, bool(need_second))
        return [*need_first, *need_second]

    def settle(self, kept: list[FloatGroup]) -> tuple[list[FloatGroup], Measurement, list[KeptFloat]]:
        """(the kept groups, their figures, each group's contribution), after dropping every group the criterion
        holds without. The bisection's set is minimal where keeping more float never hurts; a metric judged on
        a few dozen boxes is not that monotone (one group more can lose a box), so each group is measured back
        in int8 with the others float, and while one of those models meets the criterion, the one with the best
        figures is taken and the rest measured again. The measurements give the contributions."""
        final = self.judge.measure(self.model(kept))
        while True:
            without = {g: self.judge.measure(self.model([k for k in kept if k != g])) for g in kept}
            spare = [g for g in kept if self.judge.met(without[g])]
            if not spare:
                break
            drop = min(spare, key=lambda g: self.judge.gap(without[g]))
            kept = [k for k in kept if k != drop]
            final = without[drop]
        out = []
        for g in kept:
            w = without[g]
            gain = final.metric.value - w.metric.value if final.metric is not None and w.metric is not None else None
            closed = self.judge.gap(w) - self.judge.gap(final)
            out.append(KeptFloat(g.nodes, g.ops, w.error - final.error, gain, closed))
        return kept, final, sorted(out, key=lambda k: -k.gap_closed)


def _chunks(calib: CalibrationSet, step: int) -> list[Feeds]:
    """Runs of exactly ``step`` samples (the quantized model's static batch); a shorter tail is left out."""
    out: list[Feeds] = []
    for start in range(0, calib.size - step + 1, step):
        out.append({k: v[start:start + step] for k, v in calib.arrays.items()})
    return out


def _split(calibration: CalibrationSet | Sequence[Feeds], held_out: Sequence[Feeds] | None,
           options: AccuracyOptions) -> tuple[list[Feeds], list[Feeds], str]:
    """(fitting feeds, held-out feeds, what the held-out feeds are in words)."""
    if isinstance(calibration, CalibrationSet):
        step = options.batch or calibration.batch or 1
        if options.input_shapes:
            step = int(next(iter(options.input_shapes.values()))[0])
        fit, held = calibration.split(options.seed)
        fit_feeds = _chunks(fit, step)
        held_feeds = _chunks(held, step) if held is not None else []
        if not fit_feeds:
            raise OptionError(f"--calibration {calibration.source}: fewer samples than one batch of {step}")
    else:
        fit_feeds, held_feeds = list(calibration), list(held_out or [])
    if held_feeds:
        return fit_feeds, held_feeds, f"{sum(_samples(f) for f in held_feeds)} held-out calibration samples"
    count = sum(_samples(f) for f in fit_feeds)
    return fit_feeds, fit_feeds, (f"the {count} calibration samples themselves (too few to hold any out: the "
                                  "figures are optimistic)")


def quantize_with_accuracy(model: onnx.ModelProto, calibration: CalibrationSet | Sequence[Feeds],
                           options: AccuracyOptions | None = None, *, held_out: Sequence[Feeds] | None = None,
                           ) -> QuantizeResult:
    """Static QDQ int8 of ``model`` that meets ``options``' criterion, keeping the fewest nodes float.

    Args:
        model: the float model, weights loaded; not modified.
        calibration: a :class:`~onnxconv.calibration.CalibrationSet` (its held-out share,
            :meth:`~onnxconv.calibration.CalibrationSet.split` with ``options.seed``, measures; the rest
            calibrates), or feeds to calibrate on (each one run of the static-shape model).
        options: the criterion and the quantization's types (default: :class:`AccuracyOptions`).
        held_out: with feeds for ``calibration``, the feeds to measure on (default: the calibration feeds, with a
            note that the figures are optimistic).

    Returns:
        The :class:`QuantizeResult`; its ``model`` meets the criterion on the held-out samples.

    Raises:
        AccuracyNotMet: not even every candidate in float meets it (the closest figures in one line).
        OptionError, ShapeError, QuantizeError: bad options or feeds, or onnxruntime's quantizer failed.
    """
    options = options or AccuracyOptions()
    options.validate()
    cpu = options.cpu or cpu_int8()
    settings, why = settings_for_cpu(options.activation_type, options.weight_type, cpu)
    # Relu/Clip stay explicit so that a node kept float still applies them (onnxruntime folds them at run time).
    settings = replace(settings, keep_activations=True)
    fit, held, held_text = _split(calibration, held_out, options)
    qdq = quantize_qdq(model, fit, settings, input_shapes=options.input_shapes)
    judge = _Judge(model, held, options)
    groups = float_groups(qdq.model)
    every = judge.measure(qdq.model)

    criterion = options.criterion()

    def result(out: onnx.ModelProto, kept: list[KeptFloat], measured: Measurement, met: bool) -> QuantizeResult:
        return QuantizeResult(out, kept, measured, every, settings, why, held_text, criterion, met, len(groups),
                              judge.evaluations)

    if judge.met(every):
        return result(qdq.model, [], every, True)
    search = _Search(judge, qdq, groups)
    all_float = search.model(groups)
    closest = judge.measure(all_float)
    met = judge.met(closest)
    if not met:
        figures = [f"worst output error {closest.worst()}"]
        if closest.metric is not None and options.metric is not None:
            figures.append(f"metric {options.metric.name} {closest.metric.value:.4g}")
        text = (f"{criterion} is not met even with all {len(groups)} quantized node group(s) but the convs in "
                f"float: {', '.join(figures)} on {held_text} (everything quantized: {every.worst()})")
        if not options.closest:
            raise AccuracyNotMet(text, result(all_float, [KeptFloat(g.nodes, g.ops, 0.0) for g in groups], closest,
                                              False))
        # As near as the convs in int8 allow, with the fewest groups float: within the margin of that model's gap.
        judge.gap_limit = judge.gap(closest) * (1.0 + CLOSEST_MARGIN)
        criterion = f"{criterion}: not reachable ({text}); held instead to within {CLOSEST_MARGIN:.0%} of that"
        if judge.met(every):
            return result(qdq.model, [], every, False)
    search.known_met(groups)
    kept, final, contributions = search.settle(search.minimal([], search.order(options.threads)))
    return result(search.model(kept), contributions, final, met)


def timing_feeds(quantized: onnx.ModelProto, calibration: CalibrationSet | Feeds) -> Feeds:
    """The inputs of one timed run: ``calibration``'s first samples, as many as the quantized model's static
    batch (1 when it has none), or the given feeds."""
    if not isinstance(calibration, CalibrationSet):
        return calibration
    dims = quantized.graph.input[0].type.tensor_type.shape.dim if quantized.graph.input else []
    batch = int(dims[0].dim_value) if dims and dims[0].dim_value > 0 else 1
    return {k: v[:batch] for k, v in calibration.arrays.items()}


def speedup_over_fp32(original: onnx.ModelProto, quantized: onnx.ModelProto, calibration: CalibrationSet | Feeds,
                      threads: int | None = None, duration: float | None = None,
                      progress: Callable[[str, float, float], None] | None = None) -> SpeedUp | None:
    """The quantized model's speed-up over the original: median and quartiles over interleaved rounds of
    :func:`onnxconv.bench.bench` (``duration`` seconds, default bench's), on one run's inputs: ``calibration``'s
    first samples, as many as the quantized model's static batch, or the given feeds."""
    feeds = timing_feeds(quantized, calibration)
    with tempfile.TemporaryDirectory(prefix="onnxconv-speed-") as tmp:
        path = os.path.join(tmp, "inputs.npz")
        write_npz(path, feeds)  # not np.savez(**feeds): an input may be named "file"
        cfg = BenchConfig(threads=threads, inputs=path, duration=duration)
        report = bench([original, quantized], cfg, names=["fp32", "int8"], progress=progress)
    return report.runs[0].models[1].speedup

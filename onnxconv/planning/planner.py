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
   graph form; a plain grouped conv for G) timed by the :class:`~.timer.Timer` (onnxruntime on the provider,
   or ``--latency-command`` on a board), all options of a layer in one interleaved run, cached per (timer,
   threads, shapes, attributes, option) in a :class:`LatencyCache` (optionally a JSON file) so that layers of
   the same shape are timed once.
4. **Choice.** With ``T`` the measured latency of the whole model and ``d_o = t_keep - t_o`` the time an option
   saves, pick one option per layer minimising ``sum e_o^2`` subject to ``sum d_o >= T (1 - 1/S)`` (a
   multiple-choice knapsack, solved exactly by dynamic programming over :data:`BUCKETS` time buckets, rounding
   savings down). Options slower than keeping the layer are dropped. Predicted speed-up: ``T / (T - sum d_o)``.
5. **Search on measurements.** Layers timed alone do not add up exactly (fusions, layout conversions, caches:
   on a YOLOv8n they under-predicted the savings twofold), so every plan is *measured*: the rewritten model is
   timed against the original by the same timer (interleaved rounds, the calibration inputs), refitted
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

import os

import onnx

from .. import progress
from ..calibration import CalibrationSet, load_calibration
from ..errors import OptionError
from ..passes.common import PassResult
from ..providers import resolve_provider
from .candidates import find_candidates
from .choose import KEEP, LayerOptions, Option
from .estimate import option_errors
from .judge import concat_runs
from .latency import LatencyCache, Quantizer, measure_latencies
from .measure import Measurer, PlanSpace, quick_bound
from .options import PlanOptions
from .report import PlanPoint, PlanRefused, PlanReport, frontier_rows, plan_note, speed_text
from .search import fastest, pick, search_error, search_target
from .timer import CommandTimer, OrtTimer, Timer

__all__ = ["PlanPoint", "PlanReport", "PlanRefused", "plan_rewrite", "plan_from_file", "frontier_rows",
           "concat_runs", "speed_text", "make_timer"]


def make_timer(options: PlanOptions) -> Timer:
    """The timer ``options.timing`` asks for: ``--latency-command`` on a board, else onnxruntime here."""
    t = options.timing
    if t.latency_command is not None:
        return CommandTimer(t.latency_command, t.latency_timeout)
    return OrtTimer(t.provider, t.threads, t.layer_iters, t.model_iters)


def plan_rewrite(model: onnx.ModelProto, calibration: CalibrationSet, options: PlanOptions, *,
                 timer: Timer | None = None) -> tuple[PassResult, PlanReport]:
    """Choose per layer keep / rank / G to reach ``options.goal.target_speedup`` with the least error, or the
    fastest plan within ``max_output_error`` and the judge's ``min_metric``, or both (the module docstring gives
    the method).

    Args:
        model: the original model (weights loaded); not modified.
        calibration: inputs from :func:`~onnxconv.calibration.load_calibration`; they give the errors, the layer
            input shapes and the inputs the whole model is timed on (the first chunk); the held-out share
            (:func:`~onnxconv.calibration.held_out_feeds` with the refit's seed) gives each plan's end-to-end
            error.
        options: what is asked, grouped as the command line groups it (:class:`~.options.PlanOptions`).
        timer: how models are timed (:class:`~.timer.Timer`); default :func:`make_timer` of ``options``.

    Returns:
        The pass result (per-layer ``details["plan"]``: chosen option, layer time before -> after, error) and the
        :class:`PlanReport`; ``result.options["plan"]`` holds the report's figures (``rounds``: every measured
        plan, the frontier) and ``notes`` a summary line.

    Raises:
        OptionError: what :meth:`~.options.PlanOptions.validate` refuses, a bad provider, no layer to rewrite, a
            target no plan reaches, bounds no measured plan meets (:class:`PlanRefused`, with what was measured).
        TimingError: ``--latency-command`` failed (one line).
    """
    options.validate()
    goal, judge, precision = options.goal, options.judge, options.precision
    chain = resolve_provider(options.timing.provider).chain
    timer = timer or make_timer(options)
    if isinstance(timer, CommandTimer) and goal.target_speedup is None:
        # Without a target the first timing comes after the error estimates (a minute on a detector): a broken
        # command fails now instead. (With one, the quick bound times a plan first.)
        progress.report("one run of --latency-command on the original")
        timer.once(model, next(calibration.chunks())[1])
    cache = options.timing.cache or LatencyCache()
    form, shapes = options.mode.form, options.shapes
    cands, skipped = find_candidates(model, options.mode.mode, form, tuple(options.mode.groups), options.node_filter,
                                     shapes.input_shapes, shapes.batch)
    if not cands:
        raise OptionError(f"{goal.flag}: no layer of the model can be rewritten in {options.mode.mode} mode")
    space = PlanSpace(model, cands, skipped, [], options, chain, calibration, timer, base=model,
                      bench_cal=calibration)
    if precision.precision == "int8":
        fit, _ = calibration.split(options.refit.seed)
        step = calibration.batch or 1  # the quantized models get static shapes: one sample (or batch) per run
        space.quantizer = Quantizer([{k: v[i:i + step] for k, v in fit.arrays.items()}
                                     for i in range(0, fit.size, step)], precision.activation_type,
                                    precision.weight_type)
        progress.report("quantizing the original (int8 QDQ)")
        space.base = space.quantizer.model(model)
        space.bench_cal = CalibrationSet(calibration.arrays, calibration.source, step, calibration.batch)
    if goal.target_speedup is not None:
        quick_bound(space, goal.target_speedup, goal.tolerance)
    # The errors the choice ranks options by come from the samples the refit fits on: the held-out ones are
    # kept for the end-to-end error that judges each plan.
    progress.report(f"estimating the error of every option of {len(cands)} layer(s) on the calibration samples")
    option_errors(model, cands, calibration.split(options.refit.seed)[0], options.refit.positions,
                  options.refit.seed, chain, options.timing.threads, refit_aware=options.refit.aware)
    progress.report(f"timing every option of {len(cands)} layer(s) alone on "
                    f"{options.timing.provider if options.timing.latency_command is None else 'the latency command'}")
    times = measure_latencies(cands, form, timer, cache, quantize=space.quantizer)
    space.layers = [
        LayerOptions(c.name, [Option("keep", 0, times[c.name][KEEP], 0.0)]
                     + [Option(kind, v, times[c.name][kind, v], c.errors[kind, v]) for kind, v in c.options])
        for c in cands
    ]
    space.model_s, _ = space.time_pair(None)
    report = PlanReport(goal.target_speedup, options.timing.provider, space.model_s, 0.0, None, layers=list(space.layers),
                        max_output_error=goal.max_output_error)
    m = Measurer(space, goal.rounds)
    _judge_original(m, report, space, options)
    if goal.target_speedup is not None:
        search_target(m, goal.target_speedup, goal.tolerance, goal.rounds)  # the bounds apply in pick
    else:
        search_error(m, goal.max_output_error, goal.rounds)
    top = fastest(space.layers)
    fastest_measured = any(tuple(p.picks) == top for p in m.points)
    if (goal.target_speedup is not None and not fastest_measured
            and all(p.measured < goal.target_speedup * (1 - goal.tolerance) for p in m.points)):
        # The rounds ran out short of the target: a plan that misses is never returned while the fastest plan,
        # which may reach it, is unmeasured (one more round settles it).
        m.measure(top, "fastest", 1.0)
        fastest_measured = True
    report.rounds = [p.to_dict() for p in m.points]
    report.round_models = m.models
    report.macs_before = m.macs_before
    report.picks = list(top)
    try:
        best = pick(m.points, goal.target_speedup, goal.tolerance, goal.max_output_error, fastest_measured,
                    space.quantizer is not None, judge)
    except OptionError as e:
        raise PlanRefused(str(e), report) from None
    return _chosen(m, report, best, options), report


def _judge_original(m: Measurer, report: PlanReport, space: PlanSpace, options: PlanOptions) -> None:
    """Fill in what the original (int8: the quantized original) measures, and refuse bounds it misses already."""
    report.error_inputs = m.error_inputs
    report.precision = "fp32" if space.quantizer is None else space.quantizer.tag
    report.quantized_original_error = None if space.quantizer is None else m.base_error
    base_metric = m.base_verdict.metric if m.base_verdict is not None else None
    report.quantized_original_metric = base_metric.value if base_metric is not None else None
    if space.quantizer is not None:
        # The quantized original against the fp32 one, interleaved as every plan is: speed-ups over fp32.
        report.quantized_speedup = space.time_pair(space.base, original=space.model)[1]
    max_error, floor = options.goal.max_output_error, options.judge.min_metric
    if max_error is not None and m.base_error > max_error:
        raise OptionError(f"--max-output-error {max_error:g}: the quantized original alone measures "
                          f"{m.base_error:.3g} on {m.error_inputs} (every int8 plan's error sits on it)")
    if floor is not None and base_metric is not None and base_metric.value < floor:
        raise OptionError(f"--min-metric {floor:g}: the quantized original alone measures "
                          f"{base_metric.value:.3g} on {m.error_inputs} (every int8 plan starts from it)")


def _chosen(m: Measurer, report: PlanReport, best: PlanPoint, options: PlanOptions) -> PassResult:
    """The chosen plan's result, with the report's figures and the summary note in its options."""
    goal, judge = options.goal, options.judge
    report.picks = list(best.picks)
    result, report.reference = m.built[tuple(best.picks)]
    report.measured, report.predicted, report.error = best.measured, best.predicted, best.error
    report.chosen_round = best.round
    verdict = m.verdicts[best.round]
    report.whole_error, report.worst_channels = verdict.whole_error, dict(verdict.worst_channels)
    if judge.metric is not None:
        value = verdict.metric
        report.metric = {"spec": judge.metric.spec, "min": judge.min_metric,
                         **(value.to_dict() if value is not None else {"value": None})}
    asked = " and ".join(s for s in (f"target {goal.target_speedup:g}x" if goal.target_speedup else "",
                                     f"error <= {goal.max_output_error:g}" if goal.max_output_error is not None
                                     else "",
                                     f"metric >= {judge.min_metric:g}" if judge.min_metric is not None else "")
                         if s)
    iters = options.timing.model_iters if options.timing.latency_command is None else None
    note = plan_note(report, best, verdict, asked, m.points, iters)
    result.options = {**result.options, "plan": report.to_dict(),
                      "notes": [*result.options.get("notes", []), note]}
    return result


def plan_from_file(model: onnx.ModelProto, calibration: str | os.PathLike[str], options: PlanOptions, *,
                   timer: Timer | None = None) -> PassResult:
    """:func:`plan_rewrite` with calibration inputs read from a file or folder; returns the pass result."""
    return plan_rewrite(model, load_calibration(calibration, model), options, timer=timer)[0]

"""Hardware-aware planning: per layer keep, depthwise rank r or grouped G, to reach a measured speed-up.

``--budget`` counts MACs, but a rewrite's worth depends on the provider, threads and batch (conv-math.md: a
rank-4 rewrite of ResNet-18 is *slower* on a 16-thread CPU). :func:`plan_rewrite` measures instead:

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
5. **Verify.** The rewritten model is timed against the original with the bench code (interleaved rounds, the
   calibration inputs). Layers timed alone do not add up exactly (fusions, layout conversions, caches), so when
   the measured speed-up misses the target (by more than ``tolerance``) or overshoots it (by more than three),
   the layer savings are scaled by ``measured saving / predicted saving`` and the plan is made again, at most
   ``rounds`` times; the least-error plan that reached the target is kept (else the fastest). A target the
   layer timings call unreachable is checked by measuring the plan with every layer at its fastest option.
   Then the chosen layers are refitted (:func:`onnxconv.calibration.refit`) and the result records predicted vs
   measured speed-up. A plan is built by one separable pass per chosen rank, then one shuffle pass per chosen G
   on its result (each restricted to its layers by name); when grouped layers exist, the model the rewrite
   computes exactly up to channel orders is kept as the refit's ``reference`` (:class:`PlanReport`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import numpy as np
import onnx

from ..bench import resolve_provider
from ..calibration import CalibrationSet, load_calibration, refit
from ..errors import OptionError
from ..passes.common import NodeFilter, PassResult
from ..passes.separable import DEFAULT_FORM
from .build import build_plan
from .candidates import GROUP_CHOICES, find_candidates
from .choose import KEEP, LayerOptions, Option, choose, saved
from .estimate import option_errors
from .latency import LatencyCache, bench_pair, measure_latencies

__all__ = ["PlanReport", "plan_rewrite", "plan_from_file"]


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
    #: :func:`onnxconv.calibration.refit` as ``reference`` (None otherwise).
    reference: onnx.ModelProto | None = field(default=None, repr=False)

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready figures (without the reference model)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name not in ("layers", "reference")}
        out["rounds"] = [dict(r) for r in self.rounds]
        out["layers"] = [{"name": lay.name, "chosen": lay.options[lay.chosen].label,
                          "options": [asdict(o) for o in lay.options]} for lay in self.layers]
        return out


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
        calibration: inputs from :func:`~onnxconv.calibration.load_calibration`; they give the errors, the layer
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
        refit_kernels: with ``do_refit``, refit separable layers' depthwise kernels too
            (:func:`~onnxconv.calibration.refit`'s ``depthwise``).
        refit_aware: rank options by their estimated error after the per-layer refit
            (:func:`~onnxconv.planning.estimate.option_errors`),
            else by the weight-only error.

    Returns:
        The pass result (per-layer ``details["plan"]``: chosen option, layer time before -> after, error) and the
        :class:`PlanReport`; ``result.options["plan"]`` holds the report's figures and ``notes`` a summary line.

    Raises:
        OptionError: S <= 1, a bad mode or provider, or a target no option set can reach.
    """
    if not (target_speedup > 1 and math.isfinite(target_speedup)):
        raise OptionError(f"--target-speedup {target_speedup}: must be a number above 1")
    if mode not in ("separable", "shuffle", "mixed"):
        raise OptionError(f"mode '{mode}': choose separable, shuffle or mixed")
    form = form or DEFAULT_FORM
    groups = tuple(groups or GROUP_CHOICES)
    chain = resolve_provider(provider).chain
    cache = cache or LatencyCache()
    cands, skipped = find_candidates(model, mode, form, groups, node_filter, input_shapes, batch)
    if not cands:
        raise OptionError(f"--target-speedup: no layer of the model can be rewritten in {mode} mode")
    option_errors(model, cands, calibration, positions, seed, chain, threads, refit_aware=refit_aware)
    times = measure_latencies(cands, form, provider, threads, cache, layer_iters)
    layers = [
        LayerOptions(c.name, [Option("keep", 0, times[c.name][KEEP], 0.0)]
                     + [Option(kind, v, times[c.name][kind, v], c.errors[kind, v]) for kind, v in c.options])
        for c in cands
    ]
    model_s, _ = bench_pair(model, None, calibration, provider, threads, model_iters)
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
            predicted = model_s / max(model_s - scale * saved(layers), 1e-9 * model_s)
        result, reference = build_plan(model, layers, cands, skipped, form, input_shapes, batch)
        _, measured = bench_pair(model, result.model, calibration, provider, threads, model_iters)
        got = measured or 0.0
        cost = sum(lay.options[lay.chosen].error ** 2 for lay in layers)
        report.rounds.append({"scale": scale, "predicted": predicted, "measured": got, "cost": cost})
        # Best: a plan that reaches the goal with the least error; failing that, the fastest measured.
        if best is None or (got >= goal and (best[0] < goal or cost < best[4])) or (best[0] < goal and got > best[0]):
            best = (got, result, predicted, [lay.chosen for lay in layers], cost, reference)
        if fastest or saved(layers) <= 0 or goal <= got <= target_speedup * (1 + 3 * tolerance):
            break
        # The whole model saved (1 - 1/got) of its time where the layers alone promised more (or less): rescale
        # the layer savings by what was measured and plan again (an overshoot costs error for nothing).
        scale = max(model_s * (1.0 - 1.0 / max(got, 1e-9)), 0.05 * scale * saved(layers)) / saved(layers)
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

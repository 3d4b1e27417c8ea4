"""Calibration refit: fit each rewritten layer to the activations the model really sees.

Weight-only SVD (separable) and block-diagonal grouping (shuffle) minimise the *weight* error. Given a few
inputs, the rewritten layer can instead be fitted to what the network computes. Every rewritten layer ends in a
*linear stage*: the original output ``Y`` is a sum of convs (one for the concat/multiplier forms and for a
grouped conv, one per branch for the sum form), all with the same group ``g``::

    Y = sum_t conv(Z_t, W_t) + b

For a grouped conv the inputs ``Z_t`` of the stage stay as they are; the weights ``W_t`` and the bias ``b`` are
refitted. For a separable layer (by default) the depthwise kernels that make ``Z_t`` are refitted too, by
alternating least squares with the 1x1 stage (:mod:`onnxconv.calibration.depthwise`); the rest of this docstring
describes the linear-stage refit that is used alone for grouped layers and as its first step. At an output position
``p`` of group ``gi`` the stage is linear in its weights: ``y_p = x_p^T A`` with ``x_p`` the receptive-field patch
of the ``Z_t`` channels of the group (``C_t/g * prod(k_t)`` values each, for a 1x1 stage simply the channel vector)
followed by a 1, and ``A`` the ``(D + 1) x N/g`` matrix of the group's weights and bias. The refit solves, per
group, the ridge problem

    min_A  sum_p || x_p^T A - t_p ||^2 + lam * || A - A0 ||^2

where ``t_p`` is the *original* model's output of the layer on the calibration inputs and ``x_p`` comes from
the *already refitted* rewritten network (Zhang et al., "Accelerating Very Deep Convolutional Networks",
the asymmetric scheme: a layer learns to undo the error its upstream layers left, so errors do not add up).
``A0`` is the weight-only solution, so the ridge pulls an ill-conditioned fit back towards it rather than
towards zero: ``(X^T X + lam I) A = X^T T + lam A0``.

Memory stays bounded whatever the model: per layer a fixed number of output positions is drawn (fixed seed)
from every calibration sample; only the normal equations ``X^T X`` and ``X^T T`` are accumulated (float64),
never the samples. The original model's outputs at those positions are collected once for every layer (the
largest buffer: ``positions * (1 + check_fraction) * C_out`` float32 values per layer); the rewritten model is
run once per *wave*, the layers whose inputs depend on no layer still to be refitted (a chain has one layer
per wave; parallel branches share one). Each run uses a copy of the model cut down to the tensors it needs,
and starts from the tensors an earlier run kept because no later wave changes them (:class:`_WaveRuns`): the
prefix of the network is computed once, not once per wave. Those tensors are held for every fitted sample, up
to :data:`~onnxconv.calibration.activations.CACHE_BUDGET` bytes (beyond it they are recomputed).

``lam = ridge * mean(diag(X^T X))``: with ``ridge`` None it is chosen per layer from
:data:`~onnxconv.calibration.normal.RIDGES` by the error on held-out positions (drawn apart from the fitted ones).
The held-out error of the weight-only stage and of the refitted one are reported per layer (``details["out_err"]``,
``details["refit_err"]``); when no ridge lowers the held-out error the weight-only weights are kept, so the refit
never makes a layer worse there.

Besides those held-out *positions*, a seeded fifth of the calibration *samples*
(:data:`~onnxconv.calibration.data.HOLDOUT_FRACTION`, whole batches for a fixed-batch model, none for fewer than
five) is not fitted on at all: :func:`~onnxconv.calibration.data.held_out_feeds` returns them so that a
verification runs on inputs like the calibration data the refit never saw.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..errors import OptionError
from ..graph import node_inputs_with_implicit, node_label, toposort
from ..passes.common import PassResult
from ..passes.finish import check_model, declare_initializers
from ..passes.shuffle import masked_reference
from ..progress import report
from ..providers import resolve_provider
from . import depthwise as dwfit
from .activations import TensorCache
from .data import CalibrationSet, load_calibration, model_inputs
from .layers import (LayerFit, changed_waves, check_depthwise, grouped_orders, is_grouped, plan_depthwise, plan_layer,
                     waves)
from .normal import NormalEquations, best_ridge
from .patches import sample_patches
from .settings import FitOptions, RefitSettings
from .stage import ConvTerm, LinearStage, Writer, stage_bias, stage_coefs

__all__ = ["refit", "refit_with"]


# --------------------------------------------------------------------------------------------------------------
# The refit


def _collect_targets(original: onnx.ModelProto, plans: Sequence[LayerFit], settings: RefitSettings) -> None:
    """One pass of the original model: each layer's output at its sampled positions (float32)."""
    outputs = {p.target: p.stage.elem_type for p in plans}
    size = settings.calibration.size
    for start, outs in settings.activations(original, outputs):
        for p in plans:
            y = outs[p.target] if p.order is None else outs[p.target][:, p.order]
            if p.t_fit is None or p.t_check is None:  # the first batch: both are made together
                p.out_spatial = tuple(int(d) for d in y.shape[2:])
                total = math.prod(p.out_spatial)
                fit0, chk0 = settings.draw(p.index, 0, total)
                p.n_fit, p.n_check = len(fit0), len(chk0)
                p.t_fit = np.zeros((size, p.n_fit, y.shape[1]), np.float32)
                p.t_check = np.zeros((size, p.n_check, y.shape[1]), np.float32)
            flat = y.reshape(y.shape[0], y.shape[1], -1)
            for i in range(y.shape[0]):
                fit, chk = settings.draw(p.index, start + i, flat.shape[2])
                p.t_fit[start + i] = flat[i][:, fit].T
                p.t_check[start + i] = flat[i][:, chk].T


def _targets(plan: LayerFit) -> tuple[np.ndarray, np.ndarray]:
    """The layer's original outputs at its fitted and its held-out positions (``samples x positions x C_out``)."""
    assert plan.t_fit is not None and plan.t_check is not None, "_collect_targets runs before any use"
    return plan.t_fit, plan.t_check


def _accumulate(plan: LayerFit, outs: Mapping[str, np.ndarray], start: int, count: int, acc: NormalEquations,
                settings: RefitSettings) -> None:
    """Add the stage's input patches at the layer's positions in ``outs`` (samples ``start`` on) to ``acc``."""
    stage = plan.stage
    g, ng = stage.group, stage.c_out // stage.group
    for i in range(count):
        sample = start + i
        fit, chk = settings.draw(plan.index, sample, math.prod(plan.out_spatial))
        t_fit, t_check = _targets(plan)
        pairs = (("fit", fit, t_fit[sample]), ("check", chk, t_check[sample]))
        for which, pos, t in pairs:
            if len(pos) == 0:
                continue
            patches = [sample_patches(outs[term.input][i], term, plan.out_spatial, pos) for term in stage.terms]
            for gi in range(g):
                x = np.concatenate(
                    [p[:, gi * term.c_in_group:(gi + 1) * term.c_in_group, :].reshape(len(pos), -1)
                     for p, term in zip(patches, stage.terms)], axis=1)
                acc.add(which, gi, x, t[:, gi * ng:(gi + 1) * ng])


def refit(
    original: onnx.ModelProto,
    result: PassResult,
    calibration: CalibrationSet,
    options: FitOptions = FitOptions(),
    *,
    reference: onnx.ModelProto | None = None,
) -> PassResult:
    """Refit the linear stage of every rewritten layer of ``result`` to the original model's outputs.

    Args:
        original: the model the pass rewrote (weights loaded); gives the target outputs.
        result: the pass's result; not modified.
        calibration: inputs from :func:`~onnxconv.calibration.data.load_calibration` (checked against
            ``original``). A seeded share of the samples is held out and never fitted on
            (:meth:`~onnxconv.calibration.data.CalibrationSet.split` with ``options.seed``;
            :func:`~onnxconv.calibration.data.held_out_feeds` returns them, to verify the result on).
        options: the refit's knobs (:class:`~onnxconv.calibration.settings.FitOptions`: positions sampled,
            ridge, seed, onnxruntime providers and threads, whether depthwise kernels are refitted too).
        reference: the model ``result`` computes exactly up to channel orders, with the original's tensor names;
            every layer's output is then matched to it channel by channel. Needed when a layer's output
            channels were reordered by a pass run after the one that rewrote it; by default the shuffle pass's
            masked reference for grouped layers, none for separable.

    Returns:
        A new :class:`PassResult` with the refitted model. Each rewritten layer's ``refit_report`` (the end of
        its ``details``) gains ``out_err`` and ``refit_err`` (relative output error on held-out positions,
        weight-only vs refitted, with the refitted upstream network) and ``ridge``, or ``refit`` with the reason
        the layer was not refitted.

    Raises:
        OptionError: bad ``positions``/``check_fraction``/``ridge``. OnnxConvError: onnxruntime fails on the
        inputs. RewriteError: the refitted model fails the checker (it should not: only weights change).
    """
    options.validate()
    calibration, held = calibration.split(options.seed)  # held-out samples are for verification, never fitted
    settings = RefitSettings(calibration, options)
    model = onnx.ModelProto()
    model.CopyFrom(result.model)
    layers = [replace(c, refit_report=dict(c.refit_report)) for c in result.layers]
    plans: list[LayerFit] = []
    plan_of: dict[int, LayerFit] = {}
    for change in layers:
        if not change.rewritten:
            continue
        found = plan_layer(original, model, change, len(plans))
        if isinstance(found, str):
            change.refit_report["refit"] = found
            continue
        if options.depthwise:
            plan_depthwise(original, model, change, found)
        plans.append(found)
        plan_of[id(change)] = found
    grouped = {plan_of[id(c)].index for c in layers if id(c) in plan_of and is_grouped(c)}
    if plans and (grouped or reference is not None):
        # Without a reference only grouped layers have a reordered output; with one, any layer may.
        matched = plans if reference is not None else [p for p in plans if p.index in grouped]
        if reference is None:
            reference = masked_reference(original, result)
        skipped = grouped_orders(reference, model, matched, settings)
        for change in layers:
            plan = plan_of.get(id(change))
            if plan is not None and plan.index in skipped:
                change.refit_report["refit"] = skipped[plan.index]
                del plan_of[id(change)]
        plans = [p for p in plans if p.index not in skipped]
    for p in plans:
        check_depthwise(model, p)
    if plans:
        _collect_targets(original, plans, settings)
        _refit_waves(model, plans, settings)
    for change in layers:
        if id(change) in plan_of:
            change.refit_report.update(plan_of[id(change)].report)
    declare_initializers(model)  # a weight copied for a shared one is a new initializer: IR < 4 wants its input
    check_model(model, original)
    described = dict(result.options)
    described["calibration"] = {"source": calibration.source, "samples": calibration.size,
                                "held_out": 0 if held is None else held.size, "positions": options.positions,
                                "check_fraction": options.check_fraction,
                                "ridge": "auto" if options.ridge is None else options.ridge, "seed": options.seed,
                                "layers_refitted": sum(1 for p in plans if "ridge" in p.report),
                                "depthwise": options.depthwise}
    return PassResult(model=model, layers=layers, pass_name=result.pass_name, options=described)


class _WaveRuns:
    """The rewritten model's runs of one refit, in order, sharing the tensors that no later wave changes.

    Each wave runs the model once or twice (the depthwise inputs of its separable layers refitted whole, then the
    stage inputs of the others). Once a wave is refitted its layers never change again, so a tensor only waves
    ``< w`` change (:func:`~onnxconv.calibration.layers.changed_waves`) is *final* for a run of wave ``w``: its
    value is the same in every later run. Each run therefore keeps in a
    :class:`~onnxconv.calibration.activations.TensorCache` the final tensors it computes that a later run reaches
    first when walking back from what it fetches (the frontier, e.g. a layer's input, or the earlier tensor a
    skip connection or a concat reads); later runs are cut there instead of starting from the graph inputs. A
    held tensor that no later run reaches any more is dropped after each run; one that does not fit the
    cache's budget is simply recomputed, as without a cache.
    """

    def __init__(self, model: onnx.ModelProto, runs: Sequence[tuple[int, Collection[str]]],
                 changed: Mapping[str, int]) -> None:
        self.runs = [(w, frozenset(names)) for w, names in runs]
        self.changed = changed
        self.cache = TensorCache()
        self.done = 0
        self.producers = {o: n for n in model.graph.node for o in n.output if o}
        # Only tensors computed from the fed inputs are worth holding; the rest are constants, cheap to recompute.
        self.data = {i.name for i in model_inputs(model)}
        for node in toposort(model.graph.node):
            if any(i in self.data for i in node_inputs_with_implicit(node)):
                self.data.update(o for o in node.output if o)

    def _reached(self, first: int, stop: Collection[str]) -> set[str]:
        """The ``stop`` tensors that the runs from ``first`` on reach, walking back from what they fetch and not
        past a ``stop`` tensor (the tensors their cut-down copies would read from the cache)."""
        todo = [n for _, names in self.runs[first:] for n in names]
        seen: set[str] = set()
        reached: set[str] = set()
        while todo:
            name = todo.pop()
            if name in seen:
                continue
            seen.add(name)
            if name in stop:
                reached.add(name)
                continue
            node = self.producers.get(name)
            if node is not None:
                todo.extend(node_inputs_with_implicit(node))
        return reached

    def activations(self, model: onnx.ModelProto, outputs: Mapping[str, int], settings: RefitSettings,
                    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """:meth:`RefitSettings.activations` for the next run, reading and filling the cache."""
        wave, names = self.runs[self.done]
        assert names == set(outputs), "the runs are made in the order they were planned"

        def keep(made: frozenset[str]) -> set[str]:
            final = {t for t in made if self.changed.get(t, -1) < wave and t in self.data}
            return self._reached(self.done + 1, final | self.cache.names) & final

        yield from settings.activations(model, outputs, cache=self.cache, keep=keep)
        self.done += 1
        self.cache.keep_only(self._reached(self.done, self.cache.names))


def _refit_waves(model: onnx.ModelProto, plans: Sequence[LayerFit], settings: RefitSettings) -> None:
    """Refit the layers wave by wave, each wave on the activations of the model refitted so far."""
    writer = Writer(model)
    waves(model, [p.stage for p in plans])
    steps = []  # per wave: (the layers refitted whole, the others, the tensors each part reads)
    for wave in sorted({p.stage.wave for p in plans}):
        whole = [p for p in plans if p.stage.wave == wave and p.depthwise is not None]
        members = [p for p in plans if p.stage.wave == wave and p.depthwise is None]
        steps.append((wave, whole, members, {t.input: p.stage.elem_type for p in members for t in p.stage.terms}))
    runs = []
    for wave, whole, members, feature_names in steps:
        if whole:
            runs.append((wave, {p.depthwise.input for p in whole if p.depthwise is not None}))
        if members:
            runs.append((wave, set(feature_names)))
    shared = _WaveRuns(model, runs, changed_waves(model, plans))
    for k, (wave, whole, members, feature_names) in enumerate(steps):
        report(f"refit: wave {k + 1} of {len(steps)} ({len(whole) + len(members)} layer(s))", k, len(steps))
        if whole:
            _alternate(model, whole, writer, settings, shared)
        if not members:
            continue
        accs = {p.index: NormalEquations(p.stage.group, p.stage.features, p.stage.c_out // p.stage.group)
                for p in members}
        for start, outs in shared.activations(model, feature_names, settings):
            count = next(iter(outs.values())).shape[0]
            for p in members:
                _accumulate(p, outs, start, count, accs[p.index], settings)
        for p in members:
            p.report = _solve_and_write(p.stage, accs[p.index], writer, settings.ridges)
            if p.dw_note:
                p.report["depthwise"] = f"kernels kept: {p.dw_note}"
    writer.prune()


def _alternate(model: onnx.ModelProto, plans: Sequence[LayerFit], writer: Writer, settings: RefitSettings,
               shared: _WaveRuns) -> None:
    """Refit each plan's separable layer whole (depthwise kernels and pointwise stage, alternating), in place.

    One run of the (partly refitted) model gives every layer's depthwise input; its patches at the refit's own
    positions, with the original outputs there, give the moments
    :func:`onnxconv.calibration.depthwise.alternate` works from.
    """
    geometry: dict[int, ConvTerm] = {}
    moments: dict[int, tuple[dwfit.Moments, dwfit.Moments]] = {}
    layers: list[tuple[LayerFit, dwfit.Depthwise]] = []
    for p in plans:
        dw = p.depthwise
        assert dw is not None  # the caller passes the layers whose kernels are refitted
        layers.append((p, dw))
        geometry[p.index] = ConvTerm(dw.nodes[0], dw.input, "", dw.dw_shape, dict(dw.attrs, group=dw.channels))
        shape = (dw.group, dw.channels // dw.group, math.prod(dw.kernel), p.stage.c_out // dw.group)
        moments[p.index] = (dwfit.Moments(*shape), dwfit.Moments(*shape))
    names = {dw.input: p.stage.elem_type for p, dw in layers}
    for first, outs in shared.activations(model, names, settings):
        for p, dw in layers:
            z = outs[dw.input]
            t_fit, t_check = _targets(p)
            for i in range(z.shape[0]):
                sample = first + i
                fit, chk = settings.draw(p.index, sample, math.prod(p.out_spatial))
                for mom, pos, t in ((moments[p.index][0], fit, t_fit[sample]),
                                    (moments[p.index][1], chk, t_check[sample])):
                    if len(pos):
                        mom.add(sample_patches(z[i], geometry[p.index], p.out_spatial, pos), t)
    for p in plans:
        dw = p.depthwise
        assert dw is not None
        d0, a0 = dwfit.start(dw, p.order)
        ds, as_, report = dwfit.alternate(*moments[p.index], d0, a0, ridges=settings.ridges)
        report["samples"] = moments[p.index][0].n
        if "ridge" in report:
            _write_separable(writer, dw, *dwfit.weights(dw, ds, as_))
            for t in p.stage.terms:
                t.weight = t.node.input[1]
        p.report = report


def _write_separable(writer: Writer, dw: dwfit.Depthwise, dws: Sequence[np.ndarray], pws: Sequence[np.ndarray],
                     bias: np.ndarray) -> None:
    """Write a separable layer's depthwise and pointwise weights; the whole bias goes on the first 1x1 conv."""
    dtype = writer.stored(dw.nodes[0].input[1]).dtype
    for node, w in zip(dw.nodes, dws):
        writer.put(node, 1, w.astype(dtype), f"{node_label(node)}_refit_W")
    for k, (node, w) in enumerate(zip(dw.pointwise, pws)):
        writer.put(node, 1, w.astype(dtype), f"{node_label(node)}_refit_W")
        if k == 0:
            writer.put(node, 2, bias.astype(dtype), f"{node_label(node)}_refit_B")
        else:
            writer.drop_bias(node)


def _solve_and_write(stage: LinearStage, acc: NormalEquations, writer: Writer, ridges: Sequence[float],
                     ) -> dict[str, Any]:
    """Solve one stage's equations with the best of ``ridges`` and write the weights, unless that does not lower
    the held-out error (then the weight-only weights stay); returns the layer's report."""
    stored = {t.weight: writer.array(t.weight) for t in stage.terms}
    stored.update({t.node.input[2]: writer.array(t.node.input[2]) for t in stage.terms
                   if len(t.node.input) > 2 and t.node.input[2]})
    arrays = {name: a for name, a in stored.items() if a is not None}
    if len(arrays) < len(stored):
        return {"refit": "a weight or bias of the stage is not an initializer"}
    a0 = stage_coefs(stage, arrays, stage_bias(stage, arrays))
    before = acc.check_error(a0)
    best = best_ridge(acc, a0, ridges)
    report: dict[str, Any] = {"out_err": before, "samples": acc.samples}
    if best is None:
        report["refit"] = "singular normal equations"
        return report
    after = best.error
    if before is not None and after is not None and after >= before:
        report["refit_err"] = before
        report["refit"] = "kept weight-only: no ridge lowered the held-out error"
        return report
    writer.write(stage, best.coefs)
    report["refit_err"] = after
    report["ridge"] = best.ridge
    return report


def refit_with(original: onnx.ModelProto, result: PassResult, calibration: str | Path | CalibrationSet, *,
               provider: str = "cpu", threads: int | None = None, depthwise: bool = True) -> PassResult:
    """:func:`refit` with a provider by short name (cpu/cuda/...) and the calibration inputs as a loaded set or
    a path for :func:`~onnxconv.calibration.data.load_calibration`.

    Raises:
        OptionError: a bad calibration file or an unavailable provider (one line each).
    """
    options = FitOptions(providers=resolve_provider(provider).chain, threads=threads, depthwise=depthwise)
    calib = calibration if isinstance(calibration, CalibrationSet) else load_calibration(calibration, original)
    return refit(original, result, calib, options)

"""``separate --verify``: the rewrite and its input run in onnxruntime on the same inputs, output by output.

:func:`verify` chooses the inputs (``--inputs``, else the calibration samples the refit never fitted on, else
random normal ones), compares every output per channel (:func:`onnxconv.compare.compare_outputs`), evaluates
``--metric`` and holds ``--exact`` to its tolerance (:func:`exact_tolerance`), raising
:class:`~onnxconv.errors.RewriteError` before anything is written. It returns a :class:`Verification`: what the
command line prints, and the report's ``verify`` section (:meth:`Verification.to_dict`).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from . import compare
from .compare import Agreement
from .errors import RewriteError
from .metrics import MetricValue
from .planning.judge import Judge, concat_runs
from .requests import SeparateOutcome, SeparateRequest

__all__ = ["verify", "Verification", "exact_failures", "exact_precision", "exact_tolerance", "EXACT_TOLERANCE",
           "RANDOM_INPUTS"]

#: ``--exact --verify`` fails (and writes nothing) above this relative output error in float32.
EXACT_TOLERANCE = 1e-5

#: verify.inputs in the report when --verify runs on random inputs.
RANDOM_INPUTS = "random (standard normal, seed 0)"


@dataclass(frozen=True)
class Verification:
    """What ``--verify`` found: one :class:`~onnxconv.compare.Agreement` per output, the metric, and the inputs.

    Attributes:
        inputs: the inputs in words (the report's ``verify.inputs``): the --inputs file, the held-out calibration
            samples, or :data:`RANDOM_INPUTS` (with why, when --calibration held none out).
        agreements: per output, in the model's order.
        floors: with ``--exact`` and some output above :data:`EXACT_TOLERANCE`: per output, the original's own
            relative error between onnxruntime optimisation levels (its rounding noise); else empty.
        metric: ``--metric``'s value on the rewrite against the original, None without one.
        metric_spec: the ``--metric`` SPEC as given.
        held_out: the inputs were held-out calibration samples.
        on_calibration: ``--calibration`` was given and ``--inputs`` was not, so which inputs ran (held-out
            samples, or random ones because the set is too small) is worth saying.
    """

    inputs: str
    agreements: list[Agreement] = field(default_factory=list)
    floors: dict[str, float] = field(default_factory=dict)
    metric: MetricValue | None = None
    metric_spec: str | None = None
    held_out: bool = False
    on_calibration: bool = False

    def noise_floor(self, agreement: Agreement) -> float | None:
        """The original's own noise floor for an output above :data:`EXACT_TOLERANCE` (an output that is mostly
        rounding noise, worth a note), else None."""
        if agreement.output in self.floors and agreement.rel_error > EXACT_TOLERANCE:
            return self.floors[agreement.output]
        return None

    def to_dict(self) -> dict[str, Any]:
        """The report's ``verify`` section (docs/report-json.md)."""
        data: dict[str, Any] = {"inputs": self.inputs, "outputs": [a.to_dict() for a in self.agreements]}
        if self.metric is not None and self.metric_spec is not None:
            data["metric"] = {"spec": self.metric_spec, **self.metric.to_dict()}
        if self.floors:
            data["original_noise_floor"] = self.floors
        return data


def verify(request: SeparateRequest, outcome: SeparateOutcome) -> Verification | None:
    """Compare ``outcome``'s model with ``request.model`` in onnxruntime when the request verifies (``--verify``,
    ``--inputs`` or ``--metric``); None when it does not.

    The inputs: ``--inputs`` when given; else the held-out calibration samples (``outcome.held_out``: a refitted
    model is fitted to data like them, and random normal inputs can miss by 30x what it does on its data); else
    random normal ones.

    Raises:
        RewriteError: ``--exact`` and an output misses :func:`exact_tolerance` (and twice the original's own noise
            floor): nothing may be written.
        OnnxConvError: onnxruntime cannot run a model on the inputs.
    """
    if not request.verifies:
        return None
    inputs = request.inputs
    held_out = [] if inputs else (outcome.held_out or [])
    described = inputs or RANDOM_INPUTS
    if held_out:
        count = sum(int(next(iter(f.values())).shape[0]) for f in held_out)
        described = f"held-out calibration samples ({count} of {request.calibration})"
    elif request.calibration is not None and not inputs:
        described = f"{RANDOM_INPUTS}: --calibration {request.calibration} is too small to hold samples out"
    model = outcome.result.model
    agreements, floors, metric = _run_both(request.model, model, inputs, dict(request.input_shapes), request.batch,
                                           request.exact, held_out, outcome.judge)
    if request.exact:
        precision = exact_precision(model)
        tol = exact_tolerance(precision)
        bad = exact_failures(agreements, floors, precision is not None, tol)
        if bad:
            why = ("" if precision is None or tol == EXACT_TOLERANCE
                   else f" (16 eps of {precision[0]}, which the model computes in)")
            raise RewriteError(f"--exact: output '{bad[0].output}' differs by relative error "
                               f"{bad[0].rel_error:.2e} > {tol:g}{why}; nothing was written")
    return Verification(described, agreements, floors, metric, request.metric, bool(held_out),
                        request.calibration is not None and not inputs)


def _run_both(source: str, model: onnx.ModelProto, inputs: str | None, shapes: Mapping[str, Sequence[int]],
              batch: int | None, exact: bool, held_out: Sequence[Mapping[str, np.ndarray]] = (),
              judge: Judge | None = None) -> tuple[list[Agreement], dict[str, float], MetricValue | None]:
    """Run the input file and the rewritten model in onnxruntime on the same inputs.

    The inputs are ``held_out`` (feeds, one per run, outputs joined over them: the held-out calibration samples
    of :func:`onnxconv.calibration.held_out_feeds`) when given, else ``inputs`` (an .npz) or random normal ones.
    Returns one Agreement per output (each with its worst channel, on ``judge``'s channel axes), the task metric
    when ``judge`` has one (None otherwise) and, when ``exact`` and some output misses :data:`EXACT_TOLERANCE`, the
    original's own noise floor per output: the relative error between the original run with all onnxruntime
    optimisations and with none. An output that is mostly rounding noise (a near-zero probability map on random
    inputs) cannot agree better than that, whatever the rewrite.
    """
    ref = compare.session(source)
    new = compare.session(model)
    runs = list(held_out) or [compare.load_inputs(inputs, ref) if inputs else compare.make_inputs(ref, shapes, batch)]
    ref_runs = [compare.run_model(ref, f) for f in runs]
    new_runs = [compare.run_model(new, f) for f in runs]
    ref_out = concat_runs(ref_runs)
    axes = judge.channel_axes if judge is not None else {}
    agreements = compare.compare_outputs(ref_out, concat_runs(new_runs), axes)
    metric = judge.metric.evaluate(ref_runs, new_runs) if judge is not None and judge.metric is not None else None
    floors: dict[str, float] = {}
    if exact and any(a.rel_error > EXACT_TOLERANCE for a in agreements):
        plain_sess = compare.session(source, opt_level="disable")
        plain = concat_runs([compare.run_model(plain_sess, f) for f in runs])
        floors = {a.output: a.rel_error for a in compare.compare_outputs(ref_out, plain)}
    return agreements, floors, metric


#: Float element types, narrowest precision first: (ONNX type, name, machine epsilon).
_PRECISIONS = ((onnx.TensorProto.BFLOAT16, "bfloat16", 2.0 ** -7), (onnx.TensorProto.FLOAT16, "float16", 2.0 ** -10),
               (onnx.TensorProto.FLOAT, "float32", 2.0 ** -23), (onnx.TensorProto.DOUBLE, "float64", 2.0 ** -52))


def exact_precision(model: onnx.ModelProto) -> tuple[str, float] | None:
    """(name, eps) of the narrowest float type ``model`` computes in, or None when no graph output is a float.

    Looks at the graph outputs, the main graph's initializers and what its Cast nodes cast to: a model with
    float16 weights between float32 inputs and outputs (a ``keep_io_types`` export) still computes in float16.
    """
    outputs = {o.type.tensor_type.elem_type for o in model.graph.output}
    if not outputs & {t for t, _, _ in _PRECISIONS}:
        return None
    types = outputs | {t.data_type for t in model.graph.initializer}
    types |= {a.i for n in model.graph.node if n.op_type == "Cast" for a in n.attribute if a.name == "to"}
    return next(((name, eps) for t, name, eps in _PRECISIONS if t in types), None)


def exact_tolerance(precision: tuple[str, float] | None) -> float:
    """The relative output error ``--exact`` accepts: :data:`EXACT_TOLERANCE` (84 float32 eps), or 16 eps of a
    narrower type the model computes in (float16: 1.6e-2).

    A float16 model rounds every conv output to 11 significant bits, and the rewrite rounds at other points (each
    depthwise output, each branch of the sum), so the two cannot agree better than a few float16 eps (4e-4 to
    2.4e-3 measured on tiny models, where the original moves 6.6e-4 between onnxruntime optimisation levels);
    a wrong rewrite still misses by far more.
    """
    if precision is None:
        return EXACT_TOLERANCE
    return max(EXACT_TOLERANCE, 16 * precision[1])


def exact_failures(agreements: Sequence[Agreement], floors: Mapping[str, float], float32: bool,
                   tolerance: float = EXACT_TOLERANCE) -> list[Agreement]:
    """Outputs that fail ``--exact``: relative error above ``tolerance`` (:func:`exact_tolerance`) and above
    twice the original's own noise floor (see :func:`verify`). Only float outputs (``float32`` true: the
    model's outputs are float16/32/64, see :func:`exact_precision`) are held to it."""
    if not float32:
        return []
    return [a for a in agreements
            if a.rel_error > tolerance and a.rel_error > 2 * floors.get(a.output, 0.0)]

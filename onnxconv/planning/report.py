"""What the planner reports: each measured plan (:class:`PlanPoint`), the whole search (:class:`PlanReport`,
whose :meth:`~PlanReport.to_dict` is the ``plan`` section of ``--report``), a refusal that keeps what was
measured (:class:`PlanRefused`), the frontier table and the summary note."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, fields
from typing import Any

import onnx

from ..errors import OptionError
from ..tables import format_count
from .choose import LayerOptions
from .judge import Verdict

__all__ = ["PlanPoint", "PlanReport", "PlanRefused", "speed_text", "frontier_rows", "plan_note"]


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
    #: Per layer, the index of its chosen option (a refused plan: of the fastest plan, the last one considered).
    picks: list[int] = field(default_factory=list, repr=False)

    def choices(self) -> dict[str, str]:
        """Layer name -> its chosen option's label (``r=2``, ``G=4``), for the layers the plan rewrites."""
        return {lay.name: lay.options[p].label for lay, p in zip(self.layers, self.picks) if p}

    def to_dict(self) -> dict[str, Any]:
        """The report as JSON-ready figures (without the models); ``rounds`` is the frontier."""
        out = {f.name: getattr(self, f.name) for f in fields(self)
               if f.name not in ("layers", "reference", "round_models", "picks")}
        out["rounds"] = [dict(r) for r in self.rounds]
        picks = self.picks or [0] * len(self.layers)
        out["layers"] = [{"name": lay.name, "chosen": lay.options[pick].label,
                          "options": [asdict(o) for o in lay.options]} for lay, pick in zip(self.layers, picks)]
        return out


class PlanRefused(OptionError):
    """No plan meets what was asked (one line, with the closest measured figures); ``report`` holds every plan
    the search measured (its ``rounds``), so a caller can still show or keep the frontier."""

    def __init__(self, message: str, report: PlanReport) -> None:
        super().__init__(message)
        self.report = report


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


def plan_note(report: PlanReport, best: PlanPoint, verdict: Verdict, asked: str, points: Sequence[PlanPoint],
              model_iters: int | None) -> str:
    """The one-line summary of a chosen plan (the result's ``notes``): what was asked, where it was timed, how
    many plans were measured and how far the layer timings were off, and the chosen plan's figures."""
    ratios = [p.timing_ratio for p in points if p.timing_ratio > 0]
    off = (f"; the whole model saved {min(ratios):.2f}-{max(ratios):.2f}x what the layer timings promised"
           if ratios else "")
    fp32 = (f", {best.measured * report.quantized_speedup:.2f}x over the fp32 original"
            if report.quantized_speedup else "")
    where = report.provider if model_iters else "the --latency-command machine"
    on = where if report.precision == "fp32" else (
        f"{where}, {report.precision} (speed-ups over the quantized original, whose own error is "
        f"{report.quantized_original_error or 0.0:.3g})")
    worst = verdict.worst_channel
    where = (f" (worst channel: output '{worst['output']}' axis {worst['axis']} channel {worst['index']}; "
             f"whole-tensor {verdict.whole_error:.3g})" if worst else "")
    metric = (f", metric {verdict.metric.value:.3g}" + (f" ({verdict.metric.note})" if verdict.metric.note else "")
              if verdict.metric is not None else "")
    predicted = (f"predicted {speed_text(best.predicted)} from layer timings" if best.predicted < 1e6 else
                 "no prediction (the layers timed alone save more than the whole model takes)")
    rounds = f"median of {model_iters} interleaved rounds" if model_iters else "timed by --latency-command"
    return (f"plan: {asked} on {on}; {len(points)} plan(s) measured{off}; chosen: {predicted}, measured "
            f"{best.measured:.2f}x end to end ({rounds}){fp32}, error {best.error:.3g}{where}{metric} on "
            f"{report.error_inputs}")

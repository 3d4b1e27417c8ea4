"""How the planner judges a plan's outputs against the original's: the seam between measuring and deciding.

A plan is run on the held-out calibration samples beside the original, and :class:`Judge` turns the two sets of
outputs into a :class:`Verdict`:

* ``error``: the worst output's :attr:`onnxconv.compare.Agreement.error`, the larger of its whole-tensor relative
  error and its worst channel's error at that channel's own scale (:func:`onnxconv.compare.channel_errors`). This
  is what ``--max-output-error`` bounds: a YOLO head whose class scores are zeroed errs 1.0 here, though its
  whole-tensor error (``whole_error``, kept beside it) reads a few percent.
* ``metric``: the user's task metric (``--metric``, :mod:`onnxconv.metrics`) on the same outputs, one dict per
  held-out batch, when one is given; ``--min-metric`` bounds it from below.

:meth:`Judge.badness` folds both bounds into one number that is at most 1 exactly when a plan meets them, so one
search serves an error budget, a metric floor, or both.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from ..compare import compare_outputs
from ..errors import OptionError
from ..metrics import MetricValue, TaskMetric

__all__ = ["Judge", "Verdict", "concat_runs"]

Outputs = Sequence[Mapping[str, np.ndarray]]


def concat_runs(runs: Outputs) -> dict[str, np.ndarray]:
    """Outputs of several runs joined on the sample axis (a scalar output is stacked)."""
    return {k: np.concatenate([np.atleast_1d(r[k]) for r in runs]) for k in runs[0]} if runs else {}


@dataclass(frozen=True)
class Verdict:
    """One candidate's outputs judged against the original's (see the module docstring)."""

    error: float
    whole_error: float
    #: Per output: its worst channel (``{"axis", "index", "rel_error"}``), None for outputs without channels.
    worst_channels: dict[str, dict[str, Any] | None] = field(default_factory=dict)
    metric: MetricValue | None = None

    @property
    def worst_channel(self) -> dict[str, Any] | None:
        """The worst channel over all outputs, with its output's name."""
        best: dict[str, Any] | None = None
        for name, w in self.worst_channels.items():
            if w is not None and (best is None or w["rel_error"] > best["rel_error"]):
                best = {"output": name, **w}
        return best


@dataclass
class Judge:
    """What a plan must keep: the per-channel error (always measured), a task metric and its floor (optional).

    Args:
        metric: the user's metric (:func:`onnxconv.metrics.load_metric`), or None.
        min_metric: the lowest acceptable metric value (needs ``metric``).
        channel_axes: output name -> channel axis, where :func:`onnxconv.compare.channel_axis` should not guess.
    """

    metric: TaskMetric | None = None
    min_metric: float | None = None
    channel_axes: Mapping[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if self.min_metric is not None:
            if self.metric is None:
                raise OptionError("--min-metric needs --metric SPEC (the metric to hold)")
            if not math.isfinite(self.min_metric):
                raise OptionError(f"--min-metric {self.min_metric}: must be a finite number")

    def verdict(self, reference: Outputs, candidate: Outputs) -> Verdict:
        """Judge ``candidate`` (one output dict per batch) against ``reference`` (the original's, same batches)."""
        agreements = compare_outputs(concat_runs(reference), concat_runs(candidate), self.channel_axes)
        worst = {a.output: (a.worst_channel.to_dict() if a.worst_channel else None) for a in agreements}
        value = self.metric.evaluate(reference, candidate) if self.metric is not None else None
        return Verdict(max((a.error for a in agreements), default=0.0),
                       max((a.rel_error for a in agreements), default=0.0), worst, value)

    def badness(self, error: float, metric: float | None, max_error: float | None, floor: float = 0.0) -> float:
        """How far a plan is from what is asked, scaled so that 1 is the limit: the largest of
        ``excess(error) / excess(max_error)`` and ``(1 - metric) / (1 - min_metric)`` (for ``min_metric`` < 1), where
        ``excess(e) = sqrt(e^2 - floor^2)`` is the part of an error a rewrite adds on top of ``floor`` (int8: the
        quantized original's own error; they add like independent noise). ``max_error`` 0 gives 0 when met
        exactly and infinity otherwise."""
        parts = []
        if max_error is not None:
            parts.append(_ratio(_excess(error, floor), _excess(max_error, floor)))
        if self.min_metric is not None and metric is not None:
            # (1 - metric) / (1 - M) for M < 1; shifted so that 1 is still the limit for M >= 1.
            scale = 1.0 - self.min_metric if self.min_metric < 1 else 1.0
            parts.append(1.0 + (self.min_metric - metric) / scale)
        return max(parts, default=0.0)

    def within(self, error: float, metric: float | None, max_error: float | None) -> bool:
        """Whether a plan meets every bound given."""
        if max_error is not None and error > max_error:
            return False
        return self.min_metric is None or (metric is not None and metric >= self.min_metric)


def _excess(error: float, floor: float) -> float:
    return math.sqrt(max(error * error - floor * floor, 0.0))


def _ratio(value: float, limit: float) -> float:
    if limit > 0:
        return value / limit
    return 0.0 if value <= 0 else math.inf

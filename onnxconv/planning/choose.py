"""The choice: one option per layer, the least ``sum error^2`` that saves enough time (a multiple-choice knapsack).

With ``T`` the measured latency of the whole model and ``d_o = t_keep - t_o`` the time an option saves, pick one
option per layer minimising ``sum e_o^2`` subject to ``sum d_o >= T (1 - 1/S)``, solved exactly by dynamic
programming over :data:`BUCKETS` time buckets, rounding savings down. Options slower than keeping the layer are
dropped. Predicted speed-up: ``T / (T - sum d_o)``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError

__all__ = ["KEEP", "BUCKETS", "Option", "LayerOptions", "Picks", "choose", "saved"]

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


#: One option index per layer (0: keep): a plan, as the search passes it around.
Picks = tuple[int, ...]


@dataclass
class LayerOptions:
    """A candidate layer and its options (the first is keep)."""

    name: str
    options: list[Option]

    @property
    def keep(self) -> Option:
        return self.options[0]


def choose(layers: Sequence[LayerOptions], model_s: float, target: float, buckets: int = BUCKETS,
           scale: float = 1.0) -> tuple[Picks, float]:
    """The option per layer that saves at least ``model_s * (1 - 1/target)`` seconds with the least
    ``sum error^2``, and its predicted speed-up ``model_s / (model_s - saved)``.

    ``scale`` is how much of the time the layers save alone the whole model actually saves (measured by
    :func:`~onnxconv.planning.planner.plan_rewrite`; 1 = layer savings add up as timed).

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
    if need <= 0:
        return (0,) * len(layers), 1.0
    unit = need / buckets
    best = np.full(buckets + 1, np.inf)
    best[0] = 0.0
    trace: list[tuple[np.ndarray, np.ndarray]] = []
    for lay in layers:
        new = np.full(buckets + 1, np.inf)
        pick = np.zeros(buckets + 1, dtype=np.int64)
        prev = np.arange(buckets + 1)
        for oi, o in enumerate(lay.options):
            gain = lay.keep.latency_s - o.latency_s
            if oi and gain <= 0:
                continue
            s = min(buckets, int(math.floor(gain / unit))) if oi else 0
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
    backwards = []
    for pick, prev in reversed(trace):
        backwards.append(int(pick[state]))
        state = int(prev[state])
    picks = tuple(reversed(backwards))
    # Layers timed alone can add up to more than the whole model (fusions, per-run overhead): the prediction is
    # then unbounded, and only the end-to-end measurement says where the plan lands.
    return picks, model_s / max(model_s - scale * saved(layers, picks), 1e-9 * model_s)


def saved(layers: Sequence[LayerOptions], picks: Picks) -> float:
    """Seconds the options ``picks`` save, as timed layer by layer."""
    return sum(lay.keep.latency_s - lay.options[p].latency_s for lay, p in zip(layers, picks))

"""The search on measurements: which plans to measure, and which measured plan to return.

A plan is a value, one option index per layer (:data:`~.choose.Picks`); the search asks the knapsack
(:func:`~.choose.choose`) for plans and the :class:`~.measure.Measurer` for their points, and never changes
the layers it chooses among. The method is the planner's (:mod:`.planner`, step 5):

* :func:`search_target`: plans until one measures within ``S (1 +- tolerance)``, rescaling the layer savings
  by what each plan measured and bisecting a bracket of layer-timed savings;
* :func:`search_error`: the fastest plan within the error bound and metric floor, by regula falsi on the
  plans' estimated errors;
* :func:`pick`: the plan to return of those measured, or the one line that says why none can be.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from ..errors import OptionError
from .choose import BUCKETS, LayerOptions, Picks, choose, saved
from .judge import Judge
from .measure import Measurer
from .report import PlanPoint

__all__ = ["fastest", "choose_saving", "estimated", "choose_within", "search_target", "search_error", "pick"]


def fastest(layers: Sequence[LayerOptions]) -> Picks:
    """Every layer at its fastest option, as timed alone."""
    return tuple(int(np.argmin([o.latency_s for o in lay.options])) for lay in layers)


def choose_saving(layers: Sequence[LayerOptions], model_s: float, need: float) -> Picks | None:
    """The least-error options that save at least ``need`` seconds as timed layer by layer (None when no
    choice does). :func:`choose` takes the need as a target and a scale: ``model_s (1 - 1/2) / scale = need``.

    The knapsack rounds each saving down to ``need / BUCKETS``, losing up to one bucket per layer: asking for that
    much less keeps a bisection step that lands exactly on a plan's saving from being called unreachable."""
    need -= need * len(layers) / BUCKETS
    if need <= 0:
        return (0,) * len(layers)
    try:
        picks, _ = choose(layers, model_s, 2.0, scale=0.5 * model_s / need)
    except OptionError:
        return None
    return picks


def estimated(layers: Sequence[LayerOptions], picks: Picks) -> float:
    """A plan's estimated error ``sqrt(sum e_o^2)`` (the per-layer errors the choice minimises)."""
    return math.sqrt(sum(lay.options[p].error ** 2 for lay, p in zip(layers, picks)))


def choose_within(layers: Sequence[LayerOptions], model_s: float, most: float, limit: float) -> Picks | None:
    """The plan with the largest layer-timed saving whose estimated error is at most ``limit`` (None when no
    plan that saves time is). The least estimated error for a saving ``need`` (:func:`choose_saving`) grows
    with ``need``, so a bisection on ``need`` finds the largest feasible one; 24 halvings of ``[0, most]`` put it
    within 1e-7 of ``most``, each one knapsack of milliseconds."""
    lo, hi, best = 0.0, most, None
    for _ in range(24):
        mid = 0.5 * (lo + hi)
        picks = choose_saving(layers, model_s, mid)
        if picks is not None and estimated(layers, picks) <= limit:
            lo, best = mid, picks
        else:
            hi = mid
    if best is None or not any(best):
        return None
    return best


def search_target(m: Measurer, target: float, tolerance: float, rounds: int) -> None:
    """Measure plans until one lands within ``target (1 +- tolerance)`` (see :mod:`.planner`)."""
    layers, model_s = m.layers, m.model_s
    goal, ceiling = target * (1 - tolerance), target * (1 + tolerance)
    need_model = model_s * (1.0 - 1.0 / target)  # seconds the whole model must save
    top = fastest(layers)
    most = saved(layers, top)  # the largest layer-timed saving any plan has
    slow, fast = 0.0, math.inf  # bracket of layer-timed savings: measured too slow at <= slow, too fast at >= fast
    scale, how = 1.0, "target"
    fastest_seen = False
    picks: Picks | None = top
    for _ in range(max(1, rounds)):
        need = need_model / scale
        if how != "fastest" and not (slow < need < fast):
            need, how = 0.5 * (slow + min(fast, most)), "bisect"
        picks = choose_saving(layers, model_s, need) if need <= most else None
        if picks is None:
            if fastest_seen:
                break  # out of reach on the measured scale: the fastest plan was measured already
            picks, how = top, "fastest"  # the layer timings say no: measure the fastest plan before believing them
        if picks in m.seen():
            # The step lands on a plan measured already: bisect the bracket once, else the search is done.
            if how == "bisect":
                break
            picks = choose_saving(layers, model_s, 0.5 * (slow + min(fast, most)))
            if picks is None or picks in m.seen():
                break
            how = "bisect"
        p = m.measure(picks, how, scale)
        layer_saved = saved(layers, picks)
        fastest_seen = fastest_seen or how == "fastest" or layer_saved >= most
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


def search_error(m: Measurer, max_error: float | None, rounds: int) -> None:
    """The fastest plan within ``max_error`` and the metric floor: the fastest plan first; when it misses, regula
    falsi on the plans' *estimated* errors ``est = sqrt(sum e_o^2)``, between a plan within and one outside.

    The end-to-end error a plan adds grows with its estimated error (in int8 on top of the quantized original's
    own error ``q``, the two adding like independent noise: the search works on ``excess = sqrt(error^2 - q^2)``),
    and its metric falls; :meth:`~.judge.Judge.badness` folds both into one figure that is 1 at the bounds.
    The bracket starts at the original (``est`` 0; badness 0, or the quantized original's) and the fastest plan;
    the next plan is the one saving most (layer-timed) with ``est`` at most where the line between the bracket's
    ends crosses badness 1, kept at least a tenth of the bracket from either end; after the same end moved twice
    in a row it bisects instead (the Illinois remedy: near the fastest plan the error flattens, and the line kept
    landing just over E). A step onto a plan measured already bisects; when no plan saving time fits under a
    limit the smallest plan (the one least-error option that saves time) is measured. Tried and dropped:
    interpolating on the layer-timed saving (on ppocr_det, where a small saving already costs most of the error,
    every plan landed over E = 0.1 though a one-layer plan at 0.04 existed) and rescaling the estimated errors
    by the latest plan alone (one-sided from above: on ddddocr_det four plans at 0.100-0.108 for E = 0.1)."""
    layers, model_s, judge = m.layers, m.model_s, m.judge
    top = fastest(layers)
    most = saved(layers, top)
    p = m.measure(top, "fastest", 1.0)
    if judge.within(p.error, p.metric, max_error):
        return
    q = m.base_error

    def bad(point: PlanPoint) -> float:
        return judge.badness(point.error, point.metric, max_error, q)

    base = m.base_verdict
    goal = 1.0
    lo_x = judge.badness(q, base.metric.value if base and base.metric else None, max_error, q) if base else 0.0
    lo, hi, hi_x = 0.0, estimated(layers, top), min(bad(p), 1e6)
    moved: list[str] = []
    for _ in range(max(1, rounds) - 1):
        if hi <= 0 or hi - lo <= 0.02 * hi:
            break
        frac = (goal - lo_x) / (hi_x - lo_x) if hi_x > lo_x else 0.5
        if moved[-2:] in (["lo", "lo"], ["hi", "hi"]):
            frac = 0.5
        picks = choose_within(layers, model_s, most, lo + min(max(frac, 0.1), 0.9) * (hi - lo))
        if picks is not None and picks in m.seen():
            picks = choose_within(layers, model_s, most, 0.5 * (lo + hi))
        if picks is None:  # nothing saves time within the limit: the smallest plan, unless measured already
            picks = choose_saving(layers, model_s, 1e-6 * most)
        if picks is None or picks in m.seen():
            break
        est = estimated(layers, picks)
        p = m.measure(picks, "budget", 1.0)
        if judge.within(p.error, p.metric, max_error):
            lo, lo_x = max(lo, est), bad(p)
            moved.append("lo")
        else:
            hi, hi_x = min(hi, est), min(bad(p), 1e6)  # an infinite badness (budget 0) still orders the bracket
            moved.append("hi")


def _metric_text(p: PlanPoint) -> str:
    return f", metric {p.metric:.3g}" if p.metric is not None else ""


def pick(points: Sequence[PlanPoint], target: float | None, tolerance: float, max_error: float | None,
         fastest_measured: bool, int8: bool = False, judge: Judge | None = None) -> PlanPoint:
    """The plan to return (see :mod:`.planner`), or the one line that says why none can be."""
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

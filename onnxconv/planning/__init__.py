"""Hardware-aware planning: per layer keep, depthwise rank r or grouped G, to reach a measured speed-up.

Modules: :mod:`.candidates` (the layers and their options), :mod:`.estimate` (each option's error, weight-only
and after the refit), :mod:`.latency` (each option's measured time, cached), :mod:`.choose` (the knapsack),
:mod:`.build` (applying the choice), :mod:`.judge` (how a plan's outputs are judged: per-channel error, task
metric) and :mod:`.planner` (:func:`plan_rewrite`, which ties them together; its
docstring gives the method).
"""

from __future__ import annotations

from .build import build_plan
from .candidates import GROUP_CHOICES, RANK_CHOICES, Candidate, find_candidates
from .choose import BUCKETS, KEEP, LayerOptions, Option, choose
from .estimate import MAX_REFIT_FEATURES, option_errors
from .judge import Judge, Verdict
from .latency import LatencyCache, Quantizer, bench_pair, latency_key, measure_latencies
from .planner import PlanPoint, PlanRefused, PlanReport, concat_runs, frontier_rows, plan_from_file, plan_rewrite

__all__ = [
    "RANK_CHOICES", "GROUP_CHOICES", "BUCKETS", "KEEP", "MAX_REFIT_FEATURES",
    "Option", "LayerOptions", "PlanPoint", "PlanRefused", "PlanReport", "frontier_rows", "LatencyCache", "Quantizer",
    "Candidate",
    "find_candidates", "option_errors", "measure_latencies", "latency_key", "bench_pair", "choose", "build_plan",
    "plan_rewrite", "plan_from_file", "concat_runs", "Judge", "Verdict",
]

"""Hardware-aware planning: per layer keep, depthwise rank r or grouped G, to reach a measured speed-up.

Modules: :mod:`.options` (what is asked: :class:`PlanOptions`), :mod:`.candidates` (the layers and their
options), :mod:`.estimate` (each option's error, weight-only and after the refit), :mod:`.timer` (how models are
timed: onnxruntime here, or ``--latency-command`` on a board), :mod:`.latency` (each option's time, cached),
:mod:`.choose` (the knapsack), :mod:`.build` (applying a choice), :mod:`.judge` (how a plan's outputs are
judged: per-channel error, task metric), :mod:`.measure` (one plan built, refitted, timed and judged),
:mod:`.search` (which plans to measure and which to return), :mod:`.report` (the report, the frontier table)
and :mod:`.planner` (:func:`plan_rewrite`, which ties them together; its docstring gives the method).
"""

from __future__ import annotations

from .build import build_plan
from .candidates import GROUP_CHOICES, RANK_CHOICES, Candidate, find_candidates
from .choose import BUCKETS, KEEP, LayerOptions, Option, Picks, choose
from .estimate import MAX_REFIT_FEATURES, option_errors
from .judge import Judge, Verdict
from .latency import LatencyCache, Quantizer, latency_key, measure_latencies
from .options import (Goal, ModeOptions, PlanOptions, PrecisionOptions, RefitOptions, ShapeOptions,
                      TimingOptions)
from .planner import make_timer, plan_from_file, plan_rewrite
from .report import PlanPoint, PlanRefused, PlanReport, frontier_rows, speed_text
from .judge import concat_runs
from .timer import CommandTimer, OrtTimer, Timer

__all__ = [
    "RANK_CHOICES", "GROUP_CHOICES", "BUCKETS", "KEEP", "MAX_REFIT_FEATURES",
    "Option", "LayerOptions", "PlanPoint", "PlanRefused", "PlanReport", "frontier_rows", "LatencyCache", "Quantizer",
    "Candidate",
    "find_candidates", "option_errors", "measure_latencies", "latency_key", "choose", "build_plan", "Picks",
    "plan_rewrite", "plan_from_file", "concat_runs", "Judge", "Verdict", "speed_text", "make_timer",
    "PlanOptions", "Goal", "ModeOptions", "ShapeOptions", "RefitOptions", "TimingOptions", "PrecisionOptions",
    "Timer", "OrtTimer", "CommandTimer",
]

"""Time models with onnxruntime and compare their outputs: the library behind ``onnxconv bench``.

One module per concern; this package re-exports their public names, so ``from onnxconv.bench import bench``
and ``onnxconv.bench.BenchConfig`` keep working:

* :mod:`~onnxconv.bench.config`: options (:class:`BenchConfig`), results (:class:`BenchReport` and its parts)
  and the CI thresholds a report is judged by. Providers (:func:`resolve_provider`) live in
  :mod:`onnxconv.providers`, which calibration and planning use too; they are re-exported here.
* :mod:`~onnxconv.bench.runners`: one model's session with its inputs bound, in this process or a worker one;
  memory readings.
* :mod:`~onnxconv.bench.timing`: :func:`bench`, the interleaved rounds and the statistics of their times (how
  the clock is read is stated there).
* :mod:`~onnxconv.bench.profile`: onnxruntime's per-node times joined with the MACs of ``onnxconv stats``.
* :mod:`~onnxconv.bench.render`: the report as a table or as JSON.
"""

from __future__ import annotations

from ..providers import MAX_THREADS, PROVIDERS, Provider, ProviderError, resolve_provider
from .config import (DEFAULT_DURATION, FORMATS, MAX_DURATION, MIN_ROUNDS, BenchConfig, BenchReport, Memory, ModelResult, NodeTime,
                     Profile, ProviderRun, SpeedUp, Timing, check_thresholds, validate_thresholds)
from .profile import join_profile, parse_profile, profile_model
from .render import render
from .runners import current_rss_bytes, device_memory_bytes, peak_rss_bytes, session_providers
from .timing import ProgressFn, bench, speedup_stats, timing_stats

__all__ = [
    "BenchConfig", "BenchReport", "ProviderRun", "ModelResult", "Timing", "SpeedUp", "Memory", "NodeTime",
    "Profile", "Provider", "ProviderError", "PROVIDERS", "MAX_THREADS", "bench", "resolve_provider", "timing_stats",
    "speedup_stats", "validate_thresholds", "check_thresholds", "render", "FORMATS", "parse_profile",
    "join_profile", "profile_model", "current_rss_bytes", "peak_rss_bytes", "device_memory_bytes",
    "session_providers", "ProgressFn", "DEFAULT_DURATION", "MAX_DURATION", "MIN_ROUNDS",
]

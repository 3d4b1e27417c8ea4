"""Interleaved timing of several models with onnxruntime: :func:`bench`, the entry point of ``onnxconv bench``.

How the clock is read
    * Every model gets its own session with the same options (:func:`onnxconv.compare.session`). Session creation
      and the first run are timed on their own and never enter the statistics: the first run sizes the memory
      arena, and on CUDA/TensorRT picks kernels or builds engines.
    * Inputs are drawn once (random, from the first model's input specs, or read from an .npz file) and bound to
      every session with IO binding: the arrays become OrtValues once, on the provider's device (copied to the GPU
      once on CUDA), and outputs stay on that device, so a timed run holds the model and nothing else. On CUDA the
      run is synchronised (``IOBinding.synchronize_outputs``) before the clock is read.
    * ``warmup`` more runs per model are discarded; then models are timed in rounds of one run each, the order
      reversed every other round (A B, B A, A B, ...). Drift of a shared machine (other jobs, clock boost, heat)
      then hits every model alike, and no model always runs right after the same other one.
    * Speed-up of model m against the first model: per round r, ``ratio_r = t_first,r / t_m,r`` (> 1: m is
      faster); the report gives the median over rounds and the spread of the ratios (quartiles, 10th/90th
      percentiles). A ratio of two runs taken milliseconds apart cancels slow drift that a ratio of two means
      would keep.
    * With several models and more than one intra-op thread, idle threads of one session would spin-wait and
      steal cores from the next session's run; spinning is turned off then, and whenever there are more threads
      than usable cores (:func:`~onnxconv.compare.default_spinning`; ``BenchConfig.spinning`` overrides both).

Figures per model: mean, p50, p90, p99, min, max and sample stdev of the timed runs; throughput = batch / mean
(items per second, batch = first dim of the first input).
"""

from __future__ import annotations

import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict
from typing import Any

import numpy as np
import onnx

from ..compare import compare_outputs, default_spinning, load_inputs, make_inputs, usable_cores
from ..errors import OptionError
from ..model_io import load_model
from ..providers import Provider, resolve_provider
from .config import DEFAULT_DURATION, MIN_ROUNDS, BenchConfig, BenchReport, ModelResult, ProviderRun, SpeedUp, Timing
from .profile import profile_model
from .runners import Runner, WorkerRunner, mib, peak_rss_bytes

__all__ = ["bench", "timing_stats", "speedup_stats", "ProgressFn"]

#: ``progress(phase, done, total)``: called between runs (never inside a timed one).
ProgressFn = Callable[[str, float, float], None]


# --------------------------------------------------------------------------------------------------------------
# Statistics


def timing_stats(times: Sequence[float], batch: int = 1) -> Timing:
    """Mean, percentiles (linear interpolation), min/max and sample stdev of run times in seconds."""
    if not times:
        raise ValueError("no timed runs")
    t = np.asarray(times, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(t, [50, 90, 99]))
    mean = float(t.mean())
    return Timing(
        runs=len(t), mean_s=mean, p50_s=p50, p90_s=p90, p99_s=p99, min_s=float(t.min()), max_s=float(t.max()),
        stdev_s=float(t.std(ddof=1)) if len(t) > 1 else 0.0, throughput=batch / mean if mean > 0 else math.inf,
    )


def speedup_stats(ref_times: Sequence[float], times: Sequence[float]) -> SpeedUp:
    """Percentiles of the per-round ratios ``ref_times[r] / times[r]`` (> 1: faster than the reference)."""
    if len(ref_times) != len(times) or not times:
        raise ValueError("speed-up needs the same, non-zero number of rounds for both models")
    ratios = np.asarray(ref_times, dtype=np.float64) / np.asarray(times, dtype=np.float64)
    p10, p25, p50, p75, p90 = (float(v) for v in np.percentile(ratios, [10, 25, 50, 75, 90]))
    return SpeedUp(median=p50, p10=p10, p25=p25, p75=p75, p90=p90, rounds=len(ratios))


# --------------------------------------------------------------------------------------------------------------
# Benchmark


def _check_source(src: str | os.PathLike[str] | onnx.ModelProto) -> str | onnx.ModelProto:
    """Fail early, in one line, on a path that is not a loadable ONNX file (weights are not read)."""
    if isinstance(src, onnx.ModelProto):
        return src
    load_model(src)  # raises ModelLoadError with the reason; the parsed graph is dropped at once
    return str(src)


def _labels(models: Sequence[str | os.PathLike[str] | onnx.ModelProto], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(models):
            raise OptionError("give one name per model")
        base = list(names)
    else:
        base = [str(m) if not isinstance(m, onnx.ModelProto) else (m.graph.name or f"model{i}")
                for i, m in enumerate(models)]
    seen: dict[str, int] = {}
    out = []
    for b in base:  # the same file twice is a fair noise check: keep the rows apart
        seen[b] = seen.get(b, 0) + 1
        out.append(b if seen[b] == 1 else f"{b}#{seen[b]}")
    return out


def _draw_inputs(io: Any, cfg: BenchConfig) -> tuple[dict[str, np.ndarray], str]:
    if cfg.inputs:
        return load_inputs(cfg.inputs, io), f"from {cfg.inputs}"
    return make_inputs(io, cfg.input_shapes, cfg.batch, cfg.seed), f"random (normal floats, seed {cfg.seed})"


def _timed_rounds(runners: Sequence[Runner | WorkerRunner], cfg: BenchConfig,
                  progress: ProgressFn | None) -> tuple[list[list[float]], float]:
    """Time rounds of one run per model, alternating the order; (times per model, seconds spent)."""
    times: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    duration = None if cfg.iters is not None else (cfg.duration or DEFAULT_DURATION)
    start = time.perf_counter()
    rounds = 0
    while True:
        for i in (order if rounds % 2 == 0 else order[::-1]):
            times[i].append(runners[i].run_once())
        rounds += 1
        elapsed = time.perf_counter() - start
        if duration is None:
            done = rounds >= (cfg.iters or 1)
            if progress:
                progress("timing", rounds, cfg.iters or 1)
        else:
            done = elapsed >= duration and rounds >= MIN_ROUNDS
            if progress:
                progress("timing", min(elapsed, duration), duration)
        if done:
            return times, elapsed


def _auto_spinning(cfg: BenchConfig, n_models: int) -> bool | None:
    if cfg.spinning is not None:
        return cfg.spinning
    return False if n_models > 1 and cfg.threads != 1 else default_spinning(cfg.threads)


def _bench_provider(sources: Sequence[str | onnx.ModelProto], names: Sequence[str], provider: Provider,
                    cfg: BenchConfig, progress: ProgressFn | None) -> tuple[ProviderRun, dict[str, np.ndarray], str]:
    spinning = _auto_spinning(cfg, len(sources))
    runners: list[Runner | WorkerRunner] = []
    try:
        for src, name in zip(sources, names):
            if progress:
                progress(f"session {name}", len(runners), len(sources))
            cls = WorkerRunner if cfg.isolate else Runner
            runners.append(cls(src, name, provider, cfg, spinning))
        feeds, source_text = _draw_inputs(runners[0].io(), cfg)
        firsts, outputs = zip(*(r.bind(feeds) for r in runners))
        for k in range(cfg.warmup):
            if progress:
                progress("warm-up", k, cfg.warmup)
            for r in runners:
                r.run_once()
        times, elapsed = _timed_rounds(runners, cfg, progress)
        memories = [r.memory(isolated=cfg.isolate) for r in runners]
        session_s = [r.session_s for r in runners]
    finally:
        for r in runners:
            r.close()
    batch = _batch_of(feeds)
    models = []
    for i, name in enumerate(names):
        models.append(ModelResult(
            name=name, session_s=session_s[i], first_run_s=firsts[i], timing=timing_stats(times[i], batch),
            memory=memories[i], speedup=speedup_stats(times[0], times[i]) if i else None,
            agreement=compare_outputs(outputs[0], outputs[i], cfg.channel_axes) if i else [],
        ))
    run = ProviderRun(provider=provider.name, execution_providers=list(provider.chain), rounds=len(times[0]),
                      timed_s=elapsed, spinning=spinning, models=models)
    return run, feeds, source_text


def _batch_of(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 and first.shape[0] > 0 else 1


def bench(models: Sequence[str | os.PathLike[str] | onnx.ModelProto], config: BenchConfig | None = None, *,
          names: Sequence[str] | None = None, progress: ProgressFn | None = None) -> BenchReport:
    """Time ``models`` on every provider of ``config`` and compare each with the first one.

    Args:
        models: paths or ModelProtos; the first is the reference for speed-up and output agreement.
        config: options (defaults: CPU, 5 warm-up runs, 5 s of interleaved rounds).
        names: what to call the models in the report (default: their paths).
        progress: called between runs with (phase, done, total), e.g. to drive a progress bar.

    Raises:
        ProviderError: a provider is not available (before anything is loaded).
        OnnxConvError: a model does not load or run, inputs do not fit, outputs differ in shape.
    """
    import onnxruntime as ort  # lazy: ~150 ms to import, which commands that run no model skip

    cfg = config or BenchConfig()
    cfg.validate()
    if not models:
        raise OptionError("give at least one model")
    providers = [resolve_provider(p) for p in dict.fromkeys(cfg.providers)]
    labels = _labels(models, names)
    sources = [_check_source(m) for m in models]
    runs: list[ProviderRun] = []
    feeds: dict[str, np.ndarray] = {}
    source_text = ""
    for prov in providers:
        run, feeds, source_text = _bench_provider(sources, labels, prov, cfg, progress)
        runs.append(run)
    notes = []
    if cfg.profile:
        for prov, run in zip(providers, runs):
            for src, result in zip(sources, run.models):
                if progress:
                    progress(f"profile {result.name}", 0, 1)
                result.profile = profile_model(src, result.name, prov, cfg, feeds)
    if any(r.spinning is False for r in runs) and cfg.spinning is None:
        if default_spinning(cfg.threads) is False:
            notes.append(f"intra-op thread spinning turned off: {cfg.threads} threads on {usable_cores()} cores")
        else:
            notes.append("intra-op thread spinning turned off: several sessions take turns on the same cores")
    return BenchReport(
        runs=runs, inputs={k: list(v.shape) for k, v in feeds.items()}, input_source=source_text,
        batch=_batch_of(feeds), config=asdict(cfg), onnxruntime=ort.__version__,
        process_peak_rss_mb=mib(peak_rss_bytes()), notes=notes,
    )

"""The report of ``onnxconv bench`` as a readable table or as JSON."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

from ..tables import grid
from ..text import printable
from .config import BenchReport, Memory, Profile, ProviderRun

__all__ = ["render", "timer_object"]


def _ms(seconds: float) -> str:
    v = seconds * 1e3
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 10 else f"{v:.3f}" if v >= 1 else f"{v:.4f}"


def _grid(headers: Sequence[str], body: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """:func:`onnxconv.tables.grid` (which escapes the model labels, output and node names) with the first
    ``left`` columns left-aligned and the rest, figures, right-aligned."""
    return grid(headers, body, right=range(left, len(headers)))


def _opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _memory_cell(m: Memory) -> str:
    cell = _opt(m.rss_added_mb, ".1f")
    if m.rss_peak_mb is not None:
        cell += f" (peak {m.rss_peak_mb:.0f})"
    return cell


def _render_run(report: BenchReport, run: ProviderRun) -> list[str]:
    cfg = report.config
    threads = cfg.get("threads") or "default"
    lines = [
        f"provider {run.provider} ({', '.join(run.execution_providers)}), onnxruntime {report.onnxruntime}, "
        f"threads {threads}, opt level {cfg.get('opt_level')}, batch {report.batch}",
        f"{cfg.get('warmup')} warm-up runs excluded; {run.rounds} rounds timed interleaved (A B, B A, ...) "
        f"in {run.timed_s:.2f} s",
    ]
    headers = ["model", "session ms", "1st run ms", "mean ms", "p50", "p90", "p99", "min", "stdev", "items/s",
               "RSS +MiB", "speed-up (IQR)"]
    gpu = any(m.memory.device_mb is not None for m in run.models)
    if gpu:
        headers.insert(-1, "GPU MiB")
    body = []
    for m in run.models:
        t = m.timing
        su = "1.000x (reference)" if m.speedup is None else \
            f"{m.speedup.median:.3f}x ({m.speedup.p25:.2f}-{m.speedup.p75:.2f})"
        row = [m.name, _ms(m.session_s), _ms(m.first_run_s), _ms(t.mean_s), _ms(t.p50_s), _ms(t.p90_s),
               _ms(t.p99_s), _ms(t.min_s), _ms(t.stdev_s), f"{t.throughput:.1f}", _memory_cell(m.memory), su]
        if gpu:
            row.insert(-1, _opt(m.memory.device_mb, ".0f"))
        body.append(row)
    lines += _grid(headers, body)
    agreement = [(m.name, a) for m in run.models[1:] for a in m.agreement]
    if agreement:
        lines += ["", f"output agreement with {run.models[0].name} (same inputs):"]
        lines += _grid(["model", "output", "max abs err", "rel err", "worst channel (axis:index)", "cosine", "top-1"], [
            [n, a.output, f"{a.max_abs:.3g}", f"{a.rel_error:.3g}",
             "-" if a.worst_channel is None
             else f"{a.worst_channel.rel_error:.3g} ({a.worst_channel.axis}:{a.worst_channel.index})",
             f"{a.cosine:.6f}", "-" if a.top1 is None else f"{100 * a.top1:.1f}%"] for n, a in agreement
        ], left=2)
    for m in run.models:
        if m.profile is not None:
            lines += ["", *_render_profile(m.name, run.provider, m.profile)]
    return lines


def _render_profile(name: str, provider: str, p: Profile, top: int = 15) -> list[str]:
    lines = [f"profile of {name} [{provider}], mean of {p.runs} runs (onnxruntime profiler; MACs from onnxconv stats):"]
    body = []
    for n in p.nodes[:top]:
        layer = "" if n.layer is None or n.layer == n.node else n.layer
        body.append([n.node, n.op_type, f"{n.mean_us:.1f}", f"{n.p50_us:.1f}", f"{100 * n.share:.1f}%",
                     "-" if n.macs is None else f"{n.macs:,}",
                     "-" if n.macs_per_s is None else f"{n.macs_per_s / 1e9:.2f}", layer])
    headers = ["node", "op", "mean us", "p50 us", "share", "MACs", "GMAC/s", "layer"]
    lines += _grid(headers, body, left=2)
    if len(p.nodes) > top:
        lines.append(f"... {len(p.nodes) - top} more nodes (--format json lists all)")
    rate = p.joined_macs / (p.joined_us * 1e-6) / 1e9 if p.joined_us > 0 else 0.0
    share = p.joined_us / p.total_us if p.total_us > 0 else 0.0
    lines.append(f"nodes with MACs: {p.joined_macs:,} of {p.layer_macs:,} counted MACs in {p.joined_us:.1f} us "
                 f"({100 * share:.1f}% of node time, {rate:.2f} GMAC/s); all nodes {p.total_us:.1f} us per run")
    lines += [f"note: {n}" for n in p.notes]
    return lines


def _json_safe(value: Any) -> Any:
    """NaN/inf (an output full of NaN, a zero-time run) become null: strict JSON readers (jq, browsers) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def timer_object(report: BenchReport) -> dict[str, Any]:
    """What ``--format timer`` prints: the first model's median time on the first provider (``median_ms``, the one
    figure ``separate --latency-command`` reads), with its fastest run, the timed runs and where it ran."""
    run = report.runs[0]
    t = run.models[0].timing
    return {"median_ms": t.p50_s * 1e3, "min_ms": t.min_s * 1e3, "runs": t.runs, "provider": run.provider,
            "onnxruntime": report.onnxruntime}


def render(report: BenchReport, fmt: str = "table") -> str:
    """The report as a readable table or as JSON (seconds and raw values; see :meth:`BenchReport.to_dict`)."""
    if fmt == "json":
        return json.dumps(_json_safe(report.to_dict()), indent=2, allow_nan=False)
    if fmt == "timer":
        return json.dumps(_json_safe(timer_object(report)), allow_nan=False)
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in report.inputs.items())
    lines = [f"inputs: {shapes}, {report.input_source}"]
    for run in report.runs:
        lines += ["", *_render_run(report, run)]
    lines.append("")
    lines.append("speed-up: median over rounds of t(first model) / t(model), > 1 is faster")
    isolated = report.config.get("isolate")
    lines.append("RSS +MiB: resident memory added by the session and its first run"
                 + ("; peak: the worker process's peak RSS" if isolated else
                    " (later models may reuse memory freed by earlier ones: --isolate gives each its own process)")
                 + (f"; process peak RSS {report.process_peak_rss_mb:.0f} MiB" if report.process_peak_rss_mb else ""))
    lines += [f"note: {n}" for n in report.notes]
    # Every line quotes names from the models and paths (inputs, labels, notes): one escape here covers them all.
    return "\n".join(printable(line) for line in lines)

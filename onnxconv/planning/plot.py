"""The planner's frontier as a picture: every measured plan at (measured speed-up, held-out error), the chosen
plan marked, the original at (1, 0), the target and the error budget as lines; with ``--metric``, a second panel
puts the same plans at (measured speed-up, task metric), the original at (1, 1) and ``--min-metric`` as a line.

A person choosing a plan reads the trade-off off the picture: points to the right are faster, points lower lose
less; the frontier is their lower-right edge. matplotlib is an optional extra (``pip install 'onnxconv[plot]'``):
it is imported only here, with the Agg backend's canvas (no display, and the process-wide backend is left
alone). :func:`frontier_png` draws the PNG in memory, so a caller can stage it with its other outputs
(:class:`~onnxconv.model_io.StagedFiles`); :func:`plot_frontier` writes it on its own, atomically.
"""

from __future__ import annotations

import io
import os
from collections.abc import Mapping
from typing import Any

from ..errors import OnnxConvError
from ..model_io import StagedFiles

__all__ = ["require_matplotlib", "plot_frontier", "frontier_png"]

#: The one line a missing matplotlib gives.
MISSING = "--plot needs matplotlib, the 'plot' extra: pip install 'onnxconv[plot]'"


def require_matplotlib() -> None:
    """Raise the one-line error when matplotlib is not installed (checked before a plan that takes minutes)."""
    try:
        import matplotlib  # noqa: F401 - optional extra (~0.3 s to import): checked where its absence is handled
    except ImportError:
        raise OnnxConvError(MISSING) from None


def plot_frontier(plan: Mapping[str, Any], path: str | os.PathLike[str], title: str = "") -> None:
    """Draw the measured plans of a report's ``plan`` figures (:meth:`~onnxconv.planning.PlanReport.to_dict`)
    to the PNG ``path``, atomically (nothing is left at ``path`` unless the whole image was written).

    Raises:
        OnnxConvError: matplotlib missing, or the file cannot be written (one line each).
    """
    png = frontier_png(plan, title)
    with StagedFiles() as staged:
        staged.write(path, png, "--plot")
        staged.commit()


def frontier_png(plan: Mapping[str, Any], title: str = "") -> bytes:
    """The picture :func:`plot_frontier` draws, as PNG bytes.

    Raises:
        OnnxConvError: matplotlib missing.
    """
    require_matplotlib()
    # lazy: matplotlib's figure and canvas take ~1 s to import, and only --plot draws
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    rounds = list(plan.get("rounds", []))
    before = float(plan.get("macs_before") or 0) or 1.0
    with_metric = any(r.get("metric") is not None for r in rounds)
    fig = Figure(figsize=(12.0, 4.8) if with_metric else (7.0, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 2, 1) if with_metric else fig.add_subplot()
    xs = [float(r["measured"]) for r in rounds]
    ys = [float(r["error"]) for r in rounds]
    macs = [100.0 * float(r["macs"]) / before for r in rounds]
    dots = ax.scatter(xs, ys, c=macs, cmap="viridis", s=46, edgecolors="black", linewidths=0.5, zorder=3,
                      label="measured plans")
    if rounds:
        bar = fig.colorbar(dots, ax=ax)
        bar.set_label("conv MACs, % of the original")
    for r, x, y in zip(rounds, xs, ys):
        ax.annotate(f"{int(r['round']) + 1}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.scatter([1.0], [0.0], marker="s", s=60, color="grey", edgecolors="black", zorder=3, label="original")
    quantized = plan.get("quantized_original_error")
    if quantized is not None:  # int8: the speed-ups are over the quantized original, which has its own error
        ax.scatter([1.0], [float(quantized)], marker="D", s=50, color="white", edgecolors="black", zorder=3,
                   label=f"quantized original (error {float(quantized):.3g})")
    chosen = plan.get("chosen_round")
    pick = next((r for r in rounds if r["round"] == chosen), None)
    if pick is not None:
        ax.scatter([float(pick["measured"])], [float(pick["error"])], marker="*", s=320, facecolors="none",
                   edgecolors="red", linewidths=1.6, zorder=4,
                   label=f"chosen: {float(pick['measured']):.2f}x, error {float(pick['error']):.3g}")
    target = plan.get("target")
    if target:
        ax.axvline(float(target), color="tab:blue", linestyle="--", linewidth=1, label=f"target {float(target):g}x")
    budget = plan.get("max_output_error")
    if budget is not None:
        ax.axhline(float(budget), color="tab:orange", linestyle=":", linewidth=1.2, label=f"error budget {float(budget):g}")
    over = "the original" if quantized is None else "the quantized original"
    ax.set_xlabel(f"measured speed-up over {over} (x)")
    ax.set_ylabel("held-out error vs fp32 (worst output channel)")
    precision = plan.get("precision") or "fp32"
    ax.set_title(title or f"plans measured on {plan.get('provider', '?')}, {precision}", fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    if with_metric:
        _metric_panel(fig.add_subplot(1, 2, 2), plan, rounds, pick, over)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


def _metric_panel(ax: Any, plan: Mapping[str, Any], rounds: list[Mapping[str, Any]], pick: Mapping[str, Any] | None,
                  over: str) -> None:
    """The task metric of every measured plan against its speed-up (``--metric``)."""
    pts = [(float(r["measured"]), float(r["metric"]), int(r["round"])) for r in rounds if r.get("metric") is not None]
    ax.scatter([p[0] for p in pts], [p[1] for p in pts], s=46, color="tab:green", edgecolors="black",
               linewidths=0.5, zorder=3, label="measured plans")
    for x, y, k in pts:
        ax.annotate(f"{k + 1}", (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)
    ax.scatter([1.0], [1.0], marker="s", s=60, color="grey", edgecolors="black", zorder=3, label="original")
    quantized = plan.get("quantized_original_metric")
    if quantized is not None:
        ax.scatter([1.0], [float(quantized)], marker="D", s=50, color="white", edgecolors="black", zorder=3,
                   label=f"quantized original ({float(quantized):.3g})")
    if pick is not None and pick.get("metric") is not None:
        ax.scatter([float(pick["measured"])], [float(pick["metric"])], marker="*", s=320, facecolors="none",
                   edgecolors="red", linewidths=1.6, zorder=4, label=f"chosen: metric {float(pick['metric']):.3g}")
    metric = plan.get("metric") or {}
    if metric.get("min") is not None:
        ax.axhline(float(metric["min"]), color="tab:orange", linestyle=":", linewidth=1.2,
                   label=f"--min-metric {float(metric['min']):g}")
    ax.set_xlabel(f"measured speed-up over {over} (x)")
    ax.set_ylabel(f"task metric on held-out samples ({metric.get('spec', '--metric')}; 1 = as the original)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="lower left")

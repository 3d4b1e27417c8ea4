"""Render a :class:`~onnxconv.stats.StatsReport` as a table, JSON, CSV or Markdown.

Rendering is kept apart from counting so the numbers a user scripts against (JSON, CSV) are the raw integers,
and only the table and Markdown round them for reading.
"""

from __future__ import annotations

import csv
import io
import json
from collections.abc import Sequence
from dataclasses import asdict

from .stats import LayerStats, StatsReport
from .tables import format_count, grid
from .text import csv_cell, markdown_cell, printable

__all__ = ["FORMATS", "SORT_KEYS", "select_rows", "render"]

FORMATS = ("table", "json", "csv", "markdown")
SORT_KEYS = ("order", "macs", "params", "flops", "name")


def select_rows(report: StatsReport, sort: str = "order", top: int | None = None) -> list[LayerStats]:
    """Rows in the requested order (largest first for counts), cut to ``top``."""
    rows = list(report.layers)
    if sort in ("macs", "params", "flops"):
        rows.sort(key=lambda r: -(getattr(r, sort) or 0))
    elif sort == "name":
        rows.sort(key=lambda r: r.qualified_name)
    if top is not None:
        rows = rows[:top]
    return rows


def _dims(values: Sequence[int | None] | None) -> str:
    if values is None:
        return "?"
    return "x".join("?" if v is None else str(v) for v in values)


def _num(v: float) -> str:
    return str(int(v)) if float(v).is_integer() else f"{v:.2f}"


def _rf(r: LayerStats) -> str:
    """'RF/jump': '7/2' when every axis agrees, else per axis on both sides ('7x7/4x2')."""
    if r.receptive_field is None:
        return "-"
    rf, js = r.receptive_field, r.effective_stride or []
    if len(set(rf)) == 1 and len(set(js)) <= 1:
        return f"{_num(rf[0])}/{_num(js[0])}" if js else _num(rf[0])
    return "x".join(_num(v) for v in rf) + "/" + "x".join(_num(v) for v in js)


def _kind(r: LayerStats) -> str:
    k = r.kind or "?"
    if r.depth_multiplier and r.depth_multiplier > 1:
        k += f" x{r.depth_multiplier}"
    flags = [f for f, on in (("dilated", r.dilated), ("strided", r.strided)) if on]
    return k + (f" ({','.join(flags)})" if flags else "")


def _whatif(r: LayerStats, key: str) -> str:
    w = (r.whatif or {}).get(key)
    if not w or w.get("macs") is None:
        return "-"
    return f"{format_count(w['macs'])} ({w['macs_ratio']:.2f}x)"


def _table_rows(rows: Sequence[LayerStats]) -> list[list[str]]:
    out = []
    for r in rows:
        out.append([
            r.qualified_name, r.op_type, _kind(r), _dims(r.input_shape), _dims(r.output_shape),
            _dims(r.kernel_shape) if r.kernel_shape else "-",
            _dims(r.strides) if r.strides else "-", _dims(r.dilations) if r.dilations else "-",
            "-" if r.group is None else str(r.group),
            format_count(r.params), format_count(r.macs), format_count(r.flops),
            "?" if r.share is None else f"{100 * r.share:.1f}%", _rf(r),
            _whatif(r, "separable"), _whatif(r, "grouped"),
        ])
    return out


def _headers(groups: int) -> list[str]:
    return ["layer", "op", "kind", "input", "output", "kernel", "stride", "dil", "group", "params", "MACs",
            "FLOPs", "share", "RF/jump", "if separable", f"if grouped g={groups}"]


#: Right-aligned columns of the table: params, MACs, FLOPs, share.
_NUMERIC = frozenset({9, 10, 11, 12})


def _render_table(report: StatsReport, rows: Sequence[LayerStats]) -> str:
    lines = [f"model: {printable(report.model)}"] if report.model else []
    lines += grid(_headers(report.whatif_groups), _table_rows(rows), right=_NUMERIC)
    t = report.totals
    lines.append("")
    lines.append(
        f"total: {t['layers']} layers, params {format_count(t['params'])} ({t['params']:,}), "
        f"MACs {format_count(t['macs'])} ({t['macs']:,}), FLOPs {format_count(t['flops'])} ({t['flops']:,})"
        + (f"; {t['uncounted']} layer(s) not counted" if t.get("uncounted") else "")
    )
    lines.append(f"conventions: {report.conventions}")
    lines.append("RF/jump: receptive field / effective stride of the output w.r.t. the model input")
    for n in report.notes:
        lines.append(f"note: {printable(n)}")
    return "\n".join(lines)


def _render_markdown(report: StatsReport, rows: Sequence[LayerStats]) -> str:
    headers = _headers(report.whatif_groups)
    out = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    for b in _table_rows(rows):
        out.append("| " + " | ".join(markdown_cell(c) for c in b) + " |")
    t = report.totals
    out.append("")
    out.append(f"**Total**: {t['layers']} layers, params {t['params']:,}, MACs {t['macs']:,}, FLOPs {t['flops']:,}")
    out.append("")
    out.append(f"Conventions: {report.conventions}")
    for n in report.notes:
        out.append(f"\nNote: {printable(n)}")
    return "\n".join(out)


_CSV_FIELDS = ["path", "name", "op_type", "kind", "depth_multiplier", "dilated", "strided", "input_shape",
               "output_shape", "weight_shape", "kernel_shape", "strides", "pads", "dilations", "group", "auto_pad",
               "output_padding", "has_bias",
               "params", "macs", "flops", "share", "receptive_field", "effective_stride", "weight_source",
               "separable_params", "separable_macs", "grouped_params", "grouped_macs", "note"]


def _render_csv(rows: Sequence[LayerStats]) -> str:
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(_CSV_FIELDS)
    for r in rows:
        wi = r.whatif or {}
        sep, grp = wi.get("separable") or {}, wi.get("grouped") or {}
        vals = {
            **{k: getattr(r, k) for k in _CSV_FIELDS if hasattr(r, k)},
            "separable_params": sep.get("params"), "separable_macs": sep.get("macs"),
            "grouped_params": grp.get("params"), "grouped_macs": grp.get("macs"),
        }
        row = []
        for k in _CSV_FIELDS:
            v = vals.get(k)
            if isinstance(v, list):
                v = "x".join("?" if x is None else _num(x) for x in v)
            row.append(csv_cell(v))
        w.writerow(row)
    return buf.getvalue().rstrip("\n")


def render(report: StatsReport, fmt: str = "table", sort: str = "order", top: int | None = None) -> str:
    """The report as text in ``fmt`` (one of :data:`FORMATS`). JSON and CSV keep every row's raw integers;
    ``sort`` and ``top`` choose the rows shown, the totals always cover the whole model."""
    rows = select_rows(report, sort, top)
    if fmt == "json":
        d = report.to_dict()
        # --sort/--top pick and order the rows; the totals stay those of the whole model.
        d["layers"] = [asdict(r) for r in rows]
        return json.dumps(d, indent=2)
    if fmt == "csv":
        return _render_csv(rows)
    if fmt == "markdown":
        return _render_markdown(report, rows)
    return _render_table(report, rows)

"""``onnxconv separate``: a thin wrapper over :func:`onnxconv.requests.run_separate`.

The options become one :class:`~onnxconv.requests.SeparateRequest` (which checks their combinations); the
library checks the outputs (:func:`onnxconv.separate_io.check_outputs`), loads the model and dispatches to the
separable or shuffle pass, the planner and the refit, verifies (:func:`onnxconv.verify.verify`) and writes every
output, all or none (:func:`onnxconv.separate_io.write_result`). This module adds the terminal: the progress
bar, the per-layer table, the frontier, the verification lines and the summary. The table prints each pass's
``details`` through :func:`format_details`, which knows the keys of both passes and shows any other as
``key=value``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import click
import cloup
import onnx

from ..errors import OptionError
from ..model_io import OutputPaths, check_not_data, load_model
from ..passes.common import PassResult
from ..passes.separable import DEFAULT_FORM, FORMS, MIN_CHANNELS
from ..planning import frontier_rows
from ..progress import reporting
from ..requests import SeparateRequest, run_separate
from ..separate_io import check_outputs, write_refusal, write_result
from ..tables import format_count, grid
from ..text import printable
from ..verify import Verification, verify
from .options import CALIBRATION, JUDGING, PLANNING, RANK, SHAPE
from .progress import ProgressBar, progress_option

__all__ = ["separate", "format_details", "render_result", "summary_line", "UNCHANGED_EXIT"]

#: Exit status of --fail-if-unchanged when no conv was rewritten (errors exit 1, bench thresholds 3).
UNCHANGED_EXIT = 4


def _pct(v: Any) -> str:
    """A fraction as a percentage: one decimal under 10 %, none above (the table has 120 columns to share)."""
    if not isinstance(v, (int, float)):
        return str(v)
    p = 100 * float(v)
    return f"{p:.1f}%" if abs(p) < 10 else f"{p:.0f}%"


def format_details(details: Mapping[str, Any]) -> str:
    """One short cell in words for a pass's per-layer ``details``: what the layer became and what it cost, e.g.
    ``rank 2/9, weight err 3.1%, refit 70%->28%`` (rank 2 of at most 9, the weight's relative error, the layer's
    output error on the calibration samples before -> after the refit) or ``4 groups, keeps 93% of W`` (the
    share of the weight's squared norm the grouping keeps). The figures behind it (ridges, sample counts,
    per-channel data) are in ``--report``'s JSON. Text is escaped by :func:`~onnxconv.text.printable` (a detail
    may quote a name from the model).
    """
    d = dict(details)
    parts: list[str] = []
    if "rank" in d:
        top = d.get("max_rank")
        parts.append(f"rank {d['rank']}" + (f"/{top}" if top is not None else ""))
    if "groups" in d:
        parts.append(f"{d['groups']} groups")
    if "rel_error" in d:
        parts.append(f"weight err {_pct(d['rel_error'])}")
    elif "kept_energy" in d:
        parts.append(f"keeps {_pct(d['kept_energy'])} of W")
    if "out_err" in d and "refit_err" in d:
        parts.append(f"refit {_pct(d['out_err'])}->{_pct(d['refit_err'])}")
    elif isinstance(d.get("refit"), str):
        parts.append(f"refit: {d['refit']}")
    if d.get("forced"):
        parts.append("forced")
    if d.get("form") not in (None, DEFAULT_FORM):
        parts.append(f"{d['form']} form")
    return printable(", ".join(parts))


def _ratio(before: int | None, after: int | None) -> str:
    return f"{after / before:.3f}" if before and after is not None else "-"


def _times(before: int | None, after: int | None) -> str:
    return f" ({after / before:.3f}x)" if before and after is not None else ""


def render_result(result: PassResult) -> str:
    """The per-layer table (:func:`~onnxconv.tables.grid`, which escapes the names and reasons taken from the
    model) and the totals line; notes escaped by :func:`~onnxconv.text.printable`."""
    headers = ["layer", "op", "status", "details", "MACs", "after", "ratio"]
    rows = []
    for c in result.layers:
        after = c.macs_after if c.rewritten else c.macs_before
        detail = format_details(c.details) if c.rewritten else c.reason
        rows.append([c.name, c.op_type, "rewritten" if c.rewritten else "skipped", detail,
                     format_count(c.macs_before), format_count(after), _ratio(c.macs_before, after)])
    # Fits a 120-column terminal: long names keep their start and end (--report has them whole), long details
    # and reasons continue on the next line.
    out = grid(headers, rows, right={4, 5, 6}, max_widths={0: 24, 1: 12, 3: 44}, middle={0}, wrap={3})
    t = result.totals()
    out.append("")
    out.append(
        f"total: {t['layers']} convs, {t['rewritten']} rewritten, {t['skipped']} skipped; "
        f"MACs {format_count(t['macs_before'])} -> {format_count(t['macs_after'])}"
        f"{_times(t['macs_before'], t['macs_after'])}; "
        f"params {format_count(t['params_before'])} -> {format_count(t['params_after'])}"
        f"{_times(t['params_before'], t['params_after'])}"
    )
    for note in result.options.get("notes", []):
        out.append(f"note: {printable(note)}")
    return "\n".join(out)


def _echo_frontier(plan: Mapping[str, Any], title: str) -> None:
    """The planner's measured plans as a table (:func:`~onnxconv.planning.frontier_rows`) under ``title``."""
    headers, rows = frontier_rows(plan)
    click.echo("")
    click.echo(title)
    click.echo("\n".join(grid(headers, rows, right={2, 3, 4, 5, 6})))


def _input_dims(model: onnx.ModelProto) -> dict[str, list[int | str]]:
    inits = {t.name for t in model.graph.initializer}
    return {vi.name: [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
                      for d in vi.type.tensor_type.shape.dim]
            for vi in model.graph.input if vi.name not in inits}


def summary_line(original: onnx.ModelProto, result: PassResult) -> str:
    """One line closing a planned or int8 run, against the fp32 original: the measured speed-up (int8: over fp32,
    the product of the plan's ratio over the quantized original and the quantized original's over fp32), the
    held-out error with the worst channel, the metric, and the input shapes the written model made static.
    Empty for runs without the planner."""
    plan = result.options.get("plan")
    if not plan or plan.get("measured") is None:
        return ""
    measured = float(plan["measured"])
    q = plan.get("quantized_speedup")
    speed = f"{measured * float(q):.2f}x faster than the fp32 original" if q else f"{measured:.2f}x faster"
    if q:
        speed += f" ({measured:.2f}x over its own int8 quantization)"
    parts = [speed]
    worst = max(((name, w) for name, w in (plan.get("worst_channels") or {}).items() if w),
                key=lambda kv: kv[1]["rel_error"], default=None)
    error = f"held-out error {float(plan.get('error') or 0):.3g}"
    if worst is not None:
        name, w = worst
        error += f" (worst channel {w['index']} of output '{printable(name)}', axis {w['axis']})"
    parts.append(error)
    metric = plan.get("metric")
    if metric and metric.get("value") is not None:
        parts.append(f"metric {printable(str(metric.get('spec')))} {float(metric['value']):.3g}"
                     + (f" ({printable(str(metric['note']))})" if metric.get("note") else ""))
    before, after = _input_dims(original), _input_dims(result.model)
    fixed = [f"{printable(k)}={'x'.join(map(str, v))}" for k, v in after.items()
             if k in before and before[k] != v and all(isinstance(d, int) and d > 0 for d in v)]
    if fixed:
        parts.append("input shapes made static: " + ", ".join(fixed))
    return "summary: " + "; ".join(parts)


@cloup.command(align_option_groups=False)
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@cloup.option_group(
    "Output",
    click.option("-o", "--output", required=True, type=click.Path(path_type=str), metavar="FILE.onnx",
                 help="Where to write the result."),
    click.option("--report", "report_path", type=click.Path(path_type=str), default=None, metavar="FILE.json",
                 help="Also write the per-layer report, plan and verification as JSON (docs/report-json.md)."),
    click.option("--overwrite", is_flag=True, help="Allow -o to be the input file."),
    click.option("--fail-if-unchanged", is_flag=True,
                 help=f"Exit with status {UNCHANGED_EXIT} and write nothing when no conv was rewritten."),
    progress_option,
)
@cloup.option_group(
    "Mode",
    click.option("--mode", type=click.Choice(["separable", "shuffle", "mixed"]), default="separable",
                 show_default=True,
                 help="depthwise + pointwise (separable) or grouped + channel shuffle (shuffle); mixed: with the "
                      "planner, either one per layer."),
    click.option("--groups", type=click.IntRange(min=2), default=None, metavar="G", help="G for --mode shuffle."),
    click.option("--mixing", type=click.Choice(["energy", "shuffle"]), default="energy", show_default=True,
                 help="--mode shuffle: each conv keeps the most weight energy (energy), or stacked grouped convs "
                      "are joined by ShuffleNet channel shuffles (shuffle)."),
    click.option("--min-energy", type=click.FloatRange(0, 1), default=0.0, show_default=True, metavar="E",
                 help="--mode shuffle: leave convs whose grouping keeps less than E of the weight's squared norm "
                      "(0 to 1)."),
    click.option("--form", type=click.Choice(FORMS), default=DEFAULT_FORM, show_default=True,
                 help="Graph form of the separable stage (all compute the same)."),
)
@cloup.option_group(
    "Choosing ranks (separable: exactly one, or let the planner choose)",
    *RANK,
    click.option("--force", is_flag=True,
                 help="Rewrite layers even where the rank saves no MACs, and narrow ones; in shuffle mode, also "
                      "below --min-energy."),
    click.option("--min-channels", type=click.IntRange(min=1), default=MIN_CHANNELS, show_default=True,
                 metavar="C", help="Leave convs with fewer input channels (stems): their depthwise stage runs "
                                   "slowly."),
)
@cloup.option_group(
    "Which layers",
    click.option("--include", multiple=True, metavar="REGEX", help="Only nodes whose name matches (repeatable)."),
    click.option("--exclude", multiple=True, metavar="REGEX", help="Leave nodes whose name matches (repeatable)."),
)
@cloup.option_group(
    "Input shapes",
    *SHAPE,
    click.option("--fix-input-shape", is_flag=True,
                 help="Also write the --input-shape / --batch values into the output model's graph inputs "
                      "(static shapes for quantization tools; a symbolic batch becomes --batch or 1)."),
)
@cloup.option_group("Calibration and refit", *CALIBRATION)
@cloup.option_group("Planning (needs --calibration)", *PLANNING)
@cloup.option_group(
    "Verify: errors per channel, your metric",
    click.option("--verify", is_flag=True, help="Compare outputs of both models in onnxruntime on random inputs "
                 "(with --calibration: on its held-out samples)."),
    click.option("--inputs", type=click.Path(exists=True, dir_okay=False, path_type=str), default=None,
                 metavar="FILE.npz", help="Inputs for --verify from an .npz file (implies --verify)."),
    *JUDGING,
)
def separate(model: str, output: str, **options: Any) -> None:
    """Rewrite the standard convs of MODEL as depthwise + pointwise (or grouped + shuffle) subgraphs.

    Separable mode factors each input channel's weight slice by SVD: rank r gives r depthwise
    kernels and a 1x1 conv whose sum is the best rank-r approximation of the weight; the exact
    rank reproduces the conv. Choose ranks with one of --rank, --energy, --exact, --max-error or
    --budget, or let the planner choose them with --calibration and a target. Every conv is listed,
    rewritten or with the reason it was left.

    \b
    Examples, one per way of choosing ranks:
      onnxconv separate m.onnx -o small.onnx --rank 2 --verify
      onnxconv separate m.onnx -o small.onnx --energy 0.95 --verify
      onnxconv separate m.onnx -o exact.onnx --exact --verify
      onnxconv separate m.onnx -o small.onnx --max-error 0.1
      onnxconv separate m.onnx -o small.onnx --budget 0.5 --calibration calib.npz --report sep.json
      onnxconv separate m.onnx -o grouped.onnx --mode shuffle --groups 4 --verify
    \b
    The planner (measures every plan on --calibration's held-out samples):
      onnxconv separate m.onnx -o fast.onnx --calibration calib.npz --target-speedup 1.5
      onnxconv separate m.onnx -o safe.onnx --calibration calib.npz --max-output-error 0.05
      onnxconv separate det.onnx -o f.onnx --calibration calib.npz --metric boxes --min-metric 0.95
      onnxconv separate m.onnx -o int8.onnx --calibration calib.npz --precision int8 --max-output-error 0.05
    \b
    Timed on the board it ships to (README: "Timing on the target board"):
      onnxconv separate m.onnx -o fast.onnx --calibration calib.npz --target-speedup 1.5 \\
        --latency-command 'scp -q {model} b:/tmp/p.onnx && ssh b onnxconv bench /tmp/p.onnx --format timer'
    """
    bar = ProgressBar(options.pop("progress_mode"), delay=0.0)
    request = SeparateRequest(model=model, output=output, **options)
    request.validate()
    outputs = check_outputs(request)  # before any work: a refused plan writes --report and --plot too
    try:
        try:
            with reporting(bar):
                outcome = run_separate(request)
        finally:
            bar.close()  # the table and any error line print below a finished progress line
    except OptionError as e:
        _refused(request, outputs, e)
        raise
    result = outcome.result
    # Neither the model, its weights file, the report nor the plot may replace the input's external data.
    check_not_data(outputs, outcome.input_data_files, overwrite=request.overwrite)
    if request.fail_if_unchanged and not result.rewritten:
        click.echo(render_result(result))
        click.echo(f"no conv was rewritten (--fail-if-unchanged): nothing written to {output}", err=True)
        raise click.exceptions.Exit(UNCHANGED_EXIT)
    verification = verify(request, outcome)  # --exact that misses raises here: nothing is written
    write_result(request, outputs, outcome, verification)
    click.echo(render_result(result))
    if "plan" in result.options:
        _echo_frontier(result.options["plan"], "plans measured (the frontier; * = chosen):")
    _echo_validity(result)
    if verification is not None:
        _echo_verification(verification)
    line = summary_line(load_model(model), result)
    if line:
        click.echo(line)
    click.echo(f"wrote {printable(output)}")


def _refused(request: SeparateRequest, outputs: OutputPaths, error: OptionError) -> None:
    """When the planner refused (``error`` carries what it measured: :class:`onnxconv.planning.PlanRefused`),
    show the frontier and write the refusal's report and plot; raise ``error`` with what could not be written
    added. Any other error is left to the caller to raise."""
    refused = getattr(error, "report", None)
    if refused is None or not refused.rounds:
        return
    plan = refused.to_dict()
    _echo_frontier(plan, "plans measured (the frontier; none meets what was asked):")
    failed = write_refusal(request, outputs, str(error), plan)
    if failed:
        raise OptionError(f"{error}; {failed}") from error


def _echo_validity(result: PassResult) -> None:
    """The warning for an input that fails onnx.checker, and whether the result does too."""
    if result.options.get("input_invalid"):
        after = result.options.get("output_invalid")
        click.echo(f"warning: the input model is invalid ({printable(result.options['input_invalid'])}); "
                   + ("the result passes onnx.checker" if after is None else
                      f"the result, written anyway, is too ({printable(after)})"), err=True)


def _echo_verification(v: Verification) -> None:
    """What ``--verify`` found: which inputs (with --calibration), one line per output, the metric."""
    if v.on_calibration:
        # Say which: held-out samples, or (a note) random inputs because the set holds none out.
        click.echo(("verify on " if v.held_out else "note: verify on ") + printable(v.inputs))
    for a in v.agreements:
        worst = a.worst_channel
        where = (f", worst channel {worst.rel_error:.3g} (axis {worst.axis}, channel {worst.index})"
                 if worst is not None else "")
        click.echo(f"verify '{printable(a.output)}': max abs error {a.max_abs:.3g}, relative error {a.rel_error:.3g}"
                   f"{where}, cosine {a.cosine:.6f}" + (f", top-1 agreement {a.top1:.3f}" if a.top1 is not None else ""))
        floor = v.noise_floor(a)
        if floor is not None:
            click.echo(f"  note: the original itself differs by relative error {floor:.3g} between "
                       "onnxruntime optimisation levels on these inputs: this output is mostly rounding noise")
    if v.metric is not None:
        click.echo(f"verify metric {printable(str(v.metric_spec))}: {v.metric.value:.4g}"
                   + (f" on {v.metric.support} {v.metric.what}" if v.metric.support is not None else "")
                   + (f"; note: {v.metric.note}" if v.metric.note else ""))

"""``onnxconv separate``: a thin wrapper over :func:`onnxconv.requests.run_separate`.

The options become one :class:`~onnxconv.requests.SeparateRequest` (which checks their combinations); the
library loads the model and dispatches to the separable or shuffle pass, the planner and the refit, and verifies
(:func:`onnxconv.verify.verify`). This module adds what is about files and the terminal: output-path checks
before any work, the per-layer report, ``--report FILE.json`` and the write of every output, all or none
(:class:`~onnxconv.model_io.StagedFiles`). The report prints each pass's
``details`` through :func:`format_details`, which knows the keys of both passes and shows any other as
``key=value``.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import click
import cloup
import numpy as np
import onnx

from ..array_io import folder_reads
from ..errors import OnnxConvError, OptionError
from ..model_io import (INPUT_CLASH, StagedFiles, check_output_path, external_data_files, json_bytes, load_model,
                        same_file, save_model)
from ..passes.common import PassResult
from ..passes.separable import DEFAULT_FORM, FORMS, MIN_CHANNELS
from ..planning import frontier_rows
from ..planning.plot import frontier_png, require_matplotlib
from ..progress import reporting
from ..requests import SeparateRequest, run_separate
from ..tables import format_count, grid
from ..text import printable
from ..verify import Verification, verify
from .options import CALIBRATION, JUDGING, PLANNING, RANK, SHAPE
from .progress import ProgressBar, progress_option

__all__ = ["separate", "format_details", "render_result", "summary_line", "UNCHANGED_EXIT"]

#: Exit status of --fail-if-unchanged when no conv was rewritten (errors exit 1, bench thresholds 3).
UNCHANGED_EXIT = 4

#: Longest text detail shown in the table.


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


#: Weights above this many bytes go to an external data file (protobuf cannot serialise 2 GB in one message).
_EXTERNAL_ABOVE = 1_800_000_000


def _tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers (from dims and type, without touching the data) of the main graph."""
    total = 0
    for t in model.graph.initializer:
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 4
        total += size * int(np.prod(t.dims, dtype=np.int64))
    return total


#: Version of the --report JSON layout (docs/report-json.md): keys are only added; a key that changes meaning or
#: disappears bumps it.
REPORT_SCHEMA_VERSION = 1

def _echo_frontier(plan: Mapping[str, Any], title: str) -> None:
    """The planner's measured plans as a table (:func:`~onnxconv.planning.frontier_rows`) under ``title``."""
    headers, rows = frontier_rows(plan)
    click.echo("")
    click.echo(title)
    click.echo("\n".join(grid(headers, rows, right={2, 3, 4, 5, 6})))


def _data_clash(files: Sequence[str]) -> list[tuple[str, str]]:
    """``not_same_as`` pairs for :func:`check_output_path`: the input model's external data files."""
    return [(f, "is the input model's external data file (choose another file)") for f in files]


def _check_not_data(report_file: Path | None, plot_file: Path | None, clash: Sequence[tuple[str, str]]) -> None:
    """Refuse a ``--report`` or ``--plot`` that would replace one of the input's external data files."""
    if report_file is not None:
        check_output_path(report_file, "--report", not_same_as=list(clash))
    if plot_file is not None:
        check_output_path(plot_file, "--plot", not_same_as=list(clash))


def _write_refusal(report_file: Path | None, plot_file: Path | None, data: Mapping[str, Any]) -> str:
    """Write a refused plan's ``--report`` and ``--plot``, both or neither; returns what could not be written
    ("" when all was), for the refusal's one line."""
    try:
        with StagedFiles() as staged:
            if report_file is not None:
                staged.write(report_file, json_bytes(data), "--report")
            if plot_file is not None:
                staged.write(plot_file, frontier_png(data["plan"]), "--plot")
            staged.commit()
    except OnnxConvError as err:
        return str(err)
    return ""




def _read_by_run(request: SeparateRequest) -> list[tuple[str, str]]:
    """(path, what it is) of the files the run reads besides the model: ``--inputs`` and a ``--calibration``
    file (a calibration folder is :func:`_check_not_read`'s)."""
    files = []
    if request.inputs is not None:
        files.append((request.inputs, "the --inputs file"))
    if request.calibration is not None and not os.path.isdir(request.calibration):
        files.append((request.calibration, "the --calibration file"))
    return files


def _check_not_read(path: str | Path, option: str, request: SeparateRequest) -> None:
    """Refuse an output that would replace data the run reads (``--inputs``, ``--calibration``), or join a
    calibration folder's arrays (an .npy file there is read as one more input by the next run)."""
    for other, what in _read_by_run(request):
        if same_file(path, other):
            raise OptionError(f"{option} {path}: is {what}, which this run reads (choose another file)")
    folder = request.calibration
    if folder is not None and os.path.isdir(folder) and folder_reads(folder, path):
        raise OptionError(f"{option} {path}: is an .npy file in the --calibration folder, which this run reads "
                          "(choose another file)")




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
    """
    bar = ProgressBar(options.pop("progress_mode"), delay=0.0)
    request = SeparateRequest(model=model, output=output, **options)
    request.validate()
    # Checked before any work: a rename would replace a symlink or device by a regular file, and the report must
    # land neither on the input nor on the model it describes (compared by identity, not by spelling).
    check_output_path(output, "-o", not_same_as=[] if request.overwrite else [(model, INPUT_CLASH)])
    report_file = None
    if request.report_path:
        report_file = check_output_path(request.report_path, "--report", not_same_as=[
            (model, INPUT_CLASH), (output, "is the -o model too (choose another file)")])
    plot_file = None
    if request.plot_path:
        plot_file = check_output_path(request.plot_path, "--plot", not_same_as=[
            (model, INPUT_CLASH), (output, "is the -o model too (choose another file)"),
            *([(report_file, "is the --report file too (choose another file)")] if report_file else [])])
        require_matplotlib()  # before a plan that takes minutes
    # No output may replace the data the run reads: a refused plan writes --report and --plot too, so this holds
    # before any work, whatever the outcome.
    _check_not_read(output, "-o", request)
    _check_not_read(output + ".data", "-o", request)  # the model's own weights file, when it has one
    for path, option in ((report_file, "--report"), (plot_file, "--plot")):
        if path is not None:
            _check_not_read(path, option, request)

    try:
        try:
            with reporting(bar):
                outcome = run_separate(request)
        finally:
            bar.close()  # the table and any error line print below a finished progress line
    except OptionError as e:
        refused = getattr(e, "report", None)  # planning.PlanRefused: what the search measured before refusing
        if refused is None or not refused.rounds:
            raise
        plan = refused.to_dict()
        _echo_frontier(plan, "plans measured (the frontier; none meets what was asked):")
        # No model is written; the report and the picture of a refusal are complete in themselves, and a pipeline
        # reads from the report what the closest plans measure instead of parsing the error line.
        if report_file is not None or plot_file is not None:
            # As for a written plan: neither file may replace the input's external data (its graph points at it).
            data_files = [os.path.join(os.path.dirname(model), loc) for loc in external_data_files(load_model(model))]
            _check_not_data(report_file, plot_file, _data_clash(data_files))
        failed = _write_refusal(report_file, plot_file, {"schema_version": REPORT_SCHEMA_VERSION, "model": model,
                                                         "output": None, "refused": str(e), "plan": plan})
        if failed:
            raise OptionError(f"{e}; {failed}") from e
        raise
    result = outcome.result
    # The output's weights file, and the input's: none of these may be replaced by another file (the input's
    # weights would be lost while its graph still points at them).
    data_clash = _data_clash(outcome.input_data_files)
    if not request.overwrite:
        check_output_path(output, "-o", not_same_as=data_clash)
        for f, _ in data_clash:
            if same_file(output + ".data", f):
                raise OptionError(f"-o {output}: its external data file {output}.data would replace the input "
                                  "model's (choose another file)")
    # The plot too: a PNG renamed over the input's weights would lose them as surely as a report would.
    _check_not_data(report_file, plot_file, [
        *data_clash, (output + ".data", "is the -o model's external data file (choose another file)")])
    if request.fail_if_unchanged and not result.rewritten:
        click.echo(render_result(result))
        click.echo(f"no conv was rewritten (--fail-if-unchanged): nothing written to {output}", err=True)
        raise click.exceptions.Exit(UNCHANGED_EXIT)

    verification = verify(request, outcome)  # --exact that misses raises here: nothing is written
    external = outcome.external or _tensor_bytes(result.model) > _EXTERNAL_ABOVE
    # Every output is prepared under a temporary name beside its destination, then all are renamed at once: an
    # error or a signal before the commit (drawing the plot takes seconds) leaves none of them.
    with StagedFiles() as staged:
        save_model(result.model, output, source=model, overwrite_source=request.overwrite, external_data=external,
                   staged=staged)
        if report_file is not None:
            data = {"schema_version": REPORT_SCHEMA_VERSION, **result.to_dict()}
            data["model"], data["output"] = model, output
            if verification is not None:
                data["verify"] = verification.to_dict()
            staged.write(report_file, json_bytes(data), "--report")
        if plot_file is not None:
            staged.write(plot_file, frontier_png(result.options["plan"]), "--plot")
        staged.commit()

    click.echo(render_result(result))
    if "plan" in result.options:
        _echo_frontier(result.options["plan"], "plans measured (the frontier; * = chosen):")
    if result.options.get("input_invalid"):
        after = result.options.get("output_invalid")
        click.echo(f"warning: the input model is invalid ({printable(result.options['input_invalid'])}); "
                   + ("the result passes onnx.checker" if after is None else
                      f"the result, written anyway, is too ({printable(after)})"), err=True)
    if verification is not None:
        _echo_verification(verification)
    line = summary_line(load_model(model), result)
    if line:
        click.echo(line)
    click.echo(f"wrote {printable(output)}")


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

"""``onnxconv quantize``: a thin wrapper over :func:`onnxconv.accuracy.quantize_with_accuracy`.

Output paths are checked before any work (never the input model, its external data or the ``--calibration``
data); the quantized model is measured against fp32, timed against it (interleaved), and the model and
``--report`` are staged together (:class:`~onnxconv.model_io.StagedFiles`), so that both or neither are written.
A criterion that cannot be met writes nothing.
"""

from __future__ import annotations

import os
from dataclasses import asdict
from typing import Any

import click

from ..accuracy import (DEFAULT_MAX_OUTPUT_ERROR, AccuracyNotMet, AccuracyOptions, QuantizeResult,
                        quantize_with_accuracy, speedup_over_fp32, timing_feeds)
from ..bench import MAX_DURATION, MAX_THREADS, SpeedUp
from ..calibration import load_calibration
from ..compare import parse_channel_axes
from ..errors import OptionError
from ..metrics import load_metric
from ..model_io import (StagedFiles, check_not_data, check_not_read, check_output_paths, json_bytes,
                        load_with_weights, save_model)
from ..tables import grid
from ..text import printable
from ..progress import report, reporting
from ..planning.timer import CommandTimer
from .options import latency_options, shape_options
from .progress import ProgressBar, progress_option

__all__ = ["quantize", "render_quantize"]

#: Rounds of fp32 against int8 through --latency-command (each run is already a median over the board's runs).
QUANTIZE_ROUNDS = 5


#: Version of the quantize --report layout (docs/report-json.md, "onnxconv quantize --report"): keys are only
#: added; a key that changes meaning or disappears bumps it.
REPORT_SCHEMA_VERSION = 1


def _speed_text(speed: SpeedUp | None, timed_by: str = "") -> str:
    if speed is None:
        return "not measured"
    return (f"{speed.median:.2f}x (interquartile {speed.p25:.2f}-{speed.p75:.2f}x, median of {speed.rounds} "
            "interleaved rounds" + (f", timed by {timed_by}" if timed_by else "") + ")")


def render_quantize(result: QuantizeResult, speed: SpeedUp | None, metric_name: str = "", timed_by: str = "") -> str:
    """The report printed by ``onnxconv quantize``: settings, criterion, per-output errors, metric, kept-float
    groups with their contributions and the speed-up; names from the model escaped."""
    lines = [f"settings: {result.settings.describe()}; {result.settings_reason}",
             f"criterion: {result.criterion} on {result.held_out}: {'met' if result.met else 'NOT met'}", ""]
    every = {a.output: a for a in result.quantized_all.outputs}
    rows = []
    for a in result.measured.outputs:
        w = a.worst_channel
        b = every.get(a.output)
        before = (f"{b.worst_channel.rel_error:.3g} (axis {b.worst_channel.axis}, {b.worst_channel.index})"
                  if b is not None and b.worst_channel is not None else (f"{b.rel_error:.3g}" if b else "-"))
        rows.append([a.output, f"{a.rel_error:.3g}", f"{w.rel_error:.3g}" if w else "-",
                     f"axis {w.axis}, {w.index}" if w else "-", before])
    lines += grid(["output", "whole-tensor error", "worst channel", "channel", "all int8: worst channel"], rows,
                  right={1, 2})
    m, m0 = result.measured.metric, result.quantized_all.metric
    if m is not None:
        support = f" ({m.support} {m.what})" if m.support is not None else ""
        label = f"metric {printable(metric_name)}" if metric_name else "metric"
        lines.append(f"{label}: {m.value:.4g}{support}" + (f"; all int8: {m0.value:.4g}" if m0 is not None else ""))
        if m.note:
            lines.append(f"note: {printable(m.note)}")
    lines.append("")
    lines.append(f"kept float: {len(result.kept_float)} of {result.candidates} candidate group(s) "
                 f"({result.evaluations} model(s) measured)")
    if result.kept_float:
        # Each group's measured contribution: what the figures lose with it back in int8 (the others float).
        rows = [[", ".join(k.nodes), ", ".join(k.ops), f"{k.error_drop:.3g}",
                 f"{k.metric_gain:.3g}" if k.metric_gain is not None else "-"] for k in result.kept_float]
        lines += grid(["nodes", "ops", "error it removes", "metric it adds"], rows, right={2, 3})
    lines.append("")
    lines.append(f"speed-up over fp32: {_speed_text(speed, timed_by)}")
    return "\n".join(lines)


@click.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@click.option("-o", "--output", required=True, type=click.Path(path_type=str), help="Where to write the int8 model.")
@click.option("--calibration", required=True, type=click.Path(path_type=str), metavar="FILE.npz|DIR",
              help="Calibration samples (one array per model input, samples on the first axis); a seeded fifth "
                   "is held out to measure the quantized model on.")
@click.option("--max-output-error", type=click.FloatRange(0, min_open=True), default=None, metavar="E",
              help=f"Largest relative error of any output channel (each at its own scale) or whole output "
                   f"against fp32 on the held-out samples [default: {DEFAULT_MAX_OUTPUT_ERROR:g}, unless only "
                   "--min-metric is given].")
@click.option("--metric", "metric_spec", default=None, metavar="SPEC",
              help="Task metric judging the quantized model against fp32 (higher is better, 1 = behaves as the "
                   "original): top1, boxes[:conf=..,iou=..], path/to/file.py:fn or package.module:fn.")
@click.option("--min-metric", type=float, default=None, metavar="M", help="Keep nodes float until --metric >= M.")
@click.option("--channel-axis", "channel_axes", multiple=True, metavar="OUTPUT=AXIS",
              help="The channel axis of an output (repeatable; default: from its shape and values).")
@click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
              help="Quantized activations' type.")
@click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
              help="Quantized weights' type.")
@click.option("--report", "report_path", type=click.Path(path_type=str), default=None, metavar="FILE.json",
              help="Also write the settings, figures and kept-float groups as JSON.")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="onnxruntime intra-op threads for the measurements and the timing (default: one per core).")
@click.option("--duration", type=click.FloatRange(0, MAX_DURATION, min_open=True), default=5.0, show_default=True,
              help="Seconds of interleaved timing of fp32 against int8.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Which calibration samples are held out.")
@shape_options
@progress_option
@latency_options
def quantize(model: str, output: str, calibration: str, max_output_error: float | None, metric_spec: str | None,
             min_metric: float | None, channel_axes: tuple[str, ...], activation_type: str, weight_type: str,
             report_path: str | None, threads: int | None, duration: float, seed: int,
             input_shapes: dict[str, list[int]], batch: int | None, progress_mode: str,
             latency_command: str | None, latency_timeout: float) -> None:
    """Quantize MODEL to static QDQ int8 that keeps every output channel alive.

    Everything is quantized (onnxruntime's static quantizer, settings that do not saturate on
    this CPU: 7-bit weights on x86 without VNNI), then measured against fp32 on the held-out
    calibration samples, every output channel at its own scale. Until the worst channel is
    within --max-output-error (default 0.05) and --metric >= --min-metric, the fewest node
    groups are kept in float, each choice measured; convs stay int8.
    Prints the settings, the error of every output, the metric, the groups kept float with
    their measured contribution, and the speed-up over fp32. A criterion that not even
    all-but-convs in float meets is refused, with the closest figure, writing nothing.

    \b
    Examples:
      onnxconv quantize model.onnx -o int8.onnx --calibration calib.npz
      onnxconv quantize det.onnx -o int8.onnx --calibration calib.npz --metric boxes --min-metric 0.95
    """
    # The same checks as separate's, before any work: no output is the input, its weights, or the data read.
    outputs = check_output_paths(model, output, report_path)
    check_not_read(outputs, [(calibration, "the --calibration data")],
                   folder=calibration if os.path.isdir(calibration) else None)
    report_file = outputs.report
    options = AccuracyOptions(
        max_output_error=max_output_error, metric=load_metric(metric_spec) if metric_spec is not None else None,
        min_metric=min_metric, activation_type=activation_type, weight_type=weight_type,
        channel_axes=parse_channel_axes(channel_axes), seed=seed, threads=threads, input_shapes=input_shapes or None,
        batch=batch)
    options.validate()  # before the model and the calibration data are read
    timer = None
    if latency_command is not None:
        timer = CommandTimer(latency_command, latency_timeout, rounds=QUANTIZE_ROUNDS)
    elif latency_timeout != 600.0:
        raise OptionError("--latency-timeout applies to --latency-command")
    m, data_files = load_with_weights(model)
    check_not_data(outputs, data_files)  # the input's weights files: known once it is read
    calib = load_calibration(calibration, m)
    bar = ProgressBar(progress_mode, delay=0.0)
    try:
        with reporting(bar):
            if timer is not None:  # a wrong command fails now, not after minutes of quantizing
                report("quantize: one run of --latency-command on the fp32 model")
                timer.once(m, timing_feeds(m, calib))
            result = quantize_with_accuracy(m, calib, options)
            if timer is None:
                report("quantize: timing int8 against fp32 (interleaved)")
                speed = speedup_over_fp32(m, result.model, calib, threads, duration)
            else:
                report("quantize: timing int8 against fp32 through --latency-command")
                speed = timer.speedup(m, result.model, timing_feeds(result.model, calib))
    except AccuracyNotMet as e:
        raise AccuracyNotMet(f"{e}; nothing was written", e.result) from None
    finally:
        bar.close()
    with StagedFiles() as staged:
        save_model(result.model, output, source=model, staged=staged)
        if report_file is not None:
            data: dict[str, Any] = {"schema_version": REPORT_SCHEMA_VERSION, "model": model, "output": output,
                                    "metric": metric_spec, **result.to_dict(),
                                    "speedup": None if speed is None else asdict(speed)}
            staged.write(report_file, json_bytes(data), "--report")
        staged.commit()
    click.echo(render_quantize(result, speed, options.metric.name if options.metric is not None else "",
                               timed_by="--latency-command" if timer is not None else ""))
    click.echo(f"wrote {printable(output)}")


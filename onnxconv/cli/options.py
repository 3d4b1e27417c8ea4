"""Click options shared by the commands, one decorator per group, so that an option means the same thing
(name, type, range, help) wherever it appears.

* :func:`shape_options`: ``--input-shape NAME=DIMS`` (repeatable, parsed here once into ``{name: dims}``) and
  ``--batch N`` (1 to 2^63-1, click's range): stats, separate and bench.
* :func:`rank_options`: how separable ranks are chosen (``--rank``, ``--energy``, ``--exact``, ``--max-error``,
  ``--budget``): separate.
* :func:`calibration_options`: ``--calibration``, ``--kernel-refit/--no-kernel-refit``, ``--provider``, ``--threads``,
  ``--target-speedup``, ``--max-output-error``, ``--plot``, ``--precision`` and the int8 types: separate.
* :func:`judging_options`: how outputs are judged against the original's: ``--channel-axis OUTPUT=AXIS``
  (repeatable), ``--metric SPEC`` and ``--min-metric M``: separate and quantize (``--channel-axis`` on bench too).

Ranges are click's, so a value out of range is refused while parsing, naming the range. Combinations of options
are checked by the library (:class:`onnxconv.requests.SeparateRequest`), not here.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, TypeVar

import click

from ..providers import MAX_THREADS
from ..stats import INT64_MAX, parse_input_shape

__all__ = ["shape_options", "rank_options", "calibration_options", "judging_options", "channel_axis_option", "SHAPE",
           "LATENCY", "latency_options",
           "RANK", "CALIBRATION", "PLANNING", "JUDGING"]

F = TypeVar("F", bound=Callable[..., Any])


def _stack(*decorators: Callable[[F], F]) -> Callable[[F], F]:
    """Apply ``decorators`` so that the options appear in ``--help`` in the order given."""

    def apply(f: F) -> F:
        for d in reversed(decorators):
            f = d(f)
        return f

    return apply


def _parse_shapes(ctx: click.Context, param: click.Parameter, values: tuple[str, ...]) -> dict[str, list[int]]:
    # An OptionError here becomes the CLI's one Error: line like any library error.
    return dict(parse_input_shape(v) for v in values)


#: ``--input-shape`` (as ``input_shapes``: ``{name: [dims]}``) and ``--batch``.
SHAPE = (
    click.option("--input-shape", "input_shapes", multiple=True, metavar="NAME=1x3x224x224", callback=_parse_shapes,
                 help="Set a graph input's shape (repeatable); needed for symbolic dims that --calibration or "
                      "--inputs do not fix."),
    click.option("--batch", type=click.IntRange(1, INT64_MAX), default=None, metavar="N",
                 help="Value for symbolic batch dims (default 1)."),
)


def shape_options(f: F) -> F:
    """:data:`SHAPE` as plain options (stats, bench)."""
    return _stack(*SHAPE)(f)


#: The separable rank policy: exactly one of these (checked by the request). Ranges are said in the help text
#: in words; the metavar names the value.
RANK = (
    click.option("--rank", type=click.IntRange(min=1), default=None, metavar="R", help="Same rank R in every layer."),
    click.option("--energy", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="E",
                 help="Smallest rank keeping a fraction E of squared singular values (0 < E <= 1)."),
    click.option("--exact", is_flag=True,
                 help="The exact rank min(C_out/g, K) everywhere (no MAC saving; implies --force); a "
                      "layer whose factors are not exact in its dtype stays as it was."),
    click.option("--max-error", type=click.FloatRange(0, 1, max_open=True), default=None, metavar="F",
                 help="Smallest rank whose relative weight error is at most F (0 <= F < 1)."),
    click.option("--budget", type=click.FloatRange(0, 1, min_open=True), default=None, metavar="F",
                 help="Whole model at most F times the original conv MACs (0 < F <= 1)."),
)


def rank_options(f: F) -> F:
    """:data:`RANK` as plain options."""
    return _stack(*RANK)(f)


#: Refitting on calibration data: ``--calibration``, ``--kernel-refit``, ``--provider``, ``--threads``.
CALIBRATION = (
    click.option("--calibration", type=click.Path(path_type=str), default=None, metavar="FILE.npz|DIR",
                 help="Refit each rewritten layer by least squares to the original's outputs on these inputs "
                      "(one array per model input, samples on the first axis)."),
    click.option("--kernel-refit/--no-kernel-refit", default=True, show_default=True,
                 help="With --calibration: refit separable layers' depthwise kernels together with the 1x1 "
                      "stage (lower per-layer error; several times the refit time). --no-kernel-refit refits "
                      "the 1x1 stage only."),
    click.option("--provider", default="cpu", show_default=True,
                 help="onnxruntime provider that runs the model for --calibration and --target-speedup: cpu, "
                      "cuda or tensorrt."),
    click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
                 help="onnxruntime intra-op threads for --calibration's runs and the planner's timings: plan "
                      "for the threads the model is deployed with (default: onnxruntime's, one per core)."),
)

#: ``--latency-command`` / ``--latency-timeout``: timing on the target board (separate's planner, quantize).
LATENCY = (
    click.option("--latency-command", default=None, metavar="CMD",
                 help="Time on the target board instead of here (separate: every layer option and plan of the "
                      "planner; quantize: int8 against fp32). CMD runs through sh with {model} (and {inputs}, an "
                      ".npz of the inputs) standing for a path, and prints one JSON object with median_ms, as "
                      "`onnxconv bench MODEL --format timer` does. {model} may stand bare or in double quotes, not "
                      "in single ones."),
    # The bound is planning.timer.MAX_TIMEOUT_S (a test checks they agree): planning is not imported here, since
    # these options load with every command, `stats` and `--help` included.
    click.option("--latency-timeout", type=click.FloatRange(0, 1e6, min_open=True), default=600.0,
                 show_default=True, metavar="SECONDS",
                 help="--latency-command: seconds one run may take before it counts as failed."),
)

#: Planning: ``--target-speedup``, ``--max-output-error``, ``--plot``, ``--precision`` and the int8 types.
PLANNING = (
    click.option("--target-speedup", type=click.FloatRange(0, min_open=True), default=None, metavar="S",
                 help="Choose per layer keep / rank r (or G with --mode shuffle) from latencies measured on "
                      "--provider and errors on --calibration, to reach S times faster with the least error; "
                      "verified end to end."),
    click.option("--max-output-error", type=click.FloatRange(0), default=None, metavar="E",
                 help="Plan the fastest rewrite whose end-to-end relative output error on the held-out "
                      "calibration samples, after the refit, is at most E: every output channel at its own "
                      "scale, the worst one counts (with --target-speedup: both must hold)."),
    click.option("--plot", "plot_path", type=click.Path(path_type=str), default=None, metavar="FILE.png",
                 help="With the planner: draw every measured plan (speed-up vs held-out error, the chosen one "
                      "marked) to FILE.png (needs the 'plot' extra: matplotlib)."),
    click.option("--precision", type=click.Choice(["fp32", "int8"]), default="fp32", show_default=True,
                 help="With the planner: the precision the model ships in. int8 times every option and plan "
                      "quantized (onnxruntime's static QDQ, calibrated on --calibration), measures errors "
                      "against the fp32 original and writes the quantized rewrite."),
    click.option("--activation-type", type=click.Choice(["uint8", "int8"]), default="uint8", show_default=True,
                 help="--precision int8: the quantized activations' type."),
    click.option("--weight-type", type=click.Choice(["int8", "uint8"]), default="int8", show_default=True,
                 help="--precision int8: the quantized weights' type."),
    *LATENCY,
)


def latency_options(f: F) -> F:
    """:data:`LATENCY` as plain options (``quantize``; ``separate`` has them in its "Planning" group)."""
    return _stack(*LATENCY)(f)


def calibration_options(f: F) -> F:
    """:data:`CALIBRATION` and :data:`PLANNING` as plain options."""
    return _stack(*CALIBRATION, *PLANNING)(f)


#: ``--channel-axis``: the same option on every command that compares outputs.
channel_axis_option = click.option(
    "--channel-axis", "channel_axis", multiple=True, metavar="OUTPUT=AXIS",
    help="Channel axis of an output for the per-channel errors (repeatable; default: found from its shape, e.g. 1 "
         "for N x (4+C) x A and NCHW, 2 for N x A x (5+C)).")


#: How outputs are judged: ``--channel-axis``, ``--metric``, ``--min-metric``.
JUDGING = (
    channel_axis_option,
    click.option("--metric", default=None, metavar="SPEC",
                 help="Your task metric, judged on the held-out samples beside the errors (implies --verify): "
                      "top1, boxes (YOLO detection F1; boxes:conf=0.3,iou=0.5), path/to/file.py:function or "
                      "package.module:function, called as fn(reference, candidate) -> float, 1.0 = as the "
                      "original."),
    click.option("--min-metric", type=float, default=None, metavar="M",
                 help="With --metric: plan the fastest rewrite whose metric is at least M (with "
                      "--target-speedup: the best metric that reaches S)."),
)


def judging_options(f: F) -> F:
    """:data:`JUDGING` as plain options."""
    return _stack(*JUDGING)(f)

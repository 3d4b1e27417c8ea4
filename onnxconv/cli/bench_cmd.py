"""``onnxconv bench``: a thin wrapper over :func:`onnxconv.bench.bench`, with a progress bar and CI thresholds."""

from __future__ import annotations

import sys
import time
from typing import Any

import click

from ..bench import FORMATS, BenchConfig, check_thresholds, render, validate_thresholds
from ..bench import bench as run_bench
from ..compare import OPT_LEVELS, parse_channel_axes
from ..errors import OptionError
from ..providers import MAX_THREADS, PROVIDERS
from ..text import printable
from .options import channel_axis_option, shape_options
from .progress import ProgressBar, progress_option

__all__ = ["bench", "THRESHOLD_EXIT"]

#: Exit status when the run worked but a --fail-if-slower / --max-error threshold failed (errors exit 1).
THRESHOLD_EXIT = 3


@click.command()
@click.argument("models", nargs=-1, required=True, type=click.Path(path_type=str))
@click.option("--provider", "-p", "providers", multiple=True, default=("cpu",), show_default=True,
              metavar="|".join(PROVIDERS), help="Execution provider (repeatable: each is timed in turn).")
@click.option("--warmup", type=int, default=5, show_default=True,
              help="Runs per model after the first, left out of the figures.")
@click.option("--iters", type=int, default=None, help="Timed rounds (one run of every model each).")
@click.option("--duration", type=float, default=None,
              help="Seconds of timed rounds per provider (default 5 when --iters is not given).")
@click.option("--threads", type=click.IntRange(1, MAX_THREADS), default=None,
              help="Intra-op threads (default: onnxruntime's, one per core).")
@click.option("--opt-level", type=click.Choice(OPT_LEVELS), default="all", show_default=True,
              help="onnxruntime graph optimisation level.")
@shape_options
@click.option("--inputs", "inputs_path", type=click.Path(dir_okay=False, path_type=str), default=None,
              help="Feed these arrays (.npz, one array per input name) instead of random inputs.")
@click.option("--seed", type=click.IntRange(0), default=0, show_default=True,
              help="Seed of the random inputs (numpy takes non-negative seeds).")
@click.option("--profile", is_flag=True,
              help="Per-node times from onnxruntime's profiler joined with the MACs of `onnxconv stats`.")
@click.option("--device-id", type=click.IntRange(0, 2**31 - 1), default=0, show_default=True,
              help="GPU for cuda/tensorrt (onnxruntime takes a C int).")
@click.option("--spinning", type=click.Choice(("auto", "on", "off")), default="auto", show_default=True,
              help="Spin-waiting of idle intra-op threads (auto: off when several models take turns "
                   "or --threads exceeds the cores).")
@click.option("--isolate", is_flag=True,
              help="Run each model's session in its own process, so its peak RSS is its own.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True,
              help="timer: only {\"median_ms\": ...} and a few figures, one line of JSON (what separate's "
                   "--latency-command reads).")
@progress_option
@click.option("--fail-if-slower", type=float, default=None, metavar="R",
              help="Exit 3 when a model takes more than R times as long as the first (speed-up below 1/R).")
@click.option("--max-output-error", "--max-error", "max_error", type=float, default=None, metavar="E",
              help="Exit 3 when an output's relative error against the first model exceeds E (whole tensor, or "
                   "its worst channel at the channel's own scale). The same measure as separate's "
                   "--max-output-error; --max-error is its old name.")
@channel_axis_option
def bench(models: tuple[str, ...], providers: tuple[str, ...], warmup: int, iters: int | None,
          duration: float | None, threads: int | None, opt_level: str, batch: int | None,
          input_shapes: dict[str, list[int]], inputs_path: str | None, seed: int, profile: bool, device_id: int,
          spinning: str, isolate: bool, fmt: str, progress_mode: str, fail_if_slower: float | None,
          max_error: float | None, channel_axis: tuple[str, ...]) -> None:
    """Time MODELS with onnxruntime and compare each with the first.

    \b
    Session creation and the first run are reported apart; --warmup runs are left out;
    then models run in interleaved rounds (A B, B A, ...) so that a busy machine slows
    all of them alike. Speed-up = median over rounds of t(first) / t(model), with its
    quartiles. Outputs on the same inputs are compared with the first model's: max abs
    error, relative error ||a-b||/||a|| (whole tensor, and the worst channel, each channel
    at its own scale), cosine, top-1 agreement for softmax outputs.

    \b
    Exit status: 0 ok, 1 error (e.g. a provider is not available), 3 a threshold failed.
    """
    validate_thresholds(fail_if_slower, max_error)  # before minutes of timing, not after
    if fmt == "timer" and (len(models) != 1 or len(providers) != 1):
        raise OptionError("--format timer prints one model's time on one provider (the object "
                          "--latency-command reads): give one MODEL and one --provider")
    cfg = BenchConfig(
        providers=providers, warmup=warmup, iters=iters, duration=duration, threads=threads, opt_level=opt_level,
        batch=batch, input_shapes=input_shapes, inputs=inputs_path, seed=seed,
        profile=profile, isolate=isolate, device_id=device_id, spinning={"auto": None, "on": True, "off": False}[spinning],
        channel_axes=parse_channel_axes(channel_axis),
    )
    cfg.validate()
    bar = ProgressBar(progress_mode)
    try:
        report = run_bench(list(models), cfg, progress=bar)
    finally:
        bar.close()
    click.echo(render(report, fmt))
    failures = check_thresholds(report, fail_if_slower, max_error)
    for f in failures:
        click.echo(f"FAIL: {printable(f)}", err=True)  # f quotes model paths and output names
    if failures:
        click.get_current_context().exit(THRESHOLD_EXIT)

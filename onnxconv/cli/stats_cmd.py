"""``onnxconv stats``: a thin wrapper over :func:`onnxconv.stats.analyze` and :mod:`onnxconv.report`."""

from __future__ import annotations

import click

from ..model_io import load_model
from ..report import FORMATS, SORT_KEYS, render
from ..stats import analyze
from .options import shape_options

__all__ = ["stats"]


@click.command()
@click.argument("model", type=click.Path(dir_okay=True, path_type=str))
@shape_options
@click.option("--format", "fmt", type=click.Choice(FORMATS), default="table", show_default=True)
@click.option("--sort", type=click.Choice(SORT_KEYS), default="order", show_default=True,
              help="Row order: graph order, or largest first.")
@click.option("--top", type=click.IntRange(min=1), default=None, help="Show only the first N rows.")
@click.option("--groups", type=click.IntRange(min=1), default=4, show_default=True,
              help="G of the 'if grouped with G groups' what-if column.")
@click.option("--all-ops", is_flag=True,
              help="Also count Gemm/MatMul/RNN/GRU/LSTM, so totals compare with published figures.")
def stats(model: str, input_shapes: dict[str, list[int]], batch: int | None, fmt: str, sort: str, top: int | None,
          groups: int, all_ops: bool) -> None:
    """Count params, MACs and FLOPs of every conv layer of MODEL.

    Rows cover Conv, ConvTranspose, ConvInteger and QLinearConv (1-D to 3-D), including
    those inside If/Loop/Scan bodies and model-local functions, with receptive field and
    effective stride (RF/jump, w.r.t. the model input), and what-if figures for standard
    convs: depthwise separable, and grouped with --groups G. Weights are never read, only
    their shapes. --format json is a stable interface (docs/stats-json.md).

    \b
    Conventions:
      MACs    multiply-accumulates: N*C_out*prod(out)*(C_in/g)*prod(k)
      FLOPs   exact multiplies + additions: 2*MACs with bias, 2*MACs - outputs without
      ConvTranspose  MACs over its input (scatter view): N*C_in*prod(in)*(C_out/g)*prod(k);
              FLOPs 2*MACs - buffer positions hit (+ outputs with bias)
      params  weight + bias elements (not scales or zero points)
    """
    m = load_model(model)
    report = analyze(m, name=model, input_shapes=input_shapes, batch=batch, all_ops=all_ops, groups=groups)
    click.echo(render(report, fmt, sort, top))

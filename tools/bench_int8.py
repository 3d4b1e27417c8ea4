"""Why the rewrites lose in int8 (issue 12): results in BENCHMARKS.md, section "int8 (issue 12)".

For each model (trained ones from realmodels/, and generated architectures from tools/archs.py):

1. Rewrite it with the library: :func:`onnxconv.passes.separable.separate` under one rank policy
   (``--budget``, else ``--rank``) in every ``--forms`` form, and :func:`onnxconv.passes.shuffle.group_shuffle`
   with ``--groups``; and (``--also-rank r``) every layer at rank r, where r = 1 makes every form one depthwise
   conv followed by one 1x1 conv, with no Add or Concat.
2. Quantize the original and every rewrite with :func:`onnxconv.quantize.quantize_static_qdq` (QDQ, calibrated
   on ``--calib`` image-like samples) in each ``--types`` setting (``u8s8``: uint8 activations, int8 weights,
   the quantizer's default and x86's VNNI fast path; ``s8s8``: int8 both), per-channel weights. Remedies tried
   on top (``--remedies``): per-tensor weights, the sum form's Adds left in float (``nodes_to_exclude``), convs
   quantized alone (``op_types_to_quantize=["Conv"]``), the rewrites' depthwise convs left in float.
3. Time all of them, fp32 and int8, in ONE interleaved run (:func:`onnxconv.bench.bench`, 1 intra-op thread,
   the fp32 original first; inputs: dark text on smooth light backgrounds for the OCR models, smooth random
   rectangles for the generated ones): fp32 speed-up = median over rounds of t(fp32 original) / t(model); int8 speed-up
   vs the int8 original = the ratio of the two models' median speed-ups against the fp32 original (one run,
   same rounds). Output agreement: relative error of every model's output against the fp32 original on a
   held-out image-like input (``bench`` feeds it from an .npz).
4. ``--layers`` (instead of the models): one 3x3 conv + Relu per shape of :data:`LAYERS` against its rank-1
   and rank-2 rewrites, fp32 and u8s8 in one interleaved run per shape: the latency ratio per layer shape,
   which says where the int8 rewrite loses.
5. ``--profile``: per-node times of chosen models (:func:`onnxconv.bench.profile_model`) summed per kernel
   class, where QLinearConv/Conv are split into dense kxk, pointwise, depthwise and grouped by reading the
   graph onnxruntime actually runs (saved with ``SessionOptions.optimized_model_filepath``), with the count
   of every op type in it: what onnxruntime fused, and what is left.

Usage::

    python tools/bench_int8.py [--models ddddocr_det ppocr_det ppocr_rec resnet18] [--budget 0.5] \\
        [--forms sum concat multiplier tiled] [--groups 2] [--types u8s8 s8s8] [--calib 4] [--iters 12] \\
        [--profile] [--remedies]
    python tools/bench_int8.py --layers [--iters 12]

Keep runs short: this box has 2 cores shared with other jobs; interleaving cancels their drift, not their noise.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections import Counter, defaultdict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxconv.bench import BenchConfig, bench, profile_model, resolve_provider  # noqa: E402
from onnxconv.errors import OnnxConvError  # noqa: E402
from onnxconv.model_io import load_model  # noqa: E402
from onnxconv.passes.ranks import RankPolicy  # noqa: E402
from onnxconv.passes.separable import FORMS, separate  # noqa: E402
from onnxconv.passes.shuffle import group_shuffle  # noqa: E402
from onnxconv.quantize import quantize_static_qdq  # noqa: E402

#: Quantizer settings by the name used in the tables.
TYPES = {"u8s8": {"activation_type": "uint8", "weight_type": "int8"},
         "s8s8": {"activation_type": "int8", "weight_type": "int8"}}


@dataclass
class Source:
    """A model to measure: where it comes from, its input and the shape it is timed at, and how its images are
    scaled (``scale * pixel + shift``, pixels 0..255)."""

    path: str | None
    input: str
    shape: tuple[int, ...]
    scale: float = 1.0
    shift: float = 0.0
    arch: str | None = None


SOURCES = {
    "ddddocr_det": Source("realmodels/ddddocr_det.onnx", "images", (1, 3, 416, 416)),  # YOLOX-like, BGR 0..255
    "ppocr_det": Source("realmodels/ppocr_det.onnx", "x", (1, 3, 320, 320), 2 / 255, -1.0),  # DBNet, [-1, 1]
    "ppocr_rec": Source("realmodels/ppocr_rec.onnx", "x", (1, 3, 48, 320), 2 / 255, -1.0),  # CRNN, [-1, 1]
    "resnet18": Source(None, "input", (1, 3, 160, 160), 1 / 255, 0.0, arch="resnet18"),  # random weights
}


def _cmd(argv: Sequence[str]) -> str:
    return "python tools/bench_int8.py " + " ".join(argv)


#: A font for the text drawn on the images of the OCR models (Pillow's built-in bitmap font if it is missing).
FONT = "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf"


def _text_image(shape: Sequence[int], seed: int) -> np.ndarray:
    """Dark random text on a smooth light background, 0..255, ``1 x 3 x H x W``: the OCR models' detectors
    answer ~0 everywhere on an image without text, where no relative error means anything."""
    from PIL import Image, ImageDraw, ImageFont

    from tools._common import image_like  # smooth rectangles and gradients, 0..255

    rng = np.random.default_rng(seed)
    _, c, h, w = shape
    base = 150 + 0.4 * image_like((1, c, h, w), seed)[0]
    im = Image.fromarray(base.transpose(1, 2, 0).astype(np.uint8)[..., :3] if c >= 3 else base[0].astype(np.uint8))
    draw = ImageDraw.Draw(im)
    alphabet = list("ABCDEFGHKMNPRSTWXYZabcdefghkmnprstwxyz2345678")
    for _ in range(max(1, h // 40)):
        size = int(rng.integers(max(10, h // 14), max(12, min(h * 2 // 3, 40))))
        font = ImageFont.truetype(FONT, size) if os.path.exists(FONT) else ImageFont.load_default()
        text = "".join(rng.choice(alphabet, int(rng.integers(4, 12))))
        xy = (int(rng.integers(0, max(1, w // 3))), int(rng.integers(0, max(1, h - size))))
        draw.text(xy, text, font=font, fill=tuple(int(v) for v in rng.integers(0, 90, 3)) if c >= 3 else 40)
    a = np.asarray(im, dtype=np.float32)
    return (a.transpose(2, 0, 1) if a.ndim == 3 else a[None])[None]


def _images(src: Source, n: int, seed: int) -> list[dict[str, np.ndarray]]:
    """``n`` inputs for ``src``: text images for the OCR models, smooth rectangles for the others."""
    from tools._common import image_like  # smooth rectangles and gradients, 0..255

    make = _text_image if src.path else image_like
    return [{src.input: (make(src.shape, seed + k) * src.scale + src.shift).astype(np.float32)}
            for k in range(n)]


def _load(name: str, src: Source) -> onnx.ModelProto:
    if src.arch:
        from tools import archs

        return archs.build(src.arch, size=src.shape[-1])
    assert src.path is not None  # a source without an arch is a file
    return load_model(ROOT / src.path, load_weights=True)


def _rewrites(model: onnx.ModelProto, src: Source, args: argparse.Namespace) -> tuple[dict[str, onnx.ModelProto], str]:
    """The rewrites by label, and the rank policy used (the budget, else the rank when it is unreachable)."""
    shapes = {src.input: list(src.shape)}
    policy = RankPolicy("budget", args.budget)
    out: dict[str, onnx.ModelProto] = {}
    for form in args.forms:
        try:
            out[form] = separate(model, policy, form=form, input_shapes=shapes).model
        except OnnxConvError as e:
            if policy.kind != "budget":
                raise
            print(f"  {policy.describe()}: {e}; rank {args.rank} instead", flush=True)
            policy = RankPolicy("rank", args.rank)
            out[form] = separate(model, policy, form=form, input_shapes=shapes).model
    if args.also_rank:  # at rank r everywhere; r = 1: every form is one depthwise conv -> one 1x1, no Add/Concat
        r = args.also_rank
        out[f"rank {r}"] = separate(model, RankPolicy("rank", r), form="sum", input_shapes=shapes).model
    if args.groups:
        out[f"shuffle g{args.groups}"] = group_shuffle(model, groups=args.groups, input_shapes=shapes).model
    return out, policy.describe()


def _added_adds(original: onnx.ModelProto, rewrite: onnx.ModelProto) -> list[str]:
    """Names of the Add nodes a rewrite added (the sum form's branch sums)."""
    before = {n.name for n in original.graph.node}
    return [n.name for n in rewrite.graph.node if n.op_type == "Add" and n.name not in before]


def _added_depthwise(original: onnx.ModelProto, rewrite: onnx.ModelProto) -> list[str]:
    """Names of the grouped/depthwise Conv nodes a separable rewrite added (its depthwise stage)."""
    before = {n.name for n in original.graph.node}
    return [n.name for n in rewrite.graph.node if n.op_type == "Conv" and n.name not in before
            and any(a.name == "group" and a.i > 1 for a in n.attribute)]


def _variants(name: str, src: Source, args: argparse.Namespace
              ) -> tuple[dict[str, onnx.ModelProto], dict[str, str], str]:
    """Every model of one interleaved run, by label (fp32 original first, its rewrites, then their int8 forms),
    the label of the original each is compared with (same precision and quantizer settings), the rank policy."""
    model = _load(name, src)
    fp32 = {"original": model}
    rewrites, policy = _rewrites(model, src, args)
    fp32.update(rewrites)
    calib = _images(src, args.calib, seed=100)
    out = {f"fp32 {k}": v for k, v in fp32.items()}
    bases = {k: "fp32 original" for k in out}
    timings: list[str] = []

    def quantize(label: str, m: onnx.ModelProto, base: str | None = None, **kw: Any) -> None:
        t0 = time.perf_counter()
        bases[label] = base or label.rsplit(" ", 1)[0] + " original"
        try:
            out[label] = quantize_static_qdq(m, calib, **kw)
        except OnnxConvError as e:
            print(f"  {label}: {e}", flush=True)
        timings.append(f"{label} {time.perf_counter() - t0:.0f}s")

    for t in args.types:
        for k, v in fp32.items():
            quantize(f"{t} {k}", v, f"{t} original", **TYPES[t])
    if args.remedies:
        u8 = TYPES["u8s8"]
        for k in ("original", "sum", "concat"):
            if k in fp32:
                quantize(f"u8s8 per-tensor {k}", fp32[k], per_channel=False, **u8)
        if "sum" in fp32:
            quantize("u8s8 sum, Adds float", fp32["sum"], "u8s8 original",
                     nodes_to_exclude=_added_adds(model, fp32["sum"]), **u8)
        for k in ("original", "sum"):
            if k in fp32:
                quantize(f"u8s8 Conv only {k}", fp32[k], op_types_to_quantize=["Conv"], **u8)
        for k in ("sum", f"rank {args.also_rank}"):  # the int8 depthwise kernel is the slow one: keep it float
            if k in fp32:
                quantize(f"u8s8 {k}, depthwise float", fp32[k], "u8s8 original",
                         nodes_to_exclude=_added_depthwise(model, fp32[k]), **u8)
    print(f"  quantized: {', '.join(timings)}", flush=True)
    return out, bases, policy


# --------------------------------------------------------------------------------------------------------------
# What onnxruntime runs


def _optimized(model: onnx.ModelProto, threads: int) -> onnx.ModelProto:
    """The graph onnxruntime runs after its optimisations (QDQ fusion, layout passes), as it saves it."""
    import onnxruntime as ort

    from onnxconv.compare import ORT_LOG_SEVERITY

    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        so = ort.SessionOptions()
        so.log_severity_level = ORT_LOG_SEVERITY
        so.intra_op_num_threads = threads
        so.optimized_model_filepath = os.path.join(tmp, "optimized.onnx")
        ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
        return onnx.load(so.optimized_model_filepath)


def _conv_kinds(optimized: onnx.ModelProto) -> dict[str, str]:
    """Node name -> dense / pointwise / depthwise / grouped for every conv kernel of an optimised graph."""
    weights = {t.name: list(t.dims) for t in optimized.graph.initializer}
    kinds = {}
    for n in optimized.graph.node:
        if "Conv" not in n.op_type:
            continue
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in n.attribute}
        w = weights.get(n.input[3] if n.op_type == "QLinearConv" else n.input[1], [])
        group = int(attrs.get("group", 1))
        kernel = list(attrs.get("kernel_shape", w[2:4]))
        if group > 1:
            kinds[n.name] = "depthwise" if len(w) > 1 and w[1] == 1 and w[0] == group else "grouped"
        else:
            kinds[n.name] = "pointwise" if kernel and all(k == 1 for k in kernel) else "dense kxk"
    return kinds


def _profile(models: Mapping[str, onnx.ModelProto], labels: Sequence[str], feeds: Mapping[str, np.ndarray],
             args: argparse.Namespace) -> None:
    """Per-kernel-class time (ms per run) and the fused graph's op counts of each labelled model."""
    cfg = BenchConfig(threads=args.threads, warmup=2, profile_runs=args.profile_runs)
    prov = resolve_provider("cpu")
    sums: dict[str, defaultdict[str, float]] = {}
    counts: dict[str, Counter[str]] = {}
    macs: dict[str, Counter[str]] = {label: Counter() for label in labels}
    macs_ms: dict[str, defaultdict[str, float]] = {label: defaultdict(float) for label in labels}
    for label in labels:
        if label not in models:
            continue
        opt = _optimized(models[label], args.threads)
        kinds = _conv_kinds(opt)
        counts[label] = Counter(n.op_type for n in opt.graph.node)
        prof = profile_model(models[label], label, prov, cfg, feeds)
        acc: defaultdict[str, float] = defaultdict(float)
        for nt in prof.nodes:
            kind = kinds.get(nt.node)
            key = f"{nt.op_type} {kind}" if kind else nt.op_type
            acc[key] += nt.mean_us / 1e3
            if nt.macs:  # achieved rate of the kernels whose MACs are known (joined to a counted layer)
                macs[label][key] += nt.macs
                macs_ms[label][key] += nt.mean_us / 1e3
        sums[label] = acc
    keys = sorted({k for acc in sums.values() for k in acc}, key=lambda k: -max(a[k] for a in sums.values()))
    shown = list(sums)
    # Each model is profiled in its own runs, one after the other: the share of its own total compares models
    # more robustly than the times themselves on a shared machine.
    print(f"\nper-kernel time, ms per run and share of the model's total (onnxruntime profiler, {args.profile_runs} "
          f"runs, {args.threads} thread):\n")
    print("| kernel | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for k in keys:
        if max(sums[s][k] for s in shown) < 0.05:
            continue
        print(f"| {k} | " + " | ".join(f"{sums[s][k]:.1f} ({sums[s][k] / sum(sums[s].values()):.0%})"
                                       if sums[s][k] else "" for s in shown) + " |")
    print("| total | " + " | ".join(f"{sum(sums[s].values()):.1f}" for s in shown) + " |")
    print("\nachieved GMAC/s per conv kernel class (MACs of the joined layers / their time):\n")
    print("| kernel | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for k in keys:
        if "Conv" in k and any(macs[s][k] for s in shown):
            print(f"| {k} | " + " | ".join(f"{macs[s][k] / macs_ms[s][k] / 1e6:.1f}" if macs[s][k] else ""
                                           for s in shown) + " |")
    ops = sorted({k for c in counts.values() for k in c})
    print("\nnodes in the graph onnxruntime runs (optimized_model_filepath):\n")
    print("| op | " + " | ".join(shown) + " |")
    print("|---|" + "---|" * len(shown))
    for op in ops:
        print(f"| {op} | " + " | ".join(str(counts[s][op]) if counts[s][op] else "" for s in shown) + " |")
    sys.stdout.flush()


# --------------------------------------------------------------------------------------------------------------
# The table


def run_model(name: str, args: argparse.Namespace) -> None:
    src = SOURCES[name]
    if src.path and not (ROOT / src.path).is_file():
        print(f"{src.path} is missing: run `python tools/realmodels.py` first")
        return
    print(f"\n### {name} ({'x'.join(map(str, src.shape))})", flush=True)
    models, bases, policy = _variants(name, src, args)
    held_out: dict[str, Any] = _images(src, 1, seed=0)[0]  # Any: savez's allow_pickle: bool could be a key
    with tempfile.TemporaryDirectory(prefix="bench-int8-") as tmp:
        npz = os.path.join(tmp, "held_out.npz")
        np.savez(npz, **held_out)
        cfg = BenchConfig(threads=args.threads, iters=args.iters, warmup=2, inputs=npz)
        labels = list(models)
        report = bench([models[k] for k in labels], cfg, names=labels)
    run = report.runs[0]
    speed = {m.name: (m.speedup.median if m.speedup else 1.0) for m in run.models}
    spread = {m.name: (f"{m.speedup.p25:.2f}-{m.speedup.p75:.2f}" if m.speedup else "") for m in run.models}
    err = {m.name: (max(a.rel_error for a in m.agreement) if m.agreement else 0.0) for m in run.models}
    ms = {m.name: m.timing.p50_s * 1e3 for m in run.models}
    print(f"\n{policy}; {run.rounds} interleaved rounds, 1 thread; load average {os.getloadavg()[0]:.1f} "
          f"on {os.cpu_count()} cores\n")
    print("| model | variant | p50 ms | vs fp32 original (p25-p75) | vs its own original | "
          "output rel err vs fp32 original |")
    print("|---|---|---|---|---|---|")
    for label in labels:
        base = bases[label]
        vs_own = speed[label] / speed[base] if base in speed else float("nan")
        print(f"| {name} | {label} | {ms[label]:.1f} | {speed[label]:.2f}x ({spread[label]}) | {vs_own:.2f}x | "
              f"{err[label]:.3g} |")
    sys.stdout.flush()
    if args.profile:
        wanted = ["fp32 original", "fp32 sum"] + [f"{t} {k}" for t in args.types[:1]
                                                  for k in ("original", *args.forms, f"rank {args.also_rank}",
                                                            f"shuffle g{args.groups}")]
        wanted += [f"{t} original" for t in args.types[1:]]  # what the other activation type fuses to
        _profile(models, wanted, held_out, args)


#: One 3x3 conv + Relu per shape (channels, resolution): ddddocr_det's stages at 416x416 and two wider ones.
LAYERS = ((32, 104), (64, 52), (128, 26), (256, 13), (512, 13))


def run_layers(args: argparse.Namespace) -> None:
    """Per layer shape, one interleaved run of the conv and its rewrites, fp32 and u8s8: where int8 loses."""
    from onnxconv.stats import analyze
    from tools.bench_separate import conv_relu

    variants = (("rank 1", 1, "sum"), ("rank 2 sum", 2, "sum"), ("rank 2 concat", 2, "concat"))
    print(f"\none Conv 3x3 + Relu per shape; {args.iters} interleaved rounds, 1 thread; latency ratio = "
          "t(rewrite) / t(original) of the same precision (ratio of the medians of per-round speed-ups against "
          f"the fp32 conv); load average {os.getloadavg()[0]:.1f} on {os.cpu_count()} cores\n")
    print("| layer | fp32 ms | u8s8 ms | " + " | ".join(f"{v[0]}: MAC ratio, fp32 / u8s8 latency ratio"
                                                      for v in variants) + " |")
    print("|---|---|---|" + "---|" * len(variants))
    for channels, size in LAYERS:
        base = conv_relu(channels, size)
        src = Source(None, "x", (1, channels, size, size), 1 / 255)
        calib = _images(src, 2, seed=100)
        fp32 = {"original": base}
        for label, r, form in variants:
            fp32[label] = separate(base, RankPolicy("rank", r), form=form).model
        models = {f"fp32 {k}": v for k, v in fp32.items()}
        models.update({f"u8s8 {k}": quantize_static_qdq(v, calib) for k, v in fp32.items()})
        report = bench(list(models.values()), BenchConfig(threads=1, iters=args.iters, warmup=2),
                       names=list(models))
        res = {m.name: m for m in report.runs[0].models}
        speed = {k: (m.speedup.median if m.speedup else 1.0) for k, m in res.items()}
        base_macs = analyze(base).totals["macs"]
        cells = []
        for label, _, _ in variants:
            mr = analyze(fp32[label]).totals["macs"] / base_macs
            cells.append(f"{mr:.3f}, {speed['fp32 original'] / speed[f'fp32 {label}']:.2f} / "
                         f"{speed['u8s8 original'] / speed[f'u8s8 {label}']:.2f}")
        print(f"| {channels}->{channels} @ {size}x{size} | {res['fp32 original'].timing.p50_s * 1e3:.2f} | "
              f"{res['u8s8 original'].timing.p50_s * 1e3:.2f} | " + " | ".join(cells) + " |")
        sys.stdout.flush()


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--layers", action="store_true", help="single-layer part instead of the models (LAYERS)")
    p.add_argument("--models", nargs="+", default=list(SOURCES), choices=list(SOURCES))
    p.add_argument("--budget", type=float, default=0.5, help="separable rank policy: conv MAC budget")
    p.add_argument("--rank", type=int, default=1, help="rank where the budget is unreachable")
    p.add_argument("--forms", nargs="+", default=["sum", "concat", "multiplier", "tiled"], choices=FORMS)
    p.add_argument("--also-rank", type=int, default=1, help="also every layer at this rank, sum form (0: no)")
    p.add_argument("--groups", type=int, default=2, help="shuffle mode groups (0: none)")
    p.add_argument("--types", nargs="+", default=["u8s8", "s8s8"], choices=list(TYPES))
    p.add_argument("--calib", type=int, default=4, help="calibration images")
    p.add_argument("--iters", type=int, default=12, help="interleaved rounds")
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--profile", action="store_true")
    p.add_argument("--profile-runs", type=int, default=10)
    p.add_argument("--remedies", action="store_true", help="per-tensor, float Adds, Conv-only quantization too")
    args = p.parse_args(argv)
    print(f"command: `{_cmd(sys.argv[1:] if argv is None else argv)}`", flush=True)
    if args.layers:
        run_layers(args)
        return 0
    for name in args.models:
        run_model(name, args)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

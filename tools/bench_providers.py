"""Benchmark original vs separated vs grouped models with ``onnxconv bench``, per provider; print Markdown.

For each architecture (built by tools/archs.py, random He-normal weights) this writes the rewrites with the
``onnxconv separate`` CLI into ``--out`` (git-ignored ``generated/bench/`` by default):

    exact   separable at the exact rank (reproduces the conv; shows what the graph form alone costs)
    r1, r2  separable at rank 1 and 2 (approximations: on random weights their error is large by design,
            trained weights decay faster, see docs/conv-math.md, "Depthwise separable and the rank-r form")
    g4      grouped with 4 groups + channel shuffle

then times all of them in one interleaved :func:`onnxconv.bench.bench` run per provider (speed-up = median of
per-round ratios against the original) and prints one Markdown table per architecture and provider with the
conv MACs of each model (``onnxconv stats``) beside it. Nothing here asserts anything: it is a measurement.

Usage::

    python tools/bench_providers.py --arch resnet18 --size 224 --threads 1 --duration 20
    python tools/bench_providers.py --arch vgg16 --size 112 --provider cpu --provider cuda --batch 1
"""

from __future__ import annotations

import argparse
import platform
import shlex
import subprocess
import sys
from pathlib import Path

import onnx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from onnxconv.bench import BenchConfig, BenchReport, bench  # noqa: E402
from onnxconv.model_io import load_model, save_model  # noqa: E402
from onnxconv.stats import analyze  # noqa: E402
from tools import archs  # noqa: E402

#: variant name -> `onnxconv separate` options
VARIANTS = {
    "exact": ["--exact"],
    "r1": ["--rank", "1"],
    "r2": ["--rank", "2"],
    "g4": ["--mode", "shuffle", "--groups", "4"],
}


def make_models(arch: str, size: int, out: Path, variants: list[str], reuse: bool = False) -> list[Path]:
    """Build the original and write each rewrite next to it.

    Rewrites are made afresh unless ``reuse``: the figures must follow what ``onnxconv separate`` does today
    (its defaults, e.g. the graph form, change what is measured).
    """
    out.mkdir(parents=True, exist_ok=True)
    orig = out / f"{arch}_{size}.onnx"
    if not orig.exists():
        save_model(archs.build(arch, size=size), orig)  # deterministic: the same seed builds the same model
    paths = [orig]
    for v in variants:
        dest = out / f"{arch}_{size}_{v}.onnx"
        if not (reuse and dest.exists()):
            cmd = [sys.executable, "-m", "onnxconv", "separate", str(orig), "-o", str(dest), "--overwrite",
                   *VARIANTS[v]]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
        paths.append(dest)
    return paths


def conv_macs(path: Path) -> int:
    return int(analyze(load_model(path)).totals["macs"])


def markdown(report: BenchReport, macs: dict[str, int]) -> str:
    lines = []
    for run in report.runs:
        ref_macs = macs[run.models[0].name]
        lines += [f"provider **{run.provider}**, {run.rounds} interleaved rounds, batch {report.batch}", "",
                  "| model | conv MACs | MAC ratio | mean ms | p50 ms | p90 ms | speed-up (IQR) | rel err | cosine "
                  "| top-1 |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for m in run.models:
            t, name = m.timing, Path(m.name).stem
            su = "1 (reference)" if m.speedup is None else \
                f"{m.speedup.median:.2f}x ({m.speedup.p25:.2f}-{m.speedup.p75:.2f})"
            ag = m.agreement[0] if m.agreement else None
            err = "-" if ag is None else f"{ag.rel_error:.2g}"
            cos = "-" if ag is None else f"{ag.cosine:.4f}"
            top1 = "-" if ag is None or ag.top1 is None else f"{100 * ag.top1:.0f}%"
            lines.append(f"| {name} | {macs[m.name] / 1e6:.0f}M | {macs[m.name] / ref_macs:.3f} | "
                         f"{t.mean_s * 1e3:.2f} | {t.p50_s * 1e3:.2f} | {t.p90_s * 1e3:.2f} | {su} | {err} | "
                         f"{cos} | {top1} |")
        lines.append("")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--arch", action="append", default=None, help="architecture(s) from tools/archs.py")
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--variant", action="append", choices=list(VARIANTS), default=None)
    ap.add_argument("--provider", action="append", default=None)
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--duration", type=float, default=20.0, help="seconds of timed rounds per provider")
    ap.add_argument("--warmup", type=int, default=5)
    ap.add_argument("--batch", type=int, default=None)
    ap.add_argument("--out", type=Path, default=Path("generated/bench"))
    ap.add_argument("--reuse", action="store_true", help="keep rewrites already in --out instead of remaking them")
    args = ap.parse_args(argv)
    arches = args.arch or ["resnet18"]
    variants = args.variant or list(VARIANTS)
    cfg = BenchConfig(providers=tuple(args.provider or ["cpu"]), warmup=args.warmup, duration=args.duration,
                      threads=args.threads, batch=args.batch)
    import onnxruntime as ort

    print(f"command: python {shlex.join(['tools/bench_providers.py', *(argv if argv is not None else sys.argv[1:])])}")
    print(f"machine: {platform.processor() or platform.machine()}, {platform.system()}, "
          f"onnxruntime {ort.__version__}, onnx {onnx.__version__}, threads {args.threads or 'default'}\n")
    for arch in arches:
        paths = make_models(arch, args.size, args.out, variants, args.reuse)
        names = [str(p) for p in paths]
        macs = {n: conv_macs(p) for n, p in zip(names, paths)}
        report = bench(names, cfg)
        print(f"### {arch} {args.size}x{args.size}\n")
        print(markdown(report, macs))
    return 0


if __name__ == "__main__":
    sys.exit(main())

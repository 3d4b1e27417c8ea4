"""Time and peak memory of the calibration refit: the 1x1 stage alone vs the depthwise kernels too.

Each setting runs in its own process (so peak RSS is its own): load a model from ``tools/archs.py``, rewrite it
at one rank with ``separate``, then ``calibration.refit`` on random calibration images (the cost does not depend
on the weights or the data, only on the shapes). Results in BENCHMARKS.md, section "calibration".

Usage::

    python tools/bench_refit_cost.py [--arch vgg16] [--rank 1] [--images 8] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def one(arch: str, rank: int, images: int, size: int, depthwise: bool) -> dict[str, object]:
    """Run in a child process: the refit's wall time, peak RSS, and the layers whose kernels were kept."""
    import resource

    import numpy as np

    from onnxconv import calibration
    from onnxconv.passes.ranks import RankPolicy
    from onnxconv.passes.separable import separate
    from tools import archs

    model = archs.build(arch, size=size)
    result = separate(model, RankPolicy("rank", rank))
    name = model.graph.input[0].name
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "cal.npz"
        x = np.random.default_rng(0).standard_normal((images, 3, size, size)).astype(np.float32)
        feeds: dict[str, Any] = {name: x}  # Any: savez's allow_pickle: bool could be a key
        np.savez(path, **feeds)
        cal = calibration.load_calibration(path, model)
    t0 = time.perf_counter()
    out = calibration.refit(model, result, cal, calibration.FitOptions(depthwise=depthwise))
    seconds = time.perf_counter() - t0
    rewritten = [c for c in out.layers if c.rewritten]
    return {"seconds": seconds, "peak_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "layers": len(rewritten),
            "kernels_fitted": sum(1 for c in rewritten if "alternations" in c.details)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--arch", default="vgg16")
    ap.add_argument("--rank", type=int, default=1)
    ap.add_argument("--images", type=int, default=8)
    ap.add_argument("--size", type=int, default=224)
    ap.add_argument("--child", choices=["0", "1"], help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child is not None:
        print(json.dumps(one(args.arch, args.rank, args.images, args.size, args.child == "1")))
        return
    argv = ["--arch", args.arch, "--rank", str(args.rank), "--images", str(args.images), "--size", str(args.size)]
    print(f"command: `python tools/bench_refit_cost.py {' '.join(argv)}`\n")
    print("| refit | layers rewritten | kernels fitted | wall s | peak RSS MB |")
    print("|---|---|---|---|---|")
    for flag, label in (("0", "1x1 stage only (`depthwise=False`)"), ("1", "kernels too (default)")):
        out = subprocess.run([sys.executable, __file__, *argv, "--child", flag], capture_output=True, text=True,
                             check=True)
        r = json.loads(out.stdout.strip().splitlines()[-1])
        print(f"| {label} | {r['layers']} | {r['kernels_fitted']} | {r['seconds']:.0f} | {r['peak_mb']:.0f} |")


if __name__ == "__main__":
    main()

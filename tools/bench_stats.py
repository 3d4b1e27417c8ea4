"""Benchmark: wall time of ``onnxconv stats MODEL`` against the floor ``python -c "import onnx; onnx.load(MODEL)"``.

The goal (issue 2) is ``stats <= 1.2 * floor + 50 ms`` on a ~100 MB model. Both commands run as fresh processes,
interleaved (the order flips every round so drift from other work on the machine hits both alike); the medians
and their ratio are printed with the exact commands.

    python tools/bench_stats.py                    # generates generated/bench_resnet50.onnx (ResNet-50, ~100 MB)
    python tools/bench_stats.py --model M.onnx --rounds 21

Bytecode: ``PYTHONDONTWRITEBYTECODE`` makes every run recompile onnxconv's sources (~40 ms) while onnx's
installed ``.pyc`` files are used; an installed onnxconv has its ``.pyc`` too. The runs here therefore drop that
variable and cache bytecode under ``generated/pycache`` (warmed before timing), so both sides are measured alike.
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_MODEL = ROOT / "generated" / "bench_resnet50.onnx"


def generate(path: Path) -> Path:
    """Write a ResNet-50-sized conv net with random weights (tools/archs.py) to ``path`` unless it exists."""
    if path.exists():
        return path
    sys.path.insert(0, str(ROOT / "tools"))
    import archs  # tools/archs.py: deterministic torchvision-shaped builders
    import onnx

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(archs.resnet50(), str(path))
    return path


def _entry_point() -> list[str]:
    """The installed ``onnxconv`` script next to this interpreter (not a shell shim in front of it)."""
    script = Path(sys.executable).parent / "onnxconv"
    return [str(script)] if script.exists() else [sys.executable, "-m", "onnxconv"]


def _time(cmd: Sequence[str], env: dict[str, str]) -> float:
    t = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL, env=env, cwd=ROOT)
    return time.perf_counter() - t


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model to time (default: generated ResNet-50)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    args = ap.parse_args(argv)
    model = generate(args.model) if args.model == DEFAULT_MODEL else args.model
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    env["PYTHONPYCACHEPREFIX"] = str(ROOT / "generated" / "pycache")
    rel = os.path.relpath(model, ROOT)
    floor = [sys.executable, "-c", f"import onnx; onnx.load({rel!r})"]
    stats = [*_entry_point(), "stats", rel]
    for cmd in (floor, stats):  # warm the page cache and the bytecode cache
        _time(cmd, env)
    times: dict[str, list[float]] = {"floor": [], "stats": []}
    for i in range(args.rounds):
        order = [("floor", floor), ("stats", stats)]
        for name, cmd in order if i % 2 == 0 else order[::-1]:
            times[name].append(_time(cmd, env))
    f, s = statistics.median(times["floor"]), statistics.median(times["stats"])
    size = model.stat().st_size / 1e6
    print(f"model: {rel} ({size:.0f} MB), {args.rounds} interleaved rounds, medians")
    print(f"floor  {f * 1000:7.0f} ms   {' '.join(floor)}")
    print(f"stats  {s * 1000:7.0f} ms   {' '.join(stats)}")
    print(f"ratio stats/floor {s / f:.2f}; stats - floor {1000 * (s - f):.0f} ms; "
          f"goal 1.2*floor + 50 ms = {1000 * (1.2 * f + 0.05):.0f} ms: {'met' if s <= 1.2 * f + 0.05 else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

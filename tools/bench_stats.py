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
import sys
from collections.abc import Sequence
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# First on the path, as before: this checkout's onnxconv (not an installed one), and ``tools`` as a package.
sys.path.insert(0, str(ROOT))

from tools._common import run_timed  # noqa: E402

DEFAULT_MODEL = ROOT / "generated" / "bench_resnet50.onnx"


def generate(path: Path) -> Path:
    """Write a ResNet-50-sized conv net with random weights (tools/archs.py) to ``path`` unless it exists."""
    if path.exists():
        return path
    import onnx

    from tools import archs  # deterministic torchvision-shaped builders

    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(archs.resnet50(), str(path))
    return path


def _entry_point() -> list[str]:
    """The installed ``onnxconv`` script next to this interpreter (not a shell shim in front of it)."""
    script = Path(sys.executable).parent / "onnxconv"
    return [str(script)] if script.exists() else [sys.executable, "-m", "onnxconv"]


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=DEFAULT_MODEL, help="model to time (default: generated ResNet-50)")
    ap.add_argument("--rounds", type=int, default=15, help="interleaved rounds (default 15)")
    ap.add_argument("--env-as-is", action="store_true",
                    help="keep the environment (PYTHONDONTWRITEBYTECODE included) instead of caching bytecode")
    args = ap.parse_args(argv)
    model = generate(args.model) if args.model == DEFAULT_MODEL else args.model
    env = dict(os.environ)
    if not args.env_as_is:
        env.pop("PYTHONDONTWRITEBYTECODE", None)
        env["PYTHONPYCACHEPREFIX"] = str(ROOT / "generated" / "pycache")
    rel = os.path.relpath(model, ROOT)
    floor = [sys.executable, "-c", f"import onnx; onnx.load({rel!r})"]
    stats = [*_entry_point(), "stats", rel]
    for cmd in (floor, stats):  # warm the page cache and the bytecode cache
        run_timed(cmd, env, cwd=ROOT)
    wall: dict[str, list[float]] = {"floor": [], "stats": []}
    cpu: dict[str, list[float]] = {"floor": [], "stats": []}
    for i in range(args.rounds):
        order = [("floor", floor), ("stats", stats)]
        for name, cmd in order if i % 2 == 0 else order[::-1]:
            w, c = run_timed(cmd, env, cwd=ROOT)
            wall[name].append(w)
            cpu[name].append(c)
    size = model.stat().st_size / 1e6
    cache = "as-is environment" if args.env_as_is else "bytecode cached"
    print(f"model: {rel} ({size:.0f} MB), {args.rounds} interleaved rounds, medians, {cache}")
    print(f"floor: {' '.join(floor)}")
    print(f"stats: {' '.join(stats)}")
    for label, data in (("wall", wall), ("cpu ", cpu)):
        f, s = statistics.median(data["floor"]), statistics.median(data["stats"])
        goal = 1.2 * f + 0.05
        print(f"{label}  floor {f * 1000:5.0f} ms  stats {s * 1000:5.0f} ms  ratio {s / f:.2f}  "
              f"stats - floor {1000 * (s - f):+4.0f} ms  goal 1.2*floor+50ms = {goal * 1000:.0f} ms: "
              f"{'met' if s <= goal else 'MISSED'}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Wall time of every command on long conv chains, checkout A against checkout B (issue 17: "a 3,000-conv chain:
every command answers in time proportional to its size").

The models are ``tools/archs.py``'s ``chain`` (3x3 convs at 8 channels on 8x8, each with a ReLU) at each
``--depth``. Each run is a fresh ``python -m onnxconv`` process with one checkout on ``PYTHONPATH``, so a time
includes the imports (about 2 s here) as a user sees it. Runs alternate A B A B ... per (command, depth), so that
the drift of a shared machine falls on both. Printed: a markdown table of the median wall time per command,
depth and checkout, and the seconds each 1000 convs added since the previous depth cost (the same at every
depth when the time is proportional to the size; growing when it is not).

Usage::

    git archive cbc2d8a | (mkdir -p /tmp/base && tar -x -C /tmp/base)
    python tools/bench_scale.py --a /tmp/base --b . --depth 300 --depth 1000 --depth 3000 --reps 1
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if __package__ in (None, ""):  # run as a script: make ``tools`` importable as a package from the repo root
    sys.path.insert(0, str(ROOT))

from tools.archs import conv_chain  # noqa: E402

#: name -> argv after ``onnxconv`` ({m}: the model, {o}: an output path).
COMMANDS = {
    "stats": ["stats", "{m}"],
    "separate --rank 1": ["separate", "{m}", "-o", "{o}", "--rank", "1"],
    "separate --mode shuffle --groups 2": ["separate", "{m}", "-o", "{o}", "--mode", "shuffle", "--groups", "2"],
    "bench --iters 20": ["bench", "{m}", "--iters", "20", "--warmup", "2"],
}


def run(checkout: Path, argv: list[str], timeout: float) -> float | None:
    """Wall seconds of one ``python -m onnxconv`` run with ``checkout`` first on the path; None on failure."""
    env = dict(os.environ, PYTHONPATH=str(checkout))
    t0 = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "onnxconv", *argv], cwd=checkout, env=env,
                              capture_output=True, timeout=timeout, check=False)
    except subprocess.TimeoutExpired:
        return None
    wall = time.perf_counter() - t0
    if proc.returncode != 0:
        sys.exit(f"Error: {' '.join(argv)} failed in {checkout}: {proc.stderr.decode()[-300:]}")
    return wall


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="checkout A (e.g. an archive of the older commit)")
    ap.add_argument("--b", required=True, help="checkout B")
    ap.add_argument("--depth", type=int, action="append", default=[], help="convs in the chain (repeatable)")
    ap.add_argument("--command", action="append", default=[], choices=list(COMMANDS),
                    help="commands to time (default: all)")
    ap.add_argument("--reps", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds before a run counts as too slow")
    args = ap.parse_args()
    depths = sorted(args.depth or [300, 1000, 3000])
    commands = args.command or list(COMMANDS)
    checkouts = {"A": Path(args.a).resolve(), "B": Path(args.b).resolve()}
    times: dict[tuple[str, int, str], list[float | None]] = {}
    with tempfile.TemporaryDirectory(prefix="onnxconv-scale-") as tmp:
        models = {}
        for d in depths:
            models[d] = Path(tmp) / f"chain{d}.onnx"
            models[d].write_bytes(conv_chain(depth=d).SerializeToString())
        for cmd in commands:
            for d in depths:
                for rep in range(args.reps):
                    for name, checkout in checkouts.items():
                        argv = [a.format(m=models[d], o=Path(tmp) / f"out{name}.onnx") for a in COMMANDS[cmd]]
                        t = run(checkout, argv, args.timeout)
                        times.setdefault((cmd, d, name), []).append(t)
                        shown = f"{t:.1f} s" if t is not None else f"over {args.timeout:.0f} s"
                        print(f"{cmd} depth {d} run {rep + 1} {name}: {shown} (load {os.getloadavg()[0]:.1f})",
                              flush=True)

    def median(key: tuple[str, int, str]) -> float | None:
        got = times[key]
        return None if any(t is None for t in got) else statistics.median(t for t in got if t is not None)

    def fmt(x: float | None) -> str:
        return "-" if x is None else f"{x:.1f}"

    def slope(name: str, cmd: str, i: int) -> str:
        """Seconds per 1000 convs between the previous depth and this one: constant when time is proportional."""
        if i == 0:
            return ""
        t, t0 = median((cmd, depths[i], name)), median((cmd, depths[i - 1], name))
        return "-" if t is None or t0 is None else f"{1000 * (t - t0) / (depths[i] - depths[i - 1]):.1f}"

    print("\n| command | depth | A s | B s | A/B | A s per 1000 convs added | B s per 1000 convs added |\n"
          "|---|---|---|---|---|---|---|")
    for cmd in commands:
        for i, d in enumerate(depths):
            a, b = median((cmd, d, "A")), median((cmd, d, "B"))
            ratio = "-" if a is None or b is None else f"{a / b:.2f}x"
            print(f"| {cmd} | {d} | {fmt(a)} | {fmt(b)} | {ratio} | {slope('A', cmd, i)} | {slope('B', cmd, i)} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

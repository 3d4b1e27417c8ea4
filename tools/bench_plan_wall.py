"""Plan wall time, checkout A against checkout B, interleaved (issue 12: "a plan for a ~3M-param detector at
320x320 in under 2 minutes on 2 cores").

Each run is a fresh process that loads the model and the calibration file and calls
:func:`onnxconv.planning.plan_from_file` (the library call behind ``onnxconv separate --target-speedup`` /
``--max-output-error``) with the code of one checkout on ``PYTHONPATH``, a fresh in-memory latency cache (so
every run times its layers, as a first use does) and ``--threads`` onnxruntime intra-op threads; numpy keeps
its default BLAS threads (the machine's cores). Runs alternate A B A B ... so that load drift on a shared
machine falls on both. Printed per run: seconds in the planner, plans measured, the chosen plan's measured
speed-up and held-out error; then a markdown table.

Usage::

    python tools/bench_plan_wall.py --a /path/to/old/checkout --b . --model realmodels/ddddocr_det.onnx \\
        --calibration cal.npz --ask S1.5 --ask E0.03 --reps 2 --threads 1
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

SNIPPET = r"""
import json, sys, time
from onnxconv.model_io import load_model
from onnxconv.planning import plan_from_file
model, cal, target, budget, threads = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4], int(sys.argv[5])
m = load_model(model, load_weights=True)
t0 = time.perf_counter()
out = {}
try:
    result = plan_from_file(m, cal, target_speedup=float(target) if target != "-" else None,
                            max_output_error=float(budget) if budget != "-" else None, threads=threads)
    plan = result.options["plan"]
    out.update(rounds=len(plan["rounds"]), measured=plan["measured"], error=plan.get("error"))
except Exception as e:  # a refusal is a result here: its time counts the same
    out.update(refused=str(e))
out["plan_s"] = time.perf_counter() - t0
print("RESULT " + json.dumps(out))
"""


def run(checkout: Path, model: str, cal: str, ask: str, threads: int) -> dict[str, Any]:
    target = ask[1:] if ask.startswith("S") else "-"
    budget = ask[1:] if ask.startswith("E") else "-"
    env = dict(os.environ, PYTHONPATH=str(checkout))
    t0 = time.perf_counter()
    proc = subprocess.run([sys.executable, "-c", SNIPPET, model, cal, target, budget, str(threads)],
                          cwd=checkout, env=env, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - t0
    line = next((ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")), None)
    if line is None:
        sys.exit(f"Error: the run in {checkout} failed: {proc.stderr.strip().splitlines()[-1:]}")
    out: dict[str, Any] = json.loads(line[len("RESULT "):])
    out["wall_s"] = wall
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--a", required=True, help="checkout A (e.g. a worktree of the older commit)")
    ap.add_argument("--b", required=True, help="checkout B")
    ap.add_argument("--model", required=True)
    ap.add_argument("--calibration", required=True)
    ap.add_argument("--ask", action="append", default=[], help="S<target> or E<budget>, repeatable")
    ap.add_argument("--reps", type=int, default=2)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    model, cal = str(Path(args.model).resolve()), str(Path(args.calibration).resolve())
    rows = []
    for ask in args.ask or ["S1.5"]:
        for rep in range(args.reps):
            for name, checkout in (("A", Path(args.a).resolve()), ("B", Path(args.b).resolve())):
                load = os.getloadavg()[0]
                r = run(checkout, model, cal, ask, args.threads)
                rows.append((ask, rep + 1, name, load, r))
                print(f"{ask} run {rep + 1} {name}: {json.dumps(r)} (load {load:.1f})", flush=True)
    print("\n| asked | run | checkout | plan s | whole process s | plans measured | measured | held-out error | "
          "load avg at start |\n|---|---|---|---|---|---|---|---|---|")
    for ask, rep, name, load, r in rows:
        got = (f"refused: {r['refused']} | " if "refused" in r
               else f"{float(r['measured']):.2f}x | {float(r['error'] or 0):.3g}")
        print(f"| {ask} | {rep} | {name} | {float(r['plan_s']):.0f} | {float(r['wall_s']):.0f} | "
              f"{r.get('rounds', '-')} | {got} | {load:.1f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

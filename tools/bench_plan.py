"""Issue 12 on the trained models: what ``--target-speedup`` / ``--max-output-error`` / ``--precision int8`` plans
measure, on data the planner never saw.

For one trained model (``realmodels/``, the tasks, generators and metrics of ``tools/bench_calibrate.py``: box F1
for ddddocr_det, mask IoU for ppocr_det, text accuracy for the recognisers) and a list of runs (each a precision,
a target speed-up S and/or an error budget E), every run:

1. plans with :func:`onnxconv.planning.plan_rewrite` on ``--calib`` calibration samples (generator seed 1; the
   planner holds 20% of them out for its own end-to-end error), 1 thread by default, one
   :class:`~onnxconv.planning.LatencyCache` JSON shared by all runs (layers of the same shape are timed once);
2. takes the returned model (refitted; for int8 the quantized refitted rewrite, what ships) and runs it on
   ``--test`` *other* samples (generator seed 2): the held-out output error (worst output's ``||a-b||/||a||``
   against the fp32 original, all test samples together) and the task metric against the original's own
   predictions (int8: against the quantized original's too, which is built here with the planner's own
   :class:`~onnxconv.planning.Quantizer` on the same fitting samples);
3. records what was asked, the measured speed-up (the planner's interleaved end-to-end median), MACs, every
   round the search measured (predicted vs measured, timing ratio, error) and the plan's wall time.

A refused plan (``OptionError``: unreachable target, budget not met) is recorded with its one-line message; it is
a result, not a failure. The JSON is rewritten after every run (so a run killed at a deadline keeps what
finished), the markdown tables go to stdout, and ``--plot DIR`` draws one frontier PNG per model and precision
with every plan all runs measured (:func:`onnxconv.planning.plot.plot_frontier`).

Usage::

    python tools/bench_plan.py --model ddddocr_det --runs fp32:S1.2,fp32:S1.5,fp32:E0.03,int8:S1.2 \\
        --calib 8 --test 16 --cache plan_cache.json --json plan_ddddocr_det.json --plot plots/

A run is ``PRECISION:S<target>``, ``PRECISION:E<budget>`` or ``PRECISION:S<target>E<budget>``.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_calibrate import MODELS, Task, predictions, tasks  # noqa: E402  (exits with a hint without Pillow)

from onnxconv import calibration, compare, planning  # noqa: E402
from onnxconv.errors import OnnxConvError, OptionError  # noqa: E402
from onnxconv.model_io import load_model, write_file  # noqa: E402
from onnxconv.planning.plot import plot_frontier  # noqa: E402

RUN = re.compile(r"^(fp32|int8):(?:S([0-9.]+))?(?:E([0-9.]+))?$")


def parse_runs(text: str) -> list[tuple[str, float | None, float | None]]:
    """``fp32:S1.5,int8:E0.03`` -> [(precision, target or None, budget or None), ...]."""
    out = []
    for part in text.split(","):
        m = RUN.match(part.strip())
        if not m or (m.group(2) is None and m.group(3) is None):
            sys.exit(f"Error: --runs item '{part}': write PRECISION:S<target>, PRECISION:E<budget> or both")
        out.append((m.group(1), float(m.group(2)) if m.group(2) else None, float(m.group(3)) if m.group(3) else None))
    return out


def outputs(model: Any, task: Task, x: np.ndarray) -> dict[str, np.ndarray]:
    """All outputs of ``model`` on ``x``, run in the model's fixed batch (int8 plans have one) or the task's."""
    sess = compare.session(model)
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else task.batch
    return planning.concat_runs([compare.run_model(sess, {task.input_name: x[i:i + step]})
                                 for i in range(0, len(x), step)])


def rel_error(ref: dict[str, np.ndarray], got: dict[str, np.ndarray]) -> float:
    """The worst output's ``||a - b|| / ||a||`` over all test samples (the planner's end-to-end error)."""
    return max((a.rel_error for a in compare.compare_outputs(ref, got)), default=0.0)


def run_model(task: Task, runs: Sequence[tuple[str, float | None, float | None]], args: argparse.Namespace,
              cache: planning.LatencyCache, rows: list[dict[str, Any]], json_path: Path | None) -> None:
    model = load_model(MODELS / task.model, load_weights=True)
    cal_x, _ = task.make(args.calib, 1)
    test_x, truth = task.make(args.test, 2)
    with tempfile.TemporaryDirectory() as tmp:
        compare.write_npz(Path(tmp) / "cal.npz", {task.input_name: cal_x})
        cal = calibration.load_calibration(Path(tmp) / "cal.npz", model)
    ref_out = outputs(model, task, test_x)
    orig = predictions(model, task, test_x)
    quantized: dict[str, Any] | None = None
    for precision, target, budget in runs:
        if precision == "int8" and quantized is None:
            # The quantized original exactly as the planner builds it (same fitting samples, same types).
            fit, _ = cal.split(args.seed)
            step = cal.batch or 1
            quantizer = planning.Quantizer([{k: v[i:i + step] for k, v in fit.arrays.items()}
                                            for i in range(0, fit.size, step)])
            qmodel = quantizer.model(model)
            qpred = predictions(qmodel, task, test_x)
            quantized = {"model": qmodel, "pred": qpred, "error": rel_error(ref_out, outputs(qmodel, task, test_x)),
                         "metric": task.score(qpred, orig, truth)}
        row: dict[str, Any] = {"model": task.name, "metric_name": task.metric, "precision": precision,
                               "target": target, "max_error": budget, "calib": args.calib, "test": args.test,
                               "threads": args.threads, "timer": args.latency_command or "onnxruntime"}
        t0 = time.time()
        try:
            result, report = planning.plan_rewrite(model, cal, planning.PlanOptions(
                goal=planning.Goal(target_speedup=target, max_output_error=budget, rounds=args.rounds),
                refit=planning.RefitOptions(seed=args.seed),
                timing=planning.TimingOptions(provider="cpu", threads=args.threads, cache=cache,
                                              layer_iters=args.layer_iters, model_iters=args.model_iters,
                                              latency_command=args.latency_command),
                precision=planning.PrecisionOptions(precision)))
        except OptionError as e:
            cache.save()
            row.update(refused=str(e), plan_s=time.time() - t0)
            if isinstance(e, planning.PlanRefused):  # the search measured plans: keep them, judged like the rest
                plan = e.report.to_dict()
                row.update(rounds=judge_rounds(plan["rounds"], e.report.round_models, task, test_x, ref_out, orig,
                                               truth), macs_before=e.report.macs_before, model_s=e.report.model_s,
                           chosen_round=None, plan=plan)
            print(f"{task.name} {precision} S={target} E={budget}: refused: {e}  [{row['plan_s']:.0f}s]", flush=True)
        else:
            row["plan_s"] = time.time() - t0
            cache.save()  # before the evaluation: the layer timings survive whatever happens next
            pred = predictions(result.model, task, test_x)
            tot = result.totals()
            plan = report.to_dict()
            row.update(
                measured=report.measured, predicted=report.predicted, plan_error=report.error,
                plan_error_inputs=report.error_inputs, test_error=rel_error(ref_out, outputs(result.model, task, test_x)),
                metric_vs_original=task.score(pred, orig, truth), rewritten=int(tot["rewritten"]),
                macs_before=report.macs_before, macs_after=int(plan["rounds"][report.chosen_round or 0]["macs"]),
                rounds=judge_rounds(plan["rounds"], report.round_models, task, test_x, ref_out, orig, truth),
                chosen_round=report.chosen_round, model_s=report.model_s,
                choices=report.choices(),
                plan=plan)
            if quantized is not None and precision == "int8":
                row.update(quantized_original_test_error=quantized["error"],
                           quantized_original_metric=quantized["metric"],
                           metric_vs_quantized=task.score(pred, quantized["pred"], truth),
                           quantized_original_plan_error=report.quantized_original_error)
            print(f"{task.name} {precision} S={target} E={budget}: measured {report.measured:.2f}x (predicted "
                  f"{report.predicted:.2f}x), test error {row['test_error']:.3g} (planner's {report.error:.3g}), "
                  f"{task.metric} {row['metric_vs_original']:.3f}, {row['rewritten']} layers, "
                  f"{len(report.rounds)} rounds  [{row['plan_s']:.0f}s]", flush=True)
        rows.append(row)
        cache.save()
        if json_path is not None:
            write_json(json_path, rows)


def judge_rounds(rounds: Sequence[dict[str, Any]], models: Sequence[Any], task: Task, test_x: np.ndarray,
                 ref_out: dict[str, np.ndarray], orig: Any, truth: Any) -> list[dict[str, Any]]:
    """Every measured plan (not only the chosen one) on the test samples: its test error and task metric."""
    out = []
    for r, m in zip(rounds, models):
        out.append({**r, "test_error": rel_error(ref_out, outputs(m, task, test_x)),
                    "metric": task.score(predictions(m, task, test_x), orig, truth)})
    return out


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """Complete or not at all: onnxconv's one atomic writer (:func:`onnxconv.model_io.write_file`)."""
    write_file(path, json.dumps(rows, indent=1, default=float).encode(), "--json")


def fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def tables(rows: Sequence[dict[str, Any]]) -> str:
    """The per-run table and, per model and precision, the frontier (every measured plan of every run)."""
    out = ["| model | precision | asked | measured | predicted | test rel err | planner's err | metric vs orig | "
           "metric vs quantized orig | layers | conv MACs | rounds | plan wall |",
           "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        asked = " ".join(s for s in (f"S={r['target']:g}" if r["target"] else "",
                                     f"E={r['max_error']:g}" if r["max_error"] is not None else "") if s)
        if "refused" in r:
            out.append(f"| {r['model']} | {r['precision']} | {asked} | refused: {r['refused']} | | | | | | | | | "
                       f"{r['plan_s']:.0f} s |")
            continue
        out.append(f"| {r['model']} | {r['precision']} | {asked} | {r['measured']:.2f}x | {r['predicted']:.2f}x | "
                   f"{r['test_error']:.3g} | {r['plan_error']:.3g} | {r['metric_vs_original']:.3f} | "
                   f"{fmt(r.get('metric_vs_quantized'))} | {r['rewritten']} | "
                   f"{r['macs_after'] / max(r['macs_before'], 1):.2f} | {len(r['rounds'])} | {r['plan_s']:.0f} s |")
    out += ["", "Rounds (every plan the searches measured; timing ratio = measured saving / layer-timed saving):", "",
            "| model | precision | asked | round | plot point | how | predicted | measured | planner's err | test err | "
            "metric | conv MACs | timing ratio | chosen |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    number = {}
    for key in dict.fromkeys((r["model"], r["precision"]) for r in rows):
        done = [r for r in rows if (r["model"], r["precision"]) == key and r.get("rounds")]
        number.update({(key, tuple(p["picks"]), round(p["measured"], 2)): n + 1 for n, p in frontier_points(done)})
    for r in rows:
        asked = " ".join(s for s in (f"S={r['target']:g}" if r["target"] else "",
                                     f"E={r['max_error']:g}" if r["max_error"] is not None else "") if s)
        for p in r.get("rounds", []):
            point = number[(r["model"], r["precision"]), tuple(p["picks"]), round(p["measured"], 2)]
            out.append(f"| {r['model']} | {r['precision']} | {asked} | {p['round'] + 1} | {point} | {p['how']} | "
                       f"{planning.speed_text(p['predicted'])} | {p['measured']:.2f}x | {p['error']:.3g} | "
                       f"{fmt(p.get('test_error'))} | {fmt(p.get('metric'), '.3f')} | "
                       f"{p['macs'] / max(r['macs_before'], 1):.2f} | {p['timing_ratio']:.2f} | "
                       f"{'*' if p['round'] == r['chosen_round'] else ''} |")
    return "\n".join(out)


def frontier_points(rows: Sequence[dict[str, Any]]) -> list[tuple[int, dict[str, Any]]]:
    """(point number from 0, round) for the measured plans of ``rows`` in run order, a plan two runs measured
    alike (same picks, same speed-up to 0.01) counted once: the numbers the plot and the rounds table share."""
    out: list[tuple[int, dict[str, Any]]] = []
    seen: dict[tuple[tuple[int, ...], float], int] = {}
    for r in rows:
        for p in r.get("rounds", []):
            key = (tuple(p["picks"]), round(p["measured"], 2))
            if key not in seen:
                seen[key] = len(seen)
                out.append((seen[key], p))
    return out


def plots(rows: Sequence[dict[str, Any]], folder: Path) -> list[Path]:
    """One PNG per model and precision: the measured plans of all its runs (renumbered in run order)."""
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    for key in dict.fromkeys((r["model"], r["precision"]) for r in rows if r.get("rounds")):
        done = [r for r in rows if (r["model"], r["precision"]) == key and r.get("rounds")]
        merged = [{**p, "round": n} for n, p in frontier_points(done)]
        plan = {"rounds": merged, "macs_before": done[0]["macs_before"], "provider": "cpu", "precision": key[1],
                "quantized_original_error": done[0]["plan"].get("quantized_original_error")}
        path = folder / f"frontier_{key[0]}_{key[1]}.png"
        plot_frontier(plan, path, title=f"{key[0]}, {key[1]}: every plan measured by {len(done)} run(s), 1 thread")
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True, help="a task of tools/bench_calibrate.py (ddddocr_det, ppocr_det, ...)")
    ap.add_argument("--runs", default="fp32:S1.2,fp32:S1.5,fp32:S2,fp32:E0.03")
    ap.add_argument("--calib", type=int, default=8, help="calibration samples (generator seed 1)")
    ap.add_argument("--test", type=int, default=16, help="held-out test samples (generator seed 2)")
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--layer-iters", type=int, default=20)
    ap.add_argument("--model-iters", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--seed", type=int, default=0, help="the planner's held-out split")
    ap.add_argument("--cache", default=None, help="latency cache JSON shared across runs")
    ap.add_argument("--latency-command", default=None, help="time plans with this command (separate's "
                                                            "--latency-command; {model} is the model's path)")
    ap.add_argument("--json", default=None, help="all rows, rewritten after every run")
    ap.add_argument("--from-json", default=None, help="no planning: print tables / plots from earlier --json files "
                                                      "(comma-separated)")
    ap.add_argument("--plot", default=None, help="folder for one frontier PNG per model and precision")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    try:
        if args.from_json:
            for p in args.from_json.split(","):
                rows.extend(json.loads(Path(p).read_text()))
        else:
            all_tasks = tasks()
            if args.model not in all_tasks:
                sys.exit(f"Error: unknown model {args.model}: choose from {', '.join(all_tasks)}")
            cache = planning.LatencyCache(args.cache)
            run_model(all_tasks[args.model], parse_runs(args.runs), args, cache, rows,
                      Path(args.json) if args.json else None)
        print(tables(rows))
        if args.plot:
            for path in plots(rows, Path(args.plot)):
                print(f"wrote {path}")
    except OnnxConvError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())

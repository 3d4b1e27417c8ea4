"""Per-channel agreement and task metrics: what a whole-tensor error cannot see.

The oracle for "what a user loses" is built into each case: a YOLO-like head whose score channel is zeroed has
lost every detection, whatever its whole-tensor error says.
"""

from __future__ import annotations

import textwrap
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxconv import compare, metrics
from onnxconv.errors import OnnxConvError, OptionError


def _v8_head(rng: np.random.Generator, anchors: int = 400, classes: int = 3, boxes: int = 6) -> np.ndarray:
    """A YOLOv8-style output 1 x (4+C) x A: pixel boxes, then sigmoid scores with ``boxes`` confident anchors."""
    out = np.zeros((1, 4 + classes, anchors), np.float32)
    out[0, 0] = rng.uniform(0, 640, anchors)
    out[0, 1] = rng.uniform(0, 640, anchors)
    out[0, 2:4] = rng.uniform(20, 200, (2, anchors))
    out[0, 4:] = rng.uniform(0, 0.05, (classes, anchors))
    hot = rng.choice(anchors, boxes, replace=False)
    # far-apart confident boxes so that NMS keeps them all
    out[0, 0, hot] = np.arange(boxes) * 100 + 50
    out[0, 1, hot] = 300
    out[0, 2:4, hot] = 40
    out[0, 4 + (np.arange(boxes) % classes), hot] = 0.9
    return out


def test_zeroed_scores_pass_whole_tensor_but_fail_per_channel() -> None:
    ref = _v8_head(np.random.default_rng(0))
    cand = ref.copy()
    cand[0, 4:] = 0.0  # int8 with one scale for pixels and scores: every score rounds to 0
    (a,) = compare.compare_outputs({"out": ref}, {"out": cand})
    assert a.rel_error < 0.01  # the whole tensor hardly moves ...
    assert a.worst_channel is not None and a.worst_channel.axis == 1 and a.worst_channel.index >= 4
    assert a.worst_channel.rel_error == pytest.approx(1.0)  # ... but the scores are all gone
    assert a.error == pytest.approx(1.0)
    assert a.to_dict()["worst_channel"] == {"axis": 1, "index": a.worst_channel.index, "rel_error": pytest.approx(1.0)}
    f1 = metrics.load_metric("boxes").evaluate([{"out": ref}], [{"out": cand}])
    assert f1.value == 0.0 and f1.support == 6


@pytest.mark.parametrize("shape, axis", [
    ((1, 84, 8400), 1),      # YOLOv8: channels first
    ((1, 3549, 85), 2),      # YOLOX / v5: channels last
    ((2, 16, 8, 8), 1),      # NCHW map
    ((1, 20, 20, 3), 3),     # NHWC map
    ((4, 10), None),         # N x C logits: one scale, whole tensor only
    ((7,), None),            # no channel axis
])
def test_channel_axis_from_shape(shape: tuple[int, ...], axis: int | None) -> None:
    a = np.random.default_rng(1).standard_normal(shape)
    assert compare.channel_axis(a) == axis


def test_channel_axis_tie_uses_scale_spread_and_override() -> None:
    a = np.ones((1, 6, 6))
    a[:, :, 0] *= 500  # the last axis holds one pixel-scale channel: that is where scales differ
    assert compare.channel_axis(a) == 2
    assert compare.channel_axis(a, 1) == 1 and compare.channel_axis(a, -1) == 2
    with pytest.raises(OptionError, match="has 3 dims"):
        compare.channel_axis(a, 3)


def test_override_reaches_compare_outputs() -> None:
    ref = np.random.default_rng(2).standard_normal((1, 8, 50))
    (a,) = compare.compare_outputs({"o": ref}, {"o": ref * 1.01}, {"o": 2})
    assert a.worst_channel is not None and a.worst_channel.axis == 2


def test_silent_channel_raises_no_false_alarm() -> None:
    rng = np.random.default_rng(3)
    ref = rng.standard_normal((1, 5, 1000))
    ref[0, 4] = 1e-7 * rng.standard_normal(1000)  # a class that never fires
    cand = ref + 1e-7 * rng.standard_normal(ref.shape)  # a small error everywhere, huge relative to channel 4
    (a,) = compare.compare_outputs({"o": ref}, {"o": cand})
    assert a.worst_channel is not None and a.worst_channel.rel_error < 0.05
    # without the floor, channel 4 would read ~1
    norms = np.linalg.norm(ref[0, 4])
    assert np.linalg.norm(cand[0, 4] - ref[0, 4]) / norms > 0.5


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 3), st.integers(2, 9), st.integers(2, 30), st.floats(0, 1), st.integers(0, 2**31 - 1))
def test_channel_errors_match_the_definition(n: int, c: int, a_: int, noise: float, seed: int) -> None:
    rng = np.random.default_rng(seed)
    ref = rng.standard_normal((n, c, a_)) * rng.uniform(0.01, 100, (1, c, 1))
    cand = ref + noise * rng.standard_normal(ref.shape)
    errs = compare.channel_errors(ref, cand, 1)
    norms = np.linalg.norm(ref.transpose(1, 0, 2).reshape(c, -1), axis=1)
    floor = compare.CHANNEL_FLOOR * norms.max()
    want = np.linalg.norm((cand - ref).transpose(1, 0, 2).reshape(c, -1), axis=1) / np.maximum(norms, floor)
    np.testing.assert_allclose(errs, want, rtol=1e-12)


def test_parse_channel_axes() -> None:
    assert compare.parse_channel_axes(["out=1", "a=b=-1"]) == {"out": 1, "a=b": -1}
    for bad in ("out", "=1", "out=x"):
        with pytest.raises(OptionError, match="--channel-axis"):
            compare.parse_channel_axes([bad])


# ---------------------------------------------------------------------------------------------------------------
# metrics


def test_top1_builtin() -> None:
    ref = np.eye(4)[[0, 1, 2, 3, 0, 1, 2, 3, 0, 1, 2, 3]]
    cand = ref.copy()
    cand[:3] = np.eye(4)[[3, 3, 3]]
    m = metrics.load_metric("top1")
    v = m.evaluate([{"p": ref}], [{"p": cand}])
    assert v.value == pytest.approx(9 / 12) and v.support == 12 and v.note is None
    few = m.evaluate([{"p": ref[:2]}], [{"p": ref[:2]}])
    assert few.value == 1.0 and few.note is not None and "means little" in few.note


def test_boxes_v8_and_v5_layouts_agree() -> None:
    ref = _v8_head(np.random.default_rng(4), boxes=12)
    cand = ref.copy()
    hot = np.flatnonzero(ref[0, 4:].max(0) > 0.5)
    cand[0, 0, hot[:3]] += 200  # three boxes moved far away: 9 of 12 still match
    m = metrics.load_metric("boxes")
    assert m.evaluate([{"o": ref}], [{"o": cand}]).value == pytest.approx(2 * 9 / 24)
    # The same head as v5: N x A x (5+C) with objectness 1.
    def v5(x: np.ndarray) -> np.ndarray:
        h = np.moveaxis(x, 1, 2)
        return np.concatenate([h[..., :4], np.ones_like(h[..., :1]), h[..., 4:]], -1)

    assert m.evaluate([{"o": v5(ref)}], [{"o": v5(cand)}]).value == pytest.approx(2 * 9 / 24)


def test_boxes_class_must_match_and_threshold_is_settable() -> None:
    ref = _v8_head(np.random.default_rng(5), boxes=10)
    cand = ref.copy()
    cand[0, 4:] = cand[0, [5, 6, 4]]  # every class label rotated: same boxes, wrong classes
    assert metrics.load_metric("boxes").evaluate([{"o": ref}], [{"o": cand}]).value == 0.0
    low = ref.copy()
    low[0, 4:] *= 0.5  # scores 0.45: under the default 0.25? no, over; under conf=0.5
    assert metrics.load_metric("boxes").evaluate([{"o": ref}], [{"o": low}]).value == 1.0
    assert metrics.load_metric("boxes:conf=0.5").evaluate([{"o": ref}], [{"o": low}]).value == 0.0


def test_boxes_decodes_raw_yolox() -> None:
    rng = np.random.default_rng(6)
    anchors = 21 * 4  # a 64 x 64 input: grids 8x8, 4x4, 2x2
    raw = np.zeros((1, anchors, 6), np.float32)
    raw[0, :, :2] = rng.uniform(-0.5, 1.5, (anchors, 2))  # offsets in cells, not pixels
    raw[0, :, 2:4] = rng.uniform(-1, 1, (anchors, 2))      # log sizes
    raw[0, :, 4] = 0.01
    raw[0, [0, 30, 63], 4] = 0.9  # three anchors far apart in the 8 x 8 grid
    raw[0, :, 5] = 1.0
    m = metrics.Boxes()
    grid = m._grid([{"o": raw}])
    assert grid is not None
    boxes, _ = m.detections({"o": raw}, grid)[0]
    assert len(boxes) == 3 and boxes[:, 2].max() > 8  # decoded into the pixel frame


def test_boxes_says_when_too_few() -> None:
    ref = _v8_head(np.random.default_rng(7), boxes=2)
    v = metrics.load_metric("boxes").evaluate([{"o": ref}], [{"o": ref}])
    assert v.value == 1.0 and v.support == 2 and v.note is not None and "2 reference boxes" in v.note


def test_metric_plugin_from_file(tmp_path: Path) -> None:
    plug = tmp_path / "my metric.py"
    plug.write_text(textwrap.dedent("""
        import numpy as np

        def score_agreement(reference, candidate):
            assert isinstance(reference, list) and isinstance(reference[0], dict)
            a = np.concatenate([r["scores"].ravel() for r in reference])
            b = np.concatenate([c["scores"].ravel() for c in candidate])
            return 1.0 - float(np.abs(a - b).max())

        NOT_A_FUNCTION = 3
    """))
    m = metrics.load_metric(f"{plug}:score_agreement")
    ref = [{"scores": np.array([0.5, 0.2])}, {"scores": np.array([0.1])}]
    cand = [{"scores": np.array([0.5, 0.1])}, {"scores": np.array([0.1])}]
    v = m.evaluate(ref, cand)
    assert v.value == pytest.approx(0.9) and v.support is None and m.name == "score_agreement"
    with pytest.raises(OptionError, match="no function"):
        metrics.load_metric(f"{plug}:NOT_A_FUNCTION")
    with pytest.raises(OptionError, match="no such file"):
        metrics.load_metric(f"{tmp_path / 'missing.py'}:f")


def test_metric_plugin_from_module(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    pkg = tmp_path / "mytask"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "scoring.py").write_text("def half(reference, candidate):\n    return 0.5\n"
                                    "def broken(reference, candidate):\n    raise KeyError('boxes')\n"
                                    "def text(reference, candidate):\n    return 'good'\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert metrics.load_metric("mytask.scoring:half").evaluate([{}], [{}]).value == 0.5
    with pytest.raises(OnnxConvError, match="raised KeyError"):
        metrics.load_metric("mytask.scoring:broken").evaluate([{}], [{}])
    with pytest.raises(OnnxConvError, match="not a number"):
        metrics.load_metric("mytask.scoring:text").evaluate([{}], [{}])
    with pytest.raises(OptionError, match="cannot import"):
        metrics.load_metric("mytask.nothere:half")


@pytest.mark.parametrize("spec, message", [
    ("boxes:conf=x", "not a valid"),
    ("boxes:colour=red", "unknown setting"),
    ("boxes:layout=v9", "choose v8 or v5"),
    ("nonsense", "give a built-in"),
    ("a.py:1x", "not a function name"),
])
def test_bad_metric_specs(spec: str, message: str) -> None:
    with pytest.raises(OptionError, match=message):
        metrics.load_metric(spec)

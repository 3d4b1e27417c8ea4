"""compare: random/given inputs, sessions, input mapping and the agreement metrics."""

from __future__ import annotations

import glob
import os

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp
from onnx import TensorProto, helper

from onnxconv import compare
from onnxconv.errors import OnnxConvError, OptionError

from .modelkit import init, make_model, single_conv, tensor


def two_input_model(x_name: str = "X", y_name: str = "S") -> onnx.ModelProto:
    """Y = Relu(X) * S (S broadcast), with a symbolic batch dim and an int64 side input it ignores."""
    nodes = [helper.make_node("Relu", [x_name], ["r"]), helper.make_node("Mul", ["r", y_name], ["Y"]),
             helper.make_node("Shape", ["K"], ["Kshape"])]
    inputs = [tensor(x_name, ["N", 4]), tensor(y_name, [1, 4]), tensor("K", [3], TensorProto.INT64)]
    return make_model(nodes, inputs, [tensor("Y", None), tensor("Kshape", None, TensorProto.INT64)])


# ----------------------------------------------------------------------------------------------------------------
# Inputs


def test_make_inputs_fills_symbolic_batch_and_types() -> None:
    sess = compare.session(two_input_model())
    feeds = compare.make_inputs(sess, batch=3, seed=1)
    assert feeds["X"].shape == (3, 4) and feeds["X"].dtype == np.float32
    assert feeds["S"].shape == (1, 4)
    assert feeds["K"].dtype == np.int64 and feeds["K"].shape == (3,)
    again = compare.make_inputs(sess, batch=3, seed=1)
    assert all(np.array_equal(feeds[k], again[k]) for k in feeds)  # same seed, same arrays
    other = compare.make_inputs(sess, batch=3, seed=2)
    assert not np.array_equal(feeds["X"], other["X"])


def test_make_inputs_symbolic_non_batch_dim_names_the_option() -> None:
    model = single_conv([1, 3, "H", "W"], [4, 3, 3, 3])
    sess = compare.session(model)
    with pytest.raises(OptionError, match=r"--input-shape X=1x3x<H>x<W> \(replace each <...> with a number\)"):
        compare.make_inputs(sess)
    assert compare.make_inputs(sess, {"X": [1, 3, 9, 7]})["X"].shape == (1, 3, 9, 7)


def test_make_inputs_refuses_inputs_beyond_memory_before_allocating() -> None:
    """X is N x 4 float32 (16 bytes a row), S 1 x 4 float32, K 3 int64: 16*N + 16 + 24 bytes in all."""
    sess = compare.session(two_input_model())
    assert compare.make_inputs(sess, batch=4, max_bytes=16 * 4 + 16 + 24)["X"].shape == (4, 4)
    with pytest.raises(OptionError, match=r"input 'K' of shape 3 \(int64\) needs 24 bytes .*lower --batch") as e:
        compare.make_inputs(sess, batch=4, max_bytes=16 * 4 + 16 + 23)  # the last input crosses the limit
    assert "\n" not in str(e.value)
    # A huge --batch and a declared dim of 10**12 (terabytes): refused by the default limit, nothing allocated.
    with pytest.raises(OptionError, match=r"input 'X' of shape 1000000000000x4 \(float32\) needs 16,000,000,000,000 "):
        compare.make_inputs(sess, batch=10**12)
    huge = compare.session(single_conv([1, 3, 10**12, 1], [4, 3, 1, 1]))
    with pytest.raises(OptionError, match=r"input 'X' of shape 1x3x1000000000000x1 \(float32\) needs 12,000,000,000,000"):
        compare.make_inputs(huge)


def test_memory_limit_follows_an_address_space_limit(monkeypatch: pytest.MonkeyPatch) -> None:
    """Under `ulimit -v` (or a container's limit) the inputs must fit in half of that, not of the physical RAM: a
    fuzz case with --batch 1000000 under a 4 GB limit passed the RAM check and ended in a MemoryError traceback."""
    import resource

    monkeypatch.setattr(resource, "getrlimit", lambda which: (4 * 2**30, resource.RLIM_INFINITY))
    assert compare.memory_limit_bytes() == 2 * 2**30
    sess = compare.session(two_input_model())
    with pytest.raises(OptionError, match=r"input 'X' of shape 1000000000x4 .*half the memory this process may use"):
        compare.make_inputs(sess, batch=10**9)  # 16 GB: below half of 24 GB RAM, above half of the 4 GB limit


def test_make_inputs_turns_a_memory_error_into_one_line(monkeypatch: pytest.MonkeyPatch) -> None:
    sess = compare.session(two_input_model())

    class NoMemory:
        def standard_normal(self, *args: object) -> None:
            raise MemoryError

    monkeypatch.setattr(compare.np.random, "default_rng", lambda seed: NoMemory())
    with pytest.raises(OptionError, match=r"^input 'X' of shape 4x4: out of memory drawing random inputs") as e:
        compare.make_inputs(sess, batch=4)
    assert "\n" not in str(e.value)


def test_make_inputs_rejects_an_unknown_input_shape_name() -> None:
    sess = compare.session(two_input_model())
    with pytest.raises(OptionError, match=r"^--input-shape: the model has no input 'bogus' \(inputs: X, S, K\)$"):
        compare.make_inputs(sess, {"bogus": [1, 4]})


def test_load_inputs(tmp_path) -> None:
    sess = compare.session(two_input_model())
    good = tmp_path / "in.npz"
    arrays = {"X": np.ones((2, 4), np.float32), "S": np.full((1, 4), 2, np.float32), "K": np.arange(3)}
    np.savez(good, **arrays, extra=np.zeros(1))
    loaded = compare.load_inputs(good, sess)
    assert list(loaded) == ["X", "S", "K"] and np.array_equal(loaded["S"], arrays["S"])
    partial = tmp_path / "partial.npz"
    np.savez(partial, X=arrays["X"])
    with pytest.raises(OptionError, match=r"no array for input\(s\) \['S', 'K'\]"):
        compare.load_inputs(partial, sess)
    junk = tmp_path / "junk.npz"
    junk.write_text("not a zip")
    with pytest.raises(OptionError, match="not an .npz archive"):
        compare.load_inputs(junk, sess)



@pytest.mark.parametrize("arrays,message", [
    ({"S": np.ones((2, 4), np.float32)}, r"array 'S' has shape \[2, 4\]: dim 0 is 2, the model input 1x4 needs 1"),
    ({"X": np.ones((2, 4, 1), np.float32)}, r"array 'X' has shape \[2, 4, 1\], the model input has 2 dims \(\?x4\)"),
    ({"X": np.ones((2, 4), np.float64)}, r"array 'X' has dtype float64, the model input is float32"),
    ({"K": np.arange(3, dtype=np.int32)}, r"array 'K' has dtype int32, the model input is int64"),
])
def test_input_arrays_are_checked_against_the_model(tmp_path, arrays, message) -> None:
    """Shape (rank, fixed dims) and dtype, by the session and by the model's graph inputs alike, in one line
    before anything runs (onnxruntime's own message is long and cut off)."""
    model = two_input_model()
    good = {"X": np.ones((5, 4), np.float32), "S": np.ones((1, 4), np.float32), "K": np.arange(3)}
    path = tmp_path / "in.npz"
    np.savez(path, **{**good, **arrays})
    with pytest.raises(OptionError, match=message):
        compare.load_inputs(path, compare.session(model))
    with pytest.raises(OptionError, match=message):
        compare.check_inputs(compare.read_npz(path, "x"), compare.model_input_specs(model), "x")
    np.savez(path, **good)  # a symbolic batch takes any size
    assert compare.load_inputs(path, compare.session(model))["X"].shape == (5, 4)


def test_feeds_for_by_name_then_position() -> None:
    feeds = {"X": np.zeros((1, 4), np.float32), "S": np.ones((1, 4), np.float32), "K": np.arange(3)}
    same = compare.session(two_input_model())
    assert list(compare.feeds_for(same, dict(reversed(feeds.items())))) == ["X", "S", "K"]
    renamed = compare.session(two_input_model("input.1", "scale"))
    mapped = compare.feeds_for(renamed, feeds)
    assert list(mapped) == ["input.1", "scale", "K"] and mapped["scale"] is feeds["S"]
    with pytest.raises(OptionError, match="by name or by count"):
        compare.feeds_for(renamed, {"X": feeds["X"]})


# ----------------------------------------------------------------------------------------------------------------
# Sessions and runs


def test_session_and_run_match_numpy() -> None:
    model = two_input_model()
    feeds = {"X": np.array([[-1, 2, -3, 4]], np.float32), "S": np.full((1, 4), 0.5, np.float32),
             "K": np.arange(3)}
    for level in compare.OPT_LEVELS:
        out = compare.run_model(compare.session(model, opt_level=level, threads=1), feeds)
        np.testing.assert_array_equal(out["Y"], [[0, 1, 0, 2]])
        np.testing.assert_array_equal(out["Kshape"], [3])


def test_session_errors_are_one_line() -> None:
    with pytest.raises(OnnxConvError, match="^onnxruntime cannot load the model: ") as e:
        compare.session(onnx.ModelProto())
    assert "\n" not in str(e.value)
    with pytest.raises(OptionError, match="optimisation level 'max'"):
        compare.session(two_input_model(), opt_level="max")
    sess = compare.session(two_input_model())
    with pytest.raises(OnnxConvError, match="^onnxruntime failed to run the model: "):
        compare.run_model(sess, {"X": np.zeros((1, 5), np.float32), "S": np.zeros((1, 4), np.float32),
                                 "K": np.arange(3)})


def test_session_profiling_and_spinning_options(tmp_path) -> None:
    model = single_conv([1, 2, 5, 5], [3, 2, 3, 3])
    sess = compare.session(model, profile_prefix=str(tmp_path / "prof"), spinning=False, threads=2)
    compare.run_model(sess, {"X": np.ones((1, 2, 5, 5), np.float32)})
    path = sess.end_profiling()
    assert os.path.dirname(path) == str(tmp_path) and glob.glob(str(tmp_path / "prof*.json"))
    assert compare.session(model).get_session_options().enable_profiling is False


# ----------------------------------------------------------------------------------------------------------------
# Agreement metrics

# Subnormals are excluded: float32 rounding of a*(1+eps) is coarse there, so the eps check below is not about
# the metric. The formula check (rel=1e-9) holds for every input.
finite = st.floats(-100, 100, allow_nan=False, allow_subnormal=False, width=32)


@settings(max_examples=40, deadline=None)
@given(hnp.arrays(np.float32, hnp.array_shapes(min_dims=1, max_dims=3, max_side=6), elements=finite),
       st.floats(1e-4, 0.5))
def test_agreement_metrics_match_their_formulas(a: np.ndarray, eps: float) -> None:
    b = (a * (1 + eps)).astype(np.float32)
    [ag] = compare.compare_outputs({"Y": a}, {"Y": b})
    a64, b64 = a.astype(np.float64).ravel(), b.astype(np.float64).ravel()
    assert ag.max_abs == pytest.approx(float(np.max(np.abs(a64 - b64))))
    if np.linalg.norm(a64) > 0:
        assert ag.rel_error == pytest.approx(np.linalg.norm(a64 - b64) / np.linalg.norm(a64), rel=1e-9)
        assert ag.rel_error == pytest.approx(eps, rel=1e-3, abs=1e-6)  # float32 rounding of b
        assert ag.cosine == pytest.approx(1.0, abs=1e-9)
    [same] = compare.compare_outputs({"Y": a}, {"Y": a.copy()})
    assert same.max_abs == 0 and same.rel_error == 0


def test_agreement_cosine_and_zero_reference() -> None:
    [opposite] = compare.compare_outputs({"Y": np.array([1.0, 2.0])}, {"Y": np.array([-1.0, -2.0])})
    assert opposite.cosine == pytest.approx(-1.0) and opposite.rel_error == pytest.approx(2.0)
    [zero] = compare.compare_outputs({"Y": np.zeros(3)}, {"Y": np.array([0.0, 3.0, 4.0])})
    assert zero.rel_error == pytest.approx(5.0) and zero.cosine == 0.0


def _softmax(x: np.ndarray) -> np.ndarray:
    e = np.exp(x - x.max(axis=-1, keepdims=True))
    return e / e.sum(axis=-1, keepdims=True)


def test_top1_for_class_distributions_only() -> None:
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((4, 10))
    flipped = logits.copy()
    flipped[0] = -flipped[0]  # row 0's argmax moves
    for scores, moved in ((_softmax(logits), _softmax(flipped)), (np.log(_softmax(logits)), np.log(_softmax(flipped)))):
        [ag] = compare.compare_outputs({"Y": scores.astype(np.float32)}, {"Y": moved.astype(np.float32)})
        assert ag.top1 == pytest.approx(0.75)
    seq = _softmax(rng.standard_normal((1, 6, 3000))).astype(np.float32)  # N x T x C probabilities, OCR style
    [ag] = compare.compare_outputs({"Y": seq}, {"Y": seq})
    assert ag.top1 == 1.0
    yolo = np.abs(rng.standard_normal((1, 84, 2100))).astype(np.float32) * 100  # boxes and class scores per anchor
    regression = rng.standard_normal((1, 10))  # landmarks
    sigmoids = 1 / (1 + np.exp(-rng.standard_normal((3, 10))))  # multi-label: in [0, 1], rows do not sum to 1
    for not_scores in (yolo, regression, logits, sigmoids, rng.standard_normal((5, 1)), _softmax(rng.standard_normal((2, 3, 4, 5)))):
        [ag] = compare.compare_outputs({"Y": not_scores}, {"Y": not_scores})
        assert ag.top1 is None, not_scores.shape


def test_outputs_matched_by_name_then_position_and_shapes_checked() -> None:
    a, b = np.ones((2, 3)), np.full((2, 3), 2.0)
    ags = compare.compare_outputs({"Y": a, "Z": b}, {"Z": b, "renamed": a})
    assert [(g.output, g.max_abs) for g in ags] == [("Z", 0.0), ("renamed", 1.0)]
    [flat] = compare.compare_outputs({"Y": a}, {"Y": a.reshape(6)})  # same elements, reshaped: compared flat
    assert flat.max_abs == 0 and flat.top1 is None
    with pytest.raises(OnnxConvError, match=r"output 'Y' has shape \(2, 2\)"):
        compare.compare_outputs({"Y": a}, {"Y": a[:, :2]})


def test_agreement_of_a_conv_with_perturbed_weights() -> None:
    """End to end: two sessions, the same random inputs, the error the weight change predicts."""
    model = single_conv([1, 3, 8, 8], [4, 3, 3, 3], pads=[1, 1, 1, 1])
    scaled = onnx.ModelProto()
    scaled.CopyFrom(model)
    w = onnx.numpy_helper.to_array(model.graph.initializer[0])
    scaled.graph.initializer[0].CopyFrom(init("W", (w * 1.01).astype(np.float32)))
    sess = compare.session(model)
    feeds = compare.make_inputs(sess)
    [ag] = compare.compare_outputs(compare.run_model(sess, feeds), compare.run_model(compare.session(scaled), feeds))
    assert ag.rel_error == pytest.approx(0.01, rel=1e-3) and ag.cosine == pytest.approx(1.0)


def test_load_inputs_missing_file(tmp_path) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(OptionError, match="no such file"):
        compare.load_inputs(tmp_path / "missing.npz", None)


def test_sessions_log_nothing_and_messages_drop_source_locations(capfd) -> None:
    """separate --verify runs through compare.session/run_model: a failing run raises one short line, and
    onnxruntime's own (coloured) log line of the same failure does not reach fd 2."""
    node = helper.make_node("Reshape", ["X", "S"], ["Y"], name="reshape")
    model = make_model([node], [tensor("X", [1, 8])], [tensor("Y", None)], [init("S", np.array([3, 5], np.int64))])
    with pytest.raises(OnnxConvError, match="^onnxruntime failed to run the model: .*cannot be reshaped") as e:
        compare.run_model(compare.session(model), {"X": np.zeros((1, 8), np.float32)})
    assert "onnxruntime::" not in str(e.value) and "reshape_helper.h" not in str(e.value)
    err = capfd.readouterr().err
    assert "onnxruntime:" not in err and "\x1b[" not in err


def test_ort_message_first_line_short() -> None:
    e = RuntimeError("[ONNXRuntimeError] : 1 : FAIL : /src/a/b.cc:12 void f::g(int) const bad thing\nsecond")
    assert compare.ort_message(e) == "[ONNXRuntimeError] : 1 : FAIL : bad thing"
    assert compare.ort_message(RuntimeError("x" * 500), limit=50) == "x" * 47 + "..."
    assert compare.ort_message(RuntimeError("")) == "RuntimeError"

"""ConvSpec: ONNX attribute defaults, every conv kind, and onnxruntime as the oracle for shapes and pads."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxconv.conv import ConvSpec, conv_spec
from onnxconv.errors import ShapeError
from onnxconv.stats import analyze
from tests.modelkit import init, make_model, single_conv, tensor


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    # No graph optimisation: the oracle is the op itself, not a fused replacement.
    so.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    sess = ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"])
    return sess.run(None, feeds)[0]


def _ort_conv(x_shape: tuple[int, ...], w_shape: tuple[int, ...], op: str = "Conv", **attrs: Any) -> np.ndarray:
    model = single_conv(list(x_shape), list(w_shape), op=op, **attrs)
    return _run(model, {"X": np.random.default_rng(1).standard_normal(x_shape).astype(np.float32)})


# -- defaults, one attribute at a time -----------------------------------------------------------------------------

@pytest.mark.parametrize(
    "op, attrs, w, x, out, pads",
    [
        ("Conv", {}, (4, 3, 3, 3), (1, 3, 8, 8), (1, 4, 6, 6), (0, 0, 0, 0)),  # every attribute absent
        ("Conv", {"kernel_shape": [3, 3]}, (4, 3, 3, 3), (1, 3, 8, 8), (1, 4, 6, 6), (0, 0, 0, 0)),
        ("Conv", {"strides": [2, 3]}, (4, 3, 3, 3), (1, 3, 9, 9), (1, 4, 4, 3), (0, 0, 0, 0)),
        ("Conv", {"pads": [1, 2, 0, 1]}, (4, 3, 3, 3), (1, 3, 8, 8), (1, 4, 7, 9), (1, 2, 0, 1)),
        ("Conv", {"dilations": [2, 1]}, (4, 3, 3, 3), (1, 3, 8, 8), (1, 4, 4, 6), (0, 0, 0, 0)),
        ("Conv", {"group": 3}, (6, 1, 3, 3), (1, 3, 8, 8), (1, 6, 6, 6), (0, 0, 0, 0)),
        ("Conv", {"auto_pad": "SAME_UPPER", "strides": [2, 2]}, (4, 3, 3, 3), (1, 3, 8, 8), (1, 4, 4, 4), (0, 0, 1, 1)),
        ("Conv", {"auto_pad": "SAME_LOWER", "strides": [2, 2]}, (4, 3, 3, 3), (1, 3, 8, 8), (1, 4, 4, 4), (1, 1, 0, 0)),
        ("Conv", {"auto_pad": "VALID", "strides": [2, 2]}, (4, 3, 3, 3), (1, 3, 8, 8), (1, 4, 3, 3), (0, 0, 0, 0)),
        ("Conv", {"strides": [2]}, (4, 3, 5), (2, 3, 16), (2, 4, 6), (0, 0)),  # 1-D
        ("Conv", {"pads": [1] * 6}, (2, 3, 3, 3, 3), (1, 3, 4, 5, 6), (1, 2, 4, 5, 6), (1,) * 6),  # 3-D
        ("ConvTranspose", {}, (3, 4, 3, 3), (1, 3, 5, 5), (1, 4, 7, 7), (0, 0, 0, 0)),
        ("ConvTranspose", {"strides": [2, 2], "pads": [1, 1, 1, 1]}, (3, 4, 3, 3), (1, 3, 5, 5), (1, 4, 9, 9),
         (1, 1, 1, 1)),
        ("ConvTranspose", {"strides": [2, 2], "output_padding": [1, 0]}, (3, 4, 3, 3), (1, 3, 5, 5), (1, 4, 12, 11),
         (0, 0, 0, 0)),
        ("ConvTranspose", {"strides": [2, 2], "output_shape": [10, 10]}, (3, 4, 3, 3), (1, 3, 5, 5),
         (1, 4, 10, 10), (1, 1, 0, 0)),
        ("ConvTranspose", {"strides": [2, 2], "auto_pad": "SAME_UPPER"}, (3, 4, 3, 3), (1, 3, 5, 5), (1, 4, 10, 10),
         (0, 0, 1, 1)),
        ("ConvTranspose", {"strides": [2, 2], "auto_pad": "SAME_LOWER"}, (3, 4, 3, 3), (1, 3, 5, 5), (1, 4, 10, 10),
         (1, 1, 0, 0)),
        ("ConvTranspose", {"group": 3, "strides": [2, 2]}, (3, 2, 2, 2), (1, 3, 4, 4), (1, 6, 8, 8), (0, 0, 0, 0)),
        ("ConvTranspose", {"strides": [2]}, (3, 4, 4), (1, 3, 6), (1, 4, 14), (0, 0)),  # 1-D
        ("ConvTranspose", {"strides": [2, 2, 2]}, (3, 2, 2, 2, 2), (1, 3, 2, 3, 4), (1, 2, 4, 6, 8), (0,) * 6),  # 3-D
    ],
)
def test_attribute_defaults_match_onnxruntime(op: str, attrs: dict[str, Any], w: tuple[int, ...], x: tuple[int, ...],
                                              out: tuple[int, ...], pads: tuple[int, ...]) -> None:
    spec = conv_spec(op, attrs, w, False, x)
    assert spec.output_shape == out
    assert spec.pads == pads
    assert _ort_conv(x, w, op, **attrs).shape == out


def test_kinds_and_flags() -> None:
    def kind(w: tuple[int, ...], x: tuple[int, ...], **attrs: Any) -> ConvSpec:
        return conv_spec("Conv", attrs, w, False, x)

    assert kind((8, 4, 3, 3), (1, 4, 8, 8)).kind == "standard"
    assert kind((8, 4, 1, 1), (1, 4, 8, 8)).kind == "pointwise"
    assert kind((8, 2, 3, 3), (1, 4, 8, 8), group=2).kind == "grouped"
    dw = kind((4, 1, 3, 3), (1, 4, 8, 8), group=4)
    assert (dw.kind, dw.depth_multiplier) == ("depthwise", 1)
    dw2 = kind((12, 1, 3, 3), (1, 4, 8, 8), group=4)
    assert (dw2.kind, dw2.depth_multiplier) == ("depthwise", 3)
    flags = kind((8, 4, 3, 3), (1, 4, 16, 16), strides=[2, 1], dilations=[1, 2])
    assert flags.strided and flags.dilated
    assert not kind((8, 4, 3, 3), (1, 4, 8, 8)).strided
    assert conv_spec("ConvTranspose", {}, (4, 8, 2, 2), False, (1, 4, 8, 8)).kind == "transposed"


@pytest.mark.parametrize(
    "attrs, w, x, message",
    [
        ({"kernel_shape": [5, 5]}, (4, 3, 3, 3), (1, 3, 8, 8), "does not match weight"),
        ({"strides": [0, 1]}, (4, 3, 3, 3), (1, 3, 8, 8), "at least 1"),
        ({"strides": [1, 1, 1]}, (4, 3, 3, 3), (1, 3, 8, 8), "expected 2"),
        ({"pads": [1, 1]}, (4, 3, 3, 3), (1, 3, 8, 8), "expected 4"),
        ({"group": 2}, (3, 3, 3, 3), (1, 6, 8, 8), "not divisible by group"),
        ({}, (4, 3, 3, 3), (1, 5, 8, 8), "expects 3"),
        ({}, (4, 3, 3, 3), (1, 3, 8), "rank 3"),
        ({}, (4, 3, 3, 3), (1, 3, 2, 2), "too small"),
        ({"auto_pad": "SAME"}, (4, 3, 3, 3), (1, 3, 8, 8), "auto_pad"),
        ({"strides": "ab"}, (4, 3, 3, 3), (1, 3, 8, 8), "not a list of integers"),
        ({}, (4, 3), (1, 3, 8, 8), "at least 3 dims"),
    ],
)
def test_contradictory_attributes_raise_one_line(attrs: dict[str, Any], w: tuple[int, ...], x: tuple[int, ...],
                                                 message: str) -> None:
    with pytest.raises(ShapeError, match=message) as e:
        conv_spec("Conv", attrs, w, False, x)
    assert "\n" not in str(e.value)


def test_unknown_input_dims_leave_counts_unknown() -> None:
    spec = conv_spec("Conv", {"auto_pad": "SAME_UPPER"}, (4, 3, 3, 3), False, (1, 3, None, 8))
    assert spec.pads is None
    assert spec.output_shape == (1, 4, None, 8)
    assert spec.macs is None and spec.flops is None
    assert spec.params == 108  # params need no input shape


# -- randomized against onnxruntime ---------------------------------------------------------------------------------

@settings(max_examples=30, deadline=None)
@given(rank=st.integers(1, 3), g=st.sampled_from([1, 2, 3]), cpg_in=st.integers(1, 2), cpg_out=st.integers(1, 2),
       auto_pad=st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]), bias=st.booleans(),
       data=st.data())
def test_conv_output_shape_and_macs_match_onnxruntime(rank: int, g: int, cpg_in: int, cpg_out: int, auto_pad: str,
                                                      bias: bool, data: st.DataObject) -> None:
    k = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    s = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    d = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    x = [data.draw(st.integers(d[i] * (k[i] - 1) + 1, 9 if rank < 3 else 6)) for i in range(rank)]
    attrs: dict[str, Any] = {"strides": s, "dilations": d, "group": g}
    if auto_pad == "NOTSET":
        attrs["pads"] = [data.draw(st.integers(0, 2)) for _ in range(2 * rank)]
    else:
        attrs["auto_pad"] = auto_pad
    w_shape = (g * cpg_out, cpg_in, *k)
    x_shape = (1, g * cpg_in, *x)
    spec = conv_spec("Conv", attrs, w_shape, bias, x_shape)
    run_attrs = dict(attrs)
    if auto_pad.startswith("SAME") and any(v > 1 for v in d):
        # onnxruntime refuses SAME_* with dilation; the same conv with our explicit pads must give the SAME size.
        run_attrs.pop("auto_pad")
        run_attrs["pads"] = list(spec.pads or ())
    y = _ort_conv(x_shape, w_shape, **run_attrs)
    assert spec.output_shape == y.shape
    # MACs counted independently from onnxruntime's output: one (C_in/g)*prod(k) window per output element.
    assert spec.macs == y.size * cpg_in * math.prod(k)


def _reference_conv_transpose(x: np.ndarray, w: np.ndarray, group: int, strides: list[int], dilations: list[int],
                              pads: tuple[int, ...], out: tuple[int, ...]) -> np.ndarray:
    """Scatter every input element times every weight of its group into the uncropped buffer, then crop."""
    n, c_in = x.shape[:2]
    rank = x.ndim - 2
    cig, cog = c_in // group, w.shape[1]
    size = [max((x.shape[2 + i] - 1) * strides[i] + dilations[i] * (w.shape[2 + i] - 1) + 1, pads[i] + out[i])
            for i in range(rank)]
    buf = np.zeros((n, cog * group, *size), dtype=np.float64)
    for pos in itertools.product(*(range(v) for v in x.shape[2:])):
        for tap in itertools.product(*(range(v) for v in w.shape[2:])):
            p = tuple(pos[i] * strides[i] + tap[i] * dilations[i] for i in range(rank))
            for gi in range(group):
                xs = x[(slice(None), slice(gi * cig, (gi + 1) * cig), *pos)]
                ws = w[(slice(gi * cig, (gi + 1) * cig), slice(None), *tap)]
                buf[(slice(None), slice(gi * cog, (gi + 1) * cog), *p)] += xs @ ws
    return buf[(slice(None), slice(None), *(slice(pads[i], pads[i] + out[i]) for i in range(rank)))]


@settings(max_examples=30, deadline=None)
@given(rank=st.integers(1, 2), g=st.sampled_from([1, 2]), cpg_in=st.integers(1, 2), cpg_out=st.integers(1, 2),
       mode=st.sampled_from(["pads", "SAME_UPPER", "SAME_LOWER", "output_shape", "VALID"]), data=st.data())
def test_conv_transpose_shape_and_pads_match_onnxruntime(rank: int, g: int, cpg_in: int, cpg_out: int, mode: str,
                                                         data: st.DataObject) -> None:
    k = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    s = [data.draw(st.integers(1, 3)) for _ in range(rank)]
    d = [data.draw(st.integers(1, 2)) for _ in range(rank)]
    x = [data.draw(st.integers(1, 4)) for _ in range(rank)]
    op_ = [data.draw(st.integers(0, max(0, min(s[i], d[i]) - 1))) for i in range(rank)]  # output_padding < s, d
    attrs: dict[str, Any] = {"strides": s, "dilations": d, "group": g, "output_padding": op_}
    natural = [s[i] * (x[i] - 1) + op_[i] + d[i] * (k[i] - 1) + 1 for i in range(rank)]
    if mode == "pads":
        attrs["pads"] = [data.draw(st.integers(0, 1)) for _ in range(2 * rank)]
        if any(natural[i] - attrs["pads"][i] - attrs["pads"][rank + i] <= 0 for i in range(rank)):
            attrs["pads"] = [0] * (2 * rank)
    elif mode == "output_shape":
        attrs["output_shape"] = [data.draw(st.integers(max(1, natural[i] - 3), natural[i])) for i in range(rank)]
    elif mode.startswith("SAME"):
        attrs["auto_pad"] = mode
        if any(x[i] * s[i] > natural[i] for i in range(rank)):
            attrs["output_padding"] = op_ = [0] * rank  # keep the total padding non-negative
            natural = [s[i] * (x[i] - 1) + d[i] * (k[i] - 1) + 1 for i in range(rank)]
            if any(x[i] * s[i] > natural[i] for i in range(rank)):
                attrs["auto_pad"] = "VALID"
    else:
        attrs["auto_pad"] = "VALID"
    w_shape = (g * cpg_in, cpg_out, *k)
    x_shape = (1, g * cpg_in, *x)
    spec = conv_spec("ConvTranspose", attrs, w_shape, False, x_shape)
    model = single_conv(list(x_shape), list(w_shape), op="ConvTranspose", **attrs)
    xv = np.random.default_rng(2).standard_normal(x_shape).astype(np.float32)
    y = _run(model, {"X": xv})
    assert spec.output_shape == y.shape
    wv = onnx.numpy_helper.to_array(model.graph.initializer[0]).astype(np.float64)
    assert spec.pads is not None
    ref = _reference_conv_transpose(xv.astype(np.float64), wv, g, s, d, spec.pads, tuple(y.shape[2:]))
    np.testing.assert_allclose(y, ref, rtol=1e-4, atol=1e-4)
    # Scatter-view MACs from onnxruntime's input: every input element times C_out/g * prod(k) weights.
    assert spec.macs == xv.size * cpg_out * math.prod(k)


# -- quantized convs: inputs by position -------------------------------------------------------------------------------

def _qlinear_model(bias: bool) -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    inits = [
        init("xs", np.array(0.1, np.float32)), init("xz", np.array(3, np.uint8)),
        init("w", rng.integers(-5, 5, (8, 4, 3, 3)).astype(np.int8)),
        init("ws", np.full(8, 0.05, np.float32)), init("wz", np.zeros(8, np.int8)),
        init("ys", np.array(0.2, np.float32)), init("yz", np.array(5, np.uint8)),
    ]
    ins = ["X", "xs", "xz", "w", "ws", "wz", "ys", "yz"]
    if bias:
        inits.append(init("b", rng.integers(-9, 9, 8).astype(np.int32)))
        ins.append("b")
    node = helper.make_node("QLinearConv", ins, ["Y"], name="qconv", pads=[1, 1, 1, 1], strides=[2, 2])
    return make_model([node], [tensor("X", [1, 4, 9, 9], TensorProto.UINT8)], [tensor("Y", None, TensorProto.UINT8)],
                      inits)


@pytest.mark.parametrize("bias", [False, True])
def test_qlinearconv_reads_weight_and_bias_by_position(bias: bool) -> None:
    model = _qlinear_model(bias)
    row = analyze(model).layers[0]
    y = _run(model, {"X": np.full((1, 4, 9, 9), 7, np.uint8)})
    assert row.output_shape == list(y.shape) == [1, 8, 5, 5]
    assert row.weight_shape == [8, 4, 3, 3]
    # Params: weight + bias; the two scales and zero points per tensor are not params.
    assert row.params == 288 + (8 if bias else 0)
    assert row.macs == 8 * 25 * 4 * 9
    assert row.flops == 2 * row.macs - (0 if bias else 8 * 25)


def test_convinteger_counts_like_conv() -> None:
    w = init("w", np.ones((6, 3, 3, 3), np.uint8))
    node = helper.make_node("ConvInteger", ["X", "w", "xz"], ["Y"], name="ci")
    model = make_model([node], [tensor("X", [2, 3, 7, 7], TensorProto.UINT8)], [tensor("Y", None, TensorProto.INT32)],
                       [w, init("xz", np.array(1, np.uint8))])
    row = analyze(model).layers[0]
    y = _run(model, {"X": np.ones((2, 3, 7, 7), np.uint8)})
    assert row.output_shape == list(y.shape)
    assert row.params == 162  # the zero point is not a param
    assert row.macs == y.size * 27
    assert row.kind == "standard" and not row.has_bias

"""onnxconv.quantize: static QDQ quantization through onnxruntime's quantizer, onnxruntime as the oracle.

No figure here depends on the CPU's int8 instructions. onnxruntime's uint8 x int8 conv kernels for x86 without
VNNI (AVX2, AVX-512BW) add adjacent product pairs in a saturating int16, so the default 8-bit weights lose
precision there (the residual model's cosine: 0.99986 with VNNI, 0.986 without, in a numpy emulation of that
kernel). The tests that bound the error therefore quantize with ``reduce_range`` (7-bit weights: a pair stays
within 2 * 255 * 64 = 32640, and the result is the same on every x86-64); the defaults are tested by structure
(types, scales, node placement), which does not depend on the kernel.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxconv.errors import OnnxConvError, OptionError, ShapeError
from onnxconv.quantize import (MAX_IR_VERSION, PER_CHANNEL_OPSET, QuantizeError, QuantSettings, quantize_qdq,
                               quantize_static_qdq)

from .modelkit import init, make_model, tensor

SHAPE = (1, 3, 16, 16)


def residual_model(x_shape: Sequence[int | str] = SHAPE, opset: int = 17) -> onnx.ModelProto:
    """X -> conv1 (3->8, 3x3) -> Relu -> conv2 (8->8, 3x3) -> Add with the Relu -> Y: convs, an activation
    and the residual Add the separable sum form also has."""
    rng = np.random.default_rng(0)
    w1 = rng.standard_normal((8, 3, 3, 3)).astype(np.float32) * 0.3
    # Output channels of very different ranges: what per-channel scales are for.
    w2 = (rng.standard_normal((8, 8, 3, 3)) * np.logspace(-2, 0, 8)[:, None, None, None] * 0.2).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2", "B2"], ["c2"], name="conv2", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["r1", "c2"], ["Y"], name="add"),
    ]
    inits = [init("W1", w1), init("B1", rng.standard_normal(8).astype(np.float32) * 0.1),
             init("W2", w2), init("B2", rng.standard_normal(8).astype(np.float32) * 0.1)]
    return make_model(nodes, [tensor("X", x_shape)], [tensor("Y", None)], inits, opset=opset)


def smooth(seed: int, shape: Sequence[int] = SHAPE) -> np.ndarray:
    """A smooth image-like input: a few random low-frequency waves per channel."""
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    yy, xx = np.meshgrid(np.linspace(0, 1, h), np.linspace(0, 1, w), indexing="ij")
    out = np.zeros(shape, dtype=np.float32)
    for i in range(n):
        for j in range(c):
            fy, fx, ph = rng.uniform(0.5, 2.0), rng.uniform(0.5, 2.0), rng.uniform(0, 2 * np.pi)
            out[i, j] = np.sin(2 * np.pi * (fy * yy + fx * xx) + ph)
    return out


def calib(n: int = 8, shape: Sequence[int] = SHAPE) -> list[dict[str, np.ndarray]]:
    return [{"X": smooth(k, shape)} for k in range(n)]


def run(model: onnx.ModelProto, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return sess.run(None, {"X": x})[0]


def cosine(a: np.ndarray, b: np.ndarray) -> float:
    a, b = a.ravel().astype(np.float64), b.ravel().astype(np.float64)
    return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))


def producer(model: onnx.ModelProto, name: str) -> onnx.NodeProto:
    return next(n for n in model.graph.node if name in n.output)


def init_array(model: onnx.ModelProto, name: str) -> np.ndarray:
    return onnx.numpy_helper.to_array(next(t for t in model.graph.initializer if t.name == name))


def conv_weight_dq(model: onnx.ModelProto, conv_name: str) -> onnx.NodeProto:
    """The DequantizeLinear that feeds the weight input of the (float) Conv named ``conv_name``."""
    conv = next(n for n in model.graph.node if n.op_type == "Conv" and n.name == conv_name)
    return producer(model, conv.input[1])


def activation_q(model: onnx.ModelProto) -> onnx.NodeProto:
    """The QuantizeLinear of the model input."""
    return next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "X")


#: 7-bit weights: no uint8 x int8 product pair saturates int16, so error bounds hold with or without VNNI.
NO_SATURATION = QuantSettings(reduce_range=True)


def unsaturated(model: onnx.ModelProto, feeds: list[dict[str, np.ndarray]], **kwargs: object) -> onnx.ModelProto:
    return quantize_qdq(model, feeds, NO_SATURATION, **kwargs).model  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def default_q() -> tuple[onnx.ModelProto, onnx.ModelProto]:
    model = residual_model()
    return model, quantize_static_qdq(model, calib())


def test_output_close_to_fp32_and_loads() -> None:
    model = residual_model()
    q = unsaturated(model, calib())
    x = smooth(100)  # held out: not among the calibration feeds
    ref, got = run(model, x), run(q, x)
    assert got.shape == ref.shape
    assert cosine(ref, got) > 0.99
    assert q.ir_version <= MAX_IR_VERSION
    onnx.checker.check_model(q)


def test_qdq_nodes_around_every_conv(default_q: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    _, q = default_q
    ops = [n.op_type for n in q.graph.node]
    assert ops.count("QuantizeLinear") >= 3 and ops.count("DequantizeLinear") >= 5
    for conv in ("conv1", "conv2"):
        node = next(n for n in q.graph.node if n.name == conv)
        assert producer(q, node.input[0]).op_type == "DequantizeLinear"  # quantized activation in
        assert conv_weight_dq(q, conv).op_type == "DequantizeLinear"  # quantized weight


def test_defaults_uint8_activations_int8_per_channel_weights(
        default_q: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    _, q = default_q
    assert init_array(q, activation_q(q).input[2]).dtype == np.uint8
    dq = conv_weight_dq(q, "conv2")
    assert init_array(q, dq.input[0]).dtype == np.int8
    assert init_array(q, dq.input[1]).shape == (8,)  # one scale per output channel
    assert [o.version for o in q.opset_import if o.domain in ("", "ai.onnx")][0] >= PER_CHANNEL_OPSET


@pytest.mark.parametrize("act, weight", [("int8", "int8"), ("uint8", "uint8")])
def test_types_honoured_per_tensor(act: str, weight: str) -> None:
    model = residual_model()
    q = quantize_static_qdq(model, calib(4), activation_type=act, weight_type=weight, per_channel=False)
    dtypes = {"int8": np.int8, "uint8": np.uint8}
    assert init_array(q, activation_q(q).input[2]).dtype == dtypes[act]
    dq = conv_weight_dq(q, "conv2")
    assert init_array(q, dq.input[0]).dtype == dtypes[weight]
    assert init_array(q, dq.input[1]).size == 1  # one scale for the tensor
    # Neither pairing saturates on any x86: int8 activations run as float ops there (no integer kernel), and
    # uint8 x uint8 kernels widen to int16 before multiplying (int32 sums).
    assert cosine(run(model, smooth(100)), run(q, smooth(100))) > 0.97


def test_reduce_range_weights_cannot_saturate() -> None:
    q = unsaturated(residual_model(), calib(4))
    for conv in ("conv1", "conv2"):
        w = init_array(q, conv_weight_dq(q, conv).input[0])
        assert w.dtype == np.int8 and 2 * 255 * int(np.abs(w).max()) <= np.iinfo(np.int16).max


def test_old_opset_converted_for_per_channel() -> None:
    model = residual_model(opset=11)
    q = unsaturated(model, calib(4))
    assert [o.version for o in q.opset_import if o.domain in ("", "ai.onnx")][0] == PER_CHANNEL_OPSET
    assert cosine(run(model, smooth(100)), run(q, smooth(100))) > 0.99


def test_excluded_add_stays_float() -> None:
    model = residual_model()
    q = quantize_static_qdq(model, calib(4), nodes_to_exclude=["add"])
    add = next(n for n in q.graph.node if n.op_type == "Add")
    consumers = [n.op_type for n in q.graph.node if add.output[0] in n.input]
    assert consumers == []  # the Add writes the float output itself: no QuantizeLinear after it
    quantized = quantize_static_qdq(model, calib(4))
    add_q = next(n for n in quantized.graph.node if n.op_type == "Add")
    assert [n.op_type for n in quantized.graph.node if add_q.output[0] in n.input] == ["QuantizeLinear"]


def test_op_types_restrict_what_is_quantized() -> None:
    q = quantize_static_qdq(residual_model(), calib(4), op_types_to_quantize=["Conv"])
    add = next(n for n in q.graph.node if n.op_type == "Add")
    assert not any(add.output[0] in n.input for n in q.graph.node)
    assert conv_weight_dq(q, "conv1").op_type == "DequantizeLinear"


def test_input_not_modified(default_q: tuple[onnx.ModelProto, onnx.ModelProto]) -> None:
    model = residual_model()
    before = model.SerializeToString()
    quantize_static_qdq(model, calib(2))
    assert model.SerializeToString() == before


def test_dynamic_dims_fixed_to_feed_shape() -> None:
    model = residual_model(x_shape=["N", 3, "H", "W"])
    q = unsaturated(model, calib(4))
    dims = [d.dim_value for d in q.graph.input[0].type.tensor_type.shape.dim]
    assert dims == list(SHAPE)
    assert cosine(run(residual_model(), smooth(100)), run(q, smooth(100))) > 0.99


def test_dynamic_dims_with_given_shape() -> None:
    model = residual_model(x_shape=["N", 3, "H", "W"])
    q = quantize_static_qdq(model, calib(2, (1, 3, 8, 8)), input_shapes={"X": [1, 3, 8, 8]})
    assert [d.dim_value for d in q.graph.input[0].type.tensor_type.shape.dim] == [1, 3, 8, 8]


def one_line(e: pytest.ExceptionInfo[BaseException]) -> str:
    text = str(e.value)
    assert text and "\n" not in text and "Traceback" not in text
    return text


def test_dynamic_dims_and_feeds_of_different_shapes() -> None:
    model = residual_model(x_shape=["N", 3, "H", "W"])
    feeds = [{"X": smooth(0)}, {"X": smooth(1, (1, 3, 8, 8))}]
    with pytest.raises(ShapeError) as e:
        quantize_static_qdq(model, feeds)
    text = one_line(e)
    assert "'X'" in text and "dynamic" in text and "input_shapes" in text


@pytest.mark.parametrize("kwargs, feeds, words", [
    ({"activation_type": "int4"}, calib(1), ["activation type", "int4"]),
    ({"weight_type": "float8"}, calib(1), ["weight type", "float8"]),
    ({"calibrate_method": "guess"}, calib(1), ["calibration method", "guess"]),
    ({}, [], ["no calibration feeds"]),
    ({}, [{"Z": smooth(0)}], ["lacks input 'X'"]),
    ({}, [{"X": smooth(0), "Z": smooth(0)}], ["'Z'", "not a model input"]),
    ({}, [{"X": np.full(SHAPE, np.nan, dtype=np.float32)}], ["NaN"]),
    ({}, [{"X": smooth(0, (1, 3, 8, 8))}], ["'X'", "1x3x16x16", "1x3x8x8"]),
    ({"input_shapes": {"Q": [1, 3, 16, 16]}}, calib(1), ["'Q'", "not an input"]),
])
def test_bad_input_one_line(kwargs: dict[str, object], feeds: list[dict[str, np.ndarray]],
                            words: list[str]) -> None:
    with pytest.raises(OnnxConvError) as e:
        quantize_static_qdq(residual_model(), feeds, **kwargs)  # type: ignore[arg-type]
    assert isinstance(e.value, (OptionError, ShapeError))
    text = one_line(e)
    for w in words:
        assert w in text


def test_quantizer_failure_is_one_line() -> None:
    """A node onnxruntime has no kernel for: the quantizer's calibration run fails, reported in one line."""
    node = helper.make_node("Frobnicate", ["X"], ["Y"], name="odd", domain="com.example")
    model = make_model([node], [tensor("X", SHAPE)], [tensor("Y", SHAPE)])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    with pytest.raises(QuantizeError) as e:
        quantize_static_qdq(model, calib(1))
    assert "quantizer failed" in one_line(e)


def test_non_float_input_refused() -> None:
    node = helper.make_node("Cast", ["X"], ["Y"], to=TensorProto.FLOAT)
    model = make_model([node], [tensor("X", SHAPE, TensorProto.INT64)], [tensor("Y", SHAPE)])
    with pytest.raises(OptionError) as e:
        quantize_static_qdq(model, [{"X": np.zeros(SHAPE, dtype=np.int64)}])
    assert "not a float tensor" in one_line(e)


def test_hostile_input_name_stays_one_line() -> None:
    """Names come from the model file: a newline or terminal escape in one must not break the one-line message."""
    name = "X\n\x1b[2Jfake"
    node = helper.make_node("Relu", [name], ["Y"])
    model = make_model([node], [tensor(name, SHAPE)], [tensor("Y", SHAPE)])
    with pytest.raises(OptionError) as e:
        quantize_static_qdq(model, [{"X": smooth(0)}])
    text = one_line(e)
    assert "\x1b" not in text and "\\n" in text

"""Models saved by onnxruntime after optimisation: its own conv ops count as the standard convs they replace.

onnxruntime writes the optimised graph with ``SessionOptions.optimized_model_filepath``: at ORT_ENABLE_EXTENDED
Conv+activation becomes ``com.microsoft.FusedConv``; at ORT_ENABLE_ALL convs become ``com.microsoft.nchwc.Conv``
(channels padded to the CPU's block size, weights reordered) and a quantized conv ``com.microsoft.QLinearConv``
on NHWC activations. The counts of the saved model must equal those of the model it came from.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxconv.errors import OnnxConvError
from onnxconv.model_io import load_model
from onnxconv.stats import analyze
from tests.modelkit import init, make_model, tensor

LEVELS = {"all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL, "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED}


def _float_model() -> onnx.ModelProto:
    """Channel counts that are not multiples of the NCHWc block (8 or 16), a strided conv, a depthwise conv
    with bias and a fused Relu, and a pointwise conv: every way the NCHWc rewrite pads and reorders."""
    rng = np.random.default_rng(0)
    w = {n: init(n, rng.standard_normal(s).astype(np.float32)) for n, s in
         {"W1": (12, 3, 3, 3), "B1": (12,), "W2": (20, 12, 3, 3), "W3": (20, 1, 3, 3), "B3": (20,),
          "W4": (10, 20, 1, 1), "W5": (24, 10, 3, 3)}.items()}
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["a"], pads=[1, 1, 1, 1], name="c1"),
        helper.make_node("Relu", ["a"], ["b"]),
        helper.make_node("Conv", ["b", "W2"], ["c"], pads=[1, 1, 1, 1], strides=[2, 2], name="c2"),
        helper.make_node("Conv", ["c", "W3", "B3"], ["d"], group=20, pads=[1, 1, 1, 1], name="c3"),
        helper.make_node("Relu", ["d"], ["e"]),
        helper.make_node("Conv", ["e", "W4"], ["f"], name="c4"),
        helper.make_node("Conv", ["f", "W5"], ["Y"], pads=[0, 1, 2, 1], name="c5"),
    ]
    return make_model(nodes, [tensor("X", [1, 3, 16, 16])], [tensor("Y", None)], list(w.values()))


def _quantized_model() -> onnx.ModelProto:
    rng = np.random.default_rng(1)
    inits = [init("xs", np.array(0.1, np.float32)), init("xz", np.array(0, np.uint8)),
             init("W", rng.integers(-5, 5, (16, 8, 3, 3)).astype(np.int8)), init("ws", np.array(0.05, np.float32)),
             init("wz", np.array(0, np.int8)), init("ys", np.array(0.2, np.float32)), init("yz", np.array(0, np.uint8)),
             init("B", rng.integers(-5, 5, 16).astype(np.int32))]
    nodes = [
        helper.make_node("QuantizeLinear", ["X", "xs", "xz"], ["xq"]),
        helper.make_node("QLinearConv", ["xq", "xs", "xz", "W", "ws", "wz", "ys", "yz", "B"], ["yq"],
                         pads=[1, 1, 1, 1], strides=[2, 1], name="qc"),
        helper.make_node("DequantizeLinear", ["yq", "ys", "yz"], ["Y"]),
    ]
    return make_model(nodes, [tensor("X", [1, 8, 16, 12])], [tensor("Y", None)], inits)


def _optimised(model: onnx.ModelProto, level: str, tmp_path: Path) -> onnx.ModelProto:
    src, out = tmp_path / "model.onnx", tmp_path / f"opt_{level}.onnx"
    onnx.save(model, str(src))
    options = ort.SessionOptions()
    options.graph_optimization_level = LEVELS[level]
    options.optimized_model_filepath = str(out)
    ort.InferenceSession(str(src), options, providers=["CPUExecutionProvider"])
    return load_model(out)


def _figures(model: onnx.ModelProto) -> list[tuple[object, ...]]:
    return [(r.macs, r.params, r.flops, r.output_shape, r.kernel_shape, r.strides, r.group)
            for r in analyze(model).layers]


@pytest.mark.parametrize("level, vendor_op", [("extended", "com.microsoft.FusedConv"),
                                               ("all", "com.microsoft.nchwc.Conv")])
def test_optimised_float_model_counts_like_the_original(tmp_path: Path, level: str, vendor_op: str) -> None:
    original = _float_model()
    saved = _optimised(original, level, tmp_path)
    ops = {f"{n.domain}.{n.op_type}" for n in saved.graph.node}
    assert vendor_op in ops, ops  # onnxruntime did rewrite the convs this test is about
    report = analyze(saved)
    assert [r.op_type for r in report.layers].count(vendor_op) >= 2
    assert _figures(saved) == _figures(original)
    assert report.totals == analyze(original).totals


def test_optimised_quantized_model_with_nhwc_qlinearconv(tmp_path: Path) -> None:
    original = _quantized_model()
    saved = _optimised(original, "all", tmp_path)
    node = next(n for n in saved.graph.node if n.op_type == "QLinearConv")
    assert node.domain == "com.microsoft" and helper.get_attribute_value(
        next(a for a in node.attribute if a.name == "channels_last")) == 1
    (row,) = analyze(saved).layers
    assert row.op_type == "com.microsoft.QLinearConv"
    assert _figures(saved) == _figures(original)


def _blocked(w: np.ndarray, c_out: int, c_in: int, block: int, blocked_input: bool) -> np.ndarray:
    """``w`` zero-padded to ``c_out x c_in`` and reordered as onnxruntime's MLAS does (OIHWBiBo for a blocked
    input, OIHWBo otherwise), keeping the padded OIHW shape."""
    padded = np.zeros((c_out, c_in, *w.shape[2:]), w.dtype)
    padded[: w.shape[0], : w.shape[1]] = w
    k = int(np.prod(w.shape[2:]))
    flat = padded.reshape(c_out, c_in, k)
    if blocked_input:
        d = flat.reshape(c_out // block, block, c_in // block, block, k).transpose(0, 2, 4, 3, 1)
    else:
        d = flat.reshape(c_out // block, block, c_in, k).transpose(0, 2, 3, 1)
    return np.ascontiguousarray(d).reshape(padded.shape)


@pytest.mark.parametrize("logical, padded, group, block, blocked_input", [
    ((10, 20), (16, 24), 1, 8, True),     # block 8 (AVX2 CPUs): only 8 divides 24
    ((30, 29), (32, 32), 1, 8, True),     # 16 would divide too: the block that explains the padding wins
    ((12, 3), (16, 3), 1, 16, False),     # first layer: plain NCHW input, OIHWBo
    ((20, 20), (24, 24), "depthwise", 8, False),
])
def test_nchwc_channels_undo_the_block_padding(logical: tuple[int, int], padded: tuple[int, int],
                                               group: object, block: int, blocked_input: bool) -> None:
    from onnxconv.analysis.nchwc import nchwc_channels
    from onnxconv.conv import conv_spec

    rng = np.random.default_rng(2)
    depthwise = group == "depthwise"
    w = rng.standard_normal((logical[0], 1 if depthwise else logical[1], 3, 3)).astype(np.float32)
    stored = _blocked(w, padded[0], 1 if depthwise else padded[1], block, blocked_input and not depthwise)
    g = padded[1] if depthwise else 1
    spec = conv_spec("Conv", {"group": g}, stored.shape, False, [1, padded[1], 8, 8])
    expected = (logical[0], logical[0], logical[0]) if depthwise else (logical[0], logical[1], 1)
    assert nchwc_channels(spec, stored, None) == expected


def _yolox_like_model() -> onnx.ModelProto:
    """The pieces of ddddocr's YOLOX that onnxruntime's ORT_ENABLE_ALL turns into what stats must read back:
    a stem whose input channels (20) are past a block but not a multiple of it (the NCHWc pass pads them
    behind a ReorderInput, so the weight has more input columns than the input has channels), SiLU (fused into
    com.microsoft.QuickGelu) and a nearest Resize at opset 11 (nchwc.Upsample on 32 blocked channels)."""
    rng = np.random.default_rng(3)
    inits = [init("W1", rng.standard_normal((32, 20, 3, 3)).astype(np.float32)),
             init("W2", rng.standard_normal((16, 32, 3, 3)).astype(np.float32)),
             init("roi", np.zeros(0, np.float32)), init("scales", np.array([1, 1, 2, 2], np.float32))]
    nodes = [
        helper.make_node("Conv", ["X", "W1"], ["a"], pads=[1, 1, 1, 1], name="stem"),
        helper.make_node("Sigmoid", ["a"], ["s"]),
        helper.make_node("Mul", ["a", "s"], ["b"]),
        helper.make_node("Resize", ["b", "roi", "scales"], ["r"], mode="nearest", nearest_mode="floor",
                         coordinate_transformation_mode="asymmetric"),
        helper.make_node("Conv", ["r", "W2"], ["Y"], pads=[1, 1, 1, 1], name="head"),
    ]
    return make_model(nodes, [tensor("X", [1, 20, 8, 8])], [tensor("Y", None)], inits, opset=11, ir_version=6)


def test_optimised_model_with_padded_stem_input_quickgelu_and_upsample(tmp_path: Path) -> None:
    original = _yolox_like_model()
    saved = _optimised(original, "all", tmp_path)
    ops = {f"{n.domain}.{n.op_type}" for n in saved.graph.node}
    assert {"com.microsoft.nchwc.ReorderInput", "com.microsoft.QuickGelu", "com.microsoft.nchwc.Upsample"} <= ops
    stem = next(n for n in saved.graph.node if n.op_type == "Conv" and n.domain == "com.microsoft.nchwc")
    weight = next(t for t in saved.graph.initializer if t.name == stem.input[1])
    assert weight.dims[1] > 20  # the case this test is about: input columns padded to the block size
    assert _figures(saved) == _figures(original)
    assert analyze(saved).totals == analyze(original).totals


def _nchwc_stem_model(reorder: bool) -> tuple[onnx.ModelProto, np.ndarray]:
    """ddddocr YOLOX's stem as onnxruntime writes it on an 8-wide CPU: 12 input channels padded to 16 in a
    [24, 16, 3, 3] OIHWBiBo weight; the conv reads a ReorderInput's output (or, ``reorder=False``, the 12-channel
    NCHW tensor itself, as the issue's report had it)."""
    rng = np.random.default_rng(4)
    w = rng.standard_normal((24, 12, 3, 3)).astype(np.float32)
    b = rng.standard_normal(24).astype(np.float32)
    stored = _blocked(w, 24, 16, 8, blocked_input=True)
    x = "xb" if reorder else "X"
    nodes = [helper.make_node("Conv", [x, "W", "B"], ["yb"], domain="com.microsoft.nchwc", name="877_nchwc",
                              pads=[1, 1, 1, 1], kernel_shape=[3, 3]),
             helper.make_node("ReorderOutput", ["yb"], ["Y"], domain="com.microsoft.nchwc", channels=24)]
    if reorder:
        nodes.insert(0, helper.make_node("ReorderInput", ["X"], ["xb"], domain="com.microsoft.nchwc"))
    model = make_model(nodes, [tensor("X", [1, 12, 32, 32])], [tensor("Y", None)], [init("W", stored), init("B", b)],
                       opset=11, ir_version=6)
    model.opset_import.append(helper.make_opsetid("com.microsoft.nchwc", 1))
    return model, w


@pytest.mark.parametrize("reorder", [True, False])
def test_nchwc_stem_weight_padded_beyond_the_input_channels(reorder: bool) -> None:
    model, w = _nchwc_stem_model(reorder)
    (row,) = analyze(model).layers
    assert row.input_shape == [1, 12, 32, 32] and row.output_shape == [1, 24, 32, 32]
    assert row.weight_shape == [24, 12, 3, 3] and row.group == 1
    assert row.macs == 24 * 32 * 32 * 12 * 9 and row.params == w.size + 24
    assert "16->24 channels as stored are 12->24" in row.note


def test_nchwc_conv_reading_more_channels_than_its_weight_is_one_error() -> None:
    model, _ = _nchwc_stem_model(True)
    model.graph.input[0].type.tensor_type.shape.dim[1].dim_value = 20
    with pytest.raises(OnnxConvError, match="input has 20 channels but weight"):
        analyze(model)


def test_layer_normalization_written_below_opset_17_keeps_the_shapes() -> None:
    """onnxruntime's LayerNormFusion writes an ONNX-domain LayerNormalization into a model of any opset (PP-OCRv4's
    recogniser is opset 12); onnx knows the op only from opset 17, and the conv after it must still count."""
    rng = np.random.default_rng(5)
    inits = [init("W1", rng.standard_normal((8, 3, 3, 3)).astype(np.float32)), init("g", np.ones(8, np.float32)),
             init("b", np.zeros(8, np.float32)), init("W2", rng.standard_normal((4, 8, 1, 1)).astype(np.float32))]
    nodes = [helper.make_node("Conv", ["X", "W1"], ["a"], name="c1"),
             helper.make_node("LayerNormalization", ["a", "g", "b"], ["n"], axis=1, name="ln"),
             helper.make_node("Conv", ["n", "W2"], ["Y"], name="c2")]
    model = make_model(nodes, [tensor("X", [1, 3, 10, 10])], [tensor("Y", None)], inits, opset=12, ir_version=7)
    rows = analyze(model).layers
    assert [r.macs for r in rows] == [8 * 8 * 8 * 3 * 9, 4 * 8 * 8 * 8]

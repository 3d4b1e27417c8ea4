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
    assert nchwc_channels(spec, stored, None, blocked_input) == expected

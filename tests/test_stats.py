"""analyze(): rows, totals, shares, what-if figures, receptive fields and --all-ops on tiny models."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence

import numpy as np
import onnx
import onnx.parser
import pytest

from onnxconv.report import render
from onnxconv.stats import analyze
from tests.modelkit import IR_VERSION, init


def parse(text: str, weights: Mapping[str, Sequence[int]] = {}, opset: int = 17) -> onnx.ModelProto:
    """A model from onnx.parser text (graph part only) plus random initializers of the given shapes."""
    model = onnx.parser.parse_model(f'<ir_version: {IR_VERSION}, opset_import: ["" : {opset}]>\n{text}')
    rng = np.random.default_rng(0)
    for name, shape in weights.items():
        model.graph.initializer.append(init(name, rng.standard_normal(shape).astype(np.float32)))
    return model


TWO_CONVS = parse(
    """
    g (float[1,16,32,32] X) => (float[1,32,16,16] Y) {
      a = Conv <pads=[1,1,1,1]> (X, W1, B1)
      Y = Conv <kernel_shape=[3,3], strides=[2,2], pads=[1,1,1,1]> (a, W2)
    }""",
    {"W1": (32, 16, 3, 3), "B1": (32,), "W2": (32, 32, 3, 3)},
)


def test_rows_totals_and_shares() -> None:
    report = analyze(TWO_CONVS)
    a, b = report.layers
    assert (a.name, a.op_type, a.kind, a.output_shape) == ("a", "Conv", "standard", [1, 32, 32, 32])
    assert a.params == 32 * 16 * 9 + 32 and a.has_bias
    assert a.macs == 32 * 32 * 32 * 16 * 9
    assert a.flops == 2 * a.macs
    assert (b.kind, b.strided, b.output_shape) == ("standard", True, [1, 32, 16, 16])
    assert b.macs == 32 * 16 * 16 * 32 * 9
    assert b.flops == 2 * b.macs - 32 * 16 * 16
    assert report.totals == {"layers": 2, "params": a.params + b.params, "macs": a.macs + b.macs,
                             "flops": a.flops + b.flops, "uncounted": 0}
    assert a.share == pytest.approx(a.macs / (a.macs + b.macs))
    assert a.share + b.share == pytest.approx(1.0)  # type: ignore[operator]
    assert (a.weight_source, a.auto_pad, a.pads) == ("initializer", "NOTSET", [1, 1, 1, 1])


def test_whatif_separable_and_grouped() -> None:
    a = analyze(TWO_CONVS, groups=4).layers[0]
    assert a.whatif is not None
    sep, grp = a.whatif["separable"], a.whatif["grouped"]
    # Depthwise 3x3 over 16 channels + pointwise 16->32 (+32 bias): 144 + 512 + 32.
    assert sep["params"] == 16 * 9 + 16 * 32 + 32
    assert sep["macs"] == 32 * 32 * 16 * (9 + 32)
    assert sep["macs_ratio"] == pytest.approx(1 / 32 + 1 / 9)
    assert grp["groups"] == 4 and grp["params"] == 32 * 16 * 9 // 4 + 32 and grp["macs"] == a.macs // 4  # type: ignore[operator]
    assert grp["macs_ratio"] == pytest.approx(0.25)
    odd = analyze(TWO_CONVS, groups=3).layers[0].whatif
    assert odd is not None and odd["grouped"]["macs"] is None and "not divisible by 3" in odd["grouped"]["reason"]


def test_no_whatif_for_pointwise_depthwise_and_transposed() -> None:
    model = parse(
        """
        g (float[1,8,8,8] X) => (float[1,8,16,16] Y) {
          a = Conv (X, Wp)
          b = Conv <group=8, pads=[1,1,1,1]> (a, Wd)
          Y = ConvTranspose <strides=[2,2]> (b, Wt)
        }""",
        {"Wp": (8, 8, 1, 1), "Wd": (8, 1, 3, 3), "Wt": (8, 8, 2, 2)},
    )
    rows = analyze(model).layers
    assert [r.kind for r in rows] == ["pointwise", "depthwise", "transposed"]
    assert all(r.whatif is None for r in rows)
    assert rows[2].output_padding == [0, 0]


def test_batch_scales_macs_not_params() -> None:
    model = parse(
        """
        g (float[N,3,16,16] X) => (float[N,4,14,14] Y) {
          Y = Conv (X, W)
        }""",
        {"W": (4, 3, 3, 3)},
    )
    one, four = analyze(model), analyze(model, batch=4)
    assert four.layers[0].macs == 4 * one.layers[0].macs  # type: ignore[operator]
    assert four.layers[0].params == one.layers[0].params
    assert any("counted as 1" in n for n in one.notes) and not any("counted as 1" in n for n in four.notes)


# -- receptive fields ----------------------------------------------------------------------------------------------

def test_receptive_field_through_pooling_and_resize() -> None:
    model = parse(
        """
        g (float[1,3,32,32] X) => (float[1,4,32,32] Y) {
          a = Conv <pads=[1,1,1,1]> (X, W1)
          p = MaxPool <kernel_shape=[2,2], strides=[2,2]> (a)
          b = Conv <pads=[2,2,2,2], dilations=[2,2]> (p, W2)
          u = Resize <mode="nearest"> (b, , sc)
          Y = Conv <pads=[1,1,1,1]> (u, W3)
        }""",
        {"W1": (4, 3, 3, 3), "W2": (4, 4, 3, 3), "W3": (4, 4, 3, 3)},
    )
    model.graph.initializer.append(init("sc", np.array([1, 1, 2, 2], np.float32)))
    a, b, c = analyze(model).layers
    assert (a.receptive_field, a.effective_stride) == ([3, 3], [1, 1])
    # MaxPool 2/2: rf 3 + 1*1 = 4, jump 2; dilated 3x3 (extent 5): 4 + 4*2 = 12.
    assert (b.receptive_field, b.effective_stride) == ([12, 12], [2, 2])
    # Resize x2 halves the jump; 3x3 then adds 2*1.
    assert (c.receptive_field, c.effective_stride) == ([14, 14], [1, 1])


def test_receptive_field_max_over_paths_and_squeeze_excitation() -> None:
    model = parse(
        """
        g (float[1,4,16,16] X) => (float[1,4,16,16] Y) {
          a = Conv <pads=[1,1,1,1]> (X, W1)
          b = Conv <pads=[3,3,3,3], kernel_shape=[7,7]> (X, W2)
          s = Add (a, b)
          gp = GlobalAveragePool (s)
          e = Conv (gp, W3)
          z = Sigmoid (e)
          m = Mul (s, z)
          Y = Conv <pads=[1,1,1,1]> (m, W4)
        }""",
        {"W1": (4, 4, 3, 3), "W2": (4, 4, 7, 7), "W3": (4, 4, 1, 1), "W4": (4, 4, 3, 3)},
    )
    rows = {r.name: r for r in analyze(model).layers}
    # Max over the two paths: the 7x7 branch wins.
    assert rows["e"].receptive_field == [16, 16]  # a global pooling sees the whole 16x16 input
    # After the SE gate: the field is the whole input, the stride stays the main path's, then 3x3 adds 2.
    assert (rows["Y"].receptive_field, rows["Y"].effective_stride) == ([18, 18], [1, 1])


# -- --all-ops ------------------------------------------------------------------------------------------------------

def test_all_ops_counts_gemm_matmul_and_recurrent_layers() -> None:
    model = parse(
        """
        g (float[1,8,4,4] X, float[5,2,6] S) => (float[1,10] Y, float[2,3,4] M, float[5,2,2,2,7] H) {
          c = Conv (X, Wc)
          f = Flatten (c)
          Y = Gemm <transB=1> (f, Wg, Bg)
          M = MatMul (A, Bm)
          H, hn, cn = LSTM <hidden_size=7, direction="bidirectional"> (S, Wl, Rl, Bl)
        }""",
        {"Wc": (2, 8, 1, 1), "Wg": (10, 32), "Bg": (10,), "A": (2, 3, 5), "Bm": (5, 4),
         "Wl": (2, 28, 6), "Rl": (2, 28, 7), "Bl": (2, 56)},
    )
    without = analyze(model)
    assert [r.op_type for r in without.layers] == ["Conv"]
    rows = {r.op_type: r for r in analyze(model, all_ops=True).layers}
    gemm, mm, lstm = rows["Gemm"], rows["MatMul"], rows["LSTM"]
    assert (gemm.macs, gemm.params, gemm.flops) == (32 * 10, 320 + 10, 2 * 320)
    # MatMul of two stored tensors: both count as params.
    assert (mm.macs, mm.params, mm.flops) == (2 * 3 * 5 * 4, 30 + 20, 2 * 120 - 24)
    # LSTM: seq 5, batch 2, two directions, 4 gates of 7: 5*2*2*28*(6+7).
    assert lstm.macs == 5 * 2 * 2 * 28 * 13
    assert lstm.params == 2 * 28 * 6 + 2 * 28 * 7 + 2 * 56
    outputs = 5 * 2 * 2 * 28
    assert lstm.flops == 2 * lstm.macs + outputs
    assert lstm.kind == "recurrent" and "nonlinearities" in lstm.note


def test_matmul_against_activation_has_no_params() -> None:
    model = parse(
        """
        g (float[2,3,5] A, float[2,5,4] B) => (float[2,3,4] Y) {
          Y = MatMul (A, B)
        }""",
    )
    row = analyze(model, all_ops=True).layers[0]
    assert (row.macs, row.params) == (2 * 3 * 5 * 4, 0)


# -- totals over special cases -------------------------------------------------------------------------------------

def test_model_without_convs_reports_zero() -> None:
    model = parse(
        """
        g (float[1,4] X) => (float[1,4] Y) {
          Y = Relu (X)
        }""",
    )
    report = analyze(model)
    assert report.layers == []
    assert report.totals == {"layers": 0, "params": 0, "macs": 0, "flops": 0, "uncounted": 0}
    assert any("no convolution" in n for n in report.notes)
    assert json.loads(render(report, "json"))["totals"]["macs"] == 0


def test_shared_weight_counted_once_in_params_total() -> None:
    model = parse(
        """
        g (float[1,4,8,8] X) => (float[1,4,8,8] Y) {
          a = Conv <pads=[1,1,1,1]> (X, W)
          Y = Conv <pads=[1,1,1,1]> (a, W)
        }""",
        {"W": (4, 4, 3, 3)},
    )
    report = analyze(model)
    assert [r.params for r in report.layers] == [144, 144]
    assert report.totals["params"] == 144
    assert report.totals["macs"] == 2 * 144 * 64
    assert any("shared" in n for n in report.notes)


def test_render_sort_and_top_keep_whole_model_totals() -> None:
    report = analyze(TWO_CONVS)
    data = json.loads(render(report, "json", sort="macs", top=1))
    assert [layer["name"] for layer in data["layers"]] == ["a"]
    assert data["totals"]["macs"] == report.totals["macs"]
    assert data["schema_version"] == 1
    names = [layer["name"] for layer in json.loads(render(report, "json", sort="name"))["layers"]]
    assert names == ["Y", "a"]

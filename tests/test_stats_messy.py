"""Real exports are messy: weights in odd places, convs in subgraphs and functions, old and new opsets."""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxconv.errors import OptionError, ShapeError
from onnxconv.stats import analyze
from tests.modelkit import init, make_model, single_conv, tensor
from tests.test_stats import parse

RNG = np.random.default_rng(0)


def _w(*shape: int, dtype: type = np.float32) -> np.ndarray:
    return RNG.standard_normal(shape).astype(dtype)


def _run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    so = ort.SessionOptions()
    so.log_severity_level = 3
    return ort.InferenceSession(model.SerializeToString(), so, providers=["CPUExecutionProvider"]).run(None, feeds)


# -- where the weight lives -----------------------------------------------------------------------------------------

def test_weight_in_constant_node() -> None:
    const = helper.make_node("Constant", [], ["W"], value=init("W", _w(8, 3, 3, 3)))
    conv = helper.make_node("Conv", ["X", "W"], ["Y"], name="c")
    model = make_model([const, conv], [tensor("X", [1, 3, 10, 10])], [tensor("Y", None)])
    row = analyze(model).layers[0]
    assert (row.weight_source, row.params, row.macs) == ("Constant", 216, 216 * 64)


def test_weight_behind_cast_and_dequantize_linear() -> None:
    nodes = [
        helper.make_node("Cast", ["W16"], ["W"], to=TensorProto.FLOAT),
        helper.make_node("Conv", ["X", "W"], ["a"], name="fp16_weight", pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["Wq", "ws", "wz"], ["Wd"], axis=0),
        helper.make_node("Conv", ["a", "Wd", "B"], ["Y"], name="int8_weight"),
    ]
    inits = [init("W16", _w(4, 3, 3, 3, dtype=np.float16)), init("Wq", RNG.integers(-9, 9, (6, 4, 1, 1)).astype(np.int8)),
             init("ws", np.full(6, 0.1, np.float32)), init("wz", np.zeros(6, np.int8)), init("B", _w(6))]
    model = make_model(nodes, [tensor("X", [1, 3, 8, 8])], [tensor("Y", None)], inits)
    fp16, int8 = analyze(model).layers
    assert fp16.weight_source == "initializer via Cast" and fp16.params == 108
    assert int8.weight_source == "initializer via DequantizeLinear"
    assert int8.params == 24 + 6  # weight + bias; scales and zero points are not params
    assert int8.macs == 6 * 64 * 4
    assert _run(model, {"X": _w(1, 3, 8, 8)})[0].shape == (1, 6, 8, 8)


def test_weight_computed_at_run_time_with_known_shape() -> None:
    model = parse(
        """
        g (float[1,4,8,8] X) => (float[1,8,6,6] Y) {
          W = Reshape (Wflat, shp)
          Y = Conv (X, W)
        }""",
        {"Wflat": (8 * 4 * 9,)},
    )
    model.graph.initializer.append(init("shp", np.array([8, 4, 3, 3], np.int64)))
    row = analyze(model).layers[0]
    assert row.weight_source == "computed at run time"
    assert row.macs == 8 * 36 * 36 and row.params == 288
    assert "shape known" in row.note


def test_weight_computed_with_unknown_shape_says_what_cannot_be_counted() -> None:
    # The weight is a graph input without a shape: params and MACs cannot be known, the attributes can.
    conv = helper.make_node("Conv", ["X", "W"], ["Y"], name="c", kernel_shape=[3, 3], strides=[2, 2])
    model = make_model([conv], [tensor("X", [1, 4, 9, 9]), tensor("W", None)], [tensor("Y", None)])
    report = analyze(model)
    row = report.layers[0]
    assert row.macs is None and row.params is None
    assert (row.kernel_shape, row.strides, row.group) == ([3, 3], [2, 2], 1)
    assert "shape is unknown" in row.note
    assert report.totals["uncounted"] == 1


def test_weight_shape_derived_from_attributes_and_channels() -> None:
    conv = helper.make_node("Conv", ["X", "W"], ["Y"], name="c", kernel_shape=[3, 3], group=2)
    model = make_model([conv], [tensor("X", [1, 4, 9, 9]), tensor("W", None)], [tensor("Y", [1, 6, 7, 7])])
    row = analyze(model).layers[0]
    assert row.weight_shape == [6, 2, 3, 3]
    assert row.macs == 6 * 49 * 2 * 9
    assert "derived" in row.note


# -- subgraphs and functions ----------------------------------------------------------------------------------------

def _branch(name: str, w: str) -> onnx.GraphProto:
    conv = helper.make_node("Conv", ["X", w], [f"{name}_y"], name=f"{name}_conv", pads=[1, 1, 1, 1])
    return helper.make_graph([conv], name, [], [tensor(f"{name}_y", None)])


def test_convs_in_if_branches_carry_their_path() -> None:
    node = helper.make_node("If", ["cond"], ["Y"], name="if0", then_branch=_branch("then", "W1"),
                            else_branch=_branch("else", "W2"))
    model = make_model([node], [tensor("X", [1, 4, 8, 8]), tensor("cond", [], TensorProto.BOOL)],
                       [tensor("Y", None)], [init("W1", _w(4, 4, 3, 3)), init("W2", _w(4, 4, 3, 3))])
    report = analyze(model)
    assert sorted(r.qualified_name for r in report.layers) == ["if0/else_branch/else_conv", "if0/then_branch/then_conv"]
    assert all(r.macs == 4 * 64 * 36 for r in report.layers)
    assert any("If 'if0'" in n for n in report.notes)
    assert _run(model, {"X": _w(1, 4, 8, 8), "cond": np.array(True)})[0].shape == (1, 4, 8, 8)


def test_conv_in_loop_body_gets_shapes_from_the_carried_value() -> None:
    body = helper.make_graph(
        [helper.make_node("Identity", ["c_in"], ["c_out"]),
         helper.make_node("Conv", ["v_in", "W"], ["v_out"], name="body_conv", pads=[1, 1, 1, 1])],
        "body", [tensor("i", [], TensorProto.INT64), tensor("c_in", [], TensorProto.BOOL), tensor("v_in", None)],
        [tensor("c_out", [], TensorProto.BOOL), tensor("v_out", None)],
    )
    loop = helper.make_node("Loop", ["M", "c", "X"], ["Y"], name="loop", body=body)
    model = make_model([loop], [tensor("X", [1, 4, 8, 8])], [tensor("Y", None)],
                       [init("W", _w(4, 4, 3, 3)), init("M", np.array(3, np.int64)), init("c", np.array(True))])
    row = analyze(model).layers[0]
    assert row.qualified_name == "loop/body/body_conv"
    assert row.input_shape == [1, 4, 8, 8] and row.macs == 4 * 64 * 36
    assert "one iteration" in row.note
    assert row.receptive_field == [3, 3]
    assert _run(model, {"X": _w(1, 4, 8, 8)})[0].shape == (1, 4, 8, 8)


def test_conv_in_scan_body_sees_one_slice() -> None:
    body = helper.make_graph(
        [helper.make_node("Conv", ["x_t", "W"], ["y_t"], name="scan_conv"),
         helper.make_node("Identity", ["s_in"], ["s_out"])],
        "body", [tensor("s_in", [1]), tensor("x_t", None)], [tensor("s_out", [1]), tensor("y_t", None)],
    )
    scan = helper.make_node("Scan", ["S0", "X"], ["S", "Y"], name="scan", body=body, num_scan_inputs=1)
    model = make_model([scan], [tensor("X", [5, 1, 3, 6, 6])], [tensor("S", None), tensor("Y", None)],
                       [init("W", _w(2, 3, 3, 3)), init("S0", np.zeros(1, np.float32))])
    row = analyze(model).layers[0]
    assert row.qualified_name == "scan/body/scan_conv"
    assert row.input_shape == [1, 3, 6, 6] and row.output_shape == [1, 2, 4, 4]
    assert row.macs == 2 * 16 * 27
    assert _run(model, {"X": _w(5, 1, 3, 6, 6)})[1].shape == (5, 1, 2, 4, 4)


def _block_function() -> onnx.FunctionProto:
    const = helper.make_node("Constant", [], ["w"], value=init("w", _w(4, 4, 3, 3)))
    conv = helper.make_node("Conv", ["x", "w"], ["c"], name="fconv")
    for attr, ref in (("dilations", "dil"), ("pads", "pad")):
        conv.attribute.append(onnx.AttributeProto(name=attr, ref_attr_name=ref, type=onnx.AttributeProto.INTS))
    relu = helper.make_node("Relu", ["c"], ["y"])
    return helper.make_function("local", "Block", ["x"], ["y"], [const, conv, relu],
                                [helper.make_opsetid("", 17)], attributes=["dil", "pad"])


def test_convs_in_model_local_functions_use_the_call_attributes() -> None:
    calls = [
        helper.make_node("Block", ["X"], ["a"], name="b1", domain="local", dil=[1, 1], pad=[1, 1, 1, 1]),
        helper.make_node("Block", ["a"], ["Y"], name="b2", domain="local", dil=[2, 2], pad=[2, 2, 2, 2]),
    ]
    graph = helper.make_graph(calls, "g", [tensor("X", [1, 4, 8, 8])], [tensor("Y", None)])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("local", 1)],
                              functions=[_block_function()])
    model.ir_version = 10
    report = analyze(model)
    first, second = report.layers
    assert first.qualified_name == "b1:local.Block/fconv" and second.qualified_name == "b2:local.Block/fconv"
    assert first.dilations == [1, 1] and second.dilations == [2, 2]
    assert first.output_shape == second.output_shape == [1, 4, 8, 8]
    assert first.receptive_field == [3, 3] and second.receptive_field == [7, 7]
    # The function's Constant weight is stored once: the params total counts it once.
    assert report.totals["params"] == 144
    assert _run(model, {"X": _w(1, 4, 8, 8)})[0].shape == (1, 4, 8, 8)


# -- graph layout ---------------------------------------------------------------------------------------------------

def test_unsorted_graph_gives_the_same_rows() -> None:
    model = parse(
        """
        g (float[1,3,16,16] X) => (float[1,8,4,4] Y) {
          a = Conv <strides=[2,2], pads=[1,1,1,1]> (X, W1)
          r = Relu (a)
          Y = Conv <strides=[2,2], pads=[1,1,1,1]> (r, W2)
        }""",
        {"W1": (8, 3, 3, 3), "W2": (8, 8, 3, 3)},
    )
    shuffled = onnx.ModelProto()
    shuffled.CopyFrom(model)
    nodes = list(shuffled.graph.node)[::-1]
    del shuffled.graph.node[:]
    shuffled.graph.node.extend(nodes)
    sorted_rows = analyze(model).layers
    rows = analyze(shuffled).layers
    assert [(r.name, r.macs, r.receptive_field) for r in rows] == [(r.name, r.macs, r.receptive_field) for r in sorted_rows]
    assert rows[1].receptive_field == [7, 7] and rows[1].effective_stride == [4, 4]


def test_nhwc_input_transposed_before_the_first_conv() -> None:
    model = parse(
        """
        g (float[1,32,32,3] X) => (float[1,8,16,16] Y) {
          t = Transpose <perm=[0,3,1,2]> (X)
          Y = Conv <strides=[2,2], pads=[1,1,1,1]> (t, W)
        }""",
        {"W": (8, 3, 3, 3)},
    )
    row = analyze(model).layers[0]
    assert row.input_shape == [1, 3, 32, 32] and row.output_shape == [1, 8, 16, 16]
    assert row.macs == 8 * 256 * 27
    assert (row.receptive_field, row.effective_stride) == ([3, 3], [2, 2])


def test_symbolic_nhwc_dims_get_an_nhwc_example() -> None:
    model = parse(
        """
        g (float[N,H,W,3] X) => (float[N,8,H,W] Y) {
          t = Transpose <perm=[0,3,1,2]> (X)
          Y = Conv <pads=[1,1,1,1]> (t, W8)
        }""",
        {"W8": (8, 3, 3, 3)},
    )
    with pytest.raises(ShapeError, match=r"--input-shape X=1x<H>x<W>x3"):
        analyze(model)
    assert analyze(model, input_shapes={"X": [1, 20, 20, 3]}).layers[0].macs == 8 * 400 * 27


# -- opsets and IR versions -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("opset, ir", [(7, 3), (9, 4), (11, 6), (13, 7), (17, 8),
                                       (onnx.defs.onnx_opset_version(), onnx.IR_VERSION)])
def test_opsets_and_ir_versions_from_old_exporters_to_the_newest(opset: int, ir: int) -> None:
    model = single_conv([1, 3, 12, 12], [4, 3, 3, 3], bias=True, strides=[2, 2], pads=[1, 1, 1, 1])
    model.opset_import[0].version = opset
    model.ir_version = ir
    row = analyze(model).layers[0]
    assert row.output_shape == [1, 4, 6, 6] and row.macs == 4 * 36 * 27


def test_ir3_model_listing_initializers_as_inputs() -> None:
    model = single_conv([1, 3, 8, 8], [4, 3, 3, 3])
    model.ir_version = 3
    model.opset_import[0].version = 8
    model.graph.input.append(tensor("W", [4, 3, 3, 3]))  # old exporters list every initializer as an input
    assert analyze(model).layers[0].macs == 4 * 36 * 27
    with pytest.raises(OptionError, match="no input 'W'"):
        analyze(model, input_shapes={"W": [4, 3, 3, 3]})


def test_upsample_at_opset_9_counts_in_the_receptive_field() -> None:
    model = parse(
        """
        g (float[1,2,8,8] X) => (float[1,2,16,16] Y) {
          u = Upsample <mode="nearest"> (X, sc)
          Y = Conv <pads=[1,1,1,1]> (u, W)
        }""",
        {"W": (2, 2, 3, 3)},
        opset=9,
    )
    model.graph.initializer.append(init("sc", np.array([1, 1, 2, 2], np.float32)))
    row = analyze(model).layers[0]
    assert row.input_shape == [1, 2, 16, 16]
    assert row.effective_stride == [0.5, 0.5] and row.receptive_field == [2, 2]


def test_reshape_target_computed_by_shape_slice_concat_at_opset_12() -> None:
    # onnx's data propagation does not follow Slice at opset 12: the Reshape output (and the conv after it) stays
    # unknown unless onnxconv folds the shape arithmetic itself.
    model = parse(
        """
        g (float[1,4,8,8] X) => (float[1,2,1,62] Y) {
          s = Shape (X)
          head = Slice (s, st, en, ax)
          target = Concat <axis=0> (head, tail)
          r = Reshape (X, target)
          Y = Conv (r, W)
        }""",
        {"W": (2, 4, 1, 3)},
        opset=12,
    )
    for name, value in (("st", [0]), ("en", [2]), ("ax", [0]), ("tail", [1, -1])):
        model.graph.initializer.append(init(name, np.array(value, np.int64)))
    row = analyze(model).layers[0]
    assert row.input_shape == [1, 4, 1, 64]
    assert row.macs == 2 * 62 * 12
    assert _run(model, {"X": _w(1, 4, 8, 8)})[0].shape == (1, 2, 1, 62)


# -- unknown dims, domains ------------------------------------------------------------------------------------------

def test_symbolic_dims_are_named_with_a_concrete_example() -> None:
    model = single_conv([1, 1, 64, "image_width"], [8, 1, 3, 3])
    with pytest.raises(ShapeError) as e:
        analyze(model)
    msg = str(e.value)
    assert "input 'X' dim 3 ('image_width')" in msg
    assert "--input-shape X=1x1x64x<image_width>" in msg
    assert "\n" not in msg


def test_question_mark_dims_read_well() -> None:
    model = single_conv(["?", 3, "?", "?"], [8, 3, 3, 3])
    with pytest.raises(ShapeError) as e:
        analyze(model)
    msg = str(e.value)
    assert "dim 2 (unnamed) and dim 3 (unnamed)" in msg
    assert "--input-shape X=1x3x<H>x<W>" in msg  # the symbolic batch was set to 1
    assert "'?'" not in msg
    row = analyze(model, input_shapes={"X": [2, 3, 10, 10]}).layers[0]
    assert row.macs == 2 * 8 * 64 * 27


def test_input_without_shape_needs_input_shape() -> None:
    model = single_conv([1, 3, 8, 8], [8, 3, 3, 3])
    model.graph.input[0].type.tensor_type.ClearField("shape")
    with pytest.raises(ShapeError, match="input 'X' has no declared shape"):
        analyze(model)
    assert analyze(model, input_shapes={"X": [1, 3, 8, 8]}).layers[0].macs == 8 * 36 * 27


@pytest.mark.parametrize(
    "shapes, message",
    [({"Z": [1, 3, 8, 8]}, "no input 'Z'"), ({"X": [1, 3, 8]}, "rank 4"), ({"X": [1, 4, 8, 8]}, "fixed at 3")],
)
def test_bad_input_shape_options(shapes: dict[str, list[int]], message: str) -> None:
    with pytest.raises(OptionError, match=message):
        analyze(single_conv([1, 3, "h", "w"], [8, 3, 3, 3]), input_shapes=shapes)


def test_unknown_op_domain_is_one_clear_error() -> None:
    model = single_conv([1, 3, 8, 8], [8, 3, 3, 3])
    model.graph.node.append(helper.make_node("Magic", ["Y"], ["Z"], name="m", domain="com.example"))
    with pytest.raises(ShapeError, match="node 'm' \\(Magic\\) uses domain 'com.example'"):
        analyze(model)


def test_vendor_conv_ops_are_noted_not_counted() -> None:
    """A vendor conv onnxconv does not know (onnxruntime's own FusedConv & co. are counted: test_stats_ort.py)."""
    model = single_conv([1, 3, 8, 8], [8, 3, 3, 3])
    model.graph.node.append(helper.make_node("ConvTransposeWithDynamicPads", ["Y", "W2", "P"], ["Z"], name="fc",
                                             domain="com.microsoft"))
    model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    report = analyze(model)
    assert len(report.layers) == 1
    assert any("com.microsoft.ConvTransposeWithDynamicPads" in n for n in report.notes)


def test_gap_inside_the_graph_is_a_note_not_an_error() -> None:
    # A vendor op with no ONNX shape function: what follows it cannot be counted, and the note says so.
    nodes = [helper.make_node("Custom", ["X"], ["h"], name="cust", domain="com.example"),
             helper.make_node("Conv", ["h", "W"], ["Y"], name="after")]
    model = make_model(nodes, [tensor("X", [1, 3, 8, 8])], [tensor("Y", None)], [init("W", _w(4, 3, 3, 3))])
    model.opset_import.append(helper.make_opsetid("com.example", 1))
    report = analyze(model)
    assert report.layers[0].macs is None and report.layers[0].params == 108
    assert any("could not work out" in n and "'after'" in n for n in report.notes)


def test_folding_never_relabels_a_computed_weight() -> None:
    # The weight's Reshape target comes from Shape -> Slice at opset 12; folding it must not turn the weight
    # itself into an "initializer".
    model = parse(
        """
        g (float[1,4,8,8] X) => (float[1,2,6,6] Y) {
          s = Shape (Wref)
          head = Slice (s, st, en)
          target = Concat <axis=0> (head, tail)
          W = Reshape (Wflat, target)
          Y = Conv (X, W)
        }""",
        {"Wref": (2, 4, 1, 1), "Wflat": (72,)},
        opset=12,
    )
    for name, value in (("st", [0]), ("en", [2]), ("tail", [3, 3])):
        model.graph.initializer.append(init(name, np.array(value, np.int64)))
    row = analyze(model).layers[0]
    assert row.weight_source == "computed at run time"
    assert row.weight_shape == [2, 4, 3, 3] and row.macs == 2 * 36 * 36


def test_model_the_checker_rejects_is_counted_with_a_note() -> None:
    """Two nodes writing the same name (not SSA): onnx.checker and onnxruntime refuse it; stats says so."""
    model = parse(
        """
        g (float[1,3,8,8] X) => (float[1,4,8,8] a) {
          a = Conv <pads=[1,1,1,1]> (X, W)
          a = Relu (X)
        }""",
        {"W": (4, 3, 3, 3)},
    )
    with pytest.raises(Exception):
        onnx.checker.check_model(model)
    with pytest.raises(Exception):
        ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    report = analyze(model)
    notes = [n for n in report.notes if n.startswith("onnx.checker rejects this model: ")]
    assert len(notes) == 1 and "SSA" in notes[0] and "counts assume" in notes[0], report.notes
    assert report.layers[0].macs == 4 * 8 * 8 * 3 * 9


def test_valid_models_get_no_checker_note() -> None:
    report = analyze(parse(
        """
        g (float[1,3,8,8] X) => (float[1,4,8,8] Y) {
          Y = Conv <pads=[1,1,1,1]> (X, W)
        }""",
        {"W": (4, 3, 3, 3)},
    ))
    assert not any("onnx.checker" in n for n in report.notes), report.notes


def test_output_without_declared_shape_gets_no_checker_note() -> None:
    """onnx.checker wants a shape on graph outputs; onnxruntime does not, and exporters often leave it out."""
    model = single_conv([1, 3, 8, 8], [4, 3, 3, 3])
    assert not model.graph.output[0].type.tensor_type.HasField("shape")
    ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    assert not any("onnx.checker" in n for n in analyze(model).notes)

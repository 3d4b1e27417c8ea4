"""If nodes in stats: the branch that runs is counted when its condition is known, from the input shapes or from
one onnxruntime run on given inputs (``--inputs``); otherwise both are, with a note naming the input whose value
decides. onnxruntime is the oracle for every shape the counts use.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper

from onnxconv.observe import observe
from onnxconv.stats import analyze
from tests.modelkit import init, make_model, tensor
from tests.test_cli_stats import stats
from tests.test_stats import parse

RNG = np.random.default_rng(0)


def _w(*shape: int) -> np.ndarray:
    return RNG.standard_normal(shape).astype(np.float32)


def _run(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> list[np.ndarray]:
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return list(sess.run(None, dict(feeds)))


def _sample_rate_model() -> onnx.ModelProto:
    """Silero VAD's structure: every conv inside an If whose condition is ``sr == 16000``, a scalar input's
    value; each branch frames the signal with its own strided conv, then a 3-tap conv."""
    def branch(name: str, kernel: int, stride: int) -> onnx.GraphProto:
        nodes = [
            helper.make_node("Conv", ["x3", f"Wf{kernel}"], [f"f{kernel}"], strides=[stride], name=f"frames{kernel}"),
            helper.make_node("Conv", [f"f{kernel}", "Wm"], [f"y{kernel}"], pads=[1, 1], name=f"mix{kernel}"),
        ]
        return helper.make_graph(nodes, name, [], [tensor(f"y{kernel}", None)])

    nodes = [
        helper.make_node("Unsqueeze", ["X", "axes"], ["x3"]),
        helper.make_node("Equal", ["sr", "k16"], ["is16k"]),
        helper.make_node("If", ["is16k"], ["Y"], name="rate", then_branch=branch("then", 16, 8),
                         else_branch=branch("else", 8, 4)),
    ]
    inits = [init("axes", np.array([1], np.int64)), init("k16", np.array(16000, np.int64)),
             init("Wf16", _w(8, 1, 16)), init("Wf8", _w(8, 1, 8)), init("Wm", _w(4, 8, 3))]
    return make_model(nodes, [tensor("X", [1, "samples"]), tensor("sr", [], TensorProto.INT64)],
                      [tensor("Y", None)], inits)


# Frames of 256 samples: (256 - 16) / 8 + 1 = 31 at 16 kHz, (256 - 8) / 4 + 1 = 63 at 8 kHz.
MACS_16K = 8 * 31 * 16 + 4 * 31 * 8 * 3
MACS_8K = 8 * 63 * 8 + 4 * 63 * 8 * 3


def _npz(tmp_path: Path, **arrays: np.ndarray) -> str:
    path = tmp_path / "in.npz"
    np.savez(path, **arrays)
    return str(path)


@pytest.mark.parametrize("sr, taken, skipped, macs, frames", [
    (16000, "then_branch", "else_branch", MACS_16K, 31),
    (8000, "else_branch", "then_branch", MACS_8K, 63),
])
def test_inputs_count_the_branch_that_ran(tmp_path: Path, sr: int, taken: str, skipped: str, macs: int,
                                          frames: int) -> None:
    model = _sample_rate_model()
    path = tmp_path / "vad.onnx"
    path.write_bytes(model.SerializeToString())
    feeds = {"X": np.zeros((1, 256), np.float32), "sr": np.array(sr, np.int64)}
    (y,) = _run(model, feeds)
    assert y.shape == (1, 4, frames)  # the oracle
    result = stats(str(path), "--inputs", _npz(tmp_path, **feeds), "--format", "json")
    assert result.exit_code == 0, result.output
    out = json.loads(result.output)
    assert [r["path"] for r in out["layers"]] == [f"rate/{taken}"] * 2
    assert out["layers"][-1]["output_shape"] == list(y.shape)
    assert out["totals"]["macs"] == macs and out["totals"]["uncounted"] == 0
    assert any(f"If 'rate': its {taken} ran in the onnxruntime run" in n and f"its {skipped} is not (2 conv(s)" in n
               for n in out["notes"]), out["notes"]


def test_without_inputs_both_branches_count_and_the_note_names_the_deciding_input() -> None:
    report = analyze(_sample_rate_model(), input_shapes={"X": [1, 256]})
    assert sorted(r.path for r in report.layers) == ["rate/else_branch"] * 2 + ["rate/then_branch"] * 2
    assert report.totals["macs"] == MACS_16K + MACS_8K
    (note,) = [n for n in report.notes if "both branches" in n]
    assert "If 'rate'" in note and "value of input 'sr'" in note
    assert "--inputs FILE.npz" in note and "numpy.savez('in.npz', X=..., sr=...)" in note


def _shape_tested_model() -> onnx.ModelProto:
    """PyTorch's way of testing a rank or a dim in an export: If nodes whose conditions read shapes only, one
    nested in the other. For X of length 16 the outer If runs its else branch (a strided conv), the inner one
    (batch == 1) its then branch (Identity); the conv after them reads a shape that depends on both."""
    inner = helper.make_node(
        "If", ["is_batch1"], ["b_out"], name="inner",
        then_branch=helper.make_graph([helper.make_node("Identity", ["b"], ["b_id"])], "t2", [],
                                      [tensor("b_id", None)]),
        else_branch=helper.make_graph([helper.make_node("Conv", ["b", "Wd"], ["b_conv"], name="extra")], "e2", [],
                                      [tensor("b_conv", None)]))
    then_branch = helper.make_graph([helper.make_node("Conv", ["X", "Wa"], ["a"], name="point")], "t1", [],
                                    [tensor("a", None)])
    else_branch = helper.make_graph([
        helper.make_node("Conv", ["X", "Wb"], ["b"], strides=[2], name="down"),
        helper.make_node("Shape", ["b"], ["b_shape"]),
        helper.make_node("Gather", ["b_shape", "zero"], ["b_batch"], axis=0),
        helper.make_node("Equal", ["b_batch", "one"], ["is_batch1"]),
        inner,
    ], "e1", [], [tensor("b_out", None)])
    nodes = [
        helper.make_node("Shape", ["X"], ["x_shape"]),
        helper.make_node("Gather", ["x_shape", "two"], ["length"], axis=0),
        helper.make_node("Equal", ["length", "one"], ["is_point"]),
        helper.make_node("If", ["is_point"], ["h"], name="outer", then_branch=then_branch, else_branch=else_branch),
        helper.make_node("Conv", ["h", "Wc"], ["Y"], pads=[1, 1], name="head"),
    ]
    inits = [init("zero", np.array(0, np.int64)), init("one", np.array(1, np.int64)),
             init("two", np.array(2, np.int64)), init("Wa", _w(8, 8, 1)), init("Wb", _w(8, 8, 3)),
             init("Wc", _w(4, 8, 3)), init("Wd", _w(8, 8, 3))]
    return make_model(nodes, [tensor("X", [1, 8, "length"])], [tensor("Y", None)], inits)


def test_conditions_on_shapes_count_the_branch_that_runs() -> None:
    model = _shape_tested_model()
    (y,) = _run(model, {"X": np.zeros((1, 8, 16), np.float32)})
    report = analyze(model, input_shapes={"X": [1, 8, 16]})
    assert [(r.path, r.name) for r in report.layers] == [("outer/else_branch", "down"), ("", "head")]
    down, head = report.layers
    assert head.output_shape == list(y.shape) == [1, 4, 7]  # the oracle: the else branch's stride 2
    assert down.macs == 8 * 7 * 8 * 3 and head.macs == 4 * 7 * 8 * 3
    assert report.totals["uncounted"] == 0
    notes = "\n".join(report.notes)
    assert "If 'outer': its else_branch is the one that runs for these input shapes and is counted; its " \
           "then_branch is not (1 conv(s) not counted)" in notes
    assert "If 'outer/else_branch/inner': its then_branch is the one that runs" in notes
    assert "both branches" not in notes


def test_pads_computed_through_a_transpose_are_folded() -> None:
    """Silero VAD's STFT padding: the Pad amounts come from a constant reshaped, reversed and transposed, which
    ONNX shape inference does not follow."""
    model = parse(
        """
        g (float[1,10] X) => (float[1,4,?] Y) {
          c = Constant <value = int64[2,2] {0, 0, 2, 4}> ()
          t = Transpose <perm = [1, 0]> (c)
          pads = Reshape (t, flat)
          xp = Pad <mode = "reflect"> (X, pads)
          x3 = Unsqueeze (xp, axes)
          Y = Conv (x3, W)
        }""",
        {"W": (4, 1, 5)},
    )
    model.graph.initializer.extend([init("flat", np.array([-1], np.int64)), init("axes", np.array([1], np.int64))])
    (y,) = _run(model, {"X": np.zeros((1, 10), np.float32)})
    (row,) = analyze(model).layers
    assert row.input_shape == [1, 1, 16] and row.output_shape == list(y.shape) == [1, 4, 12]
    assert row.macs == 4 * 12 * 5


def _padded_by_input() -> onnx.ModelProto:
    model = parse(
        """
        g (float[1,3,8,8] X, int64 p) => (float[1,4,?,?] Y) {
          z = Constant <value = int64[2] {0, 0}> ()
          p1 = Unsqueeze (p, axes)
          pads = Concat <axis = 0> (z, p1, p1, z, p1, p1)
          xp = Pad (X, pads)
          Y = Conv (xp, W)
        }""",
        {"W": (4, 3, 3, 3)},
    )
    model.graph.initializer.append(init("axes", np.array([0], np.int64)))
    return model


def test_shapes_that_depend_on_an_input_value_name_it_and_inputs(tmp_path: Path) -> None:
    path = tmp_path / "padded.onnx"
    path.write_bytes(_padded_by_input().SerializeToString())
    result = stats(str(path), "--format", "json")
    assert result.exit_code == 0, result.output  # a figure that cannot be known is null, with the reason
    out = json.loads(result.output)
    assert out["layers"][0]["macs"] is None and out["totals"]["uncounted"] == 1
    (note,) = [n for n in out["notes"] if "layer(s)" in n]
    assert "depend on the value of input 'p'" in note and "--inputs FILE.npz" in note
    assert "numpy.savez('in.npz', X=..., p=...)" in note
    table = stats(str(path))
    assert table.exit_code == 0 and "value of input 'p'" in table.output


def test_if_without_convs_is_not_in_the_notes() -> None:
    """Exports test shapes with dozens of If nodes; only those whose branches hold counted layers are noted."""
    model = parse(
        """
        g (float[1,3,8,8] X, bool c) => (float[1,4,6,6] Y) {
          a = Conv (X, W)
          Y = If (c) <then_branch = t () => (float[1,4,6,6] r) { r = Relu (a) },
                      else_branch = e () => (float[1,4,6,6] n) { n = Neg (a) }>
        }""",
        {"W": (4, 3, 3, 3)},
    )
    report = analyze(model)
    assert [r.name for r in report.layers] == ["a"]
    assert not any("If" in n for n in report.notes), report.notes


def test_observe_sees_branch_shapes_and_a_branch_of_constants_only() -> None:
    """The branch an If took is the one whose nodes ran; a branch of Constant nodes only (onnxruntime makes them
    initializers: they never run) is the one taken when the other's nodes did not run."""
    then_branch = helper.make_graph(
        [helper.make_node("Constant", [], ["k"], value=helper.make_tensor("k", TensorProto.FLOAT, [1, 4, 6, 6],
                                                                          [0.0] * 144))],
        "t", [], [tensor("k", None)])
    else_branch = helper.make_graph([helper.make_node("Conv", ["X", "W"], ["y"], name="conv")], "e", [],
                                    [tensor("y", None)])
    model = make_model([helper.make_node("If", ["c"], ["Y"], name="pick", then_branch=then_branch,
                                         else_branch=else_branch)],
                       [tensor("X", [1, 3, 8, 8]), tensor("c", [], TensorProto.BOOL)], [tensor("Y", None)],
                       [init("W", _w(4, 3, 3, 3))])
    x = np.zeros((1, 3, 8, 8), np.float32)
    ran_conv = observe(model, {"X": x, "c": np.array(False)})
    assert ran_conv.branches == {"Y": False} and ran_conv.shapes["y"] == (1, 4, 6, 6)
    ran_constant = observe(model, {"X": x, "c": np.array(True)})
    assert ran_constant.branches == {"Y": True} and "y" not in ran_constant.shapes
    report = analyze(model, observed=ran_constant)
    assert report.layers == [] and any("(1 conv(s) not counted)" in n for n in report.notes)


def test_observe_tells_nodes_apart_when_names_repeat() -> None:
    """Exporters repeat node names across branches (and leave them empty); the run's copy names each node
    uniquely, so each profiler event is one node's."""
    model = _sample_rate_model()
    for node in model.graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                for inner in attr.g.node:
                    inner.name = "conv"
    feeds = {"X": np.zeros((1, 256), np.float32), "sr": np.array(8000, np.int64)}
    seen = observe(model, feeds)
    assert seen.branches == {"Y": False} and seen.shapes["y8"] == (1, 4, 63) and "y16" not in seen.shapes
    assert analyze(model, input_shapes={"X": [1, 256]}, observed=seen).totals["macs"] == MACS_8K

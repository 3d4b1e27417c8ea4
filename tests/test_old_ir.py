"""Models of IR version 3 (the ONNX Model Zoo's classic exports, older PyTorch ones), where every initializer
must also be a graph input: every mode of ``onnxconv separate`` writes a model that passes ``onnx.checker``
(full check) and runs in onnxruntime, with the same outputs where the rewrite is exact."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxconv.cli import main

from . import plankit
from .modelkit import init, make_model, tensor
from .test_calibrate import smooth_inputs
from .test_plan_search import CURVE, fake_bench, four_convs

#: The opset of IR 3 exports (Conv is the same as at later opsets).
OLD_OPSET = 9


def as_ir3(model: onnx.ModelProto, weights_first: bool = False) -> onnx.ModelProto:
    """``model`` at IR 3 and opset 9, every initializer declared as a graph input too (``weights_first``: before
    the data inputs, as some exporters list them)."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    m.ir_version = 3
    del m.opset_import[:]
    m.opset_import.append(helper.make_opsetid("", OLD_OPSET))
    declared = [helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)) for t in m.graph.initializer]
    data = list(m.graph.input)
    del m.graph.input[:]
    m.graph.input.extend(declared + data if weights_first else data + declared)
    onnx.checker.check_model(m, full_check=True)
    return m


def two_convs(rng: np.random.Generator, c: int = 8) -> onnx.ModelProto:
    """X -> conv 3x3 (bias) -> Relu -> conv 3x3 -> Y, output shape declared (the full check wants it)."""
    inits = [init("conv1_w_0", rng.standard_normal((c, c, 3, 3)).astype(np.float32) / 8),
             init("conv1_b_0", rng.standard_normal(c).astype(np.float32)),
             init("conv2_w_0", rng.standard_normal((c, c, 3, 3)).astype(np.float32) / 8)]
    nodes = [helper.make_node("Conv", ["X", "conv1_w_0", "conv1_b_0"], ["h"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "conv2_w_0"], ["Y"], name="conv2", pads=[1, 1, 1, 1])]
    return make_model(nodes, [tensor("X", [1, c, 6, 6])], [tensor("Y", [1, c, 6, 6])], inits)


def run(model: onnx.ModelProto | str | Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, providers=["CPUExecutionProvider"]).run(None, feeds)


def check_written(path: Path, original: onnx.ModelProto, exact: bool, size: int = 6) -> onnx.ModelProto:
    """The written model: IR 3, valid by the full check, every initializer an input, runs in onnxruntime (with
    the original's outputs when ``exact``)."""
    out = onnx.load(path)
    assert out.ir_version == 3
    onnx.checker.check_model(out, full_check=True)
    assert {t.name for t in out.graph.initializer} <= {i.name for i in out.graph.input}
    x = np.random.default_rng(1).standard_normal((1, 8, size, size)).astype(np.float32)
    got, want = run(out, {"X": x})[0], run(original, {"X": x})[0]
    assert got.shape == want.shape and np.all(np.isfinite(got))
    if exact:
        assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)
    return out


def separate(*args: str):  # noqa: ANN201
    return CliRunner().invoke(main, ["separate", *args])


@pytest.mark.parametrize("weights_first", [False, True])
@pytest.mark.parametrize("args", [
    ["--exact"], ["--exact", "--form", "concat"], ["--exact", "--form", "multiplier"], ["--exact", "--form", "tiled"],
    ["--rank", "2"], ["--energy", "0.9", "--force"], ["--max-error", "0.5", "--force"], ["--budget", "0.3"],
    ["--mode", "shuffle", "--groups", "2"], ["--mode", "shuffle", "--groups", "2", "--mixing", "shuffle"],
])
def test_every_mode_writes_a_valid_ir3_model(tmp_path: Path, args: list[str], weights_first: bool) -> None:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    model = as_ir3(two_convs(np.random.default_rng(0)), weights_first)
    onnx.save(model, src)
    res = separate(str(src), "-o", str(out), "--min-channels", "1", *args, "--verify")
    assert res.exit_code == 0, res.output
    assert "2 rewritten" in res.output
    written = check_written(out, model, exact="--exact" in args)
    # The original inputs that remain come first, in their order; the replaced weights' inputs are gone.
    names = [i.name for i in written.graph.input]
    kept = [i.name for i in model.graph.input if i.name in names]
    assert names[:len(kept)] == kept and "X" in kept
    assert "conv1_w_0" not in names and "conv2_w_0" not in names


def test_nothing_rewritten_keeps_the_inputs_exactly(tmp_path: Path) -> None:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    model = as_ir3(two_convs(np.random.default_rng(0)), weights_first=True)
    onnx.save(model, src)
    res = separate(str(src), "-o", str(out), "--rank", "1", "--include", "no such layer")
    assert res.exit_code == 0, res.output
    written = check_written(out, model, exact=True)
    assert list(written.graph.input) == list(model.graph.input)


def test_calibration_refit_writes_a_valid_ir3_model(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    src, out, cal = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "cal.npz"
    model = two_convs(rng)
    model.graph.input[0].CopyFrom(tensor("X", ["N", 8, 6, 6]))
    model.graph.output[0].CopyFrom(tensor("Y", ["N", 8, 6, 6]))
    model = as_ir3(model)
    onnx.save(model, src)
    np.savez(cal, X=smooth_inputs(rng, 10, 8, 6))
    for mode in (["--rank", "1"], ["--mode", "shuffle", "--groups", "2"]):
        res = separate(str(src), "-o", str(out), "--min-channels", "1", *mode, "--calibration", str(cal),
                       "--verify")
        assert res.exit_code == 0, res.output
        assert "2 rewritten" in res.output and "verify on held-out calibration samples" in res.output
        check_written(out, model, exact=False)


@pytest.mark.parametrize(("mode", "precision"), [("separable", "fp32"), ("mixed", "fp32"), ("separable", "int8")])
def test_planner_writes_a_valid_ir3_model(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, mode: str,
                                          precision: str) -> None:
    """With ``--precision int8`` the written model is onnxruntime's quantizer's output: its scales, zero points
    and int8 weights are new initializers, inputs too at IR 3."""
    rng = np.random.default_rng(0)
    src, out, cal = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "cal.npz"
    model = four_convs(rng)
    model.graph.output[0].CopyFrom(tensor("h4", ["N", 16, 8, 8]))
    model = as_ir3(model)
    onnx.save(model, src)
    np.savez(cal, X=smooth_inputs(rng, 10, 16, 8))
    plankit.fake_timer(monkeypatch, fake_bench(CURVE))
    res = separate(str(src), "-o", str(out), "--target-speedup", "1.2", "--calibration", str(cal), "--verify",
                   "--precision", precision, "--mode", mode)
    assert res.exit_code == 0, res.output
    written = onnx.load(out)
    assert written.ir_version == 3
    onnx.checker.check_model(written, full_check=True)
    assert {t.name for t in written.graph.initializer} <= {i.name for i in written.graph.input}
    assert any(n.op_type == "QuantizeLinear" for n in written.graph.node) == (precision == "int8")
    x = smooth_inputs(rng, 1, 16, 8)  # the int8 model's batch is the calibration runs' (static)
    assert run(out, {"X": x})[0].shape == (1, 16, 8, 8)


def test_a_conv_in_an_if_branch_of_an_ir3_model(tmp_path: Path) -> None:
    """IR 3 asks the same of subgraphs: the branch's new weights become the branch's inputs (onnxruntime takes
    an If branch's extra inputs as initializers)."""
    rng = np.random.default_rng(0)
    w = init("bw", rng.standard_normal((8, 8, 3, 3)).astype(np.float32))
    branch = helper.make_graph([helper.make_node("Conv", ["X", "bw"], ["by"], name="inner", pads=[1, 1, 1, 1])],
                               "then", [helper.make_tensor_value_info("bw", TensorProto.FLOAT, [8, 8, 3, 3])],
                               [tensor("by", [1, 8, 6, 6])], [w])
    other = helper.make_graph([helper.make_node("Identity", ["X"], ["ey"])], "else", [], [tensor("ey", [1, 8, 6, 6])])
    model = make_model([helper.make_node("If", ["c"], ["Y"], then_branch=branch, else_branch=other)],
                       [tensor("X", [1, 8, 6, 6]), tensor("c", [], TensorProto.BOOL)], [tensor("Y", [1, 8, 6, 6])],
                       opset=OLD_OPSET, ir_version=3)
    onnx.checker.check_model(model, full_check=True)
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    res = separate(str(src), "-o", str(out), "--exact", "--min-channels", "1")
    assert res.exit_code == 0, res.output
    assert "1 rewritten" in res.output
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    sub = written.graph.node[0].attribute[0].g
    assert {t.name for t in sub.initializer} == {i.name for i in sub.input} and "bw" not in {i.name for i in sub.input}
    feeds = {"X": rng.standard_normal((1, 8, 6, 6)).astype(np.float32), "c": np.array(True)}
    got, want = run(written, feeds)[0], run(model, feeds)[0]
    assert np.linalg.norm(got - want) <= 1e-5 * np.linalg.norm(want)


def test_ir4_inputs_with_a_default_keep_their_place(tmp_path: Path) -> None:
    """In IR >= 4 an initializer that is also an input is that input's default: it stays an input while its
    initializer does (the bias here), and new weights do not become inputs."""
    model = two_convs(np.random.default_rng(0))
    model.graph.input.extend([helper.make_tensor_value_info("conv1_b_0", TensorProto.FLOAT, [8]),
                              helper.make_tensor_value_info("conv2_w_0", TensorProto.FLOAT, [8, 8, 3, 3])])
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(model, src)
    res = separate(str(src), "-o", str(out), "--exact", "--min-channels", "1", "--include", "conv1")
    assert res.exit_code == 0, res.output
    written = onnx.load(out)
    onnx.checker.check_model(written, full_check=True)
    assert [i.name for i in written.graph.input] == ["X", "conv1_b_0", "conv2_w_0"]


def test_refit_of_a_shared_weight_leaves_no_unread_initializer(tmp_path: Path) -> None:
    """Two convs share a weight and a bias: the refit copies them per layer and moves each bias to the last term
    of its sum, then drops what nobody reads any more, inputs included (at IR 3 an initializer's input is there
    by rule, not as part of the interface)."""
    rng = np.random.default_rng(0)
    w = init("shared_w", rng.standard_normal((8, 8, 3, 3)).astype(np.float32) / 8)
    b = init("shared_b", rng.standard_normal(8).astype(np.float32))
    nodes = [helper.make_node("Conv", ["X", "shared_w", "shared_b"], ["h"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["h"], ["r"], name="relu"),
             helper.make_node("Conv", ["r", "shared_w", "shared_b"], ["Y"], name="b", pads=[1, 1, 1, 1])]
    model = as_ir3(make_model(nodes, [tensor("X", ["N", 8, 6, 6])], [tensor("Y", ["N", 8, 6, 6])], [w, b]))
    src, out, cal = tmp_path / "in.onnx", tmp_path / "out.onnx", tmp_path / "cal.npz"
    onnx.save(model, src)
    np.savez(cal, X=smooth_inputs(rng, 10, 8, 6))
    res = separate(str(src), "-o", str(out), "--rank", "2", "--min-channels", "1", "--calibration", str(cal))
    assert res.exit_code == 0, res.output
    written = check_written(out, model, exact=False)
    inits = {t.name for t in written.graph.initializer}
    assert inits == {i.name for i in written.graph.input} - {"X"}
    assert inits <= {i for n in written.graph.node for i in n.input}

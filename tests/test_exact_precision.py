"""``--exact --verify`` judged against the precision the model computes in (float16 models)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxconv.cli import main
from onnxconv.verify import EXACT_TOLERANCE, exact_failures, exact_precision, exact_tolerance
from onnxconv.compare import Agreement

from .modelkit import init, make_model, tensor


def half_model(io: int) -> onnx.ModelProto:
    """Two 3x3 convs with float16 weights; inputs and outputs of type ``io`` (float32: Casts around them)."""
    rng = np.random.default_rng(0)
    inits = [init("W", rng.standard_normal((16, 8, 3, 3)).astype(np.float16)),
             init("W2", rng.standard_normal((16, 16, 3, 3)).astype(np.float16))]
    x, y = ("Xh", "B") if io == TensorProto.FLOAT else ("X", "Y")
    nodes = [helper.make_node("Conv", [x, "W"], ["A"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["A"], ["R"]),
             helper.make_node("Conv", ["R", "W2"], [y], name="b", pads=[1, 1, 1, 1])]
    if io == TensorProto.FLOAT:
        nodes = ([helper.make_node("Cast", ["X"], ["Xh"], to=TensorProto.FLOAT16)] + nodes
                 + [helper.make_node("Cast", ["B"], ["Y"], to=TensorProto.FLOAT)])
    return make_model(nodes, [tensor("X", [1, 8, 12, 12], io)], [tensor("Y", None, io)], inits)


@pytest.mark.parametrize("io", [TensorProto.FLOAT, TensorProto.FLOAT16])
def test_exact_verify_passes_on_a_float16_model(io: int, tmp_path: Path) -> None:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(half_model(io), src)
    res = CliRunner().invoke(main, ["separate", str(src), "-o", str(out), "--exact", "--verify",
                                    "--min-channels", "1"])
    assert res.exit_code == 0, res.output
    assert out.exists() and "2 rewritten" in res.output


def test_precision_is_the_narrowest_float_type_the_model_computes_in() -> None:
    assert exact_precision(half_model(TensorProto.FLOAT)) == ("float16", 2.0 ** -10)
    assert exact_precision(half_model(TensorProto.FLOAT16)) == ("float16", 2.0 ** -10)
    plain = make_model([helper.make_node("Relu", ["X"], ["Y"])], [tensor("X", [1, 2])], [tensor("Y", [1, 2])])
    assert exact_precision(plain) == ("float32", 2.0 ** -23)
    ints = make_model([helper.make_node("ArgMax", ["X"], ["Y"])], [tensor("X", [1, 2])],
                      [tensor("Y", [1, 1], TensorProto.INT64)])
    assert exact_precision(ints) is None
    assert exact_tolerance(None) == exact_tolerance(("float32", 2.0 ** -23)) == EXACT_TOLERANCE


def test_float16_outputs_are_held_to_float16_tolerance() -> None:
    tol = exact_tolerance(("float16", 2.0 ** -10))
    close, wrong = Agreement("a", 0, 2.4e-3, 1), Agreement("b", 0, 0.2, 0.98)
    assert exact_failures([close, wrong], {"a": 6.6e-4, "b": 6.6e-4}, True, tol) == [wrong]
    # float32 outputs keep the float32 tolerance: 2.4e-3 is far from exact there.
    assert exact_failures([close], {"a": 1e-7}, True) == [close]


def test_a_wrong_float16_rewrite_still_fails_and_names_float16(tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxconv.passes import separable

    real = separable.separable_weights

    def broken(f, r, form):  # type: ignore[no-untyped-def]
        dw, pw = real(f, r, form)
        return dw, [p * 1.5 for p in pw]  # every 1x1 weight off by half

    monkeypatch.setattr(separable, "separable_weights", broken)
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(half_model(TensorProto.FLOAT), src)
    res = CliRunner().invoke(main, ["separate", str(src), "-o", str(out), "--exact", "--verify",
                                    "--min-channels", "1"])
    assert res.exit_code == 1 and not out.exists(), res.output
    assert "> 0.015625 (16 eps of float16, which the model computes in); nothing was written" in res.output


def padding_heavy(size: int | str, c_out: int = 16) -> onnx.ModelProto:
    """One 3x3 conv (pads 1) whose edge taps are 1e30 times its centre: on a 1x1 input only the centre reads data,
    so the output is the centre's alone, and the factoring's error there (float64 rounding of 1e30 on the edge
    taps) was 1e14 times the output while the weight's error per channel stayed at 1e-7."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((c_out, 8, 3, 3)) * 1e30
    w[:, :, 1, 1] /= 1e30
    x = tensor("X", [1, 8, size, size])
    return make_model([helper.make_node("Conv", ["X", "W"], ["Y"], name="c", pads=[1, 1, 1, 1])], [x],
                      [tensor("Y", None)], [init("W", w.astype(np.float32))])


def _rel_error(a: onnx.ModelProto, b: onnx.ModelProto, size: int) -> float:
    import onnxruntime as ort

    x = {"X": np.random.default_rng(1).standard_normal((1, 8, size, size)).astype(np.float32)}
    run = [ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, x)[0]
           .astype(np.float64) for m in (a, b)]
    return float(np.linalg.norm(run[0] - run[1]) / np.linalg.norm(run[0]))


def test_exact_weighs_the_taps_that_read_data() -> None:
    from onnxconv.passes.factoring import factor_weight, reconstruction_error
    from onnxconv.passes.ranks import RankPolicy, exact_tolerance
    from onnxconv.passes.separable import separate

    small = padding_heavy(1)
    w = onnx.numpy_helper.to_array(small.graph.initializer[0])
    f = factor_weight(w, 1)
    tol = exact_tolerance(w.dtype, f.max_rank)
    # Over all taps alike the weight is rebuilt to float32 precision; over the centre, all a 1x1 input reads, not.
    assert reconstruction_error(f, w) <= tol
    assert reconstruction_error(f, w, coverage=np.array([0, 0, 0, 0, 1, 0, 0, 0, 0])) > 1e6

    result = separate(small, RankPolicy("exact", None))
    assert not result.layers[0].rewritten
    assert result.layers[0].reason.startswith("not exactly factorable in float32")
    # On a larger input every tap reads data: the same weight is rewritten, and onnxruntime agrees.
    large = padding_heavy(6)
    result = separate(large, RankPolicy("exact", None))
    assert result.layers[0].rewritten and "notes" not in result.options
    assert _rel_error(large, result.model, 6) < EXACT_TOLERANCE


def test_exact_without_the_input_size_says_so(tmp_path: Path) -> None:
    src, out = tmp_path / "in.onnx", tmp_path / "out.onnx"
    onnx.save(padding_heavy("S"), src)
    res = CliRunner().invoke(main, ["separate", str(src), "-o", str(out), "--exact"])
    assert res.exit_code == 0, res.output
    assert ("note: --exact checked 1 layer(s) of unknown input size as if every kernel tap read data (true of "
            "inputs larger than the kernel); --input-shape, or --verify on the outputs, checks them as run"
            in res.output)
    # --input-shape gives the size: the layer is then checked as run, and left as it is.
    res = CliRunner().invoke(main, ["separate", str(src), "-o", str(out), "--exact", "--input-shape", "X=1x8x1x1"])
    assert res.exit_code == 0, res.output
    assert "0 rewritten" in res.output and "not exactly factorable" in res.output and "note:" not in res.output

"""`onnxconv separate` through click's CliRunner: options, report, verification, errors, atomic output."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxconv.cli import main
from onnxconv.cli.separate_cmd import format_details
from onnxconv.passes.common import LayerChange, PassResult
from onnxconv.verify import exact_failures

from .modelkit import init, make_model, tensor


def two_conv_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["H"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["H"], ["R"], name="relu"),
        helper.make_node("Conv", ["R", "W2"], ["Y"], name="head", pads=[1, 1, 1, 1]),
    ]
    return make_model(
        nodes, [tensor("X", ["N", 8, 12, 12])], [tensor("Y", ["N", 16, 12, 12])],
        [init("W1", rng.standard_normal((16, 8, 3, 3)).astype(np.float32)),
         init("B1", rng.standard_normal(16).astype(np.float32)),
         init("W2", rng.standard_normal((16, 16, 3, 3)).astype(np.float32))],
    )


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    p = tmp_path / "in.onnx"
    onnx.save(two_conv_model(), p)
    return p


def run(*args: str) -> "CliRunner.invoke":  # type: ignore[name-defined]
    return CliRunner().invoke(main, ["separate", *args], catch_exceptions=False)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def test_rank_rewrite_prints_layers_and_totals_and_keeps_the_input(model_path: Path, tmp_path: Path) -> None:
    before = digest(model_path)
    out = tmp_path / "out.onnx"
    res = run(str(model_path), "-o", str(out), "--rank", "2")
    assert res.exit_code == 0, res.output
    assert "stem" in res.output and "head" in res.output and "rank 2/9, weight err" in res.output
    assert max(len(line) for line in res.output.splitlines() if not line.startswith("note:")) <= 120
    assert "total: 2 convs, 2 rewritten, 0 skipped" in res.output
    assert digest(model_path) == before
    m = onnx.load(out)
    assert [n.op_type for n in m.graph.node].count("Add") == 2  # default form: sum, one Add per rank-2 layer
    res = run(str(model_path), "-o", str(out), "--rank", "2", "--form", "concat")
    assert res.exit_code == 0 and [n.op_type for n in onnx.load(out).graph.node].count("Concat") == 2
    onnx.checker.check_model(m)


def test_exact_verify_meets_the_tolerance(model_path: Path, tmp_path: Path) -> None:
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--exact", "--verify", "--form", "concat")
    assert res.exit_code == 0, res.output
    line = next(ln for ln in res.output.splitlines() if ln.startswith("verify 'Y'"))
    rel = float(line.split("relative error ")[1].split(",")[0])
    assert rel <= 1e-5
    assert "forced" in res.output  # the exact rank saves nothing; --exact rewrites anyway


def test_report_json_and_npz_inputs(model_path: Path, tmp_path: Path) -> None:
    inputs = tmp_path / "x.npz"
    np.savez(inputs, X=np.random.default_rng(1).standard_normal((2, 8, 12, 12)).astype(np.float32))
    report = tmp_path / "r.json"
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--energy", "0.5", "--inputs", str(inputs),
              "--report", str(report), "--input-shape", "X=2x8x12x12")
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())
    assert data["pass"] == "separable" and data["options"]["policy"] == "energy 0.5"
    layers = {layer["name"]: layer for layer in data["layers"]}
    assert set(layers) == {"stem", "head"}
    for layer in layers.values():
        if layer["rewritten"]:
            assert {"rank", "rel_error", "energy", "form"} <= set(layer["details"])
            assert layer["macs_after"] < layer["macs_before"]
    assert layers["stem"]["macs_before"] == 2 * 16 * 144 * 8 * 9  # batch 2 from --input-shape
    assert data["totals"]["macs_before"] == sum(layer["macs_before"] for layer in layers.values())
    assert data["verify"]["inputs"] == str(inputs)
    (agree,) = data["verify"]["outputs"]
    assert 0 < agree["cosine"] <= 1 + 1e-9


def test_include_exclude_budget(model_path: Path, tmp_path: Path) -> None:
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--rank", "1", "--exclude", "^stem$")
    assert res.exit_code == 0 and "matched by --exclude '^stem$'" in res.output
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--rank", "1", "--include", "hea")
    assert res.exit_code == 0 and "not matched by --include" in res.output
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--budget", "0.5")
    assert res.exit_code == 0, res.output
    total = next(ln for ln in res.output.splitlines() if ln.startswith("total:"))
    ratio = float(re.search(r"MACs \S+ -> \S+ \(([\d.]+)x\)", total).group(1))  # type: ignore[union-attr]
    assert ratio <= 0.5


@pytest.mark.parametrize(("args", "message"), [
    (["--rank", "2", "--energy", "0.9"], "choose one of --rank"),
    ([], "say how ranks are chosen"),
    (["--energy", "1.5"], "'--energy': 1.5 is not in the range 0<x<=1"),
    (["--max-error", "-0.1"], "--max-error"),
    (["--rank", "2", "--groups", "2"], "--groups applies to --mode shuffle"),
    (["--mode", "shuffle"], "--mode shuffle needs --groups"),
    (["--mode", "shuffle", "--groups", "2", "--rank", "2"], "--rank applies to --mode separable"),
    (["--rank", "1", "--include", "("], "--include '('"),
    (["--budget", "0.01"], "smallest reachable"),
    (["--rank", "1", "--input-shape", "nope=1x2"], "no input 'nope'"),
    (["--rank", "1", "--report", "/no/such/dir/r.json"], "does not exist"),
])
def test_bad_options_are_one_line_errors_and_write_nothing(model_path: Path, tmp_path: Path, args: list[str],
                                                          message: str) -> None:
    out = tmp_path / "o.onnx"
    res = run(str(model_path), "-o", str(out), *args)
    assert res.exit_code != 0
    assert message in res.output, res.output
    assert "Traceback" not in res.output
    assert not out.exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]


def test_inputs_that_do_not_fit_are_refused_before_the_rewrite(model_path: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """A wrong --inputs file is one line and exit 1 at once, not after a long rewrite and refit."""
    import onnxconv.requests as requests

    def fail(*_a: object, **_k: object) -> None:
        raise AssertionError("the pass ran before the inputs were checked")

    monkeypatch.setattr(requests, "separate_pass", fail)  # the pass as run_separate calls it
    inputs = tmp_path / "x.npz"
    np.savez(inputs, X=np.zeros((2, 8, 10, 12), np.float32))  # the model needs ? x 8 x 12 x 12
    out = tmp_path / "o.onnx"
    res = run(str(model_path), "-o", str(out), "--rank", "1", "--inputs", str(inputs))
    assert res.exit_code == 1 and not out.exists()
    assert res.output.strip() == (f"Error: --inputs {inputs}: array 'X' has shape [2, 8, 10, 12]: dim 2 is 10, "
                                  "the model input ?x8x12x12 needs 12")


def test_input_is_never_overwritten_unless_asked(model_path: Path) -> None:
    before = digest(model_path)
    res = run(str(model_path), "-o", str(model_path), "--rank", "1")
    assert res.exit_code == 1 and "refusing to overwrite the input" in res.output
    assert digest(model_path) == before
    res = run(str(model_path), "-o", str(model_path), "--rank", "1", "--overwrite")
    assert res.exit_code == 0 and digest(model_path) != before


def test_missing_model_and_missing_output_folder(tmp_path: Path, model_path: Path) -> None:
    res = run(str(tmp_path / "nope.onnx"), "-o", str(tmp_path / "o.onnx"), "--rank", "1")
    assert res.exit_code == 1 and "no such file" in res.output
    res = run(str(model_path), "-o", str(tmp_path / "missing" / "o.onnx"), "--rank", "1")
    assert res.exit_code == 1 and "does not exist" in res.output


def test_external_data_stays_external(tmp_path: Path) -> None:
    src = tmp_path / "ext.onnx"
    onnx.save(two_conv_model(), src, save_as_external_data=True, location="ext.onnx.data", size_threshold=0)
    out = tmp_path / "out.onnx"
    res = run(str(src), "-o", str(out), "--rank", "2", "--verify")
    assert res.exit_code == 0, res.output
    assert (tmp_path / "out.onnx.data").is_file()
    small = onnx.load(out, load_external_data=False)
    assert any(t.data_location == onnx.TensorProto.EXTERNAL for t in small.graph.initializer)
    assert onnx.load(out).graph.node  # loads with its data


def test_shuffle_mode_calls_group_shuffle_and_prints_its_details(model_path: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Plumbing only: a stand-in for onnxconv.passes.shuffle records the call and returns a known result."""
    calls = {}

    def group_shuffle(model: onnx.ModelProto, *, groups: int, node_filter=None, force: bool = False,
                      **more: object) -> PassResult:
        calls.update(groups=groups, force=force, excluded=node_filter.reason("stem"))
        layers = [LayerChange("stem", "Conv", False, reason="matched by --exclude '^stem$'", macs_before=100),
                  LayerChange("head", "Conv", True, macs_before=100, macs_after=25,
                              groups=groups, kept_energy=0.8125)]
        return PassResult(model=model, layers=layers, pass_name="shuffle", options={"groups": groups})

    import onnxconv.requests as requests

    monkeypatch.setattr(requests, "group_shuffle", group_shuffle)  # the pass as run_separate calls it
    report = tmp_path / "r.json"
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--mode", "shuffle", "--groups", "4",
              "--exclude", "^stem$", "--force", "--verify", "--report", str(report))
    assert res.exit_code == 0, res.output
    assert calls == {"groups": 4, "force": True, "excluded": "matched by --exclude '^stem$'"}
    assert "4 groups, keeps 81% of W" in res.output
    assert "MACs 200 -> 125 (0.625x)" in res.output
    assert "verify 'Y'" in res.output
    assert json.loads(report.read_text())["layers"][1]["details"] == {"groups": 4, "kept_energy": 0.8125}


def test_format_details() -> None:
    assert format_details({"rank": 3, "max_rank": 9, "rel_error": 0.1234567, "energy": 0.98, "form": "concat"}) == \
        "rank 3/9, weight err 12%, concat form"
    assert format_details({"groups": 2, "kept_energy": 0.5, "forced": True, "extra": 1.5, "method": "spectral",
                           "in_groups": [0, 1, 1, 0], "note": "x" * 40}) == "2 groups, keeps 50% of W, forced"
    # The refit's figures in words; the rest (ridge, samples) stays in --report.
    assert format_details({"rank": 2, "max_rank": 9, "rel_error": 0.0312, "out_err": 0.7014, "refit_err": 0.284,
                           "ridge": 1e-6, "samples": 4096, "form": "sum"}) == "rank 2/9, weight err 3.1%, refit 70%->28%"
    assert format_details({"rank": 1, "refit": "singular normal equations"}) == "rank 1, refit: singular normal equations"


def test_exact_verify_failure_writes_nothing(tmp_path: Path) -> None:
    """Y = conv(X, W) - conv(X, copy of W) is exactly 0 in the original at every optimisation level; rewriting
    one conv leaves float32 rounding in Y, far above 1e-5 of it: --exact refuses and writes nothing."""
    w = 100 * np.random.default_rng(0).standard_normal((16, 8, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "W"], ["A"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["X", "Wcopy"], ["B"], name="b", pads=[1, 1, 1, 1]),
             helper.make_node("Sub", ["A", "B"], ["Y"], name="sub")]
    model = make_model(nodes, [tensor("X", [1, 8, 10, 10])], [tensor("Y", [1, 16, 10, 10])],
                       [init("W", w), init("Wcopy", w.copy())])
    src, out = tmp_path / "in.onnx", tmp_path / "o.onnx"
    onnx.save(model, src)
    res = run(str(src), "-o", str(out), "--exact", "--verify", "--exclude", "^b$")
    assert res.exit_code == 1 and "> 1e-05; nothing was written" in res.output, res.output
    assert not out.exists()


def test_exact_failures_allows_the_originals_own_noise_floor() -> None:
    from onnxconv.compare import Agreement

    good, noisy, bad = Agreement("a", 0, 1e-6, 1), Agreement("b", 0, 2e-2, 1), Agreement("c", 0, 2e-2, 1)
    floors = {"b": 1.5e-2, "c": 1e-4}
    assert exact_failures([good, noisy, bad], floors, float32=True) == [bad]
    assert exact_failures([bad], {}, float32=False) == []


def test_failed_save_leaves_no_report_and_folder_output_is_refused(model_path: Path, tmp_path: Path,
                                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    from onnxconv import separate_io
    from onnxconv.errors import OnnxConvError

    def failing_save(*args: object, **kwargs: object) -> None:
        raise OnnxConvError("disk full")

    monkeypatch.setattr(separate_io, "save_model", failing_save)  # the name write_result calls
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--rank", "1", "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 1 and "Error: disk full" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]
    monkeypatch.undo()
    res = run(str(model_path), "-o", str(tmp_path), "--rank", "1")
    assert res.exit_code == 1 and "is a folder" in res.output


# -- option ranges, --fix-input-shape, --fail-if-unchanged ------------------------------------------------------

@pytest.mark.parametrize(("args", "message"), [
    (["--energy", "0"], "'--energy': 0.0 is not in the range 0<x<=1"),
    (["--budget", "0"], "'--budget': 0.0 is not in the range 0<x<=1"),
    (["--budget", "1.5"], "'--budget': 1.5 is not in the range 0<x<=1"),
    (["--max-error", "-0.5"], "'--max-error': -0.5 is not in the range 0<=x<1"),
    (["--target-speedup", "0", "--calibration", "c.npz"], "'--target-speedup': 0.0 is not in the range x>0"),
])
def test_option_ranges_name_the_range(model_path: Path, tmp_path: Path, args: list[str], message: str) -> None:
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), *args)
    assert res.exit_code == 2 and message in res.output, res.output
    assert not (tmp_path / "o.onnx").exists()


def test_max_error_zero_is_a_value_not_a_missing_option(model_path: Path, tmp_path: Path) -> None:
    # 0.0 in (None, False) is true in Python: --max-error 0 used to read as "no rank option given".
    res = run(str(model_path), "-o", str(tmp_path / "o.onnx"), "--max-error", "0")
    assert res.exit_code == 0, res.output
    assert "say how ranks" not in res.output and "rank 9 saves no MACs" in res.output  # the exact rank


def test_fix_input_shape_writes_static_inputs(model_path: Path, tmp_path: Path) -> None:
    import onnxruntime as ort

    out = tmp_path / "o.onnx"
    res = run(str(model_path), "-o", str(out), "--rank", "2", "--input-shape", "X=3x8x12x12", "--fix-input-shape",
              "--verify")
    assert res.exit_code == 0, res.output
    m = onnx.load(out)
    dims = [[d.dim_value if d.HasField("dim_value") else d.dim_param for d in vi.type.tensor_type.shape.dim]
            for vi in (*m.graph.input, *m.graph.output)]
    assert dims == [[3, 8, 12, 12], [3, 16, 12, 12]]  # the output's symbolic N is the same dim as the input's
    onnx.checker.check_model(m, full_check=True)
    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [3, 8, 12, 12]
    y = sess.run(None, {"X": np.zeros((3, 8, 12, 12), np.float32)})[0]
    assert y.shape == (3, 16, 12, 12)
    # Without the flag the input stays symbolic.
    res = run(str(model_path), "-o", str(out), "--rank", "2", "--input-shape", "X=3x8x12x12")
    assert res.exit_code == 0
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[0].dim_param == "N"


def test_fix_input_shape_with_batch_and_without_values(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    res = run(str(model_path), "-o", str(out), "--rank", "2", "--batch", "5", "--fix-input-shape")
    assert res.exit_code == 0, res.output
    assert onnx.load(out).graph.input[0].type.tensor_type.shape.dim[0].dim_value == 5
    res = run(str(model_path), "-o", str(tmp_path / "p.onnx"), "--rank", "2", "--fix-input-shape")
    assert res.exit_code == 1 and "--fix-input-shape needs --input-shape" in res.output
    assert not (tmp_path / "p.onnx").exists()


def test_fail_if_unchanged_exits_4_and_writes_nothing(model_path: Path, tmp_path: Path) -> None:
    out = tmp_path / "o.onnx"
    res = run(str(model_path), "-o", str(out), "--rank", "2", "--exclude", ".", "--fail-if-unchanged",
              "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 4, res.output
    assert "no conv was rewritten" in res.output and "skipped" in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx"]
    # Something rewritten: the flag changes nothing.
    res = run(str(model_path), "-o", str(out), "--rank", "2", "--fail-if-unchanged")
    assert res.exit_code == 0 and out.exists()


# -- issue 11: one request object, shared option decorators -----------------------------------------------------

def test_separate_request_validates_without_click(model_path: Path, tmp_path: Path) -> None:
    from onnxconv.errors import OptionError
    from onnxconv.requests import SeparateRequest, run_separate

    out = str(tmp_path / "o.onnx")
    for kwargs, message in [
        ({"rank": 2, "energy": 0.9}, "choose one of --rank, --energy, --exact, --max-error, --budget (got --rank, --energy)"),
        ({}, "say how ranks are chosen"),
        ({"mode": "shuffle", "groups": 2, "max_error": 0.0}, "--max-error applies to --mode separable, not shuffle"),
        ({"rank": 2, "kernel_refit": False}, "--no-kernel-refit applies to --calibration"),
        ({"target_speedup": 2.0}, "--target-speedup needs --calibration"),
        ({"rank": 2, "include": ("(",)}, "--include '('"),
    ]:
        with pytest.raises(OptionError, match=re.escape(message)):
            SeparateRequest(str(model_path), out, **kwargs).validate()
    outcome = run_separate(SeparateRequest(str(model_path), out, rank=2, input_shapes={"X": [2, 8, 12, 12]},
                                           fix_input_shape=True))
    assert [c.rewritten for c in outcome.result.layers] == [True, True] and not outcome.external
    assert outcome.result.model.graph.input[0].type.tensor_type.shape.dim[0].dim_value == 2
    assert not Path(out).exists()  # the library call writes nothing


@pytest.mark.parametrize("command", ["stats", "separate", "bench"])
@pytest.mark.parametrize(("args", "message"), [
    (["--batch", "0"], "Error: Invalid value for '--batch': 0 is not in the range 1<=x<=9223372036854775807."),
    (["--input-shape", "X=1xAx3"], "Error: --input-shape 'X=1xAx3': dims must be whole numbers"),
])
def test_shape_options_mean_the_same_in_every_command(model_path: Path, tmp_path: Path, command: str,
                                                      args: list[str], message: str) -> None:
    extra = ["-o", str(tmp_path / "o.onnx"), "--rank", "2"] if command == "separate" else []
    res = CliRunner().invoke(main, [command, str(model_path), *extra, *args], catch_exceptions=False)
    if "Invalid value" in message:  # a range: click's usage error (exit 2), the same in every command
        assert res.exit_code == 2 and message in res.output and "Traceback" not in res.output, res.output
    else:
        assert res.exit_code == 1 and res.output.startswith(message) and res.output.count("\n") == 1, res.output


"""`onnxconv separate --calibration` through click's CliRunner."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxconv import compare
from onnxconv.cli import main

from .test_calibrate import rel, smooth_inputs, two_layer


@pytest.fixture()
def files(tmp_path: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(11)
    model = tmp_path / "in.onnx"
    onnx.save(two_layer(rng), model)
    cal = tmp_path / "cal.npz"
    np.savez(cal, X=smooth_inputs(rng, 12, 8, 12))
    return model, cal


def separate(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["separate", *args])


def test_calibration_refits_and_reports_per_layer_errors(tmp_path, files) -> None:
    model, cal = files
    plain, fitted = tmp_path / "plain.onnx", tmp_path / "fitted.onnx"
    assert separate(str(model), "-o", str(plain), "--rank", "2").exit_code == 0
    res = separate(str(model), "-o", str(fitted), "--rank", "2", "--calibration", str(cal))
    assert res.exit_code == 0, res.output
    assert res.output.count(", refit ") == 2 and res.output.count("%->") == 2
    test = {"X": smooth_inputs(np.random.default_rng(12), 6, 8, 12)}
    ref = compare.run_model(compare.session(str(model)), test)["Y"]
    e_plain = rel(ref, compare.run_model(compare.session(str(plain)), test)["Y"])
    e_fit = rel(ref, compare.run_model(compare.session(str(fitted)), test)["Y"])
    assert e_fit < 0.9 * e_plain


def test_kernel_refit_is_the_default_and_can_be_turned_off(tmp_path, files) -> None:
    model, cal = files
    both, pointwise = tmp_path / "both.onnx", tmp_path / "pw.onnx"
    res = separate(str(model), "-o", str(both), "--rank", "2", "--calibration", str(cal), "--report",
                   str(tmp_path / "both.json"))
    assert res.exit_code == 0 and res.output.count(", refit ") == 2, res.output
    res = separate(str(model), "-o", str(pointwise), "--rank", "2", "--calibration", str(cal), "--no-kernel-refit",
                   "--report", str(tmp_path / "pw.json"))
    assert res.exit_code == 0 and res.output.count(", refit ") == 2
    # The kernel refit's alternations are in the report (the table keeps to what a user acts on).
    import json

    layers = [json.loads((tmp_path / f).read_text())["layers"] for f in ("both.json", "pw.json")]
    assert all("alternations" in c["details"] for c in layers[0] if c["rewritten"])
    assert not any("alternations" in c["details"] for c in layers[1])
    # The 1x1-only refit leaves the depthwise kernels as the weight-only rewrite made them; the default does not.
    plain = tmp_path / "plain.onnx"
    assert separate(str(model), "-o", str(plain), "--rank", "2").exit_code == 0

    def kernels(path: Path) -> list[np.ndarray]:
        m = onnx.load(path)
        inits = {t.name: onnx.numpy_helper.to_array(t) for t in m.graph.initializer}
        return [inits[n.input[1]] for n in m.graph.node if "/dw" in n.name]

    assert all(np.array_equal(a, b) for a, b in zip(kernels(plain), kernels(pointwise)))
    assert not all(np.array_equal(a, b) for a, b in zip(kernels(plain), kernels(both)))
    res = separate(str(model), "-o", str(tmp_path / "x.onnx"), "--rank", "2", "--no-kernel-refit")
    assert res.exit_code == 1 and "--no-kernel-refit applies to --calibration" in res.output


def test_calibration_folder_of_npy_files(tmp_path, files) -> None:
    model, cal = files
    folder = tmp_path / "cal"
    folder.mkdir()
    np.save(folder / "X.npy", np.load(cal)["X"])
    res = separate(str(model), "-o", str(tmp_path / "o.onnx"), "--rank", "2", "--calibration", str(folder))
    assert res.exit_code == 0, res.output
    assert ", refit " in res.output


@pytest.mark.parametrize("arrays, message", [
    ({"X": np.zeros((2, 8, 12, 12), np.float64)}, "array 'X' has dtype float64, the model input is float32"),
    ({"input": np.zeros((2, 8, 12, 12), np.float32)}, r"no array for model input(s) ['X']"),
    ({"X": np.zeros((2, 3, 12, 12), np.float32)}, "dim 1 is 3"),
])
def test_bad_calibration_is_one_error_line_and_nothing_is_written(tmp_path, files, arrays, message) -> None:
    model, _ = files
    bad = tmp_path / "bad.npz"
    np.savez(bad, **arrays)
    out = tmp_path / "o.onnx"
    res = separate(str(model), "-o", str(out), "--rank", "2", "--calibration", str(bad))
    assert res.exit_code == 1
    assert res.output.startswith(f"Error: --calibration {bad}: ") and message in res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not out.exists()


def test_unknown_provider_is_refused(tmp_path, files) -> None:
    model, cal = files
    res = separate(str(model), "-o", str(tmp_path / "o.onnx"), "--rank", "2", "--calibration", str(cal),
                   "--provider", "nope")
    assert res.exit_code == 1 and "Error: --provider nope: unknown" in res.output


def test_calibration_in_shuffle_mode(tmp_path, files) -> None:
    model, cal = files
    res = separate(str(model), "-o", str(tmp_path / "g.onnx"), "--mode", "shuffle", "--groups", "2",
                   "--calibration", str(cal))
    assert res.exit_code == 0, res.output
    assert res.output.count(", refit ") == 2


def test_verify_with_calibration_runs_on_the_held_out_samples(tmp_path, files) -> None:
    """--calibration --verify (no --inputs) verifies on the samples the refit held out, not on random inputs:
    the report's verify error is the worst over exactly those feeds, and verify.inputs says so."""
    import json

    from onnxconv.calibration import held_out_feeds

    model, cal = files
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    res = separate(str(model), "-o", str(out), "--rank", "2", "--calibration", str(cal), "--verify",
                   "--report", str(report))
    assert res.exit_code == 0, res.output
    data = json.loads(report.read_text())["verify"]
    feeds = held_out_feeds(str(cal), onnx.load(model))
    assert feeds and data["inputs"].startswith("held-out calibration samples")
    assert f"verify on {data['inputs']}" in res.output
    ref, new = compare.session(str(model)), compare.session(str(out))
    expect = max(a.rel_error for f in feeds
                 for a in compare.compare_outputs(compare.run_model(ref, f), compare.run_model(new, f)))
    assert data["outputs"][0]["rel_error"] == pytest.approx(expect, rel=1e-6)


def test_verify_with_too_small_calibration_falls_back_to_random_inputs_with_a_note(tmp_path, files) -> None:
    model, _ = files
    small = tmp_path / "small.npz"
    np.savez(small, X=smooth_inputs(np.random.default_rng(3), 4, 8, 12))  # under 5 samples: none held out
    out, report = tmp_path / "o.onnx", tmp_path / "r.json"
    res = separate(str(model), "-o", str(out), "--rank", "2", "--calibration", str(small), "--verify",
                   "--report", str(report))
    assert res.exit_code == 0, res.output
    import json

    label = json.loads(report.read_text())["verify"]["inputs"]
    assert label.startswith("random") and "too small to hold samples out" in label
    assert f"note: verify on {label}" in res.output

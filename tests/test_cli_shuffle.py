"""`onnxconv separate --mode shuffle` through click's CliRunner: the real pass end to end, options, errors."""

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

from .test_shuffle import Chain, block_weight, dense_weight


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["separate", *args], catch_exceptions=False)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def save(model: onnx.ModelProto, path: Path) -> Path:
    onnx.save(model, path)
    return path


def block_model(x_shape: list[int | str]) -> onnx.ModelProto:
    """Two convs, each block diagonal (2 groups) under hidden channel permutations, and a 6-channel head."""
    rng = np.random.default_rng(0)
    ch = Chain(x_shape)
    ch.conv(block_weight(rng, 16, 8, (3, 3), 2), bias=True, name="a")
    ch.op("Relu")
    ch.conv(block_weight(rng, 8, 16, (1, 1), 2), name="b")
    ch.op("Relu")
    ch.conv(dense_weight(rng, 6, 8, (1, 1)), name="head")
    return ch.model()


def group_attrs(path: Path) -> dict[str, int]:
    model = onnx.load(path)
    return {n.name: next((helper.get_attribute_value(a) for a in n.attribute if a.name == "group"), 1)
            for n in model.graph.node if n.op_type == "Conv"}


def test_shuffle_mode_end_to_end_is_exact_on_block_weights(tmp_path: Path) -> None:
    src = save(block_model([1, 8, 6, 6]), tmp_path / "in.onnx")
    before = digest(src)
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    res = run(str(src), "-o", str(out), "--mode", "shuffle", "--groups", "2", "--verify", "--report", str(report))
    assert res.exit_code == 0, res.output
    assert digest(src) == before
    assert re.search(r"a\s+Conv\s+rewritten\s+2 groups, keeps 100% of W", res.output)
    assert "verify '" in res.output  # head (dense random weights) is grouped too, so the output is approximate
    data = json.loads(report.read_text())
    layers = {row["name"]: row for row in data["layers"]}
    assert layers["a"]["details"]["kept_energy"] == 1.0 and layers["b"]["details"]["kept_energy"] == 1.0
    assert layers["a"]["macs_after"] * 2 == layers["a"]["macs_before"]
    assert data["options"]["groups"] == 2 and data["pass"] == "shuffle"
    assert group_attrs(out) == {"a": 2, "b": 2, "head": 2}


def test_exclude_keeps_a_layer_dense_and_verify_shows_exactness(tmp_path: Path) -> None:
    src = save(block_model([1, 8, 6, 6]), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    res = run(str(src), "-o", str(out), "--mode", "shuffle", "--groups", "2", "--exclude", "^head$", "--verify")
    assert res.exit_code == 0, res.output
    assert "matched by --exclude '^head$'" in res.output
    rel = float(re.search(r"relative error ([0-9.e+-]+)", res.output).group(1))
    assert rel < 1e-5  # a and b are block diagonal, head stays dense: the rewrite is exact
    assert group_attrs(out) == {"a": 2, "b": 2, "head": 1}


def test_mixing_shuffle_inserts_a_channel_shuffle(tmp_path: Path) -> None:
    rng = np.random.default_rng(1)
    ch = Chain([1, 16, 5, 5])
    ch.conv(dense_weight(rng, 16, 16, (1, 1)), name="a")
    ch.op("Relu")
    ch.conv(dense_weight(rng, 16, 16, (3, 3)), name="b")
    src = save(ch.model(), tmp_path / "in.onnx")
    out, report = tmp_path / "out.onnx", tmp_path / "r.json"
    res = run(str(src), "-o", str(out), "--mode", "shuffle", "--groups", "4", "--mixing", "shuffle",
              "--report", str(report))
    assert res.exit_code == 0, res.output
    ops = [n.op_type for n in onnx.load(out).graph.node]
    assert ops.count("Transpose") == 1
    layers = {row["name"]: row for row in json.loads(report.read_text())["layers"]}
    assert layers["b"]["details"]["permutation"] == "shuffle"
    assert json.loads(report.read_text())["options"]["mixing"] == "shuffle"


def test_min_energy_and_force(tmp_path: Path) -> None:
    rng = np.random.default_rng(2)
    ch = Chain([1, 8, 4, 4])
    ch.conv(dense_weight(rng, 8, 8, (3, 3)), name="a")
    src = save(ch.model(), tmp_path / "in.onnx")
    res = run(str(src), "-o", str(tmp_path / "o1.onnx"), "--mode", "shuffle", "--groups", "2", "--min-energy", "0.95")
    assert res.exit_code == 0, res.output
    assert "below --min-energy 0.95" in res.output and "0 rewritten" in res.output
    res = run(str(src), "-o", str(tmp_path / "o2.onnx"), "--mode", "shuffle", "--groups", "2", "--min-energy", "0.95",
              "--force")
    assert res.exit_code == 0 and "1 rewritten" in res.output


def test_symbolic_input_counts_macs_with_input_shape_and_stays_dynamic(tmp_path: Path) -> None:
    src = save(block_model(["N", 8, "H", "W"]), tmp_path / "in.onnx")
    out = tmp_path / "out.onnx"
    res = run(str(src), "-o", str(out), "--mode", "shuffle", "--groups", "2", "--input-shape", "X=1x8x6x6")
    assert res.exit_code == 0, res.output
    assert re.search(r"a\s+Conv\s+rewritten.*\s(\d[\d.]*K?)\s+(\d[\d.]*K?)\s+0\.500", res.output)
    # The rewritten model still runs at another spatial size and batch.
    import onnxruntime as ort

    sess = ort.InferenceSession(str(out), providers=["CPUExecutionProvider"])
    (y,) = sess.run(None, {"X": np.zeros((2, 8, 9, 7), np.float32)})
    assert y.shape == (2, 6, 9, 7)


@pytest.mark.parametrize("args, message", [
    (["--mixing", "shuffle", "--rank", "1"], "Error: --mixing applies to --mode shuffle"),
    (["--min-energy", "0.5", "--rank", "1"], "Error: --min-energy applies to --mode shuffle"),
    (["--mode", "shuffle", "--groups", "2", "--energy", "0.9"], "Error: --energy applies to --mode separable"),
])
def test_option_errors_are_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    src = save(block_model([1, 8, 6, 6]), tmp_path / "in.onnx")
    res = run(str(src), "-o", str(tmp_path / "o.onnx"), *args)
    assert res.exit_code == 1
    assert res.output.startswith(message) and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("args", [["--groups", "1"], ["--groups", "2", "--mixing", "best"],
                                  ["--groups", "2", "--min-energy", "1.5"]])
def test_bad_values_are_usage_errors(tmp_path: Path, args: list[str]) -> None:
    src = save(block_model([1, 8, 6, 6]), tmp_path / "in.onnx")
    res = CliRunner().invoke(main, ["separate", str(src), "-o", str(tmp_path / "o.onnx"), "--mode", "shuffle", *args])
    assert res.exit_code == 2 and "Invalid value" in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_missing_output_folder_writes_nothing(tmp_path: Path) -> None:
    src = save(block_model([1, 8, 6, 6]), tmp_path / "in.onnx")
    res = run(str(src), "-o", str(tmp_path / "nope" / "o.onnx"), "--mode", "shuffle", "--groups", "2")
    assert res.exit_code == 1 and res.output.startswith("Error: ")
    assert list(tmp_path.iterdir()) == [src]

"""``onnxconv stats`` through click's CliRunner: formats, options, and one-line errors for bad input."""

from __future__ import annotations

import csv
import io
import json
from pathlib import Path

import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import helper

from onnxconv.cli import main
from tests.modelkit import single_conv
from tests.test_stats import TWO_CONVS, parse

#: Keys every layer of the JSON output has (the stable interface, docs/stats-json.md).
LAYER_KEYS = {"name", "op_type", "path", "kind", "depth_multiplier", "dilated", "strided", "input_shape", "output_shape",
              "weight_shape", "kernel_shape", "strides", "pads", "dilations", "group", "auto_pad", "output_padding",
              "has_bias", "params", "macs", "flops", "share", "receptive_field", "effective_stride", "weight_source",
              "whatif", "note"}


def stats(*args: str) -> Result:
    return CliRunner().invoke(main, ["stats", *args])


@pytest.fixture()
def two_convs(tmp_path: Path) -> str:
    p = tmp_path / "two.onnx"
    p.write_bytes(TWO_CONVS.SerializeToString())
    return str(p)


def _one_line_error(result: Result, text: str) -> None:
    assert result.exit_code == 1, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("Error: ") and text in lines[0], result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)  # click's clean exit, not an escaped exception


def test_table_is_the_default(two_convs: str) -> None:
    r = stats(two_convs)
    assert r.exit_code == 0, r.output
    lines = r.output.splitlines()
    assert lines[1].split()[:3] == ["layer", "op", "kind"]
    assert any(line.startswith("a ") and "standard" in line and "3/1" in line for line in lines)
    assert "total: 2 layers" in r.output and "MACs" in r.output
    assert "conventions: MACs = multiply-accumulates" in r.output
    assert "if grouped g=4" in r.output


def test_json_is_the_documented_interface(two_convs: str) -> None:
    r = stats(two_convs, "--format", "json")
    assert r.exit_code == 0
    data = json.loads(r.output)
    assert set(data) == {"schema_version", "model", "conventions", "whatif_groups", "layers", "totals", "notes"}
    assert data["model"] == two_convs
    assert set(data["totals"]) == {"layers", "params", "macs", "flops", "uncounted"}
    assert [set(layer) for layer in data["layers"]] == [LAYER_KEYS, LAYER_KEYS]
    first = data["layers"][0]
    assert (first["macs"], first["params"], first["receptive_field"]) == (32 * 1024 * 16 * 9, 4640, [3, 3])
    assert first["whatif"]["separable"]["macs"] == 1024 * 16 * (9 + 32)
    assert data["totals"]["macs"] == sum(layer["macs"] for layer in data["layers"])


def test_csv_and_markdown(two_convs: str) -> None:
    r = stats(two_convs, "--format", "csv")
    rows = list(csv.DictReader(io.StringIO(r.output)))
    assert [row["name"] for row in rows] == ["a", "Y"]
    assert rows[0]["macs"] == str(32 * 1024 * 16 * 9) and rows[0]["kernel_shape"] == "3x3"
    md = stats(two_convs, "--format", "markdown").output
    assert md.splitlines()[0].startswith("| layer | op | kind |")
    assert "**Total**: 2 layers" in md


def test_sort_top_and_groups(two_convs: str) -> None:
    data = json.loads(stats(two_convs, "--format", "json", "--sort", "macs", "--top", "1", "--groups", "2").output)
    assert [layer["name"] for layer in data["layers"]] == ["a"]
    assert data["totals"]["layers"] == 2  # totals stay those of the whole model
    assert data["layers"][0]["whatif"]["grouped"]["groups"] == 2
    table = stats(two_convs, "--sort", "name").output.splitlines()
    body = [line.split()[0] for line in table[3:5]]
    assert body == ["Y", "a"]


def test_input_shape_and_batch(tmp_path: Path) -> None:
    p = tmp_path / "sym.onnx"
    p.write_bytes(single_conv(["N", 3, "H", "W"], [8, 3, 3, 3]).SerializeToString())
    r = stats(str(p))
    _one_line_error(r, "--input-shape X=1x3x<H>x<W>")
    ok = json.loads(stats(str(p), "--input-shape", "X=2x3x10x10", "--format", "json").output)
    assert ok["layers"][0]["macs"] == 2 * 8 * 64 * 27
    batched = json.loads(stats(str(p), "--input-shape", "X=1x3x10x10", "--batch", "3", "--format", "json").output)
    assert batched["layers"][0]["macs"] == 8 * 64 * 27  # --input-shape fixes the batch of that input


def test_all_ops_adds_matrix_products(tmp_path: Path) -> None:
    model = parse(
        """
        g (float[1,4,4,4] X) => (float[1,10] Y) {
          c = Conv (X, W)
          f = Flatten (c)
          Y = Gemm <transB=1> (f, Wg)
        }""",
        {"W": (2, 4, 1, 1), "Wg": (10, 32)},
    )
    p = tmp_path / "m.onnx"
    p.write_bytes(model.SerializeToString())
    plain = json.loads(stats(str(p), "--format", "json").output)
    full = json.loads(stats(str(p), "--format", "json", "--all-ops").output)
    assert [layer["op_type"] for layer in plain["layers"]] == ["Conv"]
    assert [layer["op_type"] for layer in full["layers"]] == ["Conv", "Gemm"]
    assert full["totals"]["macs"] == plain["totals"]["macs"] + 320


def test_model_without_convs_exits_zero(tmp_path: Path) -> None:
    p = tmp_path / "relu.onnx"
    p.write_bytes(parse("g (float[1,4] X) => (float[1,4] Y) { Y = Relu (X) }").SerializeToString())
    r = stats(str(p))
    assert r.exit_code == 0
    assert "total: 0 layers" in r.output and "no convolution layers found" in r.output


def test_help_states_the_conventions() -> None:
    r = CliRunner().invoke(main, ["stats", "--help"])
    assert r.exit_code == 0
    for text in ("multiply-accumulates", "2*MACs with bias, 2*MACs - outputs without", "scatter view",
                 "--input-shape", "--all-ops", "--format"):
        assert text in r.output


# -- bad input: one line, exit 1, no traceback -----------------------------------------------------------------------

def test_bad_files(tmp_path: Path) -> None:
    _one_line_error(stats(str(tmp_path / "missing.onnx")), "no such file")
    text = tmp_path / "notes.txt"
    text.write_text("certainly not a model\n")
    _one_line_error(stats(str(text)), "not")
    full = TWO_CONVS.SerializeToString()
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(full[: len(full) // 2])
    _one_line_error(stats(str(cut)), "corrupt or truncated")


def test_missing_external_data(tmp_path: Path) -> None:
    model = single_conv([1, 3, 8, 8], [64, 3, 7, 7])
    onnx.save_model(model, str(tmp_path / "ext.onnx"), save_as_external_data=True, location="ext.data",
                    size_threshold=0)
    assert stats(str(tmp_path / "ext.onnx")).exit_code == 0
    (tmp_path / "ext.data").unlink()
    _one_line_error(stats(str(tmp_path / "ext.onnx")), "external data file 'ext.data' is missing")


def test_unknown_domain(tmp_path: Path) -> None:
    model = single_conv([1, 3, 8, 8], [8, 3, 3, 3])
    model.graph.node.append(helper.make_node("Magic", ["Y"], ["Z"], domain="com.example"))
    p = tmp_path / "dom.onnx"
    p.write_bytes(model.SerializeToString())
    _one_line_error(stats(str(p)), "uses domain 'com.example'")


@pytest.mark.parametrize(
    "option, text",
    [("X", "expected NAME=1x3x224x224"), ("X=1xax8x8", "whole numbers"), ("Q=1x3x8x8", "no input 'Q'"),
     ("X=1x3x8", "rank 4"), ("X=0x3x8x8", "positive"), (f"X=1x3x{2**64}x8", "beyond int64")],
)
def test_bad_input_shape_option(two_convs: str, option: str, text: str) -> None:
    model = single_conv([1, 3, "h", "w"], [8, 3, 3, 3])
    p = Path(two_convs).with_name("sym.onnx")
    p.write_bytes(model.SerializeToString())
    _one_line_error(stats(str(p), "--input-shape", option), text)


def test_bad_batch(two_convs: str) -> None:  # a click range, as in separate and bench: usage error, exit 2
    result = stats(two_convs, "--batch", "0")
    assert result.exit_code == 2 and "Invalid value for '--batch'" in result.output, result.output


def test_batch_beyond_int64_is_a_range_error(two_convs: str) -> None:
    result = stats(two_convs, "--batch", str(2**64))
    assert result.exit_code == 2 and "1<=x<=9223372036854775807" in result.output, result.output


def test_table_spells_out_per_axis_fields_when_axes_differ(tmp_path: Path) -> None:
    p = tmp_path / "aniso.onnx"
    p.write_bytes(single_conv([1, 3, 16, 16], [4, 3, 3, 3], strides=[2, 1]).SerializeToString())
    line = next(line for line in stats(str(p)).output.splitlines() if line.startswith("conv "))
    assert " 3/2x1 " not in line and " 3x3/2x1 " in line



@pytest.mark.parametrize("attrs, text", [
    ({"pads": [2**62] * 4}, "padded input size"),
    ({"pads": [2**62, 0, 2**62, 0]}, "padded input size"),
    ({"kernel_shape": [3, 3], "dilations": [2**62, 1]}, "effective kernel"),
])
def test_sizes_beyond_int64_are_one_error_naming_the_node(tmp_path: Path, attrs: dict[str, object], text: str) -> None:
    """onnxruntime refuses these (int64 overflow); stats used to print a 19-digit dim and add it to the totals."""
    import numpy as np
    import onnxruntime as ort

    p = tmp_path / "overflow.onnx"
    p.write_bytes(single_conv([1, 3, 8, 8], [4, 3, 3, 3], **attrs).SerializeToString())
    with pytest.raises(Exception):  # the oracle: onnxruntime cannot build or run it either
        sess = ort.InferenceSession(str(p), providers=["CPUExecutionProvider"])
        sess.run(None, {"X": np.zeros([1, 3, 8, 8], np.float32)})
    result = stats(str(p))
    _one_line_error(result, text)
    assert "node 'conv' (Conv)" in result.output and "int64" in result.output


def test_tensor_with_more_elements_than_int64_is_an_error(tmp_path: Path) -> None:
    p = tmp_path / "huge.onnx"
    p.write_bytes(single_conv([1, 3, 2**40, 2**40], [4, 3, 3, 3], pads=[1, 1, 1, 1]).SerializeToString())
    _one_line_error(stats(str(p)), "elements, beyond int64")


def _padded_by_input(tmp_path: Path) -> tuple[str, onnx.ModelProto]:
    """X is padded by an amount read from the int64 scalar input ``p`` before a 3x3 conv: only a run knows the
    conv's input size."""
    import numpy as np

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
    model.graph.initializer.append(onnx.numpy_helper.from_array(np.array([0], np.int64), "axes"))
    p = tmp_path / "padded.onnx"
    p.write_bytes(model.SerializeToString())
    return str(p), model


def test_inputs_npz_counts_a_conv_whose_shape_depends_on_an_input_value(tmp_path: Path) -> None:
    import numpy as np
    import onnxruntime as ort

    path, model = _padded_by_input(tmp_path)
    feeds = {"X": np.zeros([1, 3, 8, 8], np.float32), "p": np.array(5, np.int64)}
    npz = tmp_path / "in.npz"
    np.savez(npz, **feeds)
    (y,) = ort.InferenceSession(path, providers=["CPUExecutionProvider"]).run(None, feeds)
    assert y.shape == (1, 4, 16, 16)  # the oracle: 8 + 2*5 - 2
    without = json.loads(stats(path, "--format", "json").output)
    assert without["layers"][0]["macs"] is None and without["totals"]["uncounted"] == 1
    result = stats(path, "--inputs", str(npz), "--format", "json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.output)["layers"]
    assert row["input_shape"] == [1, 3, 18, 18] and row["output_shape"] == list(y.shape)
    assert row["macs"] == 4 * 16 * 16 * 3 * 9
    assert any("onnxruntime run" in n for n in json.loads(result.output)["notes"])


def test_stats_without_inputs_does_not_import_onnxruntime(two_convs: str) -> None:
    import subprocess
    import sys

    code = ("import sys; from click.testing import CliRunner; from onnxconv.cli import main; "
            f"r = CliRunner().invoke(main, ['stats', {two_convs!r}]); assert r.exit_code == 0, r.output; "
            "print('onnxruntime' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_inputs_npz_errors_are_one_line(tmp_path: Path) -> None:
    import numpy as np

    path, _ = _padded_by_input(tmp_path)
    npz = tmp_path / "in.npz"
    np.savez(npz, X=np.zeros([1, 3, 8, 8], np.float32))
    _one_line_error(stats(path, "--inputs", str(npz)), "no array for input(s) ['p']")
    _one_line_error(stats(path, "--inputs", str(tmp_path / "none.npz")), "no such file")

"""load_model / shape_model / save_model: bad files, external data that is never read, atomic writes."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxconv.errors import ModelLoadError, OnnxConvError
from onnxconv.model_io import load_model, save_model
from onnxconv.weightless import shape_model, stripped_source
from onnxconv.stats import analyze
from tests.modelkit import init, make_model, single_conv, tensor


def _write(path: Path, model: onnx.ModelProto) -> Path:
    path.write_bytes(model.SerializeToString())
    return path


# -- bad files ------------------------------------------------------------------------------------------------------

def test_missing_file_and_directory(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="no such file"):
        load_model(tmp_path / "nope.onnx")
    with pytest.raises(ModelLoadError, match="is a directory"):
        load_model(tmp_path)


@pytest.mark.parametrize("content", [b"", b"hello, this is not a model\n", b"\x89PNG\r\n\x1a\n" + bytes(range(256))])
def test_not_onnx(tmp_path: Path, content: bytes) -> None:
    p = tmp_path / "x.onnx"
    p.write_bytes(content)
    with pytest.raises(ModelLoadError) as e:
        load_model(p)
    assert "\n" not in str(e.value)


def test_single_file_over_2gb_is_refused_without_reading_it(tmp_path: Path) -> None:
    p = tmp_path / "huge.onnx"
    with open(p, "wb") as f:
        f.truncate(2**31 + 10)  # sparse: takes no disk space
    with pytest.raises(ModelLoadError, match="over protobuf's 2 GB limit"):
        load_model(p)


def test_every_truncation_is_refused(tmp_path: Path) -> None:
    data = single_conv([1, 3, 8, 8], [4, 3, 3, 3], bias=True).SerializeToString()
    p = tmp_path / "cut.onnx"
    for cut in range(1, len(data)):
        p.write_bytes(data[:cut])
        with pytest.raises(ModelLoadError):
            load_model(p)
    p.write_bytes(data)
    assert load_model(p).graph.node[0].op_type == "Conv"


def _external_model(tmp_path: Path, location: str, dims: list[int]) -> Path:
    """A conv whose weight is declared as external data at ``location`` (offset 0, length of ``dims``)."""
    weight = onnx.TensorProto(name="W", data_type=TensorProto.FLOAT, dims=dims)
    weight.data_location = TensorProto.EXTERNAL
    nbytes = 4 * int(np.prod(dims))
    for key, value in (("location", location), ("offset", "0"), ("length", str(nbytes))):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    conv = helper.make_node("Conv", ["X", "W"], ["Y"], name="big", pads=[3, 3, 3, 3])
    model = make_model([conv], [tensor("X", [1, dims[1], 14, 14])], [tensor("Y", None)], [weight])
    return _write(tmp_path / "model.onnx", model)


def test_missing_external_data_file(tmp_path: Path) -> None:
    p = _external_model(tmp_path, "weights.bin", [8, 4, 3, 3])
    with pytest.raises(ModelLoadError, match="external data file 'weights.bin' is missing"):
        load_model(p)


def test_model_over_2gb_works_and_its_external_data_is_never_read(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # 4096 x 4096 x 7 x 7 float32 = 3.3 GB declared; the file holds 16 bytes, so any read of it would fail.
    dims = [4096, 4096, 7, 7]
    p = _external_model(tmp_path, "weights.bin", dims)
    (tmp_path / "weights.bin").write_bytes(b"\0" * 16)
    with pytest.raises(ModelLoadError, match="cannot read external data"):
        load_model(p, load_weights=True)  # reading really fails...

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("external data was read")

    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_tensor", no_read)
    monkeypatch.setattr(onnx.external_data_helper, "load_external_data_for_model", no_read)
    monkeypatch.setattr(onnx, "load_external_data_for_model", no_read)
    report = analyze(load_model(p), name=str(p))  # ... so stats never reads it
    row = report.layers[0]
    assert row.params == 4096 * 4096 * 49 > 2**31 // 4
    assert row.macs == 4096 * 196 * 4096 * 49
    assert (tmp_path / "weights.bin").stat().st_size == 16


# -- shape_model ----------------------------------------------------------------------------------------------------

def _nested_weights_model() -> onnx.ModelProto:
    rng = np.random.default_rng(0)
    big = rng.standard_normal((64, 64, 3, 3)).astype(np.float32)
    then_conv = helper.make_node("Conv", ["X", "Wsub"], ["t"], name="then_conv", pads=[1, 1, 1, 1])
    then = helper.make_graph([then_conv], "then", [], [tensor("t", None)], [init("Wsub", big)])
    els = helper.make_graph([helper.make_node("Identity", ["X"], ["e"])], "else", [], [tensor("e", None)])
    nodes = [
        helper.make_node("Constant", [], ["Wc"], value=init("Wc", big)),
        helper.make_node("Conv", ["X", "Wc"], ["a"], name="const_conv", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "Wi"], ["b"], name="init_conv", pads=[1, 1, 1, 1]),
        helper.make_node("If", ["cond"], ["Y"], name="if0", then_branch=then, else_branch=els),
    ]
    return make_model(nodes, [tensor("X", [1, 64, 8, 8]), tensor("cond", [], TensorProto.BOOL)], [tensor("Y", None)],
                      [init("Wi", big), init("small", np.arange(4, dtype=np.int64))])


def test_shape_model_drops_weight_bytes_but_not_structure() -> None:
    model = _nested_weights_model()
    stripped = shape_model(model)
    assert model.ByteSize() > 3 * 64 * 64 * 9 * 4
    assert stripped.ByteSize() < 4000
    # The main graph's large initializer became an input; the small one kept its values.
    assert "Wi" in {i.name for i in stripped.graph.input}
    assert [t.name for t in stripped.graph.initializer] == ["small"]
    # The Constant and the If branch's initializer became stand-ins of the same shape; the branch gained no input.
    sources = {n.output[0]: stripped_source(n) for n in stripped.graph.node if stripped_source(n)}
    assert sources == {"Wc": "Constant"}
    then = next(a.g for a in stripped.graph.node[-1].attribute if a.name == "then_branch")
    assert len(then.input) == 0 and len(then.initializer) == 0
    assert {n.output[0]: stripped_source(n) for n in then.node if stripped_source(n)} == {"Wsub": "initializer"}
    # The user's model is untouched.
    assert len(model.graph.node) == 4 and len(model.graph.initializer) == 2


def test_shape_inference_never_serialises_the_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    model = _nested_weights_model()
    seen: list[int] = []
    real = onnx.shape_inference.infer_shapes

    def spy(m: onnx.ModelProto, *args: object, **kwargs: object) -> onnx.ModelProto:
        seen.append(m.ByteSize())
        return real(m, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(onnx.shape_inference, "infer_shapes", spy)
    analyze(model)
    assert seen and max(seen) < 10_000 < model.ByteSize() // 40


def test_stripped_weights_still_say_where_they_came_from() -> None:
    rows = {r.name: r for r in analyze(_nested_weights_model()).layers}
    assert rows["const_conv"].weight_source == "Constant"
    assert rows["init_conv"].weight_source == "initializer"
    assert rows["then_conv"].weight_source == "initializer"
    assert all(r.macs == 64 * 64 * 64 * 9 for r in rows.values())


# -- save_model -----------------------------------------------------------------------------------------------------

def test_save_is_atomic_and_never_overwrites_the_source(tmp_path: Path) -> None:
    model = single_conv([1, 3, 8, 8], [4, 3, 3, 3])
    src = _write(tmp_path / "in.onnx", model)
    out = save_model(model, tmp_path / "out.onnx", source=src)
    assert onnx.load(str(out)).graph.node[0].op_type == "Conv"
    with pytest.raises(OnnxConvError, match="refusing to overwrite the input"):
        save_model(model, src, source=src)
    with pytest.raises(OnnxConvError, match="does not exist"):
        save_model(model, tmp_path / "missing" / "out.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["in.onnx", "out.onnx"]  # no temporary file left


def test_save_external_data_ignores_a_stale_temporary_file(tmp_path: Path) -> None:
    model = single_conv([1, 3, 8, 8], [16, 3, 5, 5])
    stale = tmp_path / ".out.onnx.data.tmp"
    stale.write_bytes(b"garbage from an interrupted run")
    out = save_model(model, tmp_path / "out.onnx", external_data=True)
    assert (tmp_path / "out.onnx.data").exists()
    loaded = onnx.load(str(out))
    w = onnx.numpy_helper.to_array(loaded.graph.initializer[0])
    np.testing.assert_array_equal(w, onnx.numpy_helper.to_array(model.graph.initializer[0]))
    assert stale.read_bytes() == b"garbage from an interrupted run"
    leftovers = [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp") and p != stale]
    assert leftovers == []
    assert os.path.getsize(tmp_path / "out.onnx.data") == 16 * 3 * 25 * 4


def test_saved_files_get_plain_permissions(tmp_path: Path) -> None:
    umask = os.umask(0)
    os.umask(umask)
    model = single_conv([1, 3, 8, 8], [16, 3, 5, 5])
    out = save_model(model, tmp_path / "out.onnx", external_data=True)
    for p in (out, tmp_path / "out.onnx.data"):
        assert p.stat().st_mode & 0o777 == 0o666 & ~umask  # not mkstemp's 0600


# -- load-time validation: each bad model is one Error line from both commands, never a traceback ----------------

def _two_conv() -> onnx.ModelProto:
    from tests.test_cli_separate import two_conv_model

    return two_conv_model()


def _cycle() -> onnx.ModelProto:
    # Shape-consistent, so that only the cycle is wrong: relu2 feeds relu1, which feeds relu2 and the conv.
    m = _two_conv()
    g = m.graph
    g.node.insert(1, helper.make_node("Add", ["H", "L2"], ["L1"], name="add"))
    g.node.insert(2, helper.make_node("Relu", ["L1"], ["L2"], name="loop"))
    g.node[3].input[0] = "L2"  # relu reads the loop
    return m


def _self_loop() -> onnx.ModelProto:
    m = _two_conv()
    m.graph.node[1].input[0] = "R"  # relu reads its own output
    return m


def _short_raw() -> onnx.ModelProto:
    m = _two_conv()
    m.graph.initializer[2].raw_data = m.graph.initializer[2].raw_data[:-8]
    return m


def _short_floats() -> onnx.ModelProto:
    m = _two_conv()
    w = m.graph.initializer[2]
    values = np.frombuffer(w.raw_data, np.float32)
    w.ClearField("raw_data")
    w.float_data.extend(values[:-3].tolist())
    return m


def _string_weight() -> onnx.ModelProto:
    m = _two_conv()
    w = m.graph.initializer[2]
    dims = list(w.dims)
    w.Clear()
    w.name, w.data_type = "W2", TensorProto.STRING
    w.dims.extend(dims)
    w.string_data.extend([b"a"] * int(np.prod(dims)))
    return m


def _weight_type(data_type: int):  # type: ignore[no-untyped-def]
    def build() -> onnx.ModelProto:
        m = _two_conv()
        m.graph.initializer[2].data_type = data_type  # raw_data kept: only the element type is wrong
        return m
    return build


BAD_MODELS = {
    "cycle": (_cycle, "cycle", True),
    "self-loop": (_self_loop, "cycle", True),
    "short raw_data": (_short_raw, "holds 9208 bytes, expected 9216", False),
    "short float_data": (_short_floats, "holds 2301 float_data values, expected 2304", False),
    "string weight": (_string_weight, "string-typed weight 'W2'", False),
    # onnx-graphsurgeon raised "Unsupported type: 0" from every rewrite (fuzz --seed 3 --case 1356).
    "undefined dtype": (_weight_type(TensorProto.UNDEFINED), "tensor 'W2' has no data type (UNDEFINED)", False),
    "unknown dtype": (_weight_type(999), "tensor 'W2' has data type 999, which ONNX does not define", False),
}


@pytest.mark.parametrize("case", list(BAD_MODELS))
def test_bad_models_are_one_error_line_in_stats_and_separate(tmp_path: Path, case: str) -> None:
    from click.testing import CliRunner

    from onnxconv.cli import main

    build, message, stats_too = BAD_MODELS[case]
    p = _write(tmp_path / "bad.onnx", build())
    for args in (["stats", str(p)], ["separate", str(p), "-o", str(tmp_path / "o.onnx"), "--rank", "2"]):
        res = CliRunner().invoke(main, args, catch_exceptions=False)
        if args[0] == "stats" and not stats_too:
            # stats reads shapes only: a model whose weights' bytes are broken still counts.
            assert res.exit_code == 0, res.output
            continue
        assert res.exit_code == 1, (args, res.output)
        assert res.output.startswith("Error: ") and res.output.count("\n") == 1 and message in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_name_that_is_not_utf8_is_one_error_line(tmp_path: Path) -> None:
    from click.testing import CliRunner

    from onnxconv.cli import main

    p = tmp_path / "bad.onnx"
    data = _two_conv().SerializeToString()
    assert data.count(b"stem") == 1
    p.write_bytes(data.replace(b"stem", b"st\xffm"))
    with pytest.raises(ModelLoadError, match=r"not valid UTF-8 text \('st\\xffm'\)"):
        load_model(p)
    for args in (["stats", str(p)], ["separate", str(p), "-o", str(tmp_path / "o.onnx"), "--rank", "2"]):
        res = CliRunner().invoke(main, args, catch_exceptions=False)
        assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1


@pytest.mark.parametrize("where", ["parent", "absolute", "symlink", "nul"])
def test_external_data_outside_the_model_folder_is_refused_unread(tmp_path: Path, where: str,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    secret = tmp_path / "secret.data"
    secret.write_bytes(b"\0" * 4096)
    sub = tmp_path / "sub"
    sub.mkdir()
    m = _two_conv()
    onnx.save_model(m, sub / "m.onnx", save_as_external_data=True, all_tensors_to_one_file=True,
                    location="m.data", size_threshold=0)
    m = onnx.load(sub / "m.onnx", load_external_data=False)
    # A NUL byte cannot be in a path at all: os.path.realpath raises ValueError on it.
    location = {"parent": "../secret.data", "absolute": str(secret), "symlink": "link.data",
                "nul": "m\0.data"}[where]
    if where == "symlink":
        (sub / "link.data").symlink_to(secret)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = location
    onnx.save(m, sub / "m.onnx")

    def no_read(*args: object, **kwargs: object) -> None:
        raise AssertionError("external data was read")

    monkeypatch.setattr(onnx, "load_external_data_for_model", no_read)
    for weights in (False, True):
        with pytest.raises(ModelLoadError, match="outside the model's folder|NUL byte"):
            load_model(sub / "m.onnx", load_weights=weights)
    from click.testing import CliRunner

    from onnxconv.cli import main

    res = CliRunner().invoke(main, ["stats", str(sub / "m.onnx")], catch_exceptions=False)
    assert res.exit_code == 1 and res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert "\0" not in res.output

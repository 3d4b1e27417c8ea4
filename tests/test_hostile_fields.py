"""Conv weights of strings and text that is not UTF-8 (an attribute name, a doc string, ...): one ``Error:``
line in every mode of ``separate`` (and in ``stats`` for text), never a traceback; the passes themselves skip a
string weight with a reason instead of failing in onnx-graphsurgeon's export. An input that onnx.checker rejects
is rewritten with a warning, and its result may have that problem only."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from onnxconv.cli import main
from onnxconv.errors import RewriteError
from onnxconv.passes.finish import check_model, model_problem
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import separate
from onnxconv.passes.shuffle import group_shuffle

from .test_cli_separate import two_conv_model

#: Same length as every bad replacement below, so that the protobuf lengths stay valid.
PLACEHOLDER = "QQQQplaceholderQQQQ"
BAD = b"\xff\xfe" + b"x" * (len(PLACEHOLDER) - 2)


def _strings(name: str, dims: list[int]) -> onnx.TensorProto:
    return helper.make_tensor(name, TensorProto.STRING, dims, [b"1"] * int(np.prod(dims)))


def string_constant_weight() -> onnx.ModelProto:
    m = two_conv_model()
    w = next(t for t in m.graph.initializer if t.name == "W2")
    m.graph.initializer.remove(w)
    m.graph.node.insert(0, helper.make_node("Constant", [], ["W2"], value=_strings("w2", list(w.dims))))
    return m


def string_weight_behind_identity() -> onnx.ModelProto:
    m = two_conv_model()
    w = next(t for t in m.graph.initializer if t.name == "W2")
    w.CopyFrom(_strings("W2s", list(w.dims)))
    m.graph.node.insert(0, helper.make_node("Identity", ["W2s"], ["W2"], name="id"))
    return m


def string_bias() -> onnx.ModelProto:
    m = two_conv_model()
    b = next(t for t in m.graph.initializer if t.name == "B1")
    b.CopyFrom(_strings("B1", list(b.dims)))
    return m


STRING_WEIGHTS: dict[str, tuple[Callable[[], onnx.ModelProto], str]] = {
    "Constant node": (string_constant_weight, "node 'head' (Conv) has a string-typed weight 'W2'"),
    "behind Identity": (string_weight_behind_identity, "node 'head' (Conv) has a string-typed weight 'W2'"),
    "bias": (string_bias, "node 'stem' (Conv) has a string-typed bias 'B1'"),
}


def _text(where: Callable[[onnx.ModelProto], None]) -> Callable[[], bytes]:
    def build() -> bytes:
        m = two_conv_model()
        where(m)
        data = m.SerializeToString()
        assert data.count(PLACEHOLDER.encode()) == 1
        return data.replace(PLACEHOLDER.encode(), BAD)
    return build


def _attribute_name(m: onnx.ModelProto) -> None:
    m.graph.node[1].attribute.append(helper.make_attribute(PLACEHOLDER, 1))


def _conv_attribute_name(m: onnx.ModelProto) -> None:
    m.graph.node[2].attribute.append(helper.make_attribute(PLACEHOLDER, 1))


def _attribute_value(m: onnx.ModelProto) -> None:
    m.graph.node[1].attribute.append(helper.make_attribute("note", PLACEHOLDER))


def _doc_string(m: onnx.ModelProto) -> None:
    m.graph.node[0].doc_string = PLACEHOLDER


def _metadata(m: onnx.ModelProto) -> None:
    m.metadata_props.add(key="k", value=PLACEHOLDER)


def _dim_name(m: onnx.ModelProto) -> None:
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_param = PLACEHOLDER


BAD_TEXT: dict[str, tuple[Callable[[], bytes], str]] = {
    "attribute name": (_text(_attribute_name), "graph.node[1].attribute[0].name"),
    "conv attribute name": (_text(_conv_attribute_name), "graph.node[2].attribute[1].name"),
    "string attribute value": (_text(_attribute_value), "graph.node[1].attribute[0].s"),
    "doc string": (_text(_doc_string), "graph.node[0].doc_string"),
    "metadata": (_text(_metadata), "metadata_props[0].value"),
    "dim name": (_text(_dim_name), "graph.input[0].type.tensor_type.shape.dim[0].dim_param"),
}

#: Every mode of separate; the refusal comes before any of them reads its options' files.
MODES = [["--rank", "2"], ["--energy", "0.9"], ["--exact"], ["--mode", "shuffle", "--groups", "2"],
         ["--rank", "2", "--calibration", "cal.npz"], ["--target-speedup", "1.2", "--calibration", "cal.npz"],
         ["--mode", "mixed", "--max-output-error", "0.1", "--calibration", "cal.npz"]]


def _one_error_line(tmp_path: Path, args: list[str], message: str) -> None:
    res = CliRunner().invoke(main, args, catch_exceptions=False)
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and res.output.count("\n") == 1, res.output
    assert message in res.output
    assert not (tmp_path / "o.onnx").exists()


def _cal(tmp_path: Path, mode: list[str]) -> list[str]:
    np.savez(tmp_path / "cal.npz", X=np.zeros((10, 8, 12, 12), np.float32))
    return [str(tmp_path / a) if a == "cal.npz" else a for a in mode]


@pytest.mark.parametrize("mode", MODES, ids=" ".join)
@pytest.mark.parametrize("case", list(STRING_WEIGHTS))
def test_a_string_weight_is_one_error_line_in_every_mode(tmp_path: Path, case: str, mode: list[str]) -> None:
    build, message = STRING_WEIGHTS[case]
    p = tmp_path / "in.onnx"
    onnx.save(build(), p)
    _one_error_line(tmp_path, ["separate", str(p), "-o", str(tmp_path / "o.onnx"), *_cal(tmp_path, mode)],
                    message + "; not a valid ONNX model")


@pytest.mark.parametrize("case", ["Constant node", "behind Identity"])
def test_the_passes_skip_a_string_weight_with_its_reason(case: str) -> None:
    """The library's own guard (a script calling a pass without the CLI's load checks): the weight is never read,
    so the export still writes it, and the conv is listed with why it was left."""
    model = STRING_WEIGHTS[case][0]()
    for result in (separate(model, RankPolicy("rank", 2)), group_shuffle(model, groups=2)):
        head = next(c for c in result.layers if c.name == "head")
        assert not head.rewritten and head.reason == "weight type string is not float16/32/64"
        assert any(n.op_type == "Conv" and "W2" in n.input for n in result.model.graph.node)


@pytest.mark.parametrize("mode", [["stats"], *(["separate", *m] for m in MODES)], ids=" ".join)
@pytest.mark.parametrize("case", list(BAD_TEXT))
def test_text_that_is_not_utf8_is_one_error_line(tmp_path: Path, case: str, mode: list[str]) -> None:
    build, where = BAD_TEXT[case]
    p = tmp_path / "in.onnx"
    p.write_bytes(build())
    args = [mode[0], str(p)] + (["-o", str(tmp_path / "o.onnx"), *_cal(tmp_path, mode[1:])] if len(mode) > 1 else [])
    _one_error_line(tmp_path, args, f"{where} is not valid UTF-8 text ('\\xff\\xfe")


def unknown_attribute() -> onnx.ModelProto:
    """Valid but for an attribute Relu does not have: the checker (and onnxruntime) reject it, the rewrite can
    still be made."""
    m = two_conv_model()
    m.graph.node[1].attribute.append(helper.make_attribute("bogus", 3))
    return m


@pytest.mark.parametrize("mode", [["--rank", "2"], ["--exact"], ["--mode", "shuffle", "--groups", "2"]], ids=" ".join)
def test_an_input_the_checker_rejects_is_rewritten_with_a_warning(tmp_path: Path, mode: list[str]) -> None:
    p, out, report = tmp_path / "in.onnx", tmp_path / "o.onnx", tmp_path / "r.json"
    onnx.save(unknown_attribute(), p)
    res = CliRunner().invoke(main, ["separate", str(p), "-o", str(out), "--report", str(report), *mode])
    assert res.exit_code == 0, res.output
    complaint = "Unrecognized attribute: bogus for operator Relu"
    assert (f"warning: the input model is invalid ({complaint}); the result, written anyway, is too ({complaint})"
            in res.output)
    assert model_problem(onnx.load(out)) == complaint
    options = json.loads(report.read_text())["options"]
    assert options["input_invalid"] == options["output_invalid"] == complaint


def test_an_input_the_rewrite_mends_says_so(tmp_path: Path) -> None:
    """An unsorted graph fails the checker; every rewrite writes its nodes sorted."""
    m = two_conv_model()
    nodes = list(m.graph.node)
    del m.graph.node[:]
    m.graph.node.extend(reversed(nodes))
    p, out = tmp_path / "in.onnx", tmp_path / "o.onnx"
    onnx.save(m, p)
    res = CliRunner().invoke(main, ["separate", str(p), "-o", str(out), "--rank", "2"])
    assert res.exit_code == 0, res.output
    assert "warning: the input model is invalid (Nodes in a graph must be topologically sorted" in res.output
    assert "; the result passes onnx.checker\n" in res.output
    assert model_problem(onnx.load(out)) is None


def test_a_valid_input_gets_no_warning_even_with_shapeless_outputs(tmp_path: Path) -> None:
    m = two_conv_model()
    m.graph.output[0].type.tensor_type.ClearField("shape")
    assert model_problem(m) is None
    p, out = tmp_path / "in.onnx", tmp_path / "o.onnx"
    onnx.save(m, p)
    res = CliRunner().invoke(main, ["separate", str(p), "-o", str(out), "--rank", "2", "--report",
                                    str(tmp_path / "r.json")])
    assert res.exit_code == 0 and "warning" not in res.output, res.output
    assert "input_invalid" not in json.loads((tmp_path / "r.json").read_text())["options"]


def test_an_invalid_input_still_may_not_gain_a_new_problem() -> None:
    original = unknown_attribute()
    broken = onnx.ModelProto()
    broken.CopyFrom(original)
    broken.graph.node[2].input[0] = "nowhere"  # a problem of the rewrite's own
    with pytest.raises(RewriteError, match="the rewritten model is invalid"):
        check_model(broken, original)
    check_model(original, original)  # the input's own problem alone passes


def test_verify_stops_at_an_input_onnxruntime_cannot_load(tmp_path: Path) -> None:
    p = tmp_path / "in.onnx"
    onnx.save(unknown_attribute(), p)
    _one_error_line(tmp_path, ["separate", str(p), "-o", str(tmp_path / "o.onnx"), "--rank", "2", "--verify"],
                    "onnxruntime cannot load the model")

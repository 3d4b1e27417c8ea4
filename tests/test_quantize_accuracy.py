"""Accuracy-controlled int8 (onnxconv.accuracy, onnxconv.keep_float, ``onnxconv quantize``).

The oracle is a detector head in miniature: a Concat joins a pixel-scale channel pair (a conv's output times 300)
and [0, 1] scores (a conv then Sigmoid). One int8 scale for the Concat rounds every score to 0: the whole-tensor
error stays small while the score channels err 1.0. Keeping the Concat (and the Reshape that shares its scale)
in float gives the scores back.

Nothing here depends on the CPU's int8 instructions: the quantizer picks ``reduce_range`` where uint8 x int8
products would saturate (x86 without VNNI), the plain baselines below are quantized with it, and the CPU
detection is tested with injected flags both ways.
"""

from __future__ import annotations

import json
import textwrap
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner, Result
from onnx import helper

from onnxconv import compare
from onnxconv.accuracy import (DEFAULT_MAX_OUTPUT_ERROR, AccuracyNotMet, AccuracyOptions, QuantizeResult,
                               local_damage, quantize_with_accuracy)
from onnxconv.cli import main
from onnxconv.errors import OptionError
from onnxconv.keep_float import float_groups, keep_float
from onnxconv.metrics import load_metric
from onnxconv.passes.finish import declare_initializers
from onnxconv.planning import Quantizer
from onnxconv.quantize import CpuInt8, QuantSettings, cpu_int8, quantize_qdq, settings_for_cpu

from .modelkit import init, make_model, tensor

SHAPE = (1, 3, 8, 8)
ANCHORS = SHAPE[2] * SHAPE[3]
VNNI = CpuInt8("x86_64", frozenset({"avx2", "avx512f", "avx512_vnni"}))
AVX2 = CpuInt8("x86_64", frozenset({"avx2", "fma"}))


def head_model() -> onnx.ModelProto:
    """X -> conv_box (x300: pixel scale) | conv_cls -> Sigmoid -> Concat (axis 1) -> Reshape 1 x 6 x A: a YOLOv8
    style head, 4 box channels then 2 class scores."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["X", "WB", "BB"], ["cb"], name="conv_box", pads=[1, 1, 1, 1]),
        helper.make_node("Mul", ["cb", "S"], ["box"], name="scale"),
        helper.make_node("Conv", ["X", "WC", "BC"], ["cc"], name="conv_cls", pads=[1, 1, 1, 1]),
        helper.make_node("Sigmoid", ["cc"], ["cls"], name="sigmoid"),
        helper.make_node("Concat", ["box", "cls"], ["cat"], name="concat", axis=1),
        helper.make_node("Reshape", ["cat", "shape"], ["Y"], name="flatten"),
    ]
    inits = [init("WB", (rng.standard_normal((4, 3, 3, 3)) * 0.3).astype(np.float32)),
             init("BB", np.zeros(4, np.float32)),
             init("WC", (rng.standard_normal((2, 3, 3, 3)) * 0.5).astype(np.float32)),
             init("BC", np.full(2, -1.0, np.float32)),
             init("S", np.array(300, np.float32)), init("shape", np.array([1, 6, -1], np.int64))]
    return make_model(nodes, [tensor("X", SHAPE)], [tensor("Y", None)], inits)


def feeds(n: int, seed: int = 1) -> list[dict[str, np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [{"X": rng.standard_normal(SHAPE).astype(np.float32)} for _ in range(n)]


def outputs(model: onnx.ModelProto, xs: Sequence[dict[str, np.ndarray]]) -> np.ndarray:
    sess = compare.session(model)
    return np.concatenate([compare.run_model(sess, f)["Y"] for f in xs])


@pytest.fixture(scope="module")
def head() -> onnx.ModelProto:
    return head_model()


@pytest.fixture(scope="module")
def controlled(head: onnx.ModelProto) -> QuantizeResult:
    return quantize_with_accuracy(head, feeds(8), AccuracyOptions(), held_out=feeds(4, seed=2))


def test_plain_int8_zeroes_the_scores_and_only_per_channel_sees_it(head: onnx.ModelProto) -> None:
    # reduce_range: no uint8 x int8 product pair can saturate int16, so these figures hold with or without VNNI.
    q = quantize_qdq(head, feeds(8), QuantSettings(reduce_range=True)).model
    held = feeds(4, seed=2)
    (a,) = compare.compare_outputs({"Y": outputs(head, held)}, {"Y": outputs(q, held)})
    assert a.rel_error < 0.05  # the whole tensor hardly moves: pixels dominate its norm ...
    assert a.worst_channel is not None and a.worst_channel.axis == 1 and a.worst_channel.index >= 4
    assert a.worst_channel.rel_error > 0.9  # ... while the scores are gone
    assert np.all(outputs(q, held)[:, 4:] == 0)


def test_keeps_the_concat_and_its_reshape_float(head: onnx.ModelProto, controlled: QuantizeResult) -> None:
    r = controlled
    assert r.met and r.quantized_all.error > 0.9
    assert [k.nodes for k in r.kept_float] == [("concat", "flatten")]
    assert r.kept_float[0].error_drop > 0.9  # its measured contribution: back in int8, the scores are lost
    assert r.measured.error <= DEFAULT_MAX_OUTPUT_ERROR and r.candidates == 2
    # Checked independently of the search: every channel, each at its own scale, on samples it never saw.
    xs = feeds(6, seed=3)
    errs = compare.channel_errors(outputs(head, xs), outputs(r.model, xs), 1)
    assert errs.max() <= 2 * DEFAULT_MAX_OUTPUT_ERROR
    nodes = {n.name: n for n in r.model.graph.node}
    producers = {o: n for n in r.model.graph.node for o in n.output}
    assert producers["Y"].name == "flatten"  # the graph output is written in float
    assert producers[nodes["flatten"].input[0]].name == "concat"  # no QDQ pair between them
    for conv in ("conv_box", "conv_cls"):  # the convs stay int8
        assert producers[nodes[conv].input[1]].op_type == "DequantizeLinear"
    assert "held-out" in r.held_out and r.to_dict()["kept_float"][0]["nodes"] == ["concat", "flatten"]
    onnx.checker.check_model(r.model)


def test_a_model_that_meets_the_bound_keeps_nothing_float(head: onnx.ModelProto) -> None:
    r = quantize_with_accuracy(head, feeds(8), AccuracyOptions(max_output_error=1.5), held_out=feeds(2, seed=2))
    assert r.met and r.kept_float == [] and r.evaluations == 1
    assert any(n.op_type == "QuantizeLinear" and n.input[0] == "cat" for n in r.model.graph.node)


def test_unmeetable_bound_is_refused_with_the_closest_figure(head: onnx.ModelProto) -> None:
    with pytest.raises(AccuracyNotMet) as e:
        quantize_with_accuracy(head, feeds(8), AccuracyOptions(max_output_error=1e-6), held_out=feeds(2, seed=2))
    text = str(e.value)
    assert "\n" not in text and "not met even with all 2 quantized node group(s) but the convs in float" in text
    assert "worst output error" in text and "output 'Y'" in text
    assert not e.value.result.met and e.value.result.measured.error > 1e-6


@pytest.fixture()
def score_metric(tmp_path: Path) -> str:
    plug = tmp_path / "scores.py"
    plug.write_text(textwrap.dedent("""
        import numpy as np

        def agreement(reference, candidate):
            a = np.concatenate([r["Y"][:, 4:] for r in reference])
            b = np.concatenate([c["Y"][:, 4:] for c in candidate])
            return 1.0 - float(np.abs(a - b).max())
    """))
    return f"{plug}:agreement"


def test_metric_bound_alone(head: onnx.ModelProto, score_metric: str) -> None:
    options = AccuracyOptions(metric=load_metric(score_metric), min_metric=0.95)
    assert options.error_bound is None and options.criterion() == "metric agreement >= 0.95"
    r = quantize_with_accuracy(head, feeds(8), options, held_out=feeds(4, seed=2))
    assert r.quantized_all.metric is not None and r.quantized_all.metric.value < 0.8
    assert r.measured.metric is not None and r.measured.metric.value >= 0.95
    assert [k.nodes for k in r.kept_float] == [("concat", "flatten")]
    assert r.kept_float[0].metric_gain is not None and r.kept_float[0].metric_gain > 0.15


def test_boxes_metric_is_reported_with_its_support(head: onnx.ModelProto) -> None:
    r = quantize_with_accuracy(head, feeds(8), AccuracyOptions(metric=load_metric("boxes")), held_out=feeds(4, 2))
    assert r.measured.metric is not None and r.measured.metric.what == "reference boxes"
    assert r.quantized_all.metric is not None and r.quantized_all.metric.value < r.measured.metric.value


@pytest.mark.parametrize("options, words", [
    (AccuracyOptions(max_output_error=0.0), "must be a number above 0"),
    (AccuracyOptions(min_metric=0.9), "--min-metric needs --metric"),
    (AccuracyOptions(activation_type="int4"), "activation type 'int4'"),
])
def test_bad_options_are_one_line(head: onnx.ModelProto, options: AccuracyOptions, words: str) -> None:
    with pytest.raises(OptionError, match=words):
        quantize_with_accuracy(head, feeds(2), options)


# ----------------------------------------------------------------------------------------------------------------
# the CPU's int8 instructions: settings chosen both ways, from injected flags


@pytest.mark.parametrize("cpu, act, weight, reduce, why", [
    (VNNI, "uint8", "int8", False, "avx512_vnni"),
    (CpuInt8("x86_64", frozenset({"avx2", "avx_vnni"})), "uint8", "int8", False, "avx_vnni"),
    (CpuInt8("x86_64", frozenset({"amx_int8"})), "uint8", "int8", False, "amx_int8"),
    (AVX2, "uint8", "int8", True, "no VNNI"),
    (CpuInt8("x86_64", None), "uint8", "int8", True, "could not be read"),
    (CpuInt8("aarch64", frozenset({"asimd"})), "uint8", "int8", False, "aarch64"),
    (AVX2, "uint8", "uint8", False, "do not saturate"),
    (AVX2, "int8", "int8", False, "do not saturate"),
])
def test_reduce_range_where_products_saturate(cpu: CpuInt8, act: str, weight: str, reduce: bool, why: str) -> None:
    settings, reason = settings_for_cpu(act, weight, cpu)
    assert settings.reduce_range is reduce and why in reason
    assert settings.activation_type == act and settings.weight_type == weight


def test_cpu_flags_are_read_by_the_injected_function() -> None:
    cpu = cpu_int8(lambda: frozenset({"avx2"}))
    assert cpu.flags == frozenset({"avx2"}) and cpu.int32_dot == []
    assert cpu_int8(lambda: None).flags is None


@pytest.mark.parametrize("cpu, top", [(AVX2, 64), (VNNI, 127)])
def test_chosen_settings_reach_the_weights(head: onnx.ModelProto, cpu: CpuInt8, top: int) -> None:
    r = quantize_with_accuracy(head, feeds(8), AccuracyOptions(max_output_error=1.5, cpu=cpu),
                               held_out=feeds(2, seed=2))
    assert r.settings.reduce_range is (cpu is AVX2)
    assert ("reduce_range" in r.settings.describe()) is (cpu is AVX2)
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in r.model.graph.initializer}
    conv = next(n for n in r.model.graph.node if n.name == "conv_cls")
    dq = next(n for n in r.model.graph.node if conv.input[1] in n.output)
    assert int(np.abs(inits[dq.input[0]]).max()) == top  # 7-bit weights span [-64, 64]


# ----------------------------------------------------------------------------------------------------------------
# the QDQ graph edit


def test_groups_join_nodes_that_share_a_scale(head: onnx.ModelProto) -> None:
    qdq = quantize_qdq(head, feeds(4), QuantSettings(keep_activations=True))
    groups = float_groups(qdq.model)
    assert [g.nodes for g in groups] == [("sigmoid",), ("concat", "flatten")]
    assert groups[1].label == "concat +1" and groups[1].ops == ("Concat", "Reshape")
    assert {g.nodes for g in float_groups(qdq.model, ())} >= {("conv_box",), ("conv_cls",)}
    damage = local_damage(qdq.model, groups, feeds(2))
    assert damage[groups[1]] > 0.9 > 0.1 > damage[groups[0]]


def test_kept_float_node_gets_the_prepared_float_weights(head: onnx.ModelProto) -> None:
    qdq = quantize_qdq(head, feeds(4), QuantSettings(keep_activations=True))
    before = qdq.model.SerializeToString()
    out = keep_float(qdq.model, ["conv_box"], qdq.prepared)
    assert qdq.model.SerializeToString() == before
    conv = next(n for n in out.graph.node if n.name == "conv_box")
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in out.graph.initializer}
    prepared = {t.name: onnx.numpy_helper.to_array(t) for t in qdq.prepared.graph.initializer}
    original = next(n for n in qdq.prepared.graph.node if n.name == "conv_box")
    np.testing.assert_array_equal(inits[conv.input[1]], prepared[original.input[1]])  # Mul folded in: x300
    assert conv.input[0] == "X"  # a graph input: read in float
    dequantized = keep_float(qdq.model, ["conv_box"])  # without the prepared model: the int8 weights in float
    w = {t.name: onnx.numpy_helper.to_array(t) for t in dequantized.graph.initializer}
    dq_conv = next(n for n in dequantized.graph.node if n.name == "conv_box")
    np.testing.assert_allclose(w[dq_conv.input[1]], prepared[original.input[1]], rtol=0,
                               atol=float(np.abs(prepared[original.input[1]]).max()) / 127)
    onnx.checker.check_model(out)


# ----------------------------------------------------------------------------------------------------------------
# the planner's quantizer: the original and every plan quantized alike


def test_planner_quantizer_controls_accuracy(head: onnx.ModelProto) -> None:
    quant = Quantizer(feeds(8), held_out=feeds(4, seed=2), accuracy=AccuracyOptions(cpu=AVX2))
    assert quant.tag == "int8-qdq-uint8-int8" and quant.settings.reduce_range
    q = quant.model(head)
    assert quant.last is not None and [k.nodes for k in quant.last.kept_float] == [("concat", "flatten")]
    assert any(n.name == "concat" for n in q.graph.node)
    strict = Quantizer(feeds(8), accuracy=AccuracyOptions(max_output_error=1e-6, cpu=VNNI))
    strict.model(head)  # not even all-but-convs float meets 1e-6: as close as that, said in .last
    assert strict.last is not None and not strict.last.met and "not reachable" in strict.last.criterion
    assert [k.nodes for k in strict.last.kept_float] == [("concat", "flatten")]


def test_closest_keeps_the_fewest_groups_that_come_near_the_unreachable_bound(head: onnx.ModelProto) -> None:
    r = quantize_with_accuracy(head, feeds(8), AccuracyOptions(max_output_error=1e-6, closest=True),
                               held_out=feeds(4, seed=2))
    assert not r.met and "held instead to within 10%" in r.criterion
    assert [k.nodes for k in r.kept_float] == [("concat", "flatten")] and r.measured.error < 0.05


# ----------------------------------------------------------------------------------------------------------------
# onnxconv quantize


@pytest.fixture()
def files(tmp_path: Path) -> Path:
    onnx.save(head_model(), tmp_path / "head.onnx")
    compare.write_npz(tmp_path / "calib.npz", {"X": np.concatenate([f["X"] for f in feeds(10)])})
    return tmp_path


def run_cli(*args: str) -> Result:
    return CliRunner().invoke(main, ["quantize", *args])


def test_cli_writes_the_model_and_the_report(files: Path) -> None:
    t = files
    res = run_cli(str(t / "head.onnx"), "-o", str(t / "int8.onnx"), "--calibration", str(t / "calib.npz"),
                  "--report", str(t / "q.json"), "--duration", "0.05", "--threads", "1")
    assert res.exit_code == 0, res.output
    out = res.output
    assert "criterion: worst output error (channel or tensor) <= 0.05 on 2 held-out calibration samples: met" in out
    assert "kept float: 1 of 2 candidate group(s)" in out and "concat, flatten" in out
    assert "speed-up over fp32: " in out and "interleaved rounds" in out
    assert "wrote " in out
    data = json.loads((t / "q.json").read_text())
    assert data["met"] and data["kept_float"][0]["nodes"] == ["concat", "flatten"]
    assert data["speedup"]["median"] > 0 and data["settings"]["activation_type"] == "uint8"
    q = onnx.load(str(t / "int8.onnx"))
    assert any(n.op_type == "QuantizeLinear" for n in q.graph.node)


def test_cli_metric_with_too_few_boxes_says_so(files: Path) -> None:
    t = files
    res = run_cli(str(t / "head.onnx"), "-o", str(t / "int8.onnx"), "--calibration", str(t / "calib.npz"),
                  "--metric", "boxes:conf=0.98", "--duration", "0.05")
    assert res.exit_code == 0, res.output
    line = next(x for x in res.output.splitlines() if x.startswith("metric boxes:conf=0.98: "))
    assert "reference boxes" in line and "all int8: " in line
    assert "note: only " in res.output and "the metric means little" in res.output


def test_cli_refusal_writes_nothing(files: Path) -> None:
    t = files
    res = run_cli(str(t / "head.onnx"), "-o", str(t / "int8.onnx"), "--calibration", str(t / "calib.npz"),
                  "--max-output-error", "1e-7", "--report", str(t / "q.json"))
    assert res.exit_code == 1
    lines = [line for line in res.output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: ") and "nothing was written" in lines[0]
    assert "not met even with all" in lines[0]
    assert not (t / "int8.onnx").exists() and not (t / "q.json").exists()
    assert sorted(p.name for p in t.iterdir()) == ["calib.npz", "head.onnx"]


@pytest.mark.parametrize("args, words", [
    (["-o", "{t}/calib.npz"], "is the --calibration data"),
    (["-o", "{t}/head.onnx"], "refusing to overwrite the input model"),
    (["-o", "{t}/int8.onnx", "--report", "{t}/calib.npz"], "is the --calibration data"),
    (["-o", "{t}/int8.onnx", "--min-metric", "0.9"], "--min-metric needs --metric"),
    (["-o", "{t}/int8.onnx", "--metric", "nonsense"], "give a built-in"),
    (["-o", "{t}/int8.onnx", "--metric", ""], "give a built-in"),  # not silently "no metric"
    (["-o", "{t}/int8.onnx", "--channel-axis", "Y"], "--channel-axis 'Y'"),
    (["-o", "{t}/int8.onnx", "--input-shape", "Q=1x3x8x8"], "'Q'"),
])
def test_cli_bad_input_is_one_error_line(files: Path, args: list[str], words: str) -> None:
    t = files
    before = sorted(p.name for p in t.iterdir())
    res = run_cli(str(t / "head.onnx"), "--calibration", str(t / "calib.npz"),
                  *[a.format(t=t) for a in args])
    assert res.exit_code == 1, res.output
    assert res.output.startswith("Error: ") and words in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in t.iterdir()) == before


def test_cli_no_output_joins_a_calibration_folder(files: Path) -> None:
    """A --report named like an .npy inside the --calibration folder would be one more array next time (the
    check separate makes; quantize shares it through model_io)."""
    t = files
    (t / "cal").mkdir()
    with np.load(t / "calib.npz") as z:
        for name in z.files:
            np.save(t / "cal" / f"{name}.npy", z[name])
    before = sorted(str(p.relative_to(t)) for p in t.rglob("*"))
    res = run_cli(str(t / "head.onnx"), "--calibration", str(t / "cal"), "-o", str(t / "int8.onnx"), "--report",
                  str(t / "cal" / "new.npy"))
    assert res.exit_code == 1, res.output
    assert res.output.strip() == (f"Error: --report {t / 'cal' / 'new.npy'}: is an .npy file in the --calibration "
                                  "folder, which this run reads (choose another file)")
    assert sorted(str(p.relative_to(t)) for p in t.rglob("*")) == before


@pytest.mark.parametrize("duration", ["inf", "1e300"])
def test_cli_a_duration_that_never_ends_is_refused(files: Path, duration: str) -> None:
    t = files
    res = run_cli(str(t / "head.onnx"), "--calibration", str(t / "calib.npz"), "-o", str(t / "int8.onnx"),
                  "--duration", duration)
    assert res.exit_code == 2 and "is not in the range 0<x<=86400" in res.output
    assert not (t / "int8.onnx").exists()


def test_cli_a_model_onnxruntime_rejects_is_one_line_without_the_quantizers_scratch_paths(tmp_path: Path) -> None:
    """A bool conv weight: onnxruntime's preprocessing logs an error and a traceback and the quantizer fails on a
    temporary copy; the user sees one line naming the problem, neither the log nor the copy's path."""
    w = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), bool), "W")
    graph = helper.make_graph([helper.make_node("Conv", ["X", "W"], ["Y"], name="c")], "g",
                              [helper.make_tensor_value_info("X", onnx.TensorProto.FLOAT, [1, 3, 8, 8])],
                              [helper.make_tensor_value_info("Y", onnx.TensorProto.FLOAT, None)], [w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "c.npz", X=np.random.default_rng(0).random((4, 3, 8, 8), np.float32))
    res = run_cli(str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"), "--calibration", str(tmp_path / "c.npz"),
                  "--duration", "0.05")
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == [
        "Error: onnxruntime's quantizer failed: [ONNXRuntimeError] : 10 : INVALID_GRAPH : This is an invalid model. "
        "Type Error: Type 'tensor(bool)' of input parameter (W) of operator (Conv) in node (c) is invalid."]
    assert not (tmp_path / "q.onnx").exists()


def test_cli_is_listed() -> None:
    res = CliRunner().invoke(main, ["--help"])
    assert "quantize" in res.output


def test_ir3_model_keeps_its_initializers_declared_as_inputs() -> None:
    """IR < 4 requires every initializer to be a graph input too: the float weights keep_float adds are declared,
    and the int8 ones it drops are no longer inputs anyone must feed."""
    model = head_model()
    model.ir_version = 3
    model.opset_import[0].version = 13
    declare_initializers(model)
    r = quantize_with_accuracy(model, feeds(8), AccuracyOptions(), held_out=feeds(4, seed=2))
    assert r.model.ir_version == 3 and [k.nodes for k in r.kept_float] == [("concat", "flatten")]
    inits = {t.name for t in r.model.graph.initializer}
    assert inits <= {vi.name for vi in r.model.graph.input}
    assert {vi.name for vi in r.model.graph.input} - inits == {"X"}
    onnx.checker.check_model(r.model)
    xs = feeds(4, seed=5)
    assert compare.channel_errors(outputs(head_model(), xs), outputs(r.model, xs), 1).max() <= 0.1


def test_unnamed_nodes_get_names_the_search_can_keep_float() -> None:
    model = head_model()
    model.graph.node[4].name = ""  # the Concat
    qdq = quantize_qdq(model, feeds(4), QuantSettings(keep_activations=True))
    names = [n.name for n in qdq.prepared.graph.node]
    concat = next(n.name for n in qdq.prepared.graph.node if n.op_type == "Concat")
    assert all(names) and len(names) == len(set(names)) and concat.startswith("Concat_")
    r = quantize_with_accuracy(model, feeds(8), AccuracyOptions(), held_out=feeds(4, seed=2))
    assert [k.nodes for k in r.kept_float] == [(concat, "flatten")]

"""bench (library): statistics, providers, interleaved timing, agreement, profile join, isolation, thresholds.

These tests check behaviour with a handful of runs on tiny models; they assert nothing about speed.
"""

from __future__ import annotations

import json

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from onnx import helper

from onnxconv import bench as B
from onnxconv import compare
from onnxconv.compare import Agreement
from onnxconv.errors import OnnxConvError, OptionError
from onnxconv.stats import analyze

from .modelkit import init, make_model, single_conv, tensor

HAS_CUDA = "CUDAExecutionProvider" in ort.get_available_providers()
QUICK = {"iters": 4, "warmup": 1}


def tiny_net(seed: int = 0, scale: float = 1.0, unnamed_first: bool = False) -> onnx.ModelProto:
    """Conv+Relu (named), an unnamed grouped Conv, a residual Add, a depthwise Conv, pooling and a Gemm."""
    rng = np.random.default_rng(seed)

    def w(*shape: int) -> np.ndarray:
        return (rng.standard_normal(shape) * scale / np.sqrt(np.prod(shape[1:]))).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["c1"], name="" if unnamed_first else "conv1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c1"], ["r1"], name="relu1"),
        helper.make_node("Conv", ["r1", "W2"], ["c2"], pads=[1, 1, 1, 1], group=4),  # unnamed: Conv_2 in onnxruntime
        helper.make_node("Add", ["c2", "r1"], ["a"], name="add"),
        helper.make_node("Conv", ["a", "W3"], ["c3"], name="dw", pads=[1, 1, 1, 1], group=8),
        helper.make_node("GlobalAveragePool", ["c3"], ["g"], name="gap"),
        helper.make_node("Flatten", ["g"], ["f"], name="flat"),
        helper.make_node("Gemm", ["f", "Wf"], ["Y"], name="fc"),
    ]
    inits = [init("W1", w(8, 3, 3, 3)), init("B1", np.zeros(8, np.float32)), init("W2", w(8, 2, 3, 3)),
             init("W3", w(8, 1, 3, 3)), init("Wf", w(8, 10))]
    return make_model(nodes, [tensor("X", ["N", 3, 12, 12])], [tensor("Y", None)], inits)


def scaled(model: onnx.ModelProto, factor: float) -> onnx.ModelProto:
    """The same graph with the last (Gemm) weight scaled: every output moves by exactly ``factor - 1``."""
    out = onnx.ModelProto()
    out.CopyFrom(model)
    for t in out.graph.initializer:
        if t.name == "Wf":
            t.CopyFrom(init("Wf", (onnx.numpy_helper.to_array(t) * factor).astype(np.float32)))
    return out


@pytest.fixture
def pair(tmp_path) -> tuple[str, str]:
    a, b = tmp_path / "a.onnx", tmp_path / "b.onnx"
    onnx.save(tiny_net(), a)
    onnx.save(scaled(tiny_net(), 1.001), b)
    return str(a), str(b)


# ----------------------------------------------------------------------------------------------------------------
# Statistics


def test_timing_stats_formulas() -> None:
    times = [0.004, 0.001, 0.003, 0.002, 0.010]
    t = B.timing_stats(times, batch=8)
    assert t.runs == 5 and t.mean_s == pytest.approx(0.004) and t.p50_s == pytest.approx(0.003)
    assert t.min_s == 0.001 and t.max_s == 0.010
    assert t.p90_s == pytest.approx(np.percentile(times, 90)) and t.p99_s == pytest.approx(np.percentile(times, 99))
    assert t.stdev_s == pytest.approx(np.std(times, ddof=1))
    assert t.throughput == pytest.approx(8 / 0.004)
    assert B.timing_stats([0.5]).stdev_s == 0.0
    with pytest.raises(ValueError):
        B.timing_stats([])


def test_speedup_is_the_median_of_pairwise_ratios() -> None:
    ref = [2.0, 2.0, 4.0, 2.0, 2.0]
    new = [1.0, 1.0, 1.0, 2.0, 1.0]  # ratios 2, 2, 4, 1, 2: the drifted round 3 does not move the median
    s = B.speedup_stats(ref, new)
    assert s.median == 2.0 and s.rounds == 5 and s.p25 == 2.0 and s.p10 == pytest.approx(1.4)
    assert s.p90 == pytest.approx(np.percentile([2, 2, 4, 1, 2], 90))
    with pytest.raises(ValueError):
        B.speedup_stats([1.0], [1.0, 2.0])


# ----------------------------------------------------------------------------------------------------------------
# Providers


def test_resolve_provider_names_and_aliases() -> None:
    avail = ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    assert B.resolve_provider("cpu", avail) == B.Provider("cpu", ("CPUExecutionProvider",), "cpu")
    assert B.resolve_provider("CUDAExecutionProvider", avail).chain == ("CUDAExecutionProvider", "CPUExecutionProvider")
    trt = B.resolve_provider("trt", avail)
    assert trt.name == "tensorrt" and trt.device == "cuda" and len(trt.chain) == 3
    with pytest.raises(B.ProviderError, match="unknown; choose from cpu, cuda, tensorrt"):
        B.resolve_provider("tpu", avail)


def test_unavailable_provider_is_one_line_with_the_list_and_hint() -> None:
    with pytest.raises(B.ProviderError) as e:
        B.resolve_provider("cuda", ["AzureExecutionProvider", "CPUExecutionProvider"])
    msg = str(e.value)
    assert "\n" not in msg
    assert msg.startswith("provider 'cuda' (CUDAExecutionProvider) is not available; available: ")
    assert "AzureExecutionProvider, cpu" in msg and "onnxconv[gpu]" in msg and "onnxruntime-gpu" in msg
    assert isinstance(e.value, OptionError)


@pytest.mark.skipif(HAS_CUDA, reason="this onnxruntime has CUDA; the unavailable path needs a build without it")
def test_bench_refuses_cuda_before_loading_anything() -> None:
    with pytest.raises(B.ProviderError, match="provider 'cuda'"):
        B.bench(["missing.onnx"], B.BenchConfig(providers=("cpu", "cuda")))


# ----------------------------------------------------------------------------------------------------------------
# Benchmark


def test_bench_two_models_interleaved_with_agreement(pair) -> None:
    a, b = pair
    report = B.bench([a, b], B.BenchConfig(**QUICK, batch=2))
    [run] = report.runs
    assert run.provider == "cpu" and run.execution_providers == ["CPUExecutionProvider"] and run.rounds == 4
    ref, new = run.models
    assert (ref.name, new.name) == (a, b)
    assert ref.timing.runs == new.timing.runs == 4 and new.speedup is not None and new.speedup.rounds == 4
    assert ref.speedup is None and ref.agreement == []
    assert ref.session_s > 0 and ref.first_run_s > 0 and ref.timing.min_s <= ref.timing.p50_s <= ref.timing.max_s
    assert ref.timing.throughput == pytest.approx(2 / ref.timing.mean_s)
    assert report.inputs == {"X": [2, 3, 12, 12]} and report.batch == 2
    # The agreement bench reports is the one two plain sessions give on the same inputs.
    feeds = compare.make_inputs(compare.session(a), batch=2)
    expected = compare.compare_outputs(compare.run_model(compare.session(a), feeds),
                                       compare.run_model(compare.session(b), feeds))
    [ag] = new.agreement
    assert ag.output == "Y" and ag.rel_error == pytest.approx(expected[0].rel_error, rel=1e-6)
    assert ag.rel_error == pytest.approx(0.001, rel=0.02) and ag.top1 is None  # Gemm logits: no top-1
    assert run.spinning is False and any("spinning" in n for n in report.notes)


def test_top1_only_for_the_class_distribution_output() -> None:
    """A head with a softmax output (class probabilities) and a 1x10 regression output (landmarks): top-1 for the
    first only; the table prints '-' for the second."""
    rng = np.random.default_rng(3)
    nodes = [helper.make_node("Flatten", ["X"], ["f"]), helper.make_node("Gemm", ["f", "Wc"], ["logits"]),
             helper.make_node("Softmax", ["logits"], ["probs"], axis=-1),
             helper.make_node("Gemm", ["f", "Wr"], ["landmarks"])]

    def head(scale: float) -> onnx.ModelProto:
        return make_model(nodes, [tensor("X", [2, 3, 4, 4])], [tensor("probs", None), tensor("landmarks", None)],
                          [init("Wc", (rng.standard_normal((48, 5)) * scale).astype(np.float32)),
                           init("Wr", (rng.standard_normal((48, 10)) * scale).astype(np.float32))])

    report = B.bench([head(1.0), head(1.0)], B.BenchConfig(**QUICK), names=["a", "b"])
    probs, landmarks = report.runs[0].models[1].agreement
    assert (probs.output, landmarks.output) == ("probs", "landmarks")
    assert probs.top1 is not None and 0 <= probs.top1 <= 1 and landmarks.top1 is None
    table = B.render(report)
    row = next(line for line in table.splitlines() if line.startswith("b ") and " landmarks " in line)
    assert row.rstrip().endswith(" -")
    assert any(line.startswith("b ") and " probs " in line and line.rstrip().endswith("%") for line in table.splitlines())


def test_same_model_twice_is_a_clean_null_test(pair) -> None:
    a, _ = pair
    report = B.bench([a, a], B.BenchConfig(**QUICK, threads=1))
    ref, twin = report.runs[0].models
    assert twin.name == f"{a}#2" and twin.agreement[0].max_abs == 0.0
    assert report.runs[0].spinning is None and report.notes == []  # one thread each: nothing spins


def test_duration_mode_runs_at_least_min_rounds(pair) -> None:
    a, b = pair
    report = B.bench([a, b], B.BenchConfig(duration=1e-4, warmup=0))
    assert report.runs[0].rounds >= B.MIN_ROUNDS


@pytest.mark.parametrize("bad, match", [
    ({"iters": 3, "duration": 1.0}, "exclude each other"),
    ({"iters": 0}, "--iters must be at least 1"),
    ({"duration": 0.0}, "--duration must be positive"),
    ({"warmup": -1}, "--warmup"),
    ({"threads": 0}, "--threads"),
    ({"threads": 100_000}, "--threads must be between 1 and 1024"),
    ({"opt_level": "max"}, "--opt-level max"),
    ({"batch": 0}, "--batch"),
    ({"providers": ()}, "at least one --provider"),
    ({"device_id": -1}, "--device-id"),
])
def test_config_validation(bad: dict, match: str) -> None:
    with pytest.raises(OptionError, match=match):
        B.BenchConfig(**bad).validate()


def test_inputs_from_npz_and_renamed_inputs(tmp_path) -> None:
    a = tiny_net()
    renamed = tiny_net()
    renamed.graph.input[0].name = "input.1"
    renamed.graph.node[0].input[0] = "input.1"
    x = np.random.default_rng(5).standard_normal((3, 3, 12, 12)).astype(np.float32)
    np.savez(tmp_path / "x.npz", X=x)
    report = B.bench([a, renamed], B.BenchConfig(**QUICK, inputs=str(tmp_path / "x.npz")), names=["a", "r"])
    assert report.inputs == {"X": [3, 3, 12, 12]} and "x.npz" in report.input_source and report.batch == 3
    assert report.runs[0].models[1].agreement[0].max_abs == 0.0  # fed the same array by position


def test_model_declaring_a_wrong_output_rank_still_runs_repeatedly(tmp_path) -> None:
    """Some exports (the ddddocr OCR models) declare an output rank the model does not produce; onnxruntime runs
    them, but rejects a rerun that reuses the previous output buffers. Every timed run must bind fresh outputs."""
    nodes = [helper.make_node("Relu", ["X"], ["r"]), helper.make_node("Reshape", ["r", "S"], ["Y"])]
    # S of unknown length: onnxruntime cannot infer Y's rank and keeps the declared (wrong) one.
    model = make_model(nodes, [tensor("X", [1, 2, 6, 6]), tensor("S", ["k"], onnx.TensorProto.INT64)],
                       [tensor("Y", [1, "seqlen"])])
    np.savez(tmp_path / "in.npz", X=np.ones((1, 2, 6, 6), np.float32), S=np.array([2, 1, 36]))
    report = B.bench([model, model], B.BenchConfig(**QUICK, inputs=str(tmp_path / "in.npz")))
    assert report.runs[0].models[1].timing.runs == 4 and report.runs[0].models[1].agreement[0].max_abs == 0


def test_model_errors_are_one_line(tmp_path) -> None:
    with pytest.raises(OnnxConvError, match="no such file"):
        B.bench([str(tmp_path / "nope.onnx")], B.BenchConfig(**QUICK))
    # onnxruntime refuses SAME_* auto_pad with dilation at run time (docs/conv-math.md, "onnxruntime facts"): a run error, one line.
    bad = single_conv([1, 2, 9, 9], [2, 2, 3, 3], auto_pad="SAME_UPPER", dilations=[2, 2])
    with pytest.raises(OnnxConvError, match="^onnxruntime failed to run bad: ") as e:
        B.bench([bad], B.BenchConfig(**QUICK), names=["bad"])
    assert "\n" not in str(e.value)
    other_shape = single_conv([1, 3, 12, 12], [5, 3, 3, 3])
    with pytest.raises(OnnxConvError, match="has shape"):
        B.bench([single_conv([1, 3, 12, 12], [4, 3, 3, 3]), other_shape], B.BenchConfig(**QUICK))
    with pytest.raises(OptionError, match="one name per model"):
        B.bench([tiny_net()], B.BenchConfig(**QUICK), names=["a", "b"])


def test_isolated_workers_report_their_own_peak(pair) -> None:
    a, b = pair
    inproc = B.bench([a, b], B.BenchConfig(**QUICK, threads=1))
    iso = B.bench([a, b], B.BenchConfig(**QUICK, threads=1, isolate=True))
    for m in iso.runs[0].models:
        assert m.memory.rss_peak_mb is not None and m.memory.rss_base_mb is not None
        assert m.memory.rss_peak_mb >= m.memory.rss_base_mb > 0 and m.memory.rss_added_mb is not None
        assert m.timing.runs == 4
    assert inproc.runs[0].models[0].memory.rss_peak_mb is None
    assert iso.runs[0].models[1].agreement[0].rel_error == pytest.approx(
        inproc.runs[0].models[1].agreement[0].rel_error, rel=1e-9)


def test_isolated_worker_errors_come_back_as_one_line(tmp_path) -> None:
    bad = single_conv([1, 2, 9, 9], [2, 2, 3, 3], auto_pad="SAME_UPPER", dilations=[2, 2])
    with pytest.raises(OnnxConvError, match="^onnxruntime failed to run bad: "):
        B.bench([bad], B.BenchConfig(**QUICK, isolate=True), names=["bad"])


def test_progress_callback_sees_every_phase(pair) -> None:
    seen: list[tuple[str, float, float]] = []
    B.bench(list(pair), B.BenchConfig(iters=3, warmup=2), progress=lambda p, d, t: seen.append((p, d, t)))
    phases = [p for p, _, _ in seen]
    assert phases[0].startswith("session ") and "warm-up" in phases and phases[-1] == "timing"
    assert seen[-1][1:] == (3, 3)


# ----------------------------------------------------------------------------------------------------------------
# Profile


@pytest.mark.parametrize("opt_level", ["disable", "all"])
def test_profile_joins_every_counted_layer(opt_level: str) -> None:
    """At 'all', onnxruntime renames convs ('r1_nchwc' after the fused Relu's output) and the unnamed conv is
    'Conv_2'; every counted layer must still be found, with its MACs from stats."""
    model = tiny_net(unnamed_first=(opt_level == "all"))
    report = B.bench([model], B.BenchConfig(**QUICK, opt_level=opt_level, profile=True, profile_runs=3))
    prof = report.runs[0].models[0].profile
    assert prof is not None and prof.runs == 3 and prof.unjoined == [] and prof.uncounted == []
    rows = analyze(model, input_shapes={"X": [1, 3, 12, 12]}, all_ops=True).layers
    assert prof.layer_macs == prof.joined_macs == sum(r.macs for r in rows)
    joined = {n.layer: n for n in prof.nodes if n.layer is not None}
    assert set(joined) == {r.name for r in rows}
    for n in joined.values():
        assert n.macs_per_s == pytest.approx(n.macs / (n.mean_us * 1e-6))
    assert sum(n.share for n in prof.nodes) == pytest.approx(1.0)
    assert prof.total_us == pytest.approx(sum(n.mean_us for n in prof.nodes))
    assert [n.mean_us for n in prof.nodes] == sorted((n.mean_us for n in prof.nodes), reverse=True)


@pytest.mark.parametrize("opt_level", ["extended", "all"])
def test_profile_joins_the_convs_of_a_qdq_quantized_model(tmp_path, opt_level: str) -> None:
    """onnxruntime fuses each DequantizeLinear -> Conv -> QuantizeLinear group into a QLinearConv and renames it:
    'conv1_token_1' at 'all' (the NHWC pass), the unnamed conv '_token_5' or 'QLinearConv_30'. Every counted
    conv must still be joined."""
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            rng = np.random.default_rng(0)
            self._batches = iter([{"X": rng.standard_normal((1, 3, 12, 12)).astype(np.float32)} for _ in range(4)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self._batches, None)

    model = tiny_net()
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    onnx.save(model, tmp_path / "float.onnx")
    quantize_static(str(tmp_path / "float.onnx"), str(tmp_path / "qdq.onnx"), Reader(), quant_format=QuantFormat.QDQ,
                    activation_type=QuantType.QUInt8, weight_type=QuantType.QInt8)
    report = B.bench([str(tmp_path / "qdq.onnx")], B.BenchConfig(**QUICK, opt_level=opt_level, profile=True,
                                                                 profile_runs=2))
    prof = report.runs[0].models[0].profile
    assert prof is not None
    assert {n.op_type for n in prof.nodes if n.layer in ("conv1", "c2", "dw")} == {"QLinearConv"}
    assert prof.unjoined == [] and prof.layer_macs == prof.joined_macs > 0


def _events(runs: list[list[tuple[str, str, float]]]) -> list[dict]:
    """A synthetic onnxruntime profile: one model_run per inner list of (node, op, dur_us)."""
    ev: list[dict] = [{"cat": "Session", "name": "session_initialization", "ts": 0, "dur": 50}]
    ts = 100
    for nodes in runs:
        start = ts
        for name, op, dur in nodes:
            ev.append({"cat": "Node", "name": f"{name}_fence_before", "ts": ts, "dur": 0, "args": {"op_name": op}})
            ev.append({"cat": "Node", "name": f"{name}_kernel_time", "ts": ts, "dur": dur,
                       "args": {"op_name": op, "provider": "CPUExecutionProvider"}})
            ts += int(dur) + 1
        ev.append({"cat": "Session", "name": "model_run", "ts": start, "dur": ts - start})
        ts += 10
    return ev


def test_parse_profile_drops_warmup_and_sums_repeats() -> None:
    warm = [("conv", "Conv", 1000.0)]
    timed = [("conv", "Conv", 10.0), ("loop_body", "Add", 2.0), ("loop_body", "Add", 3.0)]
    timed2 = [("conv", "Conv", 30.0), ("loop_body", "Add", 5.0)]
    nodes, runs = B.parse_profile(_events([warm, timed, timed2]), runs=2)
    assert runs == 2
    assert nodes["conv"]["us"] == 20.0 and nodes["conv"]["p50_us"] == 20.0 and nodes["conv"]["op_type"] == "Conv"
    assert nodes["loop_body"]["us"] == 5.0
    assert B.parse_profile([], runs=3) == ({}, 0)


def test_join_follows_onnxruntime_renames() -> None:
    """Names onnxruntime gives: '<op>_<index>' for unnamed nodes, '<output>_nchwc' for NCHWc convs (the output of
    a fused Relu), '<node>/<Fusion>/' for fusions; a Relu kept apart gets no MACs; a second kernel for an already
    claimed layer gets none either."""
    x = tensor("X", [1, 4, 6, 6])
    nodes = [helper.make_node("Conv", ["X", "W"], ["c"], name="/blk/conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["r"], name="act"),
             helper.make_node("Conv", ["r", "W"], ["d"], pads=[1, 1, 1, 1]),
             helper.make_node("Flatten", ["d"], ["f"]),
             helper.make_node("MatMul", ["f", "M"], ["Y"], name="mm")]
    w = np.ones((4, 4, 3, 3), np.float32)
    model = make_model(nodes, [x], [tensor("Y", None)], [init("W", w), init("M", np.ones((144, 2), np.float32))])
    rows = analyze(model, all_ops=True).layers
    macs = {r.name: r.macs for r in rows}
    us = {"r_nchwc": 10.0, "act": 1.0, "Conv_2": 20.0, "mm/MatmulTransposeFusion/": 5.0, "d_nchwc": 1.0,
          "ReorderOutput": 2.0}
    ops = {"r_nchwc": "Conv", "act": "Relu", "Conv_2": "Conv", "mm/MatmulTransposeFusion/": "FusedMatMul",
           "d_nchwc": "Conv", "ReorderOutput": "ReorderOutput"}
    prof = B.join_profile({k: {"us": v, "op_type": ops[k], "provider": "CPU"} for k, v in us.items()}, 3, model, rows)
    by = {n.node: n for n in prof.nodes}
    assert by["r_nchwc"].layer == "/blk/conv" and by["r_nchwc"].macs == macs["/blk/conv"]
    assert by["Conv_2"].layer == "d" and by["Conv_2"].macs == macs["d"]
    assert by["mm/MatmulTransposeFusion/"].layer == "mm" and by["mm/MatmulTransposeFusion/"].macs == 144 * 2
    assert by["act"].macs is None and by["ReorderOutput"].layer is None
    assert by["d_nchwc"].layer is None and by["d_nchwc"].macs is None  # 'd' was already claimed by Conv_2
    assert prof.unjoined == [] and prof.joined_macs == sum(macs.values())
    assert prof.joined_us == 35.0 and prof.total_us == sum(us.values())


def test_join_strips_token_suffixes_and_never_guesses_between_unnamed_twins() -> None:
    """'conv1_token_1' is conv1 rebuilt by a QDQ fusion. Two unnamed convs with outputs of one size cannot be told
    apart by an unnamed kernel ('_token_5'): it stays unjoined; one of another size ('QLinearConv_30') joins."""
    x = tensor("X", [1, 4, 6, 6])
    nodes = [helper.make_node("Conv", ["X", "W"], ["a"], name="conv1", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "W"], ["b"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["b", "W"], ["c"], pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["c", "W"], ["Y"], strides=[2, 2], pads=[1, 1, 1, 1])]
    model = make_model(nodes, [x], [tensor("Y", None)], [init("W", np.ones((4, 4, 3, 3), np.float32))])
    rows = analyze(model).layers
    raw = {"conv1_token_1": 144, "_token_5": 144, "QLinearConv_30": 36}
    prof = B.join_profile({k: {"us": 1.0, "op_type": "QLinearConv", "provider": "CPU", "output_elements": e}
                           for k, e in raw.items()}, 1, model, rows)
    by = {n.node: n.layer for n in prof.nodes}
    assert by == {"conv1_token_1": "conv1", "_token_5": None, "QLinearConv_30": "Y"}
    assert sorted(prof.unjoined) == ["b", "c"]


def test_parse_profile_reads_the_output_element_count() -> None:
    ev = _events([[("conv", "Conv", 3.0)]])
    for e in ev:
        if e["name"] == "conv_kernel_time":
            e["args"]["output_type_shape"] = [{"uint8": [1, 12, 12, 8]}]
    nodes, _ = B.parse_profile(ev, runs=1)
    assert nodes["conv"]["output_elements"] == 1152
    assert B.parse_profile(_events([[("conv", "Conv", 3.0)]]), runs=1)[0]["conv"]["output_elements"] is None


def test_profile_reports_layers_it_cannot_join() -> None:
    model = tiny_net()
    rows = analyze(model, all_ops=True).layers
    prof = B.join_profile({"mystery": {"us": 4.0, "op_type": "Conv", "provider": "CPU"}}, 1, model, rows)
    assert sorted(prof.unjoined) == sorted(r.name for r in rows) and prof.joined_macs == 0


# ----------------------------------------------------------------------------------------------------------------
# Thresholds and rendering


def fake_report(speedup: float, rel_error: float) -> B.BenchReport:
    t = B.timing_stats([0.001, 0.002])
    mem = B.Memory(rss_added_mb=1.0)
    ref = B.ModelResult("a", 0.01, 0.002, t, mem)
    new = B.ModelResult("b", 0.01, 0.002, t, mem, speedup=B.SpeedUp(speedup, speedup, speedup, speedup, speedup, 2),
                        agreement=[Agreement("Y", 0.1, rel_error, 0.99, None)])
    run = B.ProviderRun("cpu", ["CPUExecutionProvider"], 2, 0.01, None, [ref, new])
    return B.BenchReport([run], {"X": [1, 3]}, "random", 1, {"warmup": 1, "threads": None, "opt_level": "all"},
                         "1.0", 100.0)


def test_json_has_no_nan() -> None:
    """An output full of NaN gives a NaN error; strict JSON has no NaN, so it is written as null."""
    text = B.render(fake_report(1.0, float("nan")), "json")
    assert json.loads(text)["runs"][0]["models"][1]["agreement"][0]["rel_error"] is None
    assert "NaN" not in text


def test_gpu_providers_get_the_device_id_and_memory_reading_degrades() -> None:
    trt = B.resolve_provider("tensorrt", ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert B.session_providers(trt, 1) == [("TensorrtExecutionProvider", {"device_id": 1}),
                                            ("CUDAExecutionProvider", {"device_id": 1}), "CPUExecutionProvider"]
    assert B.session_providers(B.resolve_provider("cpu"), 1) == ["CPUExecutionProvider"]
    used, scope = B.device_memory_bytes(0)
    assert (used is None) == (scope == "") and (HAS_CUDA or used is None)  # no GPU here: unknown, not an error


def test_fail_if_slower_means_more_than_r_times_as_long() -> None:
    slower = fake_report(speedup=0.9, rel_error=0.0)  # takes 1.11x as long
    assert B.check_thresholds(slower, fail_if_slower=1.2) == []
    [msg] = B.check_thresholds(slower, fail_if_slower=1.05)
    assert msg.startswith("b [cpu]: speed-up 0.900x vs a is below 1/1.05")
    assert B.check_thresholds(fake_report(1.3, 0.0), fail_if_slower=0.8) == []  # demands 1.25x faster
    assert len(B.check_thresholds(fake_report(1.2, 0.0), fail_if_slower=0.8)) == 1


def test_max_error_threshold_and_nan() -> None:
    assert B.check_thresholds(fake_report(1.0, 1e-4), max_error=1e-3) == []
    [msg] = B.check_thresholds(fake_report(1.0, 1e-2), max_error=1e-3)
    assert "output 'Y' relative error 0.01 exceeds 0.001" in msg
    assert len(B.check_thresholds(fake_report(1.0, float("nan")), max_error=1.0)) == 1
    for bad in ({"fail_if_slower": 0.0}, {"max_error": -1.0}):
        with pytest.raises(OptionError):
            B.check_thresholds(fake_report(1.0, 0.0), **bad)


def test_render_table_and_json(pair) -> None:
    report = B.bench(list(pair), B.BenchConfig(**QUICK, profile=True, profile_runs=2))
    table = B.render(report, "table")
    for text in ("mean ms", "p99", "speed-up (IQR)", "1.000x (reference)", "output agreement with", "rel err",
                 "GMAC/s", "inputs: X 1x3x12x12"):
        assert text in table, text
    data = json.loads(B.render(report, "json"))
    model = data["runs"][0]["models"][1]
    assert model["timing"]["runs"] == 4 and model["speedup"]["rounds"] == 4
    assert model["agreement"][0]["output"] == "Y" and model["profile"]["nodes"]
    assert data["config"]["iters"] == 4 and data["onnxruntime"] == ort.__version__


# ----------------------------------------------------------------------------------------------------------------
# CUDA (runs only where onnxruntime-gpu finds a GPU)


@pytest.mark.gpu
@pytest.mark.skipif(not HAS_CUDA, reason="CUDAExecutionProvider not available (install the gpu extra on a GPU machine)")
def test_cuda_iobinding_path_matches_cpu(pair) -> None:
    report = B.bench(list(pair), B.BenchConfig(providers=("cpu", "cuda"), iters=5, warmup=2, profile=True,
                                               profile_runs=2))
    cpu, cuda = report.runs
    assert cuda.provider == "cuda" and cuda.execution_providers[0] == "CUDAExecutionProvider"
    assert cuda.models[1].agreement[0].rel_error == pytest.approx(cpu.models[1].agreement[0].rel_error, abs=1e-4)
    assert cuda.models[0].memory.device_mb is not None
    assert cuda.models[0].profile is not None and cuda.models[0].profile.nodes


def test_package_reexports_and_modules_share_only_public_names() -> None:
    """onnxconv.bench is split by concern (config, runners, timing, profile, render); callers keep importing from
    the package, and no module reaches into another's private names."""
    import ast
    import importlib
    from pathlib import Path

    for name in B.__all__:
        assert getattr(B, name) is not None, name
    package = Path(B.__file__).parent
    for path in sorted(package.glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.level == 1:
                private = [a.name for a in node.names if a.name.startswith("_")]
                assert private == [], f"{path.name} imports {private} from .{node.module}"
        module = importlib.import_module(f"onnxconv.bench.{path.stem}") if path.stem != "__init__" else B
        assert all(hasattr(module, n) for n in getattr(module, "__all__", [])), path.name

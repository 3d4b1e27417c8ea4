"""tools/: the helpers the benchmark scripts share (tools/_common.py) and the pieces of the scripts that now call
the library instead of re-writing it (kernel selection, chain MACs, stacked shuffles, the MAC cross-check).

Everything here is figures and structure, never time: no assertion depends on how fast anything ran.
"""

from __future__ import annotations

import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxconv import compare
from onnxconv.bench import Memory, ModelResult, SpeedUp, timing_stats
from onnxconv.stats import analyze
from tools import _common, archs, bench_separate, bench_shuffle, crosscheck_real

from .modelkit import init, make_model, tensor

MODELS = Path(__file__).resolve().parent.parent / "models"


def _result(speedup: SpeedUp | None) -> ModelResult:
    return ModelResult(name="m", session_s=0.0, first_run_s=0.0, timing=timing_stats([1.0]),
                       memory=Memory(rss_added_mb=None), speedup=speedup)


# ---- tools/_common.py --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", [(2, 3, 40, 56), (1, 1, 8, 12)])  # under 16 pixels a side too
def test_image_like_is_a_reproducible_batch_in_0_255(shape: tuple[int, int, int, int]) -> None:
    a = _common.image_like(shape, seed=1)
    assert a.shape == shape and a.dtype == np.float32
    assert a.min() >= 0 and a.max() <= 255
    assert np.array_equal(a, _common.image_like(shape, seed=1))
    assert not np.array_equal(a, _common.image_like(shape, seed=2))
    # photo-like: flat regions, so neighbouring pixels are far more alike than in noise of the same spread
    step = np.abs(np.diff(a, axis=-1)).mean()
    assert step < 0.5 * a.std()


def _conv_model(x_shape: list[int | str]) -> onnx.ModelProto:
    w = np.random.default_rng(0).standard_normal((4, x_shape[1], 3, 3)).astype(np.float32)  # type: ignore[arg-type]
    node = helper.make_node("Conv", ["x", "w"], ["y"], name="conv", pads=[1] * 4)
    return make_model([node], [tensor("x", x_shape)], [tensor("y", None)], [init("w", w)])


def test_sample_feeds_are_the_library_noise_and_an_image_of_the_same_shape() -> None:
    sess = compare.session(_conv_model(["N", 3, 20, 24]))
    feeds = _common.sample_feeds(sess, {"x": [2, 3, 20, 24]}, seed=5)
    assert [label for label, _ in feeds] == ["image", "noise"]
    image, noise = feeds[0][1], feeds[1][1]
    expected = compare.make_inputs(sess, {"x": [2, 3, 20, 24]}, seed=5)
    assert np.array_equal(noise["x"], expected["x"])
    assert np.array_equal(image["x"], _common.image_like((2, 3, 20, 24), seed=6))


def test_sample_feeds_without_an_image_input_give_noise_only() -> None:
    model = make_model([helper.make_node("Relu", ["x"], ["y"])], [tensor("x", [2, 5])], [tensor("y", [2, 5])])
    feeds = _common.sample_feeds(compare.session(model))
    assert [label for label, _ in feeds] == ["noise"]


def test_latency_ratio_inverts_the_speedup_and_swaps_its_quartiles() -> None:
    sp = SpeedUp(median=2.0, p10=1.0, p25=1.6, p75=2.5, p90=4.0, rounds=9)
    assert _common.latency_ratio(_result(sp)) == pytest.approx((0.5, 0.4, 0.625))
    assert _common.latency_ratio(_result(None)) == (1.0, 1.0, 1.0)  # the reference model


def test_realised_saving() -> None:
    assert _common.realised_saving(0.5, 0.5) == pytest.approx(1.0)
    assert _common.realised_saving(0.8, 0.6) == pytest.approx(0.5)
    assert _common.realised_saving(1.1, 0.5) == pytest.approx(-0.2)  # slower despite fewer MACs
    assert math.isnan(_common.realised_saving(0.9, 1.0))  # nothing saved: no share to speak of


def test_run_timed_returns_wall_and_cpu_and_raises_on_failure(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    wall, cpu = _common.run_timed([sys.executable, "-c", f"open({str(flag)!r}, 'w').write('x')"], cwd=tmp_path)
    assert flag.read_text() == "x"
    assert wall > 0 and cpu >= 0
    with pytest.raises(subprocess.CalledProcessError):
        _common.run_timed([sys.executable, "-c", "raise SystemExit(3)"])


# ---- the scripts' model pieces -----------------------------------------------------------------------------------


@pytest.mark.parametrize(("kind", "r", "unit_macs"), [
    ("conv", 1, lambda m, hw: 9 * m * m * hw), ("dw", 1, lambda m, hw: 9 * m * hw),
    ("pw", 1, lambda m, hw: m * m * hw), ("pwadd", 1, lambda m, hw: m * m * hw),
    ("wide", 2, lambda m, hw: 2 * 2 * m * m * hw), ("wide", 4, lambda m, hw: 2 * 4 * m * m * hw),
])
def test_kernel_chains_count_the_macs_of_their_unit(kind: str, r: int, unit_macs: object) -> None:
    """bench_separate kernels: the per-unit MACs it now takes from analyze() are the closed forms it used to
    write out (a wide unit is the M -> rM -> M pair)."""
    m, size = 8, 6
    macs = [int(analyze(bench_separate._chain(kind, m, size, n, r), all_ops=True).totals["macs"]) for n in (2, 4)]
    assert (macs[1] - macs[0]) // 2 == unit_macs(m, size * size)  # type: ignore[operator]
    y = compare.run_model(compare.session(bench_separate._chain(kind, m, size, 2, r)),
                          {"input": np.ones((1, m, size, size), np.float32)})
    assert list(y) == ["output"] and next(iter(y.values())).shape == (1, m, size, size)


def test_separable_unit_ratio_is_the_what_if_of_stats() -> None:
    m = 16
    (row,) = analyze(bench_separate._chain("conv", m, 10, 1)).layers
    assert row.whatif is not None
    assert row.whatif["separable"]["macs_ratio"] == pytest.approx((9 * m + m * m) / (9 * m * m))


def test_conv_relu_is_one_biased_3x3_conv() -> None:
    model = bench_separate.conv_relu(8, 12)
    onnx.checker.check_model(model, full_check=True)
    assert model.ir_version == archs.IR_VERSION
    (row,) = analyze(model).layers
    assert row.kernel_shape == [3, 3] and row.pads == [1, 1, 1, 1] and row.has_bias
    assert [n.op_type for n in model.graph.node] == ["Conv", "Relu"]


@pytest.mark.parametrize("k", [1, 3])
def test_stacked_shuffle_before_and_after_relu_compute_the_same_function(k: int) -> None:
    after = bench_shuffle._stack(8, 6, 3, 4, k, "after")
    before = bench_shuffle._stack(8, 6, 3, 4, k, "before")
    for model in (after, before):
        onnx.checker.check_model(model, full_check=True)
    ops = [n.op_type for n in after.graph.node]
    assert ops.count("Conv") == 3 and ops.count("Transpose") == 2 and ops.count("Relu") == 3
    ops_before = [n.op_type for n in before.graph.node]
    assert ops_before.index("Transpose") < ops_before.index("Relu")  # the shuffle comes first there
    feeds = compare.make_inputs(compare.session(after), seed=0)
    (agree,) = compare.compare_outputs(compare.run_model(compare.session(after), feeds),
                                       compare.run_model(compare.session(before), feeds))
    assert agree.rel_error < 1e-6


def test_kernel_filter_reads_kernels_as_stats_does_behind_a_cast() -> None:
    """A 3x3 weight stored in fp16 behind a Cast is a spatial conv (the old filter only looked for initializers
    and Constant nodes, so that conv was in neither selection)."""
    rng = np.random.default_rng(0)
    nodes = [
        helper.make_node("Conv", ["x", "w1"], ["a"], name="pw", kernel_shape=[1, 1]),
        helper.make_node("Cast", ["w2_half"], ["w2"], name="cast", to=TensorProto.FLOAT),
        helper.make_node("Conv", ["a", "w2"], ["y"], name="spatial", kernel_shape=[3, 3], pads=[1] * 4),
    ]
    inits = [init("w1", rng.standard_normal((8, 4, 1, 1)).astype(np.float32)),
             init("w2_half", rng.standard_normal((8, 8, 3, 3)).astype(np.float16))]
    model = make_model(nodes, [tensor("x", [1, 4, 10, 10])], [tensor("y", None)], inits)
    assert bench_shuffle.KernelFilter(model, "pointwise").names == {"pw"}
    spatial = bench_shuffle.KernelFilter(model, "spatial")
    assert spatial.names == {"spatial"}
    assert spatial.reason("spatial") is None and "not a spatial conv" in (spatial.reason("pw") or "")


def test_shape_option_names_the_first_input() -> None:
    model = _conv_model(["N", 3, "H", "W"])
    assert bench_shuffle._shape_option(model, "2x3x8x10") == ([2, 3, 8, 10], {"x": [2, 3, 8, 10]})
    assert bench_shuffle._shape_option(model, None) == (None, None)


@pytest.mark.parametrize("name", ["tiny_cnn.onnx", "tiny_resnet.onnx", "tiny_unet.onnx", "messy_export.onnx"])
def test_crosscheck_agrees_on_the_sample_models(name: str) -> None:
    checks = crosscheck_real.crosscheck(MODELS / name, {})
    assert checks and all(c.ok for c in checks), [c for c in checks if not c.ok]


def test_run_check_runs_an_architecture_with_a_symbolic_batch() -> None:
    out = archs.run_check(archs.build("resnet18", size=32, width=0.125, num_classes=5, batch=None), batch=2)
    assert out["finite"] and 0 < out["std"] <= out["max_abs"]


def test_placement_part_runs_and_prints_its_table(capsys: pytest.CaptureFixture[str]) -> None:
    """bench_shuffle placement end to end on a tiny stack: its Markdown table, one row per kernel size."""
    argv = ["placement", "--channels", "8", "--size", "4", "--layers", "2", "--groups", "2", "--iters", "2"]
    assert bench_shuffle.main(argv) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == f"Command: `python tools/bench_shuffle.py {' '.join(argv)}`"
    rows = [line for line in lines if line.startswith("| 1x1 |") or line.startswith("| 3x3 |")]
    assert len(rows) == 2 and all(row.count("|") == 4 for row in rows)

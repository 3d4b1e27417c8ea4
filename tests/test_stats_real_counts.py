"""Optional: exact totals on trained models whose structure stats once miscounted (realmodels/, skipped when
absent): ddddocr's YOLOX saved by onnxruntime after ORT_ENABLE_ALL (NCHWc convs with padded channels, fused
QuickGelu), and Silero VAD's exports, whose convs sit inside an If on the sample rate (opsets 16 and 18) or
behind a dozen If nodes testing shapes (opset 15).

The oracle for Silero is onnxruntime's profiler: the shapes of the convs that really ran, turned into MACs here
with the formula written out again (``prod(output) * C_in/g * prod(kernel)``), not onnxconv's.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import pytest

from onnxconv.model_io import load_model
from onnxconv.stats import StatsReport, analyze
from tests.modelkit import real_model
from tests.test_cli_stats import stats

pytestmark = pytest.mark.realmodel

#: Conv MACs of ddddocr_det.onnx (YOLOX, 1x3x416x416), unoptimised: what the optimised model must count too.
YOLOX_MACS = 3_179_352_384
#: Silero VAD's 16 kHz network on a 512-sample chunk (state 2x1x128), from onnxruntime's profiler shapes.
SILERO_16K_MACS = 432_896


def _feeds(sr: int) -> dict[str, np.ndarray]:
    """A chunk as silero-vad's own examples feed it: 512 samples at 16 kHz, 256 at 8 kHz, and a zero state."""
    samples = 512 if sr == 16000 else 256
    x = (np.random.default_rng(0).standard_normal((1, samples)) * 0.1).astype(np.float32)
    return {"input": x, "state": np.zeros((2, 1, 128), np.float32), "sr": np.array(sr, np.int64)}


def _profiled_conv_macs(path: Path, feeds: dict[str, np.ndarray], tmp_path: Path) -> int:
    """MACs of the Conv kernels onnxruntime ran, from the shapes its profiler recorded (If branches included)."""
    options = ort.SessionOptions()
    options.enable_profiling = True
    options.profile_file_prefix = str(tmp_path / "profile")
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    options.log_severity_level = 3
    sess = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    sess.run(None, feeds)
    events = json.loads(Path(sess.end_profiling()).read_text())
    total = 0
    for e in events:
        args = e.get("args", {})
        if e.get("cat") == "Node" and args.get("op_name") == "Conv" and e["name"].endswith("_kernel_time"):
            [w] = args["input_type_shape"][1].values()
            [y] = args["output_type_shape"][0].values()
            total += math.prod(y) * w[1] * math.prod(w[2:])
    return total


def _stats_json(path: Path, *args: str) -> dict[str, Any]:
    result = stats(str(path), *args, "--format", "json")
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def _npz(tmp_path: Path, feeds: dict[str, np.ndarray]) -> str:
    out = tmp_path / "in.npz"
    np.savez(out, **feeds)
    return str(out)


def test_optimised_yolox_counts_like_the_original(tmp_path: Path) -> None:
    path = real_model("ddddocr_det.onnx")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.optimized_model_filepath = str(tmp_path / "det_opt.onnx")
    options.log_severity_level = 3
    ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    saved = load_model(tmp_path / "det_opt.onnx")
    assert any(n.domain == "com.microsoft.nchwc" and n.op_type == "Conv" for n in saved.graph.node)
    original, optimised = analyze(load_model(path)), analyze(saved)
    assert original.totals["macs"] == YOLOX_MACS
    assert optimised.totals == original.totals

    def layers(report: StatsReport) -> list[tuple[Any, ...]]:
        return sorted((r.macs, r.flops, r.input_shape, r.output_shape, r.weight_shape, r.group, r.receptive_field)
                      for r in report.layers)

    assert layers(optimised) == layers(original)


@pytest.mark.parametrize("name", ["silero_vad.onnx", "silero_vad_op18_ifless.onnx"])
@pytest.mark.parametrize("sr", [16000, 8000])
def test_silero_vad_counts_the_branch_that_runs(tmp_path: Path, name: str, sr: int) -> None:
    path = real_model(name)
    feeds = _feeds(sr)
    expected = _profiled_conv_macs(path, feeds, tmp_path)
    if sr == 16000:
        assert expected == SILERO_16K_MACS
    out = _stats_json(path, "--inputs", _npz(tmp_path, feeds))
    assert out["totals"]["macs"] == expected and out["totals"]["layers"] == 6 and out["totals"]["uncounted"] == 0
    taken = "then_branch" if sr == 16000 else "else_branch"
    assert all(f"/{taken}" in row["path"] for row in out["layers"]), [row["path"] for row in out["layers"]]
    assert any(f"its {taken} ran in the onnxruntime run" in n and "(6 conv(s) not counted)" in n
               for n in out["notes"]), out["notes"]


def test_silero_vad_without_inputs_names_the_sample_rate(tmp_path: Path) -> None:
    out = _stats_json(real_model("silero_vad.onnx"), "--input-shape", "input=1x512",
                      "--input-shape", "state=2x1x128")
    assert out["totals"]["layers"] == 12  # both branches, as the note says
    (note,) = [n for n in out["notes"] if "both branches" in n]
    assert "value of input 'sr'" in note and "--inputs FILE.npz" in note


def test_silero_vad_opset15_counts_from_input_shapes_alone(tmp_path: Path) -> None:
    """Its convs are top-level; their shapes follow from the input shapes through a Pad computed with Transpose
    and If nodes that test ranks and dims: no input value is needed."""
    path = real_model("silero_vad_16k_op15.onnx")
    out = _stats_json(path, "--input-shape", "input=1x512", "--input-shape", "state=2x1x128")
    assert out["totals"]["macs"] == SILERO_16K_MACS == _profiled_conv_macs(path, _feeds(16000), tmp_path)
    assert out["totals"]["layers"] == 6 and out["totals"]["uncounted"] == 0
    assert not any("If" in n for n in out["notes"]), out["notes"]
    observed = _stats_json(path, "--inputs", _npz(tmp_path, _feeds(16000)))
    assert observed["totals"] == out["totals"]

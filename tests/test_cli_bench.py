"""``onnxconv bench`` through click's CliRunner: formats, one-line errors, exit codes for CI thresholds."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from click.testing import CliRunner

from onnxconv.cli import main
from onnxconv.cli.bench_cmd import THRESHOLD_EXIT
from onnxconv.cli.progress import ProgressBar

from .test_bench import scaled, tiny_net

QUICK = ["--iters", "3", "--warmup", "1", "--progress", "off"]


@pytest.fixture
def models(tmp_path) -> tuple[str, str, str]:
    a, b, c = tmp_path / "a.onnx", tmp_path / "b.onnx", tmp_path / "c.onnx"
    onnx.save(tiny_net(), a)
    onnx.save(scaled(tiny_net(), 1.01), b)  # 1 % off
    onnx.save(tiny_net(), c)  # the same as a
    return str(a), str(b), str(c)


def invoke(*args: str) -> object:
    return CliRunner().invoke(main, ["bench", *args])


def test_table_output(models) -> None:
    a, b, _ = models
    r = invoke(a, b, *QUICK, "--threads", "1")
    assert r.exit_code == 0, r.output
    assert "provider cpu (CPUExecutionProvider)" in r.stdout and "3 rounds timed interleaved" in r.stdout
    assert "1.000x (reference)" in r.stdout and "output agreement with" in r.stdout
    assert r.stderr == ""


def test_json_output_is_the_library_report(models) -> None:
    a, b, _ = models
    r = invoke(a, b, *QUICK, "--format", "json", "--batch", "2", "--seed", "3", "--spinning", "on")
    assert r.exit_code == 0, r.output
    data = json.loads(r.stdout)
    assert data["inputs"] == {"X": [2, 3, 12, 12]} and data["config"]["seed"] == 3
    assert data["runs"][0]["spinning"] is True and data["notes"] == []
    [ag] = data["runs"][0]["models"][1]["agreement"]
    assert ag["rel_error"] == pytest.approx(0.01, rel=0.02)


def test_profile_flag(models) -> None:
    a, _, _ = models
    r = invoke(a, *QUICK, "--profile", "--opt-level", "basic")
    assert r.exit_code == 0, r.output
    assert f"profile of {a} [cpu]" in r.stdout and "GMAC/s" in r.stdout and "conv1" in r.stdout


def test_input_shape_and_inputs_options(models, tmp_path) -> None:
    a, _, c = models
    r = invoke(a, *QUICK, "--input-shape", "X=2x3x12x12", "--format", "json")
    assert r.exit_code == 0, r.output
    assert json.loads(r.stdout)["inputs"] == {"X": [2, 3, 12, 12]}
    np.savez(tmp_path / "x.npz", X=np.zeros((1, 3, 12, 12), np.float32))
    r = invoke(a, c, *QUICK, "--inputs", str(tmp_path / "x.npz"))
    assert r.exit_code == 0 and "from " in r.stdout


def test_unavailable_provider_is_one_error_line(models, monkeypatch) -> None:
    monkeypatch.setattr(ort, "get_available_providers", lambda: ["AzureExecutionProvider", "CPUExecutionProvider"])
    a, _, _ = models
    for name, ep in (("cuda", "CUDAExecutionProvider"), ("tensorrt", "TensorrtExecutionProvider")):
        r = invoke(a, *QUICK, "--provider", "cpu", "--provider", name)
        assert r.exit_code == 1
        assert r.stdout == ""  # nothing timed: the check comes first
        lines = r.stderr.strip().splitlines()
        assert len(lines) == 1 and "Traceback" not in r.stderr
        assert lines[0].startswith(f"Error: provider '{name}' ({ep}) is not available; available: ")
        assert "AzureExecutionProvider, cpu" in lines[0] and "pip install 'onnxconv[gpu]'" in lines[0]


@pytest.mark.skipif("CUDAExecutionProvider" in ort.get_available_providers(), reason="CUDA is available here")
def test_cuda_unavailable_in_this_build(models) -> None:
    r = invoke(models[0], *QUICK, "-p", "cuda")
    assert r.exit_code == 1 and r.stderr.startswith("Error: provider 'cuda'") and r.stderr.count("\n") == 1


@pytest.mark.parametrize("args, message", [
    (["--iters", "3", "--duration", "1"], "exclude each other"),
    (["--iters", "0"], "--iters must be at least 1"),
    (["--duration", "inf"], "--duration must be positive and at most 86400 s"),  # would never end
    (["--fail-if-slower", "0"], "--fail-if-slower must be positive"),
    (["--max-error", "-1"], "--max-output-error must be 0 or more"),  # the old name still works
    (["--input-shape", "X=1xfoo"], "dims must be whole numbers"),
    (["--provider", "tpu"], "--provider tpu: unknown"),
])
def test_bad_options_exit_1_with_one_line(models, args, message) -> None:
    r = invoke(models[0], "--progress", "off", *args)
    assert r.exit_code == 1, r.output
    assert r.stderr.startswith("Error: ") and message in r.stderr and r.stderr.count("\n") == 1


def test_bad_model_files(tmp_path) -> None:
    r = invoke(str(tmp_path / "missing.onnx"), *QUICK)
    assert r.exit_code == 1 and "no such file" in r.stderr and "Traceback" not in r.stderr
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x00garbage" * 10)
    r = invoke(str(junk), *QUICK)
    assert r.exit_code == 1 and r.stderr.startswith("Error: ") and r.stderr.count("\n") == 1


def test_max_error_threshold_exit_code(models) -> None:
    a, b, c = models
    r = invoke(a, b, c, *QUICK, "--max-error", "1e-3")
    assert r.exit_code == THRESHOLD_EXIT
    assert "output agreement with" in r.stdout  # the report is still printed
    fails = [line for line in r.stderr.splitlines() if line.startswith("FAIL: ")]
    assert len(fails) == 1 and f"FAIL: {b} [cpu]: output 'Y' relative error" in fails[0]  # c is a's twin: passes
    r = invoke(a, c, *QUICK, "--max-error", "0")
    assert r.exit_code == 0, r.output


def test_fail_if_slower_threshold_exit_code(models) -> None:
    a, _, c = models
    # R = 0.01 demands a 100x speed-up of a model over its own twin: it must fail.
    r = invoke(a, c, *QUICK, "--fail-if-slower", "0.01")
    assert r.exit_code == THRESHOLD_EXIT and "is below 1/0.01 = 100.000x" in r.stderr
    # R = 100 tolerates anything short of 100x slower.
    assert invoke(a, c, *QUICK, "--fail-if-slower", "100").exit_code == 0


def test_help_lists_the_options() -> None:
    r = CliRunner().invoke(main, ["bench", "--help"])
    assert r.exit_code == 0
    for opt in ("--provider", "--warmup", "--iters", "--duration", "--threads", "--opt-level", "--batch",
                "--input-shape", "--inputs", "--profile", "--isolate", "--spinning", "--format", "--fail-if-slower",
                "--max-error", "Exit status: 0 ok, 1 error"):
        assert opt in r.stdout, opt


def test_progress_bar_waits_a_second_then_draws(capsys, monkeypatch) -> None:
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is drawn on a terminal only
    bar = ProgressBar("on")
    bar("timing", 1, 10)
    assert bar._progress is None  # short runs never show a bar
    bar._start -= 2.0
    bar("timing", 5, 10)
    assert bar._progress is not None and bar._progress.tasks[0].completed == 5
    bar("timing", 10, 10)
    assert bar._progress.tasks[0].completed == 10
    bar.close()
    off = ProgressBar("off")
    off._start -= 2.0
    off("timing", 1, 2)
    assert off._progress is None


def reshape_fails_at_run_time() -> onnx.ModelProto:
    """Loads, then fails in every run: a Reshape of 8 values to 3x5."""
    from onnx import helper

    from .modelkit import init, make_model, tensor

    node = helper.make_node("Reshape", ["X", "S"], ["Y"], name="reshape")
    return make_model([node], [tensor("X", [1, 8])], [tensor("Y", None)],
                      [init("S", np.array([3, 5], np.int64))])


@pytest.mark.parametrize("isolate", [False, True])
def test_run_failure_is_one_quiet_line_with_onnxruntimes_reason(tmp_path, capfd, isolate: bool) -> None:
    """onnxruntime logs a failed kernel on fd 2 (coloured, timestamped) before it raises: only the Error line may
    reach the user, and it carries onnxruntime's reason without the C++ source location."""
    path = tmp_path / "bad.onnx"
    onnx.save(reshape_fails_at_run_time(), path)
    r = invoke(str(path), *QUICK, *(["--isolate"] if isolate else []))
    assert r.exit_code == 1
    [line] = r.stderr.splitlines()
    assert line.startswith("Error: onnxruntime failed to run ") and "cannot be reshaped" in line
    assert ".h:" not in line and "onnxruntime::" not in line and len(line) < 400
    err = capfd.readouterr().err
    assert "onnxruntime:" not in err and "\x1b[" not in err


def test_huge_batch_is_refused_before_allocating(models) -> None:
    """tiny_net's batch is symbolic: --batch 10**9 asks for 10**9 x 3x12x12 float32 = 1.7 TB of inputs."""
    a, _, _ = models
    r = invoke(a, *QUICK, "--batch", "1000000000")
    assert r.exit_code == 1
    [line] = r.stderr.splitlines()
    assert line.startswith("Error: input 'X' of shape 1000000000x3x12x12 (float32) needs 1,728,000,000,000 bytes")


def test_unknown_input_shape_name_is_rejected_like_stats(models) -> None:
    a, _, _ = models
    r = invoke(a, *QUICK, "--input-shape", "bogus=1x3x12x12")
    assert r.exit_code == 1
    assert r.stderr.strip() == "Error: --input-shape: the model has no input 'bogus' (inputs: X)"
    stats = CliRunner().invoke(main, ["stats", a, "--input-shape", "bogus=1x3x12x12"])
    assert stats.exit_code == 1 and stats.stderr == r.stderr  # the same check, the same words


@pytest.mark.parametrize("command, option, value", [
    ("bench", "--batch", "0"), ("stats", "--batch", "0"), ("stats", "--batch", "-2"),
    ("bench", "--threads", "0"), ("bench", "--threads", "100000"),
    ("bench", "--device-id", str(2**62)),  # onnxruntime's binding raised TypeError on a C int overflow (fuzz seed 6)
    ("bench", "--seed", "-1"),  # numpy's default_rng raised ValueError on a negative seed (fuzz seed 9 case 981)
])
def test_out_of_range_counts_are_usage_errors(models, command: str, option: str, value: str) -> None:
    a, _, _ = models
    extra = QUICK if command == "bench" else []
    r = CliRunner().invoke(main, [command, a, *extra, option, value])
    assert r.exit_code == 2 and f"Invalid value for '{option}'" in r.stderr and "Traceback" not in r.output


@pytest.mark.parametrize("command", ["stats", "bench", "separate"])
def test_an_argument_with_a_nul_byte_is_a_usage_error(models, command: str) -> None:
    """Only an in-process caller can pass one (argv cannot hold NUL); a path option's os.stat raised ValueError."""
    a, _, _ = models
    r = CliRunner().invoke(main, [command, "--", a, "x\x00y"])
    assert r.exit_code == 2 and "contains a NUL byte" in r.stderr and "Traceback" not in r.output, r.output
    assert "\x00" not in r.output


def test_progress_off_a_terminal_prints_each_phase_once(capsys, monkeypatch) -> None:
    """--progress on in a log (no terminal): one plain line per new phase, none per update."""
    monkeypatch.setattr(sys.stderr, "isatty", lambda: False)
    bar = ProgressBar("on")
    for i in range(5):
        bar("timing", i, 5)
    bar("plan 2 of at most 5: evil\x1b]0;x\x07", 1, 5)
    bar.close()
    err = capsys.readouterr().err
    assert err.splitlines() == ["... timing", "... plan 2 of at most 5: evil\\x1b]0;x\\x07"]
    assert ProgressBar("auto")._enabled is False  # auto: nothing off a terminal

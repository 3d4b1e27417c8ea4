"""The planner's timer seam: ``--latency-command`` (CommandTimer) and ``bench --format timer``.

A fake "board" (a tiny Python script) stands in for ssh: it answers with a time derived from the model file's
size, so the planner's search is deterministic while every model really goes through the command line, its path
substituted, quoted and read back.
"""

from __future__ import annotations

import json
import shlex
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxconv import planning
from onnxconv.cli import main
from onnxconv.errors import OptionError, TimingError
from onnxconv.planning.timer import CommandTimer, check_latency_command, parse_latency, substitute

from .modelkit import make_model, tensor
from .test_calibrate import smooth_inputs
from .test_plan_search import C, SIZE, four_convs

#: Answers with 1 ms per kB of the model file, after checking that it got exactly one argument naming a file
#: that exists (a path split by the shell, or one whose characters the shell acted on, would not); logs the path.
BOARD = """
import json, os, sys
args = sys.argv[1:]
assert len(args) in (1, 2), args
assert all(os.path.isfile(a) for a in args), args
with open(os.environ["BOARD_LOG"], "a") as log:
    log.write(json.dumps(args) + "\\n")
print("Welcome to the board")  # a login banner: the last line is the answer
print(json.dumps({"median_ms": os.path.getsize(args[0]) / 1000.0, "runs": 5}))
"""


@pytest.fixture
def board(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> str:
    """A command line running the fake board; every scratch file goes under a folder whose name has spaces,
    quotes and shell syntax."""
    script = tmp_path / "board.py"
    script.write_text(BOARD)
    weird = tmp_path / "scratch dir; touch PWNED $(touch PWNED2) 'q' \"dq\""
    weird.mkdir()
    monkeypatch.setenv("TMPDIR", str(weird))
    monkeypatch.setattr(tempfile, "tempdir", None)  # read TMPDIR again
    monkeypatch.setenv("BOARD_LOG", str(tmp_path / "board.log"))
    monkeypatch.chdir(tmp_path)
    return f"{shlex.quote(sys.executable)} -S {shlex.quote(str(script))} {{model}}"


def logged(tmp_path: Path) -> list[list[str]]:
    return [json.loads(line) for line in (tmp_path / "board.log").read_text().splitlines()]


def relu_model() -> onnx.ModelProto:
    return make_model([onnx.helper.make_node("Relu", ["X"], ["Y"])], [tensor("X", ["N", 4])], [tensor("Y", None)])


def test_paths_with_spaces_and_shell_characters_are_one_argument_and_inject_nothing(board: str,
                                                                                    tmp_path: Path) -> None:
    timer = CommandTimer(board, timeout=30, rounds=2)
    seconds, speedup = timer.pair(relu_model(), relu_model(), {"X": np.ones((3, 4), np.float32)})
    assert seconds > 0 and speedup == pytest.approx(1.0)
    paths = logged(tmp_path)
    assert len(paths) == 4  # two models, two rounds
    assert all("scratch dir; touch PWNED" in p[0] for p in paths)
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()
    assert not any(Path(p[0]).exists() for p in paths)  # the scratch files are gone


def test_whole_models_get_the_static_shapes_of_their_inputs(board: str, tmp_path: Path,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """The board runs `onnxconv bench {model}` with no shape options: a symbolic batch is fixed to the feeds'."""
    seen: list[onnx.ModelProto] = []
    timer = CommandTimer(board, timeout=30, rounds=1)
    real = timer._run

    def keep(path: str, inputs: str) -> float:
        seen.append(onnx.load(path))
        return real(path, inputs)

    monkeypatch.setattr(timer, "_run", keep)
    timer.pair(relu_model(), None, {"X": np.ones((3, 4), np.float32)})
    dims = [d.dim_value for d in seen[0].graph.input[0].type.tensor_type.shape.dim]
    assert dims == [3, 4]


def test_inputs_placeholder_gets_an_npz_of_the_feeds(board: str, tmp_path: Path) -> None:
    timer = CommandTimer(board + " {inputs}", timeout=30, rounds=1)
    timer.pair(relu_model(), None, {"X": np.ones((3, 4), np.float32)})
    [[model_path, inputs_path]] = logged(tmp_path)
    assert model_path.endswith(".onnx") and inputs_path.endswith("inputs.npz")


def test_layer_options_are_timed_keep_first_in_alternating_order(board: str, tmp_path: Path) -> None:
    """Rounds run A B C, C B A, ...: drift falls on every option alike; keep is the reference."""
    small = make_model([onnx.helper.make_node("Relu", ["X"], ["Y"])], [tensor("X", [1, 4])], [tensor("Y", None)])
    big = onnx.ModelProto()
    big.CopyFrom(small)
    big.doc_string = "x" * 5000  # a larger file: slower on the fake board
    timer = CommandTimer(board, timeout=30, rounds=3)
    times = timer.layer({planning.KEEP: big, ("rank", 1): small}, "c1")
    assert list(times) == [planning.KEEP, ("rank", 1)]
    assert times[("rank", 1)] < times[planning.KEEP]
    paths = [Path(p[0]).name for p in logged(tmp_path)]
    assert paths == ["model-0.onnx", "model-1.onnx", "model-1.onnx", "model-0.onnx", "model-0.onnx",
                     "model-1.onnx"]


@pytest.mark.parametrize(("command", "message"), [
    ("echo oops >&2; exit 3", r"exited with status 3: oops$"),
    ("echo hello", r"printed no JSON object with median_ms \(last line: hello\)$"),
    ("true", r"printed no JSON object with median_ms \(last line: nothing\)$"),
    ("echo '{\"median_ms\": -1}'", r"printed an object without a positive median_ms"),
    ("echo '{\"median_ms\": \"fast\"}'", r"printed an object without a positive median_ms"),
    ("echo '{\"mean_ms\": 3}'", r"printed an object without a positive median_ms \(median_ms: None\)$"),
])
def test_command_failures_are_one_line(command: str, message: str) -> None:
    timer = CommandTimer(command + " # {model}", timeout=30, rounds=1)
    with pytest.raises(TimingError, match=r"^--latency-command .*: " + message) as e:
        timer.pair(relu_model(), None, {"X": np.ones((1, 4), np.float32)})
    assert "\n" not in str(e.value)


def test_a_timeout_ends_the_whole_command_quickly() -> None:
    """The command's process group is killed: a pipeline that would run for 30 s stops at the timeout."""
    timer = CommandTimer("sleep 30 | cat # {model}", timeout=0.5, rounds=1)
    start = time.monotonic()
    with pytest.raises(TimingError, match=r"no answer within 0\.5 s \(--latency-timeout\)$"):
        timer.pair(relu_model(), None, {"X": np.ones((1, 4), np.float32)})
    assert time.monotonic() - start < 10


def test_a_path_inside_the_users_double_quotes_still_runs_nothing(board: str, tmp_path: Path) -> None:
    """{model} inside double quotes (ssh board "bench {model}"): the path is sh's "$1", whose value is never parsed
    again, so the $(touch ...) in TMPDIR's name stays text."""
    command = 'printf "%s\\n" "--model={model}" > seen.txt; echo \'{"median_ms": 1}\''
    seconds, _ = CommandTimer(command, timeout=30, rounds=1).pair(relu_model(), None, {"X": np.ones((1, 4), np.float32)})
    assert seconds == pytest.approx(0.001)
    seen = (tmp_path / "seen.txt").read_text()
    assert seen.startswith("--model=") and seen.count("\n") == 1  # one word: the path, as text
    assert "scratch dir; touch PWNED $(touch PWNED2) 'q' \"dq\"/onnxconv-timer-" in seen
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "PWNED2").exists()


def test_endless_output_is_stopped_not_buffered() -> None:
    timer = CommandTimer("yes # {model}", timeout=60, rounds=1)
    start = time.monotonic()
    with pytest.raises(TimingError, match=r"printed more than 16 MiB \(one JSON object with median_ms is expected\)$"):
        timer.pair(relu_model(), None, {"X": np.ones((1, 4), np.float32)})
    assert time.monotonic() - start < 30


@pytest.mark.skipif(not Path("/proc/self/cmdline").exists(), reason="reads the process table from /proc (Linux)")
def test_nothing_the_command_started_outlives_its_run() -> None:
    """A background child that holds no pipe would keep running after sh answered: the group is killed."""
    marker = "47.318"
    timer = CommandTimer(f"sleep {marker} >/dev/null 2>&1 & echo '{{\"median_ms\": 1}}' # {{model}}", timeout=30,
                         rounds=1)
    assert timer.pair(relu_model(), None, {"X": np.ones((1, 4), np.float32)})[0] == pytest.approx(0.001)
    time.sleep(0.2)
    alive = []
    for cmdline in Path("/proc").glob("[0-9]*/cmdline"):
        try:
            if marker.encode() in cmdline.read_bytes():
                alive.append(cmdline)
        except OSError:
            pass  # a process that ended while the table was read
    assert not alive


def test_timeouts_beyond_what_the_os_can_wait_are_refused() -> None:
    with pytest.raises(OptionError, match=r"--latency-timeout 3e\+06: must be a number of seconds above 0 and at most"):
        planning.PlanOptions(goal=planning.Goal(target_speedup=1.5),
                             timing=planning.TimingOptions(latency_command="x {model}", latency_timeout=3e6)).validate()
    assert planning.timer.MAX_TIMEOUT_S == 1e6  # the bound cli/options.py writes as a literal
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--latency-timeout", "3e6"])
    assert res.exit_code == 2 and "is not in the range 0<x<=1000000.0" in res.stderr


@pytest.mark.parametrize(("command", "message"), [
    ("onnxconv bench model.onnx", "it must name {model}"),
    ("onnxconv bench '{model}'", "{model} is inside '...', where sh expands nothing"),
    ("run {model} --inputs 'x {inputs}'", "{inputs} is inside '...'"),
    ("""ssh b 'it"s {model}'""", "{model} is inside '...'"),
])
def test_malformed_commands_are_refused_before_any_work(command: str, message: str) -> None:
    with pytest.raises(OptionError, match=message.replace("{", r"\{").replace("}", r"\}")):
        check_latency_command(command)


@pytest.mark.parametrize(("command", "expected"), [
    ("bench {model} --format timer", 'bench "$1" --format timer'),
    ('ssh b "bench {model}"', 'ssh b "bench ${1}"'),
    ('a \\"{model}', 'a \\""$1"'),  # an escaped quote opens nothing
    ("x \"it's {model}\" {inputs}", "x \"it's ${1}\" \"$2\""),
])
def test_placeholders_become_positional_parameters_in_their_quoting_context(command: str, expected: str) -> None:
    assert substitute(command) == expected


def test_parse_takes_the_last_line_after_a_banner() -> None:
    assert parse_latency('banner\n{"median_ms": 2.5}\n', "cmd") == pytest.approx(0.0025)


def test_the_bench_recipe_is_what_the_timer_reads(tmp_path: Path) -> None:
    """`onnxconv bench MODEL --format timer` prints the object --latency-command reads: the README's recipe, run
    here instead of over ssh."""
    command = f"{shlex.quote(sys.executable)} -m onnxconv bench {{model}} --format timer --iters 3 --warmup 1"
    seconds, speedup = CommandTimer(command, timeout=120, rounds=1).pair(relu_model(), None,
                                                                        {"X": np.ones((2, 4), np.float32)})
    assert 0 < seconds < 1 and speedup is None


def test_bench_format_timer_prints_one_object(tmp_path: Path) -> None:
    onnx.save(relu_model(), tmp_path / "m.onnx")
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "m.onnx"), "--format", "timer", "--iters", "3",
                                    "--input-shape", "X=2x4"])
    assert res.exit_code == 0, res.output
    data = json.loads(res.stdout)
    assert set(data) == {"median_ms", "min_ms", "runs", "provider", "onnxruntime"}
    assert data["runs"] == 3 and 0 < data["min_ms"] <= data["median_ms"]
    res = CliRunner().invoke(main, ["bench", str(tmp_path / "m.onnx"), str(tmp_path / "m.onnx"), "--format",
                                    "timer", "--input-shape", "X=2x4"])
    assert res.exit_code == 1 and res.stderr.strip().startswith("Error: --format timer prints one model's time")


# ----------------------------------------------------------------------------------------------------------------
# separate --latency-command: the planner timed through the command


@pytest.fixture
def planned(tmp_path: Path) -> Path:
    rng = np.random.default_rng(0)
    onnx.save(four_convs(rng), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 10, C, SIZE))
    return tmp_path


def test_separate_plans_on_the_command_timings(planned: Path, board: str) -> None:
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--calibration", "cal.npz",
                                    "--target-speedup", "1.3", "--latency-command", board, "--report", "r.json"])
    assert res.exit_code == 0, res.output
    plan = json.loads((planned / "r.json").read_text())["options"]["plan"]
    assert plan["measured"] >= 1.3 * 0.97
    assert "on the --latency-command machine" in res.output and "timed by --latency-command" in res.output
    # Every model the planner timed went through the board: the layers alone (one shape, timed once: cached)
    # and every plan against the original.
    paths = logged(planned)
    assert len(paths) >= 3 * 2 * len(plan["rounds"])
    assert not (planned / "PWNED").exists()


def test_separate_with_a_failing_command_is_one_error_line_and_writes_nothing(planned: Path, board: str) -> None:
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--calibration", "cal.npz",
                                    "--target-speedup", "1.3", "--latency-command", "ssh nowhere.invalid {model}"
                                    " 2>/dev/null; echo 'ssh: connect: no route' >&2; exit 255"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == [
        "Error: --latency-command ssh nowhere.invalid {model} 2>/dev/null; echo 'ssh: connect: no route' >&2; "
        "exit 255: exited with status 255: ssh: connect: no route"]
    assert not (planned / "o.onnx").exists()


def test_latency_command_options_need_the_planner(planned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(planned)
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--rank", "1", "--latency-command",
                                    "x {model}"])
    assert res.exit_code == 1 and "Error: --latency-command times the planner's plans" in res.stderr
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--calibration", "cal.npz",
                                    "--target-speedup", "1.3", "--latency-timeout", "5"])
    assert res.exit_code == 1 and "Error: --latency-timeout applies to --latency-command" in res.stderr
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--calibration", "cal.npz",
                                    "--target-speedup", "1.3", "--latency-command", "run '{model}'"])
    assert res.exit_code == 1 and "{model} is inside '...'" in res.stderr
    assert not (planned / "o.onnx").exists()


# ----------------------------------------------------------------------------------------------------------------
# quantize --latency-command: int8 against fp32 on the board


def test_quantize_times_int8_against_fp32_through_the_command(planned: Path, board: str) -> None:
    res = CliRunner().invoke(main, ["quantize", "m.onnx", "-o", "q.onnx", "--calibration", "cal.npz",
                                    "--max-output-error", "0.2", "--latency-command", board, "--report", "q.json"])
    assert res.exit_code == 0, res.output
    speed = json.loads((planned / "q.json").read_text())["speedup"]
    # The fake board answers by file size: the int8 model is smaller, so faster, by the size ratio.
    ratio = (planned / "board.log").read_text().count("\n")
    assert speed["rounds"] == 5 and ratio == 1 + 2 * 5  # one check of the command, then 5 rounds of both
    assert speed["median"] > 1 and "timed by --latency-command" in res.output


def test_quantize_checks_the_command_before_quantizing(planned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A command that fails fails at once, in one line, with nothing written: not after the search."""
    monkeypatch.chdir(planned)
    res = CliRunner().invoke(main, ["quantize", "m.onnx", "-o", "q.onnx", "--calibration", "cal.npz",
                                    "--latency-command", "echo 'ssh: no route' >&2; exit 255 # {model}"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == ["Error: --latency-command echo 'ssh: no route' >&2; exit 255 # "
                                               "{model}: exited with status 255: ssh: no route"]
    assert not (planned / "q.onnx").exists()
    res = CliRunner().invoke(main, ["quantize", "m.onnx", "-o", "q.onnx", "--calibration", "cal.npz",
                                    "--latency-timeout", "5"])
    assert res.exit_code == 1 and res.stderr.strip() == "Error: --latency-timeout applies to --latency-command"


def test_an_error_budget_plan_checks_the_command_before_the_estimates(planned: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Without a target no plan is timed before the option errors are estimated (a minute on a detector): one
    run on the original comes first, so a broken command fails at once."""
    from onnxconv.planning import planner

    def estimates(*args: object, **kwargs: object) -> None:
        raise AssertionError("the errors were estimated before the command was tried")

    monkeypatch.setattr(planner, "option_errors", estimates)
    monkeypatch.chdir(planned)
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--calibration", "cal.npz",
                                    "--max-output-error", "0.1", "--latency-command", "exit 3 # {model}"])
    assert res.exit_code == 1
    assert res.stderr.strip().splitlines() == ["Error: --latency-command exit 3 # {model}: exited with status 3"]
    assert not (planned / "o.onnx").exists()

"""Data safety of ``onnxconv separate``'s outputs: what -o and --report may be, atomic writes, clean failures.

Every failure here must be one ``Error:`` line with a non-zero exit, leave the input untouched and leave no
temporary file behind.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import stat
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

import onnxconv.model_io as model_io
from onnxconv.cli import main
from onnxconv.errors import OptionError
from onnxconv.planning import planner

from . import plankit
from .test_calibrate import smooth_inputs
from .test_cli_separate import two_conv_model
from .test_plan_search import CURVE, SIZE, C, fake_bench, four_convs


def run(*args: str):  # type: ignore[no-untyped-def]
    return CliRunner().invoke(main, ["separate", *args], catch_exceptions=False)


def digest(p: Path) -> str:
    return hashlib.sha256(p.read_bytes()).hexdigest()


def one_error_line(output: str) -> str:
    lines = [line for line in output.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), output
    assert "Traceback" not in output
    return lines[0]


def no_temp_files(folder: Path) -> None:
    assert [p.name for p in folder.iterdir() if p.name.endswith(".tmp")] == []


@pytest.fixture()
def model_path(tmp_path: Path) -> Path:
    p = tmp_path / "m.onnx"
    onnx.save(two_conv_model(), p)
    return p


def test_report_on_the_input_is_refused_and_the_input_kept(model_path: Path, tmp_path: Path) -> None:
    before = digest(model_path)
    res = run(str(model_path), "-o", str(tmp_path / "out.onnx"), "--rank", "2", "--report", str(model_path))
    assert res.exit_code == 1
    assert "input model" in one_error_line(res.output)
    assert digest(model_path) == before and not (tmp_path / "out.onnx").exists()


def test_report_on_the_input_is_refused_by_identity_not_spelling(model_path: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    before = digest(model_path)
    (tmp_path / "sub").mkdir()
    monkeypatch.chdir(tmp_path / "sub")
    os.link(model_path, tmp_path / "hard.onnx")
    for alias in ("../m.onnx", "../sub/../m.onnx", str(tmp_path / "hard.onnx")):
        res = run(str(model_path), "-o", "out.onnx", "--rank", "2", "--report", alias)
        assert res.exit_code == 1, alias
        assert "input model" in one_error_line(res.output)
    assert digest(model_path) == before


def test_report_on_the_output_model_is_refused(model_path: Path, tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    res = run(str(model_path), "-o", "out.onnx", "--rank", "2", "--report", "./out.onnx")
    assert res.exit_code == 1
    assert "-o model" in one_error_line(res.output)
    assert not (tmp_path / "out.onnx").exists()


def make_target(tmp_path: Path, target: str) -> Path:
    """A non-regular file inside tmp_path: a test of the CLI must never point a (possibly broken) write at a real
    system file such as /dev/null, so devices are stood in for by links to them and by nodes made here."""
    if target == "symlink":
        victim = tmp_path / "victim.txt"
        victim.write_text("keep me")
        path = tmp_path / "link.json"
        path.symlink_to(victim)
    elif target == "link-to-dev-null":
        path = tmp_path / "null.onnx"
        path.symlink_to(os.devnull)
    elif target == "fifo":
        path = tmp_path / "pipe"
        os.mkfifo(path)
    else:  # a folder
        path = tmp_path / "folder.onnx"
        path.mkdir()
    return path


@pytest.mark.parametrize("option", ["-o", "--report"])
@pytest.mark.parametrize("target", ["symlink", "link-to-dev-null", "fifo", "folder"])
def test_output_that_is_not_a_regular_file_is_refused(model_path: Path, tmp_path: Path, option: str,
                                                      target: str) -> None:
    path = make_target(tmp_path, target)
    args = ["-o", str(tmp_path / "out.onnx"), "--report", str(tmp_path / "r.json")]
    args[args.index(option) + 1] = str(path)
    res = run(str(model_path), *args, "--rank", "2")
    assert res.exit_code == 1
    line = one_error_line(res.output)
    assert option in line and any(w in line for w in ("regular file", "symbolic link", "folder"))
    if target == "symlink":
        assert path.is_symlink() and (tmp_path / "victim.txt").read_text() == "keep me"
    if target == "fifo":
        assert not path.is_file() and path.exists()
    assert not (tmp_path / "out.onnx").exists() and not (tmp_path / "r.json").exists()
    no_temp_files(tmp_path)


@pytest.mark.parametrize("path", [os.devnull, "/dev/stdout", "/dev/stderr"])
def test_devices_are_not_output_files(path: str) -> None:
    # The check itself only looks (lstat): it is safe to run on the real device names.
    with pytest.raises(OptionError, match="regular file|symbolic link"):
        model_io.check_output_path(path, "-o")


def save_external(model: onnx.ModelProto, path: Path) -> None:
    onnx.save_model(model, path, save_as_external_data=True, all_tensors_to_one_file=True,
                    location=path.name + ".data", size_threshold=0)


def test_external_data_model_with_a_relative_output(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    save_external(two_conv_model(), tmp_path / "small_ext.onnx")
    monkeypatch.chdir(tmp_path)
    res = run("small_ext.onnx", "-o", "small_out.onnx", "--rank", "2", "--verify")
    assert res.exit_code == 0, res.output
    out = onnx.load(tmp_path / "small_out.onnx", load_external_data=False)
    locations = {e.value for t in out.graph.initializer for e in t.external_data if e.key == "location"}
    assert locations == {"small_out.onnx.data"}
    onnx.checker.check_model(str(tmp_path / "small_out.onnx"))
    no_temp_files(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "small_ext.onnx", "small_ext.onnx.data", "small_out.onnx", "small_out.onnx.data"]


def test_read_only_folder_is_one_error_line(model_path: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ro = tmp_path / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    if os.geteuid() == 0:
        # root ignores the mode bits (and CI runs as root): answer as the kernel answers any other writer there.
        def denied(*args: object, dir: object = None, **kwargs: object) -> object:  # noqa: A002 - tempfile's name
            if dir is not None and Path(str(dir)) == ro:
                raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(dir))
            raise AssertionError("only the read-only folder is written here")

        monkeypatch.setattr(model_io.tempfile, "mkstemp", denied)
        monkeypatch.setattr(model_io.tempfile, "mkdtemp", denied)
    try:
        res = run(str(model_path), "-o", str(ro / "out.onnx"), "--rank", "2")
        assert res.exit_code == 1
        assert "cannot write" in one_error_line(res.output)
        assert list(ro.iterdir()) == []
    finally:
        ro.chmod(0o755)


def test_proc_output_is_one_error_line(model_path: Path) -> None:
    res = run(str(model_path), "-o", "/proc/onnxconv-test.onnx", "--rank", "2")
    assert res.exit_code == 1
    one_error_line(res.output)


@pytest.mark.parametrize("option", ["-o", "--report"])
def test_too_long_file_name_is_one_error_line(model_path: Path, tmp_path: Path, option: str) -> None:
    long = str(tmp_path / ("x" * 300 + ".onnx"))
    args = {"-o": str(tmp_path / "out.onnx"), "--report": str(tmp_path / "r.json")}
    args[option] = long
    res = run(str(model_path), "-o", args["-o"], "--report", args["--report"], "--rank", "2")
    assert res.exit_code == 1
    assert "too long" in one_error_line(res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


@pytest.mark.parametrize("external", [False, True])
def test_full_disk_is_one_error_line_and_leaves_nothing(model_path: Path, tmp_path: Path, external: bool,
                                                        monkeypatch: pytest.MonkeyPatch) -> None:
    def full(*args: object, **kwargs: object) -> None:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    if external:
        save_external(two_conv_model(), model_path)
        monkeypatch.setattr(onnx, "save_model", full)
    else:
        monkeypatch.setattr(model_io, "_write_bytes", full)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = run(str(model_path), "-o", str(tmp_path / "out.onnx"), "--rank", "2", "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 1
    assert "no space left" in one_error_line(res.output)
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --------------------------------------------------------------------------------------------------------------
# Signals: a subprocess signals itself at a chosen point (deterministic, unlike a timer), through an import hook
# or a patched writer, then runs the CLI exactly as `python -m onnxconv` does.

_PRELUDE = """
import importlib.abc, os, runpy, signal, sys, time
sys.path.insert(0, {root!r})
sys.argv = ["onnxconv"] + {argv!r}
# A background job inherits SIGINT ignored and Python keeps it ignored (the CLI honours that, as a shell's
# commands do): these tests signal the child, so they set the dispositions they rely on themselves.
signal.signal(signal.SIGINT, signal.default_int_handler)
signal.signal(signal.SIGTERM, signal.SIG_DFL)
"""

_ON_IMPORT = """
class Hook(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path, target=None):
        if name == {module!r}:
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.1)
        return None
sys.meta_path.insert(0, Hook())
"""

_ON_WRITE = """
import onnx
import onnxconv.model_io as model_io
def slow_write(*args, **kwargs):
    with open(args[1] if isinstance(args[0], onnx.ModelProto) else args[0], "ab") as f:
        f.write(b"partial")
    os.kill(os.getpid(), signal.{signal})
    time.sleep(30)
    raise AssertionError("the signal did not stop the write")
if {external!r}:
    onnx.save_model = slow_write
else:
    model_io._write_bytes = slow_write
"""

_RUN = """
runpy.run_module("onnxconv", run_name="__main__", alter_sys=True)
"""


def run_python(code: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code], cwd=cwd, capture_output=True, text=True, timeout=120)


ROOT = str(Path(__file__).resolve().parents[1])


@pytest.mark.parametrize("module", ["click", "onnx", "onnxconv.passes.separable"])
def test_ctrl_c_during_start_up_imports_exits_130_without_traceback(model_path: Path, tmp_path: Path,
                                                                   module: str) -> None:
    argv = ["separate", str(model_path), "-o", str(tmp_path / "out.onnx"), "--rank", "2"]
    proc = run_python(_PRELUDE.format(root=ROOT, argv=argv) + _ON_IMPORT.format(module=module) + _RUN, tmp_path)
    assert proc.returncode == 130, proc.stderr
    assert "Traceback" not in proc.stderr and "Aborted!" in proc.stderr
    assert not (tmp_path / "out.onnx").exists()


@pytest.mark.parametrize("external", [False, True])
@pytest.mark.parametrize("sig", ["SIGTERM", "SIGINT"])
def test_signal_while_writing_leaves_no_temp_files(model_path: Path, tmp_path: Path, sig: str,
                                                   external: bool) -> None:
    if external:
        save_external(two_conv_model(), model_path)
    before = sorted(p.name for p in tmp_path.iterdir())
    argv = ["separate", str(model_path), "-o", str(tmp_path / "out.onnx"), "--rank", "2",
            "--report", str(tmp_path / "r.json")]
    code = _PRELUDE.format(root=ROOT, argv=argv) + _ON_WRITE.format(signal=sig, external=external) + _RUN
    proc = run_python(code, tmp_path)
    assert proc.returncode == (143 if sig == "SIGTERM" else 130), proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == before


def test_outputs_never_replace_the_inputs_external_data(tmp_path: Path) -> None:
    """The input's weights file is part of the input: neither -o, nor -o's own data file, nor --report may be it."""
    src = tmp_path / "m.onnx"
    save_external(two_conv_model(), src)
    data = tmp_path / "m.onnx.data"
    # The input's data file named o.onnx.data: -o o.onnx would write its weights over it.
    (tmp_path / "m.onnx.data").rename(tmp_path / "o.onnx.data")
    m = onnx.load(src, load_external_data=False)
    for t in m.graph.initializer:
        for e in t.external_data:
            if e.key == "location":
                e.value = "o.onnx.data"
    onnx.save(m, src)
    data = tmp_path / "o.onnx.data"
    before = digest(data)
    for args, message in [
        (["-o", str(tmp_path / "o.onnx")], "would replace the input model's"),
        (["-o", str(data)], "input model's external data file"),
        (["-o", str(tmp_path / "x.onnx"), "--report", str(data)], "input model's external data file"),
        (["-o", str(tmp_path / "x.onnx"), "--report", str(tmp_path / "x.onnx.data")], "-o model's external data"),
    ]:
        res = run(str(src), *args, "--rank", "2")
        assert res.exit_code == 1, (args, res.output)
        assert message in one_error_line(res.output)
        assert digest(data) == before
        assert sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx", "o.onnx.data"]


@pytest.mark.parametrize(("signalled", "code", "line"), [("SIGTERM", 143, "Terminated."), ("SIGINT", 130, "Aborted!")])
def test_signal_wrapped_by_a_c_extensions_import_exits_cleanly(model_path: Path, tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch, signalled: str,
                                                               code: int, line: str) -> None:
    """A signal that lands while onnxruntime's pybind11 module initialises comes back as ImportError("initialization
    failed") caused by the handler's exception (seen by the fuzz tool's signal cases): still exit 130/143, one line,
    no traceback, nothing written."""
    from onnxconv import compare
    from onnxconv.cli import Terminated

    def interrupted_import(*args: object, **kwargs: object) -> None:
        try:
            raise Terminated() if signalled == "SIGTERM" else KeyboardInterrupt()
        except BaseException as e:  # what pybind11's module init does with an error
            raise ImportError("initialization failed") from e

    monkeypatch.setattr(compare, "session", interrupted_import)
    before = sorted(p.name for p in tmp_path.iterdir())
    res = CliRunner().invoke(main, ["separate", str(model_path), "-o", str(tmp_path / "out.onnx"), "--rank", "2",
                                    "--verify", "--report", str(tmp_path / "r.json")], catch_exceptions=False)
    assert res.exit_code == code, res.output
    assert [x for x in res.output.splitlines() if x.strip()] == [line]
    assert sorted(p.name for p in tmp_path.iterdir()) == before


# --------------------------------------------------------------------------------------------------------------
# What the run reads is never an output: -o, --report and --plot may neither be, nor replace a file inside,
# --calibration (a file, or the .npy files of its folder) and --inputs. Planned runs use a fixed latency model
# (tests/test_plan_search.py), so each would finish in a second and overwrite the data if it were not refused.


@pytest.fixture()
def planned(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """m.onnx, calibration data as c.npz and as the folder cal/, inputs in.npz; the planner's timings faked."""
    rng = np.random.default_rng(0)
    onnx.save(four_convs(rng), tmp_path / "m.onnx")
    x = smooth_inputs(rng, 10, C, SIZE)
    np.savez(tmp_path / "c.npz", X=x)
    np.savez(tmp_path / "in.npz", X=x[:2])
    (tmp_path / "cal").mkdir()
    np.save(tmp_path / "cal" / "X.npy", x)
    plankit.fake_timer(monkeypatch, fake_bench(CURVE))
    return tmp_path


def listing(folder: Path) -> dict[str, str]:
    """Every file under ``folder`` with its digest: the data read, and whatever a run left."""
    return {str(p.relative_to(folder)): digest(p) for p in sorted(folder.rglob("*")) if p.is_file()}


#: Each output option onto each kind of data read, as (arguments, the option refused, what it is).
READ_CLASHES = [
    (["-o", "o.onnx", "--calibration", "c.npz", "--plot", "c.npz"], "--plot c.npz", "the --calibration file"),
    (["-o", "c.npz", "--calibration", "c.npz"], "-o c.npz", "the --calibration file"),
    (["-o", "o.onnx", "--calibration", "c.npz", "--report", "c.npz"], "--report c.npz", "the --calibration file"),
    (["-o", "in.npz", "--calibration", "c.npz", "--inputs", "in.npz"], "-o in.npz", "the --inputs file"),
    (["-o", "o.onnx", "--calibration", "c.npz", "--inputs", "in.npz", "--report", "in.npz"], "--report in.npz",
     "the --inputs file"),
    (["-o", "o.onnx", "--calibration", "c.npz", "--inputs", "in.npz", "--plot", "cal/../in.npz"],
     "--plot cal/../in.npz", "the --inputs file"),
    (["-o", "cal/X.npy", "--calibration", "cal"], "-o cal/X.npy", "an .npy file in the --calibration folder"),
    (["-o", "cal/new.npy", "--calibration", "cal"], "-o cal/new.npy", "an .npy file in the --calibration folder"),
    (["-o", "o.onnx", "--calibration", "cal/", "--report", "cal/../cal/X.npy"], "--report cal/../cal/X.npy",
     "an .npy file in the --calibration folder"),
    (["-o", "o.onnx", "--calibration", "cal", "--plot", "cal/X.npy"], "--plot cal/X.npy",
     "an .npy file in the --calibration folder"),
]


# A plan written, and a plan the search refuses (which writes its report; 1.7x: within the quick bound's margin of
# the 1.6x the stand-in timings give the fastest plan).
@pytest.mark.parametrize("target", ["1.4", "1.7"])
@pytest.mark.parametrize(("args", "option", "what"), READ_CLASHES)
def test_outputs_never_replace_what_the_run_reads(planned: Path, monkeypatch: pytest.MonkeyPatch, target: str,
                                                  args: list[str], option: str, what: str) -> None:
    monkeypatch.chdir(planned)
    before = listing(planned)
    res = CliRunner().invoke(main, ["separate", "m.onnx", "--target-speedup", target, *args])
    assert res.exit_code == 1, res.output
    line = one_error_line(res.output)
    assert line == f"Error: {option}: is {what}, which this run reads (choose another file)"
    assert listing(planned) == before


def test_read_clash_is_by_identity_through_a_hard_link(planned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(planned)
    os.link("c.npz", "alias.npz")
    before = listing(planned)
    res = run("m.onnx", "-o", "alias.npz", "--rank", "1", "--calibration", "c.npz")
    assert "is the --calibration file" in one_error_line(res.output)
    assert listing(planned) == before


def test_outputs_beside_the_data_are_still_written(planned: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Only what the run reads is refused: a model and report inside the calibration folder are fine."""
    monkeypatch.chdir(planned)
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "cal/o.onnx", "--target-speedup", "1.4",
                                    "--calibration", "cal", "--report", "cal/r.json"])
    assert res.exit_code == 0, res.output
    assert (planned / "cal" / "o.onnx").is_file() and (planned / "cal" / "r.json").is_file()


# --------------------------------------------------------------------------------------------------------------
# All or nothing: every output is staged beside its destination and renamed in one final step.


@pytest.mark.parametrize(("target", "written"), [("1.4", ["f.png", "o.onnx", "r.json"]), ("1.7", ["f.png", "r.json"])])
def test_report_and_plot_get_the_umasks_permissions(planned: Path, monkeypatch: pytest.MonkeyPatch, target: str,
                                                    written: list[str]) -> None:
    """Like the model, and like a plain open(): 0666 minus the umask, not mkstemp's 0600."""
    monkeypatch.chdir(planned)
    umask = 0o027  # 0640: neither mkstemp's 0600 nor the common 0644
    previous = os.umask(umask)
    try:
        res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--target-speedup", target,
                                        "--calibration", "c.npz", "--report", "r.json", "--plot", "f.png"])
    finally:
        os.umask(previous)
    assert res.exit_code == (0 if target == "1.4" else 1), res.output
    assert sorted(p.name for p in planned.iterdir() if p.name in ("o.onnx", "r.json", "f.png")) == written
    for name in written:
        assert stat.S_IMODE((planned / name).stat().st_mode) == 0o666 & ~umask, name


def test_a_plot_that_cannot_be_written_leaves_no_model_or_report(planned: Path,
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(planned)
    from onnxconv import separate_io

    def broken(*args: object, **kwargs: object) -> bytes:
        raise model_io.OnnxConvError("--plot f.png: cannot draw (simulated)")

    monkeypatch.setattr(separate_io, "frontier_png", broken)  # the name write_result calls
    before = listing(planned)
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "o.onnx", "--target-speedup", "1.4",
                                    "--calibration", "c.npz", "--report", "r.json", "--plot", "f.png"])
    assert res.exit_code == 1
    assert "simulated" in one_error_line(res.output)
    assert listing(planned) == before


_PLANNER = """
from onnxconv.planning import planner
from tests.plankit import FakeTimer
from tests.test_plan_search import CURVE, fake_bench
planner.make_timer = lambda options: FakeTimer(fake_bench(CURVE))
"""

_ON_PLOT = """
import matplotlib.figure
def slow_savefig(*args, **kwargs):
    os.kill(os.getpid(), signal.{signal})
    time.sleep(30)
    raise AssertionError("the signal did not stop the drawing")
matplotlib.figure.Figure.savefig = slow_savefig
"""

_ON_RENAME = """
real_replace = os.replace
def replace(src, dst, *args, **kwargs):
    if str(dst).endswith("r.json"):  # the second rename: the model is in place already
        os.kill(os.getpid(), signal.{signal})
        time.sleep(0.5)  # the handler runs here, in the main thread
    return real_replace(src, dst, *args, **kwargs)
os.replace = replace
"""


def planned_argv(folder: Path) -> list[str]:
    return ["separate", str(folder / "m.onnx"), "-o", str(folder / "o.onnx"), "--target-speedup", "1.4",
            "--calibration", str(folder / "c.npz"), "--report", str(folder / "r.json"), "--plot",
            str(folder / "f.png")]


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_while_the_plot_is_drawn_writes_nothing(planned: Path, sig: str, code: int) -> None:
    before = listing(planned)
    child = _PRELUDE.format(root=ROOT, argv=planned_argv(planned)) + _PLANNER + _ON_PLOT.format(signal=sig) + _RUN
    proc = run_python(child, planned)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len([line for line in proc.stderr.splitlines() if line.strip()]) == 1, proc.stderr
    assert listing(planned) == before


@pytest.mark.parametrize(("sig", "code"), [("SIGINT", 130), ("SIGTERM", 143)])
def test_signal_during_the_final_renames_lets_them_all_finish(planned: Path, sig: str, code: int) -> None:
    """The renames are never cut in two: a signal among them takes effect after the last one."""
    child = _PRELUDE.format(root=ROOT, argv=planned_argv(planned)) + _PLANNER + _ON_RENAME.format(signal=sig) + _RUN
    proc = run_python(child, planned)
    assert proc.returncode == code, proc.stderr
    assert "Traceback" not in proc.stderr
    assert len(onnx.load(planned / "o.onnx").graph.node) > 4  # the rewrite, complete
    assert json.loads((planned / "r.json").read_text())["output"] == str(planned / "o.onnx")
    assert (planned / "f.png").read_bytes().startswith(b"\x89PNG")
    no_temp_files(planned)


def test_an_inherited_ignored_sigint_is_honoured(model_path: Path, tmp_path: Path) -> None:
    """As a shell's commands do, the CLI leaves an ignored SIGINT ignored (a background job's Ctrl-C)."""
    argv = ["separate", str(model_path), "-o", str(tmp_path / "out.onnx"), "--rank", "2"]
    ignore = "signal.signal(signal.SIGINT, signal.SIG_IGN)\n"
    proc = run_python(_PRELUDE.format(root=ROOT, argv=argv) + ignore
                      + _ON_IMPORT.format(module="onnxconv.passes.separable") + _RUN, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out.onnx").is_file()

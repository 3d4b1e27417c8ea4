"""A bounded run of ``tools/fuzz.py``: generated corrupt models, hostile names, misused options and output paths.

The generator and the checks live in the tool (imported from its path, not copied); this runs a fixed seed's
first cases in process (a few seconds) and a few signal cases in subprocesses, and asserts what the project
promises for any input: no traceback, the input never modified, nothing left behind but complete outputs.
A failure message lists each failure class with a reproducer line for ``python tools/fuzz.py --seed S --case I``.
"""

from __future__ import annotations

import importlib.util
import resource
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "fuzz.py"
SEED = 20261201
CASES = 150
SIGNAL_CASES = 3
#: Signals land within this many seconds of the start: during imports, loading, the SVDs or the write.
SIGNAL_WINDOW = 2.0


def _load_tool() -> ModuleType:
    spec = importlib.util.spec_from_file_location("onnxconv_fuzz_tool", TOOL)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


fuzz = _load_tool()


@pytest.fixture(scope="module")
def summary() -> Any:
    # Cases declare dims of 10^12 and --batch 2^62: a bug there must end as a MemoryError (a traceback the
    # run reports), not take the memory of a shared machine.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 8 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        return fuzz.fuzz(CASES, SEED, mode="inprocess", timeout=120.0)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_fuzz_cases_ran(summary: Any) -> None:
    c = summary.counts
    assert c["cases"] == CASES
    # The generator must reach both outcomes, or it is fuzzing nothing but the loader.
    assert c["successes"] > 0 and c["clean errors"] > 0, summary.render(0)


def test_fuzz_no_traceback(summary: Any) -> None:
    assert summary.counts["tracebacks"] == 0, summary.render(0)


def test_fuzz_input_never_changed(summary: Any) -> None:
    assert summary.counts["inputs changed"] == 0, summary.render(0)


def test_fuzz_nothing_left_behind(summary: Any) -> None:
    assert summary.counts["leftovers"] == 0, summary.render(0)


def test_fuzz_signals() -> None:
    s = fuzz.signals(SIGNAL_CASES, SEED, duration=SIGNAL_WINDOW)
    c = s.counts
    assert c["signal cases"] == SIGNAL_CASES
    assert c["signal traceback"] == 0, s.render(0)
    assert c["signal inputs changed"] == 0, s.render(0)
    assert c["signal leftovers"] == 0, s.render(0)
    assert c["signal timeout"] == 0, s.render(0)


def test_cases_are_reproducible() -> None:
    """A reproducer line is only worth printing if (seed, index) gives the same case again."""
    for i in range(20):
        a, b = fuzz.make_case(SEED, i), fuzz.make_case(SEED, i)
        assert (a.command, a.args, a.files, a.links, a.tags) == (b.command, b.args, b.files, b.links, b.tags)
    assert fuzz.make_case(SEED, 0).args != fuzz.make_case(SEED + 1, 0).args or \
        fuzz.make_case(SEED, 0).files != fuzz.make_case(SEED + 1, 0).files


@pytest.mark.parametrize(("code", "stderr", "status"), [
    (0, "", "success"),
    (1, "Error: model.onnx: not an ONNX model\n", "clean error"),
    (2, "Usage: onnxconv stats [OPTIONS] MODEL\nTry 'onnxconv stats -h' for help.\n\nError: Missing argument "
        "'MODEL'.\n", "clean error"),
    (1, "Error: a\nb\n", "unclean error"),  # a name with a newline split the message
    (1, "Error: node '\x1b[2J' is odd\n", "unclean error"),  # a terminal escape in the message
    (1, "\nAborted!\n", "unclean error"),
    (1, "", "unclean error"),
    (1, "Traceback (most recent call last):\n  File \"/x/onnxconv/a.py\", line 3, in f\nValueError: x\n",
     "traceback"),
    (0, "warning\nTraceback (most recent call last):\n  File \"/x/y.py\", line 1, in g\nKeyError: 1\n", "traceback"),
    (3, "FAIL: b.onnx: 1.20x slower\n", "success"),
])
def test_classifier_is_strict(code: int, stderr: str, status: str) -> None:
    assert fuzz.classify_stderr(code, stderr)[0] == status


def test_leftovers_and_changed_inputs_are_seen(tmp_path: Path) -> None:
    """The file checks themselves: a changed input, a *.tmp, an incomplete declared output are all reported."""
    case = fuzz.Case(0, 0, "separate", [], outputs=["out/result.onnx", "out/report.json"])
    (tmp_path / "in").mkdir()
    (tmp_path / "out").mkdir()
    (tmp_path / "in" / "model.onnx").write_bytes(b"model")
    before = fuzz.snapshot(tmp_path)
    (tmp_path / "in" / "model.onnx").write_bytes(b"changed")
    (tmp_path / "out" / ".result.onnx.abc.tmp").write_bytes(b"")
    (tmp_path / "out" / "result.onnx").write_bytes(b"{\"not\": \"a model\"}")
    (tmp_path / "out" / "report.json").write_text("{}")
    changed, leftovers = fuzz._check_files(case, tmp_path, before, fuzz.snapshot(tmp_path))
    assert changed == ["in/model.onnx"]
    assert sorted(leftovers) == ["out/.result.onnx.abc.tmp", "out/result.onnx (incomplete)"]

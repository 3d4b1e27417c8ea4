"""A bounded run of ``tools/fuzz.py``: generated corrupt models, hostile names, misused options and output paths.

The generator and the checks live in the tool (imported from its path, not copied); this runs, in process, the
few cases of a fixed seed's first :data:`POOL` that draw every generator family twice (``covering_cases``:
about 60 cases, a few seconds, where running the whole pool took half a minute) and one SIGINT and one SIGTERM
case in subprocesses, and asserts what the project promises for any input: no traceback, the input never
modified, nothing left behind but complete outputs. ``python tools/fuzz.py --seed 20261201 --cover 600`` runs the
same cases; the tool's thousands of cases per seed are for BENCHMARKS.md, not for the suite.
A failure message lists each failure class with a reproducer line for ``python tools/fuzz.py --seed S --case I``.
"""

from __future__ import annotations

import importlib.util
import resource
import signal
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

TOOL = Path(__file__).resolve().parents[1] / "tools" / "fuzz.py"
SEED = 20261201
#: The cases drawn from: every family the generator has shows up in the first few hundred.
POOL = 600
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
INDICES = fuzz.covering_cases(SEED, POOL)


@pytest.fixture(scope="module")
def summary() -> Any:
    # Cases declare dims of 10^12 and --batch 2^62: a bug there must end as a MemoryError (a traceback the
    # run reports), not take the memory of a shared machine.
    soft, hard = resource.getrlimit(resource.RLIMIT_AS)
    limit = 8 * 2**30
    resource.setrlimit(resource.RLIMIT_AS, (limit if hard == resource.RLIM_INFINITY else min(limit, hard), hard))
    try:
        return fuzz.fuzz(0, SEED, mode="inprocess", timeout=120.0, indices=INDICES)
    finally:
        resource.setrlimit(resource.RLIMIT_AS, (soft, hard))


def test_fuzz_cases_ran(summary: Any) -> None:
    c = summary.counts
    assert c["cases"] == len(INDICES)
    # The generator must reach both outcomes, or it is fuzzing nothing but the loader.
    assert c["successes"] > 0 and c["clean errors"] > 0, summary.render(0)


def test_fuzz_no_traceback(summary: Any) -> None:
    assert summary.counts["tracebacks"] == 0, summary.render(0)


def test_fuzz_input_never_changed(summary: Any) -> None:
    assert summary.counts["inputs changed"] == 0, summary.render(0)


def test_fuzz_nothing_left_behind(summary: Any) -> None:
    assert summary.counts["leftovers"] == 0, summary.render(0)


def test_covering_cases_draw_every_family_of_the_pool() -> None:
    """The bounded run is only as good as its reach: every family in the pool is drawn, twice where the pool
    has it twice in cases that run in process (a family only child-process cases draw, once)."""
    everything: dict[str, int] = {}
    cheap: set[str] = set()
    for i in range(POOL):
        case = fuzz.make_case(SEED, i)
        for f in fuzz.families(case):
            everything[f] = everything.get(f, 0) + 1
            if not case.subprocess_only:
                cheap.add(f)
    chosen: dict[str, int] = {}
    for i in INDICES:
        for f in fuzz.families(fuzz.make_case(SEED, i)):
            chosen[f] = chosen.get(f, 0) + 1
    assert len(everything) > 50
    short = {f: (chosen.get(f, 0), n) for f, n in everything.items()
             if chosen.get(f, 0) < min(n, 2 if f in cheap else 1)}
    assert not short, short
    assert len(INDICES) < POOL // 5 and {"command:stats", "command:separate", "command:bench"} <= set(chosen)


def _signal_indices() -> list[int]:
    """The first SIGINT case and the first SIGTERM case of :data:`SEED` (concurrent writers, signal 0, run two
    whole rewrites; the tool's --signals runs cover them)."""
    first: dict[int, int] = {}
    for i in range(100):
        first.setdefault(fuzz.signal_plan(SEED, i, SIGNAL_WINDOW)[0], i)
    return [first[signal.SIGINT], first[signal.SIGTERM]]


def test_fuzz_signals() -> None:
    indices = _signal_indices()
    s = fuzz.signals(0, SEED, duration=SIGNAL_WINDOW, indices=indices)
    c = s.counts
    assert c["signal cases"] == len(indices) == 2
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


def test_a_declared_output_named_tmp_is_not_a_leftover(tmp_path: Path) -> None:
    """-o x.onnx.tmp is the user's choice of name: complete, it is the output (seed 3 case 1104 was flagged);
    a writer's own temporary file beside it still is a leftover."""
    import onnx

    case = fuzz.Case(0, 0, "separate", [], outputs=["out/x.onnx.tmp"])
    (tmp_path / "out").mkdir()
    before = fuzz.snapshot(tmp_path)
    onnx.save(onnx.load(str(fuzz.MODELS / "tiny_cnn.onnx")), str(tmp_path / "out" / "x.onnx.tmp"))
    (tmp_path / "out" / ".x.onnx.tmp.abc.tmp").write_bytes(b"")
    changed, leftovers = fuzz._check_files(case, tmp_path, before, fuzz.snapshot(tmp_path))
    assert changed == [] and leftovers == ["out/.x.onnx.tmp.abc.tmp"]


def test_cases_run_as_processes_have_no_nul_in_argv() -> None:
    """Popen refuses an argument with a NUL byte (the tool itself died on one in --mode subprocess --seed 2): a
    case run as a process gets its arguments cut at the first NUL, as a real caller's would be; in process the
    NUL still reaches the CLI."""
    with_nul = [i for i in range(400) if any("\0" in a for a in fuzz.make_case(SEED, i).args)]
    assert with_nul, "the generator no longer puts NUL bytes into arguments"
    for i in with_nul:
        assert not any("\0" in a for a in fuzz.make_case(SEED, i, subprocess_mode=True).args)

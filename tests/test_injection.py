"""Hostile names in a model and hostile paths reach no terminal, table, CSV or Markdown raw (issue 10).

A tiny chain of convs whose node, tensor, input and output names carry terminal escapes, newlines, carriage
returns, pipes, spreadsheet formulas and a bidi override goes through every command and format. The same model
with plain names is the reference for the number of lines and rows.
"""

from __future__ import annotations

import sys

import csv
import io
import json
import unicodedata
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxconv.cli import main

from .modelkit import init, make_model, tensor
from .test_text import split_gfm_row

HOSTILE = [
    "osc\x1b]0;title\x07",
    "csi\x1b[2J",
    "nl\nfake row",
    "cr\rx",
    "pipe|x",
    '=HYPERLINK("http://x","y")',
    "+1",
    "@SUM(A1)",
    "bidi\u202eevil",
]
FORMULAS = ('=HYPERLINK("http://x","y")', "+1", "@SUM(A1)")
BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
C = 8  # channels: at least separate's --min-channels, so every conv is rewritten and named in the table


def raw_controls(text: str) -> list[str]:
    """Characters of ``text`` that act on a terminal or break lines (newline itself excepted: it ends lines)."""
    return [ch for ch in text if ch != "\n" and (unicodedata.category(ch) in ("Cc", "Cs") or ch in BIDI
                                                 or ch in "\u2028\u2029")]


def chain(names: list[str], x: str, y: str) -> onnx.ModelProto:
    """x -> Conv(names[0]) -> ... -> Conv(names[-1]) -> y; each conv's output tensor is named after it."""
    rng = np.random.default_rng(0)
    nodes, inits, prev = [], [], x
    for i, name in enumerate(names):
        out = y if i == len(names) - 1 else f"{name}:out"
        w = f"{name}:W"
        inits.append(init(w, rng.standard_normal((C, C, 3, 3)).astype(np.float32) * 0.2))
        nodes.append(helper.make_node("Conv", [prev, w], [out], name=name, pads=[1, 1, 1, 1]))
        prev = out
    return make_model(nodes, [tensor(x, [1, C, 6, 6])], [tensor(y, [1, C, 6, 6])], inits)


@pytest.fixture
def files(tmp_path: Path) -> tuple[str, str]:
    """(hostile, plain): the same convs, with hostile names or with plain ones, in files named the same way."""
    hostile = tmp_path / "evil\x1b]0;pwned\x07\u202e.onnx"
    plain = tmp_path / "plain.onnx"
    onnx.save(chain(HOSTILE, "in\x1b[31m|\n=1", "out\r\x1b[2J@"), hostile)
    onnx.save(chain([f"conv{i}" for i in range(len(HOSTILE))], "in", "out"), plain)
    return str(hostile), str(plain)


def run(*args: str) -> object:
    return CliRunner().invoke(main, list(args))


def ok(*args: str) -> str:
    r = run(*args)
    assert r.exit_code == 0, r.output
    return r.stdout


@pytest.mark.parametrize("fmt", ["table", "markdown"])
def test_stats_text_formats_escape_names(files, fmt: str) -> None:
    hostile, plain = files
    out, ref = ok("stats", hostile, "--format", fmt), ok("stats", plain, "--format", fmt)
    assert raw_controls(out) == []
    assert len(out.splitlines()) == len(ref.splitlines())
    shown = ["osc\\x1b]0;title\\x07", "bidi\\u202eevil", "nl\\nfake row"]
    if fmt == "markdown":  # Markdown source doubles the backslash so that the page shows one
        shown = [s.replace("\\", "\\\\") for s in shown]
    assert all(s in out for s in shown), out


def test_stats_markdown_rows_keep_their_columns(files) -> None:
    hostile, _ = files
    rows = [line for line in ok("stats", hostile, "--format", "markdown").splitlines() if line.startswith("|")]
    assert len(rows) == 2 + len(HOSTILE)
    widths = {len(split_gfm_row(r)) for r in rows}
    assert widths == {len(split_gfm_row(rows[0]))}
    assert "pipe\\|x" in rows[2 + HOSTILE.index("pipe|x")]


def test_stats_csv_parses_and_neutralises_formulas(files) -> None:
    hostile, _ = files
    out = ok("stats", hostile, "--format", "csv")
    assert raw_controls(out) == []
    table = list(csv.reader(io.StringIO(out, newline=""), strict=True))
    assert len(table) == 1 + len(HOSTILE)
    names = [row[table[0].index("name")] for row in table[1:]]
    assert [n for n in names if n[1:] in FORMULAS] == ["'" + f for f in FORMULAS]
    for row in table[1:]:  # no cell a spreadsheet would evaluate; numbers stay numbers
        assert not any(cell.startswith(("=", "+", "@", "-", "\t", "\r")) for cell in row), row
        assert row[table[0].index("macs")].isdigit()


def test_stats_json_keeps_the_exact_names(files) -> None:
    hostile, _ = files
    data = json.loads(ok("stats", hostile, "--format", "json"))
    assert [layer["name"] for layer in data["layers"]] == HOSTILE


def test_separate_table_escapes_names(files, tmp_path: Path) -> None:
    hostile, plain = files
    out = ok("separate", hostile, "-o", str(tmp_path / "h.onnx"), "--rank", "2", "--force")
    ref = ok("separate", plain, "-o", str(tmp_path / "p.onnx"), "--rank", "2", "--force")
    assert raw_controls(out) == []
    assert len(out.splitlines()) == len(ref.splitlines())
    assert "csi\\x1b[2J" in out and out.count("rewritten") == len(HOSTILE) + 1  # + the totals line


def test_bench_table_escapes_names(files) -> None:
    hostile, plain = files
    quick = ["--iters", "2", "--warmup", "0", "--progress", "off", "--threads", "1", "--profile"]
    out = ok("bench", hostile, hostile, *quick)
    ref = ok("bench", plain, plain, *quick)
    assert raw_controls(out) == []
    assert len(out.splitlines()) == len(ref.splitlines())
    assert "evil\\x1b]0;pwned\\x07\\u202e.onnx" in out and "out\\r\\x1b[2J@" in out


def test_bench_json_keeps_the_exact_names(files) -> None:
    hostile, _ = files
    data = json.loads(ok("bench", hostile, "--iters", "1", "--warmup", "0", "--progress", "off", "--format", "json"))
    assert list(data["inputs"]) == ["in\x1b[31m|\n=1"]
    assert data["runs"][0]["models"][0]["name"] == hostile


@pytest.mark.parametrize("args", [
    ["stats", "{p}"],  # missing: onnxconv's own error
    ["stats", "{bad}"],  # not ONNX
    ["separate", "{model}", "-o", "x.onnx", "--rank", "1", "--inputs", "{p}"],  # click.Path(exists=True)
    ["{p}"],  # not a command
])
def test_error_from_a_crafted_path_is_one_line(files, tmp_path: Path, args: list[str]) -> None:
    crafted = str(tmp_path / "m\nError: forged\x1b[2J.onnx")
    bad = tmp_path / "junk\nError: forged.onnx"
    bad.write_bytes(b"\x00not onnx at all")
    r = run(*[a.format(p=crafted, bad=bad, model=files[1]) for a in args])
    assert r.exit_code != 0
    errors = [line for line in r.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1 and "forged" in errors[0], r.stderr
    if args[0] == "stats":  # a library error: nothing but that line
        assert r.stderr.count("\n") == 1
    assert raw_controls(r.stderr) == []
    assert r.exception is None or isinstance(r.exception, SystemExit), r.exception


def test_separate_verify_and_output_lines_escape_names(files, tmp_path: Path) -> None:
    hostile, _ = files
    target = tmp_path / "small\x1b[2J\n.onnx"
    out = ok("separate", hostile, "-o", str(target), "--rank", "2", "--force", "--verify")
    assert raw_controls(out) == []
    assert "verify 'out\\r\\x1b[2J@'" in out and out.splitlines()[-1].endswith("small\\x1b[2J\\n.onnx")
    assert target.exists()  # the file itself has the exact name asked for


def test_bench_threshold_failures_escape_names(files) -> None:
    hostile, _ = files
    r = run("bench", hostile, hostile, "--iters", "2", "--warmup", "0", "--progress", "off", "--threads", "1",
            "--fail-if-slower", "0.0001")
    assert r.exit_code == 3, r.output
    fails = r.stderr.splitlines()
    assert len(fails) == 1 and fails[0].startswith("FAIL: ") and raw_controls(r.stderr) == []


def test_bench_progress_bar_shows_names_as_text(monkeypatch, capsys) -> None:
    from onnxconv.cli.progress import ProgressBar

    monkeypatch.setenv("FORCE_COLOR", "1")  # rich draws as on a terminal
    monkeypatch.setenv("TERM", "xterm")
    monkeypatch.setattr(sys.stderr, "isatty", lambda: True)  # the bar is drawn on a terminal only
    bar = ProgressBar("on")
    bar._start -= 10  # past the first second, when the bar appears
    bar("session evil[reverse]X\x1b]0;pwned\x07\u202e\nY.onnx", 0, 1)
    bar.close()
    err = capsys.readouterr().err
    assert "evil[reverse]X\\x1b]0;pwned\\x07\\u202e\\nY.onnx" in err  # shown, markup and escapes inert
    assert "\x1b]" not in err and "\x1b[7m" not in err and "\u202e" not in err

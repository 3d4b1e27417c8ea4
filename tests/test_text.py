"""onnxconv.text: escaping of untrusted names for terminals, CSV and Markdown."""

from __future__ import annotations

import csv
import io
import string
import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from onnxconv.text import csv_cell, markdown_cell, printable

BIDI = "\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"


def unsafe(ch: str) -> bool:
    """What must never reach a terminal raw: controls (Cc), surrogates, line separators, bidi controls."""
    return unicodedata.category(ch) in ("Cc", "Cs") or ch in BIDI or ch in "\u2028\u2029"


@pytest.mark.parametrize(("raw", "shown"), [
    ("\x1b]0;title\x07", "\\x1b]0;title\\x07"),
    ("\x1b[2J", "\\x1b[2J"),
    ("a\nb\rc\td", "a\\nb\\rc\\td"),
    ("\x00\x7f\x85\x9b", "\\x00\\x7f\\x85\\x9b"),
    ("abc\u202egnp.exe", "abc\\u202egnp.exe"),
    ("\u2066x\u2069\u200e\u200f\u061c", "\\u2066x\\u2069\\u200e\\u200f\\u061c"),
    ("line\u2028para\u2029", "line\\u2028para\\u2029"),
    ("bad\udcff", "bad\\udcff"),  # an undecodable byte of a path (surrogateescape)
    ("conv_1/weight:0", "conv_1/weight:0"),
    ("Ünïcødé 卷积 🙂 \u00a0", "Ünïcødé 卷积 🙂 \u00a0"),  # ordinary Unicode (and NBSP) left alone
])
def test_printable_examples(raw: str, shown: str) -> None:
    assert printable(raw) == shown


@given(st.text())
def test_printable_leaves_no_unsafe_character(s: str) -> None:
    out = printable(s)
    assert not any(unsafe(ch) for ch in out)
    assert printable(out) == out  # escaping twice changes nothing


@given(st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E)))
def test_printable_is_identity_on_printable_ascii(s: str) -> None:
    assert printable(s) == s


@given(st.text(alphabet=st.characters(blacklist_categories=("Cc", "Cs", "Zl", "Zp"))))
def test_printable_is_identity_without_controls(s: str) -> None:
    s = "".join(ch for ch in s if ch not in BIDI)
    assert printable(s) == s


def test_printable_covers_every_control() -> None:
    for code in [*range(0x20), 0x7F, *range(0x80, 0xA0)]:
        assert printable(chr(code)).startswith("\\"), hex(code)
    assert all(printable(ch) == ch for ch in string.printable if ch not in "\t\n\r\x0b\x0c")


@pytest.mark.parametrize(("value", "cell"), [
    ('=HYPERLINK("http://x","y")', '\'=HYPERLINK("http://x","y")'),
    ("+1", "'+1"),
    ("@SUM(A1)", "'@SUM(A1)"),
    ("-2+3+cmd|' /C calc'!A0", "'-2+3+cmd|' /C calc'!A0"),
    ("\t=1", "\\t=1"),  # escaped: no longer starts with a tab
    ("\r=1", "\\r=1"),
    ("conv=1", "conv=1"),  # only the first character matters
    ("-3", "-3"), ("-0.5", "-0.5"),  # plain negative numbers stay numbers
    ("1x3x8x8", "1x3x8x8"),
    ("", ""),
])
def test_csv_cell_text(value: str, cell: str) -> None:
    assert csv_cell(value) == cell


def test_csv_cell_keeps_numbers_numeric() -> None:
    assert csv_cell(-5) == -5 and csv_cell(-0.25) == -0.25 and csv_cell(7) == 7
    assert csv_cell(True) is True and csv_cell(None) == ""


@given(st.text())
def test_csv_cell_is_one_safe_field(s: str) -> None:
    cell = csv_cell(s)
    assert isinstance(cell, str) and not any(unsafe(ch) for ch in cell)
    assert not cell.startswith(("=", "+", "@", "\t", "\r")) and (not cell.startswith("-") or cell.lstrip("-")
                                                                  .replace(".", "", 1).isdigit())
    buf = io.StringIO()
    csv.writer(buf, lineterminator="\n").writerow([cell, 1])
    assert list(csv.reader(io.StringIO(buf.getvalue()))) == [[cell, "1"]]


def split_gfm_row(row: str) -> list[str]:
    """Cells of a GFM table row as a GFM parser splits it: a backslash escapes the next character."""
    cells, cur, i = [], "", 0
    while i < len(row):
        if row[i] == "\\" and i + 1 < len(row):
            cur += row[i:i + 2]
            i += 2
            continue
        if row[i] == "|":
            cells.append(cur)
            cur = ""
        else:
            cur += row[i]
        i += 1
    return cells + [cur]


@pytest.mark.parametrize(("raw", "cell"), [
    ("a|b", "a\\|b"),
    ("a\\|b", "a\\\\\\|b"),
    ("x\ny", "x\\\\ny"),
    ("plain", "plain"),
])
def test_markdown_cell_examples(raw: str, cell: str) -> None:
    assert markdown_cell(raw) == cell


@given(st.text())
def test_markdown_cell_stays_one_cell(s: str) -> None:
    cell = markdown_cell(s)
    assert "\n" not in cell and not any(unsafe(ch) for ch in cell)
    assert split_gfm_row(f"| {cell} | x |") == ["", f" {cell} ", " x ", ""]

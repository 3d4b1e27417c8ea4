"""Make untrusted text (names from model files, paths, option values) safe to print, to put in CSV or Markdown.

A model's node, input and output names are arbitrary protobuf strings. Written as they are, a name can drive the
terminal that shows a table (``ESC ] 0 ; title BEL`` retitles it, ``ESC [ 2 J`` clears it), add fake rows with a
newline, reverse the visible order of a line with a bidi override (U+202E), break a CSV file with a bare ``\\r``,
or run as a formula when a spreadsheet opens the CSV (``=HYPERLINK(...)``). Every human-facing output passes
names and paths through these functions; ``--format json`` keeps the exact names (JSON escapes them itself).

Pure functions of their argument; no imports beyond the standard library, so ``onnxconv stats`` stays light.
"""

from __future__ import annotations

import re
import unicodedata

__all__ = ["printable", "csv_cell", "markdown_cell"]

#: Characters with the Unicode Bidi_Control property: embeddings, overrides, isolates and the implicit marks.
#: They reorder what follows them on screen, so a name can make a line read other than it is.
_BIDI = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")

#: Line and paragraph separators: some terminals and editors break lines at them.
_LINE_BREAKS = frozenset("\u2028\u2029")

_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _unsafe(ch: str) -> bool:
    """C0 and C1 controls and DEL (category Cc), lone surrogates (Cs: a path's undecodable bytes, which would
    also make writing to a UTF-8 stream fail), bidi controls and line/paragraph separators."""
    return ch in _BIDI or ch in _LINE_BREAKS or unicodedata.category(ch) in ("Cc", "Cs")


def _escape(ch: str) -> str:
    if ch in _NAMED:
        return _NAMED[ch]
    code = ord(ch)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


# Fast path: almost every name is plain ASCII without controls.
_PLAIN = re.compile(r"[\x20-\x7e]*")


def printable(s: str) -> str:
    """``s`` with every character that can act on a terminal or break a line shown as a visible escape.

    Escaped: C0 controls (U+0000-U+001F), DEL (U+007F), C1 controls (U+0080-U+009F), lone surrogates, U+2028 and
    U+2029, and the bidi controls (U+061C, U+200E, U+200F, U+202A-U+202E, U+2066-U+2069). Tab, newline and
    carriage return become ``\\t``, ``\\n``, ``\\r``; other characters below U+0100 ``\\xNN``, the rest
    ``\\uNNNN``. Everything else, printable ASCII and ordinary Unicode (accents, CJK, emoji), is left alone, so
    the result is one line that shows every character in its place. Backslashes are not doubled: the result is
    for reading, ``--format json`` is the exact form.
    """
    if _PLAIN.fullmatch(s):
        return s
    return "".join(_escape(ch) if _unsafe(ch) else ch for ch in s)


#: First characters that make a spreadsheet read a cell as a formula (OWASP "CSV injection"): = + - @, and tab /
#: carriage return, which some spreadsheets skip before looking at the next character.
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")

#: A number as onnxconv itself writes one into a text cell: an optional minus, digits, an optional fraction.
_PLAIN_NUMBER = re.compile(r"-?[0-9]+(\.[0-9]+)?")


def csv_cell(v: object) -> object:
    """A value ready for :func:`csv.writer`: numbers and booleans as they are, ``None`` as an empty cell, text
    through :func:`printable` and, when it would start a formula (``= + - @`` or tab/CR first), prefixed by
    ``'`` (the OWASP rule), which spreadsheets show as text and do not evaluate.

    A plain negative number in text form (``-3``, ``-0.5``) is left as it is: a spreadsheet reads it as the
    number it is, never as a formula, and prefixing it would turn the tool's own figures into text.
    """
    if v is None:
        return ""
    if isinstance(v, (bool, int, float)):
        return v
    text = printable(str(v))
    if text.startswith(_FORMULA_START) and not _PLAIN_NUMBER.fullmatch(text):
        return "'" + text
    return text


def markdown_cell(s: str) -> str:
    """``s`` for one cell of a Markdown (GFM) table: :func:`printable` (so no newline ends the row), then ``\\``
    and ``|`` escaped with a backslash, so the cell shows ``s`` and no ``|`` in it starts a new column (an
    unescaped backslash before an escaped pipe would turn the pipe back into a column border)."""
    return printable(s).replace("\\", "\\\\").replace("|", "\\|")

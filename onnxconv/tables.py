"""The plain-text table and the count formatter that every command's human-readable output uses.

``onnxconv stats``, ``separate`` and ``bench`` print aligned columns the same way: a header line, a line of
dashes, one line per row, columns two spaces apart, each line without trailing spaces. Cells are escaped by
:func:`~onnxconv.text.printable` before their widths are measured, since many of them are names taken from
model files. No heavy imports: ``onnxconv stats`` loads this too.
"""

from __future__ import annotations

import textwrap
from collections.abc import Container, Mapping, Sequence

from .text import printable

__all__ = ["format_count", "grid", "shorten"]


def format_count(value: float | int | None) -> str:
    """Human form of a count: 1.23G, 45.6M, 7.89K, 123; '?' for unknown."""
    if value is None:
        return "?"
    v = float(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(int(v)) if v.is_integer() else f"{v:.2f}"


def shorten(text: str, width: int, middle: bool = False) -> str:
    """``text`` cut to ``width`` characters with ``...`` where it was cut: at the end, or in the middle for names
    (whose start and end both tell layers apart: ``/model.22/cv3.2/...conv/Conv``)."""
    if width < 8 or len(text) <= width:
        return text
    if middle:
        head = (width - 3) // 2
        return text[:head] + "..." + text[len(text) - (width - 3 - head):]
    return text[: width - 3] + "..."


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Container[int] = (),
         max_widths: Mapping[int, int] | None = None, middle: Container[int] = (),
         wrap: Container[int] = ()) -> list[str]:
    """``headers``, a line of dashes and ``rows`` as aligned lines: each column as wide as its widest cell,
    columns joined by two spaces, the columns whose index is in ``right`` right-aligned (numbers), the others
    left-aligned, trailing spaces removed. Every cell goes through :func:`~onnxconv.text.printable`, so a name
    with a newline or a terminal escape cannot add a line or drive the terminal, and the widths are those shown.
    ``max_widths`` caps columns (index -> characters), so that a table fits a terminal: a capped cell of a column
    in ``wrap`` continues on the next lines (words kept whole where they fit), any other is cut with ``...`` at
    its end, or in its middle for the columns in ``middle``; the JSON reports keep every cell whole.
    """
    caps = dict(max_widths or {})
    body: list[list[str]] = []
    for row in rows:
        cells = [printable(c) for c in row]
        pieces: dict[int, list[str]] = {}
        for i in list(caps):
            if i >= len(cells) or len(cells[i]) <= caps[i]:
                continue
            if i in wrap:
                pieces[i] = textwrap.wrap(cells[i], caps[i], break_on_hyphens=False) or [""]
                cells[i] = pieces[i][0]
            else:
                cells[i] = shorten(cells[i], caps[i], i in middle)
        body.append(cells)
        for k in range(1, max((len(p) for p in pieces.values()), default=1)):
            body.append(["" if i not in pieces else (pieces[i][k] if k < len(pieces[i]) else "")
                         for i in range(len(cells))])
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(row) for row in body]

"""The plain-text table and the count formatter that every command's human-readable output uses.

``onnxconv stats``, ``separate`` and ``bench`` print aligned columns the same way: a header line, a line of
dashes, one line per row, columns two spaces apart, each line without trailing spaces. Cells are escaped by
:func:`~onnxconv.text.printable` before their widths are measured, since many of them are names taken from
model files. No heavy imports: ``onnxconv stats`` loads this too.
"""

from __future__ import annotations

from collections.abc import Container, Sequence

from .text import printable

__all__ = ["format_count", "grid"]


def format_count(value: float | int | None) -> str:
    """Human form of a count: 1.23G, 45.6M, 7.89K, 123; '?' for unknown."""
    if value is None:
        return "?"
    v = float(value)
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("K", 1e3)):
        if abs(v) >= scale:
            return f"{v / scale:.2f}{unit}"
    return str(int(v)) if v.is_integer() else f"{v:.2f}"


def grid(headers: Sequence[str], rows: Sequence[Sequence[str]], right: Container[int] = ()) -> list[str]:
    """``headers``, a line of dashes and ``rows`` as aligned lines: each column as wide as its widest cell,
    columns joined by two spaces, the columns whose index is in ``right`` right-aligned (numbers), the others
    left-aligned, trailing spaces removed. Every cell goes through :func:`~onnxconv.text.printable`, so a name
    with a newline or a terminal escape cannot add a line or drive the terminal, and the widths are those shown.
    """
    body = [[printable(c) for c in row] for row in rows]
    widths = [max([len(h)] + [len(row[i]) for row in body]) for i, h in enumerate(headers)]

    def line(cells: Sequence[str]) -> str:
        return "  ".join(c.rjust(w) if i in right else c.ljust(w)
                         for i, (c, w) in enumerate(zip(cells, widths))).rstrip()

    return [line(headers), line(["-" * w for w in widths])] + [line(row) for row in body]

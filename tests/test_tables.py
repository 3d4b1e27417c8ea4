"""onnxconv.tables: the one table writer and count formatter of every command."""

from __future__ import annotations

import pytest

from onnxconv import stats
from onnxconv.tables import format_count, grid


def test_grid_aligns_and_strips() -> None:
    lines = grid(["name", "MACs", "note"], [["a", "1.20K", ""], ["long_name", "7", "x"]], right={1})
    assert lines == [
        "name        MACs  note",
        "---------  -----  ----",
        "a          1.20K",
        "long_name      7  x",
    ]


def test_grid_escapes_cells_before_measuring() -> None:
    lines = grid(["n", "v"], [["a\nb\x1b[2J", "1"]], right={1})
    assert len(lines) == 3 and lines[2] == "a\\nb\\x1b[2J  1"
    assert lines[0] == "n" + " " * (len("a\\nb\\x1b[2J") - 1) + "  v"


@pytest.mark.parametrize(("value", "shown"), [
    (None, "?"), (0, "0"), (999, "999"), (1000, "1.00K"), (1_234_567, "1.23M"), (2.5e9, "2.50G"),
    (3e12, "3.00T"), (0.5, "0.50"), (-1500, "-1.50K"),
])
def test_format_count(value: float | None, shown: str) -> None:
    assert format_count(value) == shown


def test_format_count_still_importable_from_stats() -> None:
    assert stats.format_count is format_count

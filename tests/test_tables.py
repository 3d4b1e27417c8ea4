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


def test_grid_caps_columns_cutting_names_and_wrapping_details() -> None:
    name = "/model.22/cv3.2/cv3.2.0/conv/Conv_with_a_long_tail"
    reason = "grouping keeps 52% of the weight energy, below --min-energy 0.95"
    lines = grid(["layer", "details", "MACs"], [[name, reason, "1.2M"]], right={2}, max_widths={0: 20, 1: 24},
                 middle={0}, wrap={1})
    assert all(len(line) <= 20 + 2 + 24 + 2 + 4 for line in lines)
    assert lines[2].startswith("/model.2...long_tail ")  # start and end of the name kept, 20 characters
    # the whole reason is there, over several lines, words whole
    assert " ".join(line[22:22 + 24].strip() for line in lines[2:]) == reason
    assert lines[2].endswith("1.2M") and not lines[3].endswith("1.2M")

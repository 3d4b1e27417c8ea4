"""One row of the stats report: a conv (or, with ``all_ops``, a matrix product or recurrent layer)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

__all__ = ["LayerStats"]


@dataclass
class LayerStats:
    """One row of the report. ``None`` marks a figure that could not be known (``note`` says why)."""

    name: str
    op_type: str
    path: str = ""
    kind: str = ""
    depth_multiplier: int | None = None
    dilated: bool = False
    strided: bool = False
    input_shape: list[int | None] | None = None
    output_shape: list[int | None] | None = None
    weight_shape: list[int] | None = None
    kernel_shape: list[int] | None = None
    strides: list[int] | None = None
    pads: list[int] | None = None
    dilations: list[int] | None = None
    group: int | None = None
    auto_pad: str | None = None
    output_padding: list[int] | None = None
    has_bias: bool = False
    params: int | None = None
    macs: int | None = None
    flops: int | None = None
    share: float | None = None
    receptive_field: list[float] | None = None
    effective_stride: list[float] | None = None
    weight_source: str = ""
    whatif: dict[str, Any] | None = None
    note: str = ""

    @property
    def qualified_name(self) -> str:
        return f"{self.path}/{self.name}" if self.path else self.name

    def add_note(self, text: str) -> None:
        self.note = f"{self.note}; {text}" if self.note else text

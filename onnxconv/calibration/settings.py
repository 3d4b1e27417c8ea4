"""The settings one refit passes to all its stages, with the sampling they share."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from .activations import TensorCache, activations
from .data import CalibrationSet
from .normal import RIDGES
from .patches import draw_positions

__all__ = ["RefitSettings"]


@dataclass(frozen=True)
class RefitSettings:
    """What every stage of one refit shares: the (fitted part of the) calibration set, the sampling and the
    ridge, and how onnxruntime runs (see :func:`refit` for each)."""

    calibration: CalibrationSet
    positions: int = 8192
    check_fraction: float = 0.25
    ridge: float | None = None
    seed: int = 0
    providers: Sequence[str] = ("CPUExecutionProvider",)
    threads: int | None = None

    @property
    def per(self) -> int:
        """Fitted positions per sample and layer."""
        return max(1, math.ceil(self.positions / self.calibration.size))

    @property
    def per_check(self) -> int:
        """Held-out positions per sample and layer."""
        if self.check_fraction <= 0:
            return 0
        return max(1, math.ceil(self.positions * self.check_fraction / self.calibration.size))

    @property
    def ridges(self) -> tuple[float, ...]:
        """The ridges to choose from: the given one, else :data:`~onnxconv.calibration.normal.RIDGES`."""
        return RIDGES if self.ridge is None else (self.ridge,)

    def draw(self, layer: int, sample: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(fitted, held-out) positions of ``sample`` among a layer's ``count`` output positions."""
        return draw_positions((self.seed, layer, sample), count, self.per, self.per_check)

    def activations(self, model: onnx.ModelProto, outputs: Mapping[str, int], first_only: bool = False,
                    cache: TensorCache | None = None,
                    keep: Callable[[frozenset[str]], Collection[str]] | None = None,
                    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """:func:`~onnxconv.calibration.activations.activations` on the calibration set with these settings."""
        return activations(model, outputs, self.calibration, self.providers, self.threads, first_only=first_only,
                           cache=cache, keep=keep)

"""What a refit is asked (:class:`FitOptions`), and the settings one refit passes to all its stages
(:class:`RefitSettings`: the options with the fitted calibration samples, and the sampling they share)."""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import onnx

from ..errors import OptionError
from .activations import TensorCache, activations
from .data import CalibrationSet
from .normal import RIDGES
from .patches import draw_positions

__all__ = ["FitOptions", "RefitSettings"]


@dataclass(frozen=True)
class FitOptions:
    """The knobs of one refit, one object instead of seven keywords (the defaults are what ``separate
    --calibration`` uses). The planner's :class:`onnxconv.planning.RefitOptions` says whether and how each plan
    is refitted; this says how a refit fits.

    Attributes:
        positions: output positions per layer used for the fit (spread over the samples); ``check_fraction``
            times as many more are held out to choose the ridge and report errors.
        check_fraction: see ``positions``; 0 holds no position out (the ridge is then not chosen by error).
        ridge: relative ridge ``lam / mean(diag(X^T X))``; None picks it per layer from
            :data:`~onnxconv.calibration.normal.RIDGES`.
        seed: the seed of the position sampling and of the held-out samples.
        providers: onnxruntime's provider chain for collecting activations (``resolve_provider(...).chain``).
        threads: onnxruntime's intra-op threads (None: its default).
        depthwise: first refactor each separable layer's depthwise kernels to the covariance of the patches it
            reads (:mod:`onnxconv.calibration.depthwise`), then refit its pointwise stage; False keeps the
            weight-only kernels (``--no-kernel-refit``).
    """

    positions: int = 8192
    check_fraction: float = 0.25
    ridge: float | None = None
    seed: int = 0
    providers: Sequence[str] = ("CPUExecutionProvider",)
    threads: int | None = None
    depthwise: bool = True

    def __post_init__(self) -> None:
        # A list given for providers becomes a tuple, so that options stay immutable (and hashable).
        object.__setattr__(self, "providers", tuple(self.providers))

    def validate(self) -> None:
        """Refuse values no refit can use, before any model is run.

        Raises:
            OptionError: bad ``positions``, ``check_fraction`` or ``ridge`` (one line each).
        """
        if self.positions < 1:
            raise OptionError(f"positions {self.positions}: must be at least 1")
        if not 0 <= self.check_fraction <= 1:
            raise OptionError(f"check fraction {self.check_fraction}: must be in [0, 1]")
        if self.ridge is not None and not (self.ridge >= 0 and math.isfinite(self.ridge)):
            raise OptionError(f"ridge {self.ridge}: must be a finite number >= 0")


@dataclass(frozen=True)
class RefitSettings:
    """What every stage of one refit shares: the (fitted part of the) calibration set and the refit's
    :class:`FitOptions` (the sampling, the ridge and how onnxruntime runs)."""

    calibration: CalibrationSet
    options: FitOptions = FitOptions()

    @property
    def per(self) -> int:
        """Fitted positions per sample and layer."""
        return max(1, math.ceil(self.options.positions / self.calibration.size))

    @property
    def per_check(self) -> int:
        """Held-out positions per sample and layer."""
        if self.options.check_fraction <= 0:
            return 0
        return max(1, math.ceil(self.options.positions * self.options.check_fraction / self.calibration.size))

    @property
    def ridges(self) -> tuple[float, ...]:
        """The ridges to choose from: the given one, else :data:`~onnxconv.calibration.normal.RIDGES`."""
        return RIDGES if self.options.ridge is None else (self.options.ridge,)

    def draw(self, layer: int, sample: int, count: int) -> tuple[np.ndarray, np.ndarray]:
        """(fitted, held-out) positions of ``sample`` among a layer's ``count`` output positions."""
        return draw_positions((self.options.seed, layer, sample), count, self.per, self.per_check)

    def activations(self, model: onnx.ModelProto, outputs: Mapping[str, int], first_only: bool = False,
                    cache: TensorCache | None = None,
                    keep: Callable[[frozenset[str]], Collection[str]] | None = None,
                    ) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """:func:`~onnxconv.calibration.activations.activations` on the calibration set with these settings."""
        return activations(model, outputs, self.calibration, self.options.providers, self.options.threads,
                           first_only=first_only, cache=cache, keep=keep)

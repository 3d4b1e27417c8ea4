"""Rank selection for the depthwise-separable rewrite: pure arithmetic on singular values and MAC counts.

A conv weight ``W`` (``C_out x C_in/g x k...``) is factored slice by slice (one slice per input channel, see
:mod:`onnxconv.passes.separable`). Every slice keeps the same number ``r`` of terms, because ``r`` is the depth
multiplier of the depthwise stage. With ``s[m, t]`` the ``t``-th singular value of slice ``m`` (descending):

* **kept energy** ``E(r) = sum_m sum_{t<r} s[m,t]^2 / sum_m sum_t s[m,t]^2``, the share of the squared
  Frobenius norm of ``W`` that rank ``r`` keeps (1 for an all-zero weight);
* **relative weight error** ``||W - W_r||_F / ||W||_F = sqrt(1 - E(r))`` (Eckart-Young, slice by slice);
* **MACs** of the rewrite: ``r * unit`` with ``unit = N * prod(O) * C_in * (prod(k) + C_out/g)``; it saves MACs
  only while ``r * unit`` is below the conv's own MACs ``N * prod(O) * C_out * (C_in/g) * prod(k)``.

:func:`allocate_budget` spends a whole-model MAC budget greedily: each step takes the move (replace a conv by
its largest saving rank, or lower a rank by one) that adds the least relative squared weight error per MAC
saved, until the conv MACs of the model are at most ``budget`` times the original ones. Relative (not absolute)
error is used so that a layer's weight scale, which batch-norm folding makes arbitrary, does not decide.
"""

from __future__ import annotations

import heapq
import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from ..errors import OptionError

__all__ = [
    "RankPolicy",
    "kept_energy",
    "relative_error",
    "rank_for_energy",
    "rank_for_error",
    "largest_saving_rank",
    "BudgetLayer",
    "allocate_budget",
    "exact_tolerance",
]

#: Kept-energy comparisons allow this much float slack, so ``--energy 1`` and ``--max-error 0`` pick the exact
#: rank instead of failing on rounding in the last bits.
_SLACK = 1e-12


@dataclass(frozen=True)
class RankPolicy:
    """How ranks are chosen: ``kind`` is one of rank / energy / exact / max-error / budget.

    ``value`` is the rank ``R`` (an int >= 1), the kept energy ``E`` in (0, 1], the relative weight error ``F``
    in [0, 1), or the budget ``F`` in (0, 1] (a fraction of the model's conv MACs); None for exact.
    """

    kind: str
    value: float | None = None

    KINDS = ("rank", "energy", "exact", "max-error", "budget")

    def __post_init__(self) -> None:
        v = self.value
        if self.kind not in self.KINDS:
            raise OptionError(f"unknown rank policy '{self.kind}' (choose from {', '.join(self.KINDS)})")
        if self.kind == "exact":
            return
        if v is None or not math.isfinite(v):
            raise OptionError(f"--{self.kind} needs a number")
        if self.kind == "rank" and (v < 1 or int(v) != v):
            raise OptionError(f"--rank {v}: must be a whole number >= 1")
        if self.kind == "energy" and not 0 < v <= 1:
            raise OptionError(f"--energy {v}: must be in (0, 1], the fraction of squared singular values kept")
        if self.kind == "max-error" and not 0 <= v < 1:
            raise OptionError(f"--max-error {v}: must be in [0, 1), a relative weight error")
        if self.kind == "budget" and not 0 < v <= 1:
            raise OptionError(f"--budget {v}: must be in (0, 1], a fraction of the original conv MACs")

    def describe(self) -> str:
        return "exact" if self.kind == "exact" else f"{self.kind} {self.value:g}"


def exact_tolerance(dtype: np.dtype, max_rank: int) -> float:
    """Largest relative error, per output channel, of a weight rebuilt from its exact-rank factors stored in
    ``dtype`` that still counts as exact: ``2 * sqrt(q) * eps(dtype) + 64 * q * eps(float64)``, ``q = max_rank``.

    Rounding the ``q`` terms' factors to ``dtype`` perturbs each output channel's weight row by about
    ``eps * sqrt(q)`` times its norm (independent roundings add like a random walk); measured 0.03-0.12 of that
    on random and trained weights in float16 and float32, so the factor 2 leaves a wide margin. The second term
    is the float64 factoring's own rounding (a few ``q * eps`` when measured), which only float64 weights see.
    A weight whose factoring loses more (outliers 1e16 times its other values: the float64 SVD cannot resolve
    the small values next to them) is not reproduced exactly in its own dtype, whatever the rank.
    """
    q = max(int(max_rank), 1)
    return 2.0 * math.sqrt(q) * float(np.finfo(dtype).eps) + 64.0 * q * float(np.finfo(np.float64).eps)


def kept_energy(s: np.ndarray) -> np.ndarray:
    """``E(r)`` for ``r = 0..q`` from singular values ``s`` of shape (slices, q), each row descending."""
    per_term = np.sum(np.asarray(s, dtype=np.float64) ** 2, axis=0)
    total = float(per_term.sum())
    cum = np.concatenate([[0.0], np.cumsum(per_term)])
    if total <= 0.0:
        # An all-zero weight is reproduced by any rank.
        return np.ones_like(cum)
    return np.minimum(cum / total, 1.0)


def relative_error(kept: np.ndarray, r: int) -> float:
    """``sqrt(1 - E(r))``: the relative Frobenius error of the rank-r weight."""
    return math.sqrt(max(0.0, 1.0 - float(kept[r])))


def rank_for_energy(kept: np.ndarray, energy: float) -> int:
    """Smallest ``r >= 1`` with ``E(r) >= energy``."""
    q = len(kept) - 1
    for r in range(1, q + 1):
        if kept[r] >= energy - _SLACK:
            return r
    return q


def rank_for_error(kept: np.ndarray, max_error: float) -> int:
    """Smallest ``r >= 1`` whose relative weight error is at most ``max_error``."""
    return rank_for_energy(kept, 1.0 - max_error * max_error)


def largest_saving_rank(unit_macs: int, conv_macs: int, max_rank: int) -> int:
    """Largest ``r <= max_rank`` with ``r * unit_macs < conv_macs`` (0 when no rank saves MACs).

    Works with per-output-position MACs as well as whole-layer MACs: both sides scale alike.
    """
    if unit_macs <= 0:
        return 0
    return max(0, min(max_rank, (conv_macs - 1) // unit_macs))


@dataclass(frozen=True)
class BudgetLayer:
    """One rewritable conv as the budget allocator sees it."""

    conv_macs: int
    unit_macs: int
    kept: Sequence[float]  # E(r) for r = 0..max_rank


def allocate_budget(layers: Sequence[BudgetLayer], fixed_macs: int, budget: float) -> list[int]:
    """Ranks (0 = leave the conv as it is) that bring the model's conv MACs to at most ``budget`` times the
    original, adding the least relative squared weight error per MAC saved.

    Args:
        layers: the convs that may be rewritten.
        fixed_macs: MACs of the convs that stay as they are whatever the ranks (skipped, depthwise, 1x1, ...).
        budget: the target fraction of ``fixed_macs + sum(conv_macs)``.

    Raises:
        OptionError: even rank 1 everywhere (where it saves MACs) stays above the budget; the message gives the
            smallest fraction that can be reached.
    """
    total = fixed_macs + sum(lay.conv_macs for lay in layers)
    target = budget * total
    ranks = [0] * len(layers)
    current = total
    heap: list[tuple[float, int, int]] = []  # (added error per MAC saved, tie-break, layer index)

    def push(i: int) -> None:
        lay, r = layers[i], ranks[i]
        if r == 0:
            nxt = largest_saving_rank(lay.unit_macs, lay.conv_macs, len(lay.kept) - 1)
            if nxt == 0:
                return
            saved = lay.conv_macs - nxt * lay.unit_macs
            added = 1.0 - lay.kept[nxt]
        elif r > 1:
            saved = lay.unit_macs
            added = lay.kept[r] - lay.kept[r - 1]
        else:
            return
        heapq.heappush(heap, (max(added, 0.0) / saved, i, i))

    for i in range(len(layers)):
        push(i)
    while current > target + 1e-9 * total and heap:
        _, _, i = heapq.heappop(heap)
        lay = layers[i]
        if ranks[i] == 0:
            ranks[i] = largest_saving_rank(lay.unit_macs, lay.conv_macs, len(lay.kept) - 1)
            current -= lay.conv_macs - ranks[i] * lay.unit_macs
        else:
            ranks[i] -= 1
            current -= lay.unit_macs
        push(i)
    if current > target + 1e-9 * total:
        reachable = current / total if total else 1.0
        raise OptionError(
            f"--budget {budget:g}: the smallest reachable is {reachable:.4f} of the conv MACs "
            f"(rank 1 in every layer that can be separated; the rest stays as it is)"
        )
    return ranks

"""Normal equations of a ridge least-squares fit, per group, and the choice of the ridge on held-out positions.

A linear stage (or any option the planner estimates) fits ``[X, 1] A ~ T`` per group. Only ``X^T X`` and ``X^T T``
are accumulated (float64), for the fitted and the held-out positions apart, never the samples. The ridge solution
towards a prior ``A0`` (the weight-only weights) is ``(X^T X + lam I) A = X^T T + lam A0`` with
``lam = ridge * mean(diag(X^T X))``; the held-out error of a solution is ``||X A - T|| / ||T||`` from the held-out
equations: ``(sum A . (X^T X) A - 2 A . X^T T + sum T^2) / sum T^2``, under a square root. The ridge grid shares
one eigendecomposition of each ``X^T X`` where that is cheaper than a solve per ridge
(:meth:`NormalEquations.solutions`).
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import numpy as np

__all__ = ["RIDGES", "EIGH_MAX_D", "EIGH_MIN_RIDGES", "NormalEquations", "RidgeChoice", "best_ridge"]

#: Relative ridges tried when none is given (times the mean diagonal of ``X^T X``): by the refit of a linear
#: stage, the first pointwise step of the kernel refit and the planner's estimate of both.
RIDGES = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

#: :meth:`NormalEquations.solutions` shares an eigendecomposition across the ridges for systems of at most this many
#: unknowns and grids of at least this many ridges (see there: above it an ``eigh`` costs more than the LU solves).
EIGH_MAX_D = 768
EIGH_MIN_RIDGES = 3


@dataclass
class NormalEquations:
    """Per-group ``X^T X``, ``X^T T`` and ``sum T^2`` (float64) for the fitted and the held-out positions.

    ``g`` groups, ``d`` unknowns per output (features and the bias's 1), ``n`` outputs per group.
    """

    g: int
    d: int
    n: int
    fit: list[list[np.ndarray]] = field(default_factory=list)
    check: list[list[np.ndarray]] = field(default_factory=list)
    tt_check: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        self.fit = [[np.zeros((self.d, self.d)), np.zeros((self.d, self.n))] for _ in range(self.g)]
        self.check = [[np.zeros((self.d, self.d)), np.zeros((self.d, self.n))] for _ in range(self.g)]

    def add(self, which: str, gi: int, x: np.ndarray, t: np.ndarray) -> None:
        """Add rows ``x`` (features, without the 1) with targets ``t`` to group ``gi``'s ``which`` ("fit" or
        "check") equations."""
        acc = (self.fit if which == "fit" else self.check)[gi]
        a = np.concatenate([x.astype(np.float64), np.ones((x.shape[0], 1))], axis=1)
        t64 = t.astype(np.float64)
        acc[0] += a.T @ a
        acc[1] += a.T @ t64
        if which == "check":
            self.tt_check += float(np.sum(t64 * t64))
        else:
            self.samples += x.shape[0] if gi == 0 else 0

    def subset(self, idx: np.ndarray) -> NormalEquations:
        """The equations of the unknowns ``idx`` alone (a sub-block: what fitting only those features gives)."""
        sub = NormalEquations(self.g, len(idx), self.n)
        sub.fit = [[xx[np.ix_(idx, idx)], xt[idx]] for xx, xt in self.fit]
        sub.check = [[xx[np.ix_(idx, idx)], xt[idx]] for xx, xt in self.check]
        sub.tt_check = self.tt_check
        return sub

    def check_error(self, coefs: Sequence[np.ndarray]) -> float | None:
        """Relative held-out error ``||X A - T|| / ||T||`` from the normal equations (None without held-out)."""
        if self.tt_check <= 0.0:
            return None
        err = 0.0
        for (xx, xt), a in zip(self.check, coefs):
            err += float(np.sum(a * (xx @ a)) - 2.0 * np.sum(a * xt))
        return math.sqrt(max(0.0, err + self.tt_check) / self.tt_check)

    def _scales(self) -> np.ndarray:
        """Per group, what a relative ridge is multiplied by: the mean diagonal of ``X^T X`` over the features
        (not the bias's 1), or 1 where that is not positive (no features, or all zero)."""
        if self.d <= 1:
            return np.ones(self.g)
        scale = np.array([float(np.mean(np.diag(xx)[:-1])) for xx, _ in self.fit])
        return np.where(scale > 0, scale, 1.0)

    def solve(self, a0: Sequence[np.ndarray], ridge: float) -> list[np.ndarray] | None:
        """Ridge solution towards ``a0`` per group (an LU solve of each system); None when the system is singular
        even with the ridge. :meth:`solutions` gives the same for a whole grid of ridges, cheaper."""
        out = []
        for (xx, xt), prior, scale in zip(self.fit, a0, self._scales()):
            lam = ridge * float(scale)
            try:
                out.append(np.linalg.solve(xx + lam * np.eye(self.d), xt + lam * prior))
            except np.linalg.LinAlgError:
                return None
        return out

    def solutions(self, a0: Sequence[np.ndarray], ridges: Sequence[float],
                  ) -> Iterator[tuple[float, list[np.ndarray] | None]]:
        """(ridge, :meth:`solve`'s solution for it) for each of ``ridges``, sharing one factorisation of each
        group's ``X^T X`` across the ridges where that is cheaper.

        With the eigendecomposition ``X^T X = V diag(s) V^T`` (symmetric), the ridge system is diagonal in ``V``:
        ``A = V diag(1 / (s + lam)) V^T (X^T T + lam A0)``, so every further ridge costs two products instead of
        a factorisation. Measured with OpenBLAS on 1 thread, ``eigh`` costs 3-4 LU solves at ``d`` of a few
        hundred but 6 or more at ``d`` > 1000, so it is used only for at least :data:`EIGH_MIN_RIDGES` ridges and
        ``d <= ``:data:`EIGH_MAX_D`; otherwise each ridge is an LU solve, as in :meth:`solve`. A ridge for which
        some ``s + lam`` is not clearly positive (a system singular to rounding) is solved by :meth:`solve`, so
        the answers, None included, are :meth:`solve`'s up to rounding.
        """
        if len(ridges) < EIGH_MIN_RIDGES or self.d > EIGH_MAX_D or self.g == 0:
            for ridge in ridges:
                yield ridge, self.solve(a0, ridge)
            return
        xx = np.stack([f[0] for f in self.fit])
        try:
            # Groups share one shape: one stacked call. eigh reads one triangle; X^T X is symmetric to rounding.
            s, v = np.linalg.eigh(xx)
            usable = bool(np.all(np.isfinite(s)) and np.all(np.isfinite(v)))
        except np.linalg.LinAlgError:
            usable = False
        if not usable:
            for ridge in ridges:
                yield ridge, self.solve(a0, ridge)
            return
        vt = v.transpose(0, 2, 1)
        vxt = vt @ np.stack([f[1] for f in self.fit])  # (g, d, n)
        vp = vt @ np.stack([np.asarray(p, dtype=np.float64) for p in a0])
        scales = self._scales()
        # Eigenvalues of a PSD matrix are computed to about d * eps * ||X^T X||: below that, s + lam may be 0.
        floor = self.d * np.finfo(np.float64).eps * np.max(np.abs(s), axis=1)
        for ridge in ridges:
            lam = ridge * scales  # (g,)
            den = s + lam[:, None]
            if np.any(den <= floor[:, None]):
                yield ridge, self.solve(a0, ridge)
                continue
            a = v @ ((vxt + lam[:, None, None] * vp) / den[:, :, None])
            yield ridge, list(a)

@dataclass
class RidgeChoice:
    """The chosen ridge, its solution (one matrix per group) and its held-out error (None without held-out)."""

    ridge: float
    coefs: list[np.ndarray]
    error: float | None


def best_ridge(eq: NormalEquations, a0: Sequence[np.ndarray], ridges: Sequence[float] = RIDGES,
               ) -> RidgeChoice | None:
    """The ridge of ``ridges`` whose solution has the least held-out error (the first on ties), or None when every
    system is singular. Without held-out positions there is nothing to choose with: the first solvable ridge."""
    best: RidgeChoice | None = None
    for lam, coefs in eq.solutions(a0, ridges):
        if coefs is None:
            continue
        err = eq.check_error(coefs)
        if err is None:
            return best or RidgeChoice(lam, coefs, None)
        if best is None or best.error is None or err < best.error:
            best = RidgeChoice(lam, coefs, err)
    return best

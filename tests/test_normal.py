"""NormalEquations.solutions (one eigendecomposition shared across the ridge grid) against the LU solve per ridge.

The shared factorisation is a speed-up only: its solutions must equal :meth:`NormalEquations.solve`'s to rounding,
on well- and ill-conditioned systems, and :func:`best_ridge` must choose the same ridge as choosing with ``solve``.
"""

from __future__ import annotations

import numpy as np
import pytest

from onnxconv.calibration import RIDGES, NormalEquations, best_ridge
from onnxconv.calibration import normal


def _system(rng: np.random.Generator, g: int, f: int, n: int, rows: int, noise: float,
            collinear: float = 0.0) -> tuple[NormalEquations, list[np.ndarray]]:
    """Equations of ``t = x w + noise`` per group, fitted and held-out rows apart; ``collinear`` > 0 makes the
    features nearly dependent (half of them copies of the others plus ``collinear`` times noise) and of very
    different scales, so that ``X^T X`` is ill-conditioned."""
    eq = NormalEquations(g, f + 1, n)
    priors = []
    for gi in range(g):
        w = rng.standard_normal((f, n))
        priors.append(np.concatenate([w + 0.3 * rng.standard_normal((f, n)), np.zeros((1, n))]))
        for which, count in (("fit", rows), ("check", rows // 3)):
            x = rng.standard_normal((count, f))
            if collinear:
                h = f // 2
                x[:, h:2 * h] = x[:, :h] + collinear * rng.standard_normal((count, h))
                x *= np.logspace(-3, 2, f)[None, :]
            t = x @ w + noise * rng.standard_normal((count, n)) * np.abs(x @ w).mean()
            eq.add(which, gi, x, t)
    return eq, priors


def _assert_same(eq: NormalEquations, priors: list[np.ndarray], ridges: tuple[float, ...] = RIDGES) -> None:
    got = list(eq.solutions(priors, ridges))
    assert [r for r, _ in got] == list(ridges)
    for ridge, coefs in got:
        ref = eq.solve(priors, ridge)
        assert ref is not None and coefs is not None
        assert len(coefs) == len(ref) == eq.g
        for a, b in zip(coefs, ref):
            assert a.shape == b.shape
            # Relative to the solution's norm: entries near 0 carry the rounding of the large ones.
            assert np.max(np.abs(a - b)) <= 1e-8 * np.max(np.abs(b)), (ridge, np.max(np.abs(a - b)))


@pytest.mark.parametrize("seed", range(4))
def test_solutions_equal_solve_on_random_systems(seed: int) -> None:
    rng = np.random.default_rng(seed)
    eq, priors = _system(rng, g=int(rng.integers(1, 4)), f=int(rng.integers(4, 40)), n=int(rng.integers(1, 9)),
                         rows=200, noise=0.5)
    assert eq.d <= normal.EIGH_MAX_D  # the shared factorisation is what is compared
    _assert_same(eq, priors)


@pytest.mark.parametrize("collinear", [1e-3, 1e-6])
def test_solutions_equal_solve_on_ill_conditioned_systems(collinear: float) -> None:
    rng = np.random.default_rng(7)
    eq, priors = _system(rng, g=2, f=30, n=5, rows=300, noise=0.1, collinear=collinear)
    s = np.linalg.eigvalsh(eq.fit[0][0])
    assert s[-1] / max(s[0], 1e-300) > 1e12  # really ill-conditioned without the ridge
    _assert_same(eq, priors)


def test_solutions_with_rank_deficient_and_zero_systems() -> None:
    """Exactly dependent features and an all-zero system: the ridge makes both solvable, the same way."""
    rng = np.random.default_rng(3)
    eq = NormalEquations(2, 7, 3)
    x = rng.standard_normal((50, 6))
    x[:, 3:] = x[:, :3]  # exact copies
    t = rng.standard_normal((50, 3))
    eq.add("fit", 0, x, t)
    eq.add("fit", 1, np.zeros((50, 6)), t)  # no signal at all: only the bias's 1
    priors = [rng.standard_normal((7, 3)) for _ in range(2)]
    _assert_same(eq, priors)


def test_solutions_fall_back_to_solve_for_large_systems_and_short_grids(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(5)
    eq, priors = _system(rng, g=2, f=20, n=3, rows=100, noise=0.3)
    calls: list[float] = []
    real = NormalEquations.solve

    def counting(self: NormalEquations, a0: list[np.ndarray], ridge: float) -> list[np.ndarray] | None:
        calls.append(ridge)
        return real(self, a0, ridge)

    monkeypatch.setattr(NormalEquations, "solve", counting)
    list(eq.solutions(priors, RIDGES))
    assert calls == []  # one eigendecomposition served every ridge
    list(eq.solutions(priors, (1e-2,)))
    assert calls == [1e-2]  # one ridge: an LU solve is cheaper
    monkeypatch.setattr(normal, "EIGH_MAX_D", eq.d - 1)
    calls.clear()
    list(eq.solutions(priors, RIDGES))
    assert calls == list(RIDGES)


def test_solutions_with_non_finite_equations_match_solve() -> None:
    rng = np.random.default_rng(2)
    eq, priors = _system(rng, g=1, f=5, n=2, rows=40, noise=0.1)
    eq.fit[0][0][1, 1] = np.nan
    for ridge, coefs in eq.solutions(priors, RIDGES):
        ref = eq.solve(priors, ridge)
        assert (coefs is None) == (ref is None)
        if coefs is not None and ref is not None:
            assert np.array_equal(np.isnan(coefs[0]), np.isnan(ref[0]))


def _best_by_solve(eq: NormalEquations, priors: list[np.ndarray]) -> tuple[float, float]:
    """The ridge choice as it was made before the shared factorisation: an LU solve per ridge."""
    errs = []
    for ridge in RIDGES:
        coefs = eq.solve(priors, ridge)
        assert coefs is not None
        err = eq.check_error(coefs)
        assert err is not None
        errs.append((err, ridge))
    err, ridge = min(errs, key=lambda e: e[0])  # min keeps the first on ties, as best_ridge does
    return ridge, err


def test_best_ridge_chooses_as_the_lu_solves_do() -> None:
    chosen = set()
    for seed in range(12):
        rng = np.random.default_rng(100 + seed)
        # Few fitted rows and much noise favour large ridges; many rows and little noise small ones.
        eq, priors = _system(rng, g=int(rng.integers(1, 3)), f=int(rng.integers(5, 30)), n=3,
                             rows=int(rng.choice([40, 400])), noise=float(rng.choice([0.01, 2.0])),
                             collinear=float(rng.choice([0.0, 1e-4])))
        choice = best_ridge(eq, priors)
        assert choice is not None and choice.error is not None
        ridge, err = _best_by_solve(eq, priors)
        assert choice.ridge == ridge
        assert choice.error == pytest.approx(err, rel=1e-8, abs=1e-12)
        chosen.add(ridge)
    assert len(chosen) >= 2  # the systems really exercise the choice

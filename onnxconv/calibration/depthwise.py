"""Calibration refit of a separable layer's depthwise kernels together with its 1x1 stage.

The pointwise refit (:mod:`onnxconv.calibration.refit`) keeps the depthwise kernels of the weight-only SVD, which
are the best rank-r kernels for *white* inputs, and refits only the 1x1 stage. What the layer has to reproduce is the
original output ``T`` on the patches ``x`` the (already refitted) network feeds it::

    min_{D, P, b}  sum_p || t_p - sum_{m,t} P[:, m, t] (D[m, t] . x_pm) - b ||^2

with ``x_pm`` the ``K`` taps of input channel ``m`` at position ``p``, ``D[m, t]`` the depthwise kernel of term
``t`` of channel ``m`` and ``P`` the 1x1 weights. The objective is quadratic in ``(P, b)`` for fixed ``D`` (the
pointwise refit) and in ``D`` for fixed ``(P, b)``, whose normal matrix is the elementwise product
``(P^T P)[(m,t),(m',t')] * (X^T X)[(m,k),(m',k')]``. :func:`alternate` alternates the two exact block
minimisations (Zhang et al.'s asymmetric objective, solved jointly over both stages rather than the last one
only), so the fitted error never rises; the kernel step's system is solved by preconditioned conjugate gradients
from the current kernels to a small residual (:data:`CG_TOLERANCE`), which lowers the quadratic too. Everything
comes from the moments ``X^T X``, ``X^T T`` and ``sum T^2``
of the depthwise *input* patches (with a 1 for the bias), accumulated once: the depthwise outputs are linear in
those patches, so no step needs another run of the model. Held-out positions choose the ridge of the first
pointwise step and the iterate kept (the weight-only start included, so it never ends worse there).
A ridge towards the current solution keeps every solve well posed. Grouped convs are fitted group by group.

Per-channel alternatives measured worse (ddddocr_det, rank 1 everywhere, BENCHMARKS.md "calibration"): choosing
each channel's kernels from its own patch covariance (the whitened SVD of ``S_m C_m^{1/2}``) lowers every layer's
error before the pointwise refit but raises it after: the kernels all turn into similar low-pass filters whose
outputs are redundant across channels. The joint fit sees the channels together.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cached_property
from typing import Any, TypeVar

import numpy as np
import onnx
from onnx import numpy_helper

from ..graph import as_int, attrs_of, node_label
from ..passes.common import LayerChange
from ..passes.separable import Factors, factor_weight, separable_weights
from .normal import RIDGES

__all__ = ["Depthwise", "find_depthwise", "holds_weight_only", "Moments", "alternate", "start", "weights", "ITERATIONS",
           "MAX_UNKNOWNS", "CG_TOLERANCE"]

#: Alternations (a kernel step and a pointwise step each) of :func:`alternate`.
ITERATIONS = 8

#: Most kernel taps per group fitted together (``Mg * r * K``); larger layers get the 1x1 refit alone. The
#: moments grow with the square and the kernel step's solve with the cube of it: on VGG-16 at rank 1 with 8
#: calibration images, a limit of 4608 (every layer) took 160 s and 1.5 GB against 9 s and 0.65 GB for the 1x1
#: refit; 2304 (up to 256 channels at rank 1) takes 28 s and 0.7 GB.
MAX_UNKNOWNS = 2304

#: Relative residual ``||c - H D|| / ||c||`` at which the kernel step's conjugate gradients stop
#: (:func:`_solve_spd`). On the 31 rank-1 layers of ddddocr_det (8 images) the refitted held-out errors are the
#: LU solve's within 4e-5 relative and the alternation takes about half the time (without the LU fallback the
#: errors move by up to 6e-4 at 1e-5 and 1.5e-2 at 1e-4).
CG_TOLERANCE = 1e-6

#: Fewest conjugate-gradient steps tried before the LU solve (small systems, where ``n / 16`` is few).
CG_MIN_STEPS = 32

@dataclass
class Depthwise:
    """The depthwise stage of one separable layer and what is needed to refactor it.

    ``nodes[i]`` is the depthwise conv paired with pointwise conv ``pointwise[i]`` (sum form: branch ``i``; the
    other forms have one pointwise conv and the depthwise convs in :func:`separable_weights`'s order).
    """

    weight: np.ndarray  # the original conv weight (N x M/g x k...), float64
    bias: np.ndarray  # the original bias (N), float64 (zeros without one)
    group: int
    rank: int
    form: str
    nodes: list[onnx.NodeProto]
    pointwise: list[onnx.NodeProto]
    input: str  # the tensor the depthwise stage reads (the original conv's input)
    attrs: dict[str, object]  # the depthwise geometry (strides, dilations, pads, auto_pad)

    @cached_property
    def factors(self) -> Factors:
        """The weight-only factors of the original weight (what the pass emitted; the fit's start)."""
        return factor_weight(self.weight, self.group)

    @property
    def channels(self) -> int:
        return int(self.weight.shape[1]) * self.group

    @property
    def kernel(self) -> tuple[int, ...]:
        return tuple(int(d) for d in self.weight.shape[2:])

    @property
    def unknowns(self) -> int:
        """Kernel taps per group the kernel step fits together: ``Mg * r * K``."""
        return int(self.weight.shape[1]) * self.rank * math.prod(self.kernel)

    @property
    def dw_shape(self) -> tuple[int, ...]:
        """The weight shape of one depthwise conv of multiplier 1 (used for patch sampling)."""
        return (self.channels, 1, *self.kernel)


def _constant(model: onnx.ModelProto, name: str) -> np.ndarray | None:
    for t in model.graph.initializer:
        if t.name == name:
            return numpy_helper.to_array(t)
    for n in model.graph.node:
        if n.op_type == "Constant" and n.output and n.output[0] == name:
            for a in n.attribute:
                if a.name == "value" and a.type == onnx.AttributeProto.TENSOR:
                    return numpy_helper.to_array(a.t)
    return None


def find_depthwise(original: onnx.ModelProto, model: onnx.ModelProto, change: LayerChange,
                   pointwise: Sequence[onnx.NodeProto]) -> Depthwise | str:
    """The depthwise stage of the separable layer ``change`` in ``model``, or why its kernels are left as they are.

    ``pointwise`` are the convs of the layer's linear stage. The stage must still hold the weight-only factors
    of the original weight (a later pass that reordered its channels, or a hand edit, leaves it alone).
    """
    layer, rank, form = change.name, change.rank, change.form
    if rank is None or form is None:
        return "not a separable layer"
    old = next((n for n in original.graph.node if n.op_type == "Conv" and node_label(n) == layer), None)
    if old is None or len(old.input) < 2:
        return "the original conv is not in the main graph"
    w = _constant(original, old.input[1])
    if w is None or w.dtype.kind != "f":
        return "the original weight is not a constant"
    b = np.zeros(w.shape[0])
    if len(old.input) > 2 and old.input[2]:
        bias = _constant(original, old.input[2])
        if bias is None:
            return "the original bias is computed at run time"
        b = bias.astype(np.float64)
    attrs = attrs_of(old)
    group = as_int(attrs.get("group", 1) or 1)
    producers = {o: n for n in model.graph.node for o in n.output if o}
    nodes: list[onnx.NodeProto] = []
    for pw in pointwise:
        prod = producers.get(pw.input[0])
        if prod is not None and prod.op_type == "Concat" and form == "concat":
            nodes.extend(producers[i] for i in prod.input if i in producers)
        elif prod is not None:
            nodes.append(prod)
    if not nodes or any(n.op_type != "Conv" for n in nodes):
        return "the depthwise convs are not found"
    dw_input = nodes[0].input[0]
    tile = producers.get(dw_input)
    if form == "tiled" and tile is not None and tile.op_type == "Concat" and len(set(tile.input)) == 1:
        dw_input = tile.input[0]  # r copies of the input (at rank 1 the depthwise conv reads it directly)
    if any(n.input[0] != nodes[0].input[0] for n in nodes):
        return "the depthwise convs read different tensors"
    if dw_input != old.input[0]:
        # Another pass moved the layer's input (e.g. reordered its channels): the weight no longer lines up.
        return "the layer reads another tensor than the original conv"
    return Depthwise(w.astype(np.float64), b, group, rank, form, nodes, list(pointwise), dw_input, attrs)


def _weights(model: onnx.ModelProto, names: Sequence[str]) -> list[np.ndarray | None]:
    index = {t.name: t for t in model.graph.initializer}
    return [numpy_helper.to_array(index[n]) if n in index else None for n in names]


def holds_weight_only(model: onnx.ModelProto, dw: Depthwise, order: np.ndarray | None = None) -> bool:
    """Whether the stage still holds the weight-only factors of the original weight (in the sum form, its
    branches in any order), with its output channels in ``order`` (a later pass's reordering folded into the 1x1
    weights) when given. A stage changed otherwise (e.g. its input channels reordered) is left alone."""
    want_dw, want_pw = separable_weights(dw.factors, dw.rank, dw.form)
    if order is not None:
        want_pw = [w[order] for w in want_pw]
    have_dw = _weights(model, [n.input[1] for n in dw.nodes])
    have_pw = _weights(model, [n.input[1] for n in dw.pointwise])
    if len(have_dw) != len(want_dw) or len(have_pw) != len(want_pw):
        return False

    def same(have: np.ndarray | None, want: np.ndarray) -> bool:
        if have is None or have.shape != want.shape:
            return False
        tol = 1e-3 if have.dtype == np.float16 else 1e-5
        return bool(np.allclose(have.astype(np.float64), want, rtol=tol,
                                atol=tol * (float(np.abs(want).max()) + 1e-30)))

    if dw.form != "sum":
        return all(same(h, w) for h, w in zip([*have_dw, *have_pw], [*want_dw, *want_pw]))
    free = set(range(len(want_dw)))
    for hd, hp in zip(have_dw, have_pw):
        t = next((t for t in free if same(hd, want_dw[t]) and same(hp, want_pw[t])), None)
        if t is None:
            return False
        free.discard(t)
    return True


class Moments:
    """Per-group sums ``X^T X``, ``X^T T`` (``X`` the depthwise input patches with a 1 appended) and ``sum T^2``.

    One for the fitted positions, one for the held-out ones; float64.
    """

    def __init__(self, group: int, mg: int, taps: int, ng: int) -> None:
        self.group, self.mg, self.taps, self.ng = group, mg, taps, ng
        d = mg * taps + 1
        self.xx = np.zeros((group, d, d))
        self.xt = np.zeros((group, d, ng))
        self.tt = 0.0
        self.n = 0

    def add(self, patches: np.ndarray, t: np.ndarray) -> None:
        """``patches``: ``(S, M, K)`` (:func:`~onnxconv.calibration.patches.sample_patches`), ``t``: ``(S, N)``
        targets.

        With ``X_a = [X, 1]``: ``X_a^T X_a = [[X^T X, X^T 1], [1^T X, S]]`` and ``X_a^T T = [X^T T; 1^T T]``, so
        the column of ones is never built (a copy of every patch as wide as the moments).
        """
        s = patches.shape[0]
        t64 = t.astype(np.float64)
        for gi in range(self.group):
            x = patches[:, gi * self.mg:(gi + 1) * self.mg].reshape(s, -1).astype(np.float64)
            tg = t64[:, gi * self.ng:(gi + 1) * self.ng]
            xx, xt = self.xx[gi], self.xt[gi]
            xx[:-1, :-1] += x.T @ x  # one symmetric product (BLAS syrk): the bulk of the cost
            col = x.sum(axis=0)
            xx[:-1, -1] += col
            xx[-1, :-1] += col
            xx[-1, -1] += s
            xt[:-1] += x.T @ tg
            xt[-1] += tg.sum(axis=0)
        self.tt += float(np.sum(t64 * t64))
        self.n += s


def _project(xx: np.ndarray, xt: np.ndarray, d: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """The moments of the depthwise *outputs* (with their 1): ``(Z X^T X Z^T, Z X^T T)``.

    ``Z`` (``(Mg*r + 1) x (Mg*K + 1)``) maps a depthwise input patch with its 1 to the depthwise outputs with the 1:
    row block ``m`` (``r`` rows) is ``D[m]`` in column block ``m`` (``K`` columns) and zero elsewhere, and
    ``Z[-1, -1] = 1``. Products by the blocks alone cost ``O(Mg^2 K^2 r)`` for ``Z X^T X`` against
    ``O(Mg^3 K^2 r)`` with ``Z`` dense (almost all zeros), and give the same sums up to rounding.
    """
    mg, r, k = d.shape
    rows = mg * r
    zx = np.empty((rows + 1, xx.shape[1]))  # Z X^T X
    zx[:-1] = np.matmul(d, xx[:-1].reshape(mg, k, -1)).reshape(rows, -1)  # block m: D[m] @ (X^T X)[(m, .), :]
    zx[-1] = xx[-1]
    zz = np.empty((rows + 1, rows + 1))  # (Z X^T X) Z^T: column block m is (Z X^T X)[:, (m, .)] @ D[m]^T
    zz[:, :-1] = np.matmul(zx[:, :-1].reshape(rows + 1, mg, k).transpose(1, 0, 2),
                           d.transpose(0, 2, 1)).transpose(1, 0, 2).reshape(rows + 1, rows)
    zz[:, -1] = zx[:, -1]
    zt = np.empty((rows + 1, xt.shape[1]))
    zt[:-1] = np.matmul(d, xt[:-1].reshape(mg, k, -1)).reshape(rows, -1)
    zt[-1] = xt[-1]
    return zz, zt


def _error(mom: Moments, projected: Sequence[tuple[np.ndarray, np.ndarray]], as_: Sequence[np.ndarray],
           ) -> float | None:
    """Relative error ``||T - Y|| / ||T||`` of the layer on ``mom``'s positions, from ``projected`` (per group,
    :func:`_project` of ``mom``'s moments with the kernels) and the pointwise weights and bias ``as_`` per group.

    With ``Y = X Z^T A``: ``||T - Y||^2 = sum T^2 + sum A . (Z X^T X Z^T) A - 2 sum A . (Z X^T T)``, which costs
    ``O((Mg*r)^2 Ng)`` per group from the projected moments (``O((Mg*K)^2 Ng)`` from ``X^T X``).
    """
    if mom.tt <= 0.0:
        return None
    err = mom.tt
    for (zz, zt), a in zip(projected, as_):
        err += float(np.sum(a * (zz @ a)) - 2.0 * np.sum(a * zt))
    return math.sqrt(max(0.0, err) / mom.tt)


def _projections(mom: Moments, ds: Sequence[np.ndarray]) -> list[tuple[np.ndarray, np.ndarray]]:
    """:func:`_project` of every group of ``mom`` with its kernels ``ds``."""
    return [_project(mom.xx[gi], mom.xt[gi], d) for gi, d in enumerate(ds)]


def _p_step(zz: np.ndarray, zt: np.ndarray, prior: np.ndarray, ridge: float) -> np.ndarray | None:
    """Best pointwise weights and bias ``[P^T; b]`` from the projected fitted moments (:func:`_project`), ridge
    towards ``prior``: ``(Z X^T X Z^T + lam I) A = Z X^T T + lam A_prior``, ``lam = ridge * mean(diag)``."""
    scale = float(np.mean(np.diag(zz)[:-1])) or 1.0
    try:
        return np.linalg.solve(zz + ridge * scale * np.eye(len(zz)), zt + ridge * scale * prior)
    except np.linalg.LinAlgError:
        return None


def _d_step(xx: np.ndarray, xt: np.ndarray, d: np.ndarray, a: np.ndarray, ridge: float) -> np.ndarray | None:
    """Best kernels ``d`` (``Mg x r x K``) for pointwise weights and bias ``a``, ridge towards the current ones.

    The layer output is ``sum_{m,t} P[:, m, t] (D[m, t] . x_m) + b``, linear in ``D``: its normal matrix is
    ``H = (P^T P)[(m,t),(m',t')] * (X^T X)[(m,k),(m',k')]`` and its right side
    ``c = sum_n X^T (T - b)[(m,k), n] P[n,(m,t)]``; the step solves ``(H + lam I) D = c + lam D_current`` with
    ``lam = ridge * mean(diag(H))`` by :func:`_solve_spd` (to a relative residual of :data:`CG_TOLERANCE`).
    """
    mg, r, k = d.shape
    p, b = a[:-1].T, a[-1]  # (Ng, Mg*r), (Ng,)
    sxx = xx[:-1, :-1].reshape(mg, k, mg, k)
    xt_b = xt[:-1] - np.outer(xx[:-1, -1], b)  # X^T (T - b)
    g = (p.T @ p).reshape(mg, r, mg, r)
    n = mg * r * k
    h = np.einsum("atbs,akbl->atkbsl", g, sxx, optimize=True).reshape(n, n)
    rhs = np.einsum("mkn,nmt->mtk", xt_b.reshape(mg, k, -1), p.reshape(-1, mg, r), optimize=True).ravel()
    lam = ridge * (float(np.mean(np.diag(h))) or 1.0)
    h.flat[::n + 1] += lam  # h is a fresh array: add the ridge in place rather than build an identity
    sol = _solve_spd(h, rhs + lam * d.ravel(), d.ravel(), mg)
    return None if sol is None else sol.reshape(mg, r, k)


def _solve_spd(h: np.ndarray, rhs: np.ndarray, x0: np.ndarray, blocks: int) -> np.ndarray | None:
    """``h^{-1} rhs`` for a symmetric positive definite ``h``: conjugate gradients from ``x0``, preconditioned by
    the inverses of ``blocks`` equal diagonal blocks of ``h`` (one per channel); an LU solve where they do not
    reach a relative residual ``||rhs - h x|| <= CG_TOLERANCE ||rhs||`` within ``max(CG_MIN_STEPS, n / 8)``
    steps or break down (``h`` singular: then None, as the LU solve says).

    Why: an LU solve costs ``2 n^3 / 3``, with OpenBLAS on one thread as much as 60-100 products ``h v`` at
    ``n`` of 864-1728; started from the current kernels (close to the answer after the first alternation) the
    kernel step converges in about 40 on average on ddddocr_det, the preconditioner taking care of the
    correlation between the ``K`` taps of a channel. Each step of conjugate gradients lowers the quadratic, so
    the alternation stays monotone; the fallback bounds both the cost (about twice an LU solve) and the
    distance from the exact step.
    """
    n = len(rhs)
    q = n // blocks
    try:
        diag = h.reshape(blocks, q, blocks, q)[np.arange(blocks), :, np.arange(blocks), :]  # (blocks, q, q)
        pinv = np.linalg.inv(diag)
    except np.linalg.LinAlgError:
        pinv = None
    if pinv is not None and np.all(np.isfinite(pinv)):
        x = x0.copy()
        res = rhs - h @ x
        z = np.matmul(pinv, res.reshape(blocks, q, 1)).ravel()
        step, rz = z, float(res @ z)
        goal = CG_TOLERANCE * float(np.linalg.norm(rhs))
        for _ in range(max(CG_MIN_STEPS, n // 8)):
            if float(np.linalg.norm(res)) <= goal:
                return x
            hs = h @ step
            curv = float(step @ hs)
            if not curv > 0.0 or not math.isfinite(curv):
                break  # h not positive definite along this direction (singular or indefinite to rounding)
            alpha = rz / curv
            x += alpha * step
            res -= alpha * hs
            z = np.matmul(pinv, res.reshape(blocks, q, 1)).ravel()
            rz, rz_old = float(res @ z), rz
            step = z + (rz / rz_old) * step
        if float(np.linalg.norm(res)) <= goal:
            return x
    try:
        return np.asarray(np.linalg.solve(h, rhs))
    except np.linalg.LinAlgError:
        return None


_T = TypeVar("_T")


def _every(steps: list[_T | None]) -> list[_T] | None:
    """The results of one step for every group, or None when it failed (singular equations) for any group."""
    done = [s for s in steps if s is not None]
    return done if len(done) == len(steps) else None


def _normalise(d: np.ndarray, a: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Unit-norm kernels, their scale moved into the pointwise weights (the product is unchanged)."""
    mg, r, _ = d.shape
    norms = np.linalg.norm(d, axis=2)
    norms[norms == 0] = 1.0
    a = a.copy()
    a[:-1] *= norms.reshape(mg * r, 1)
    return d / norms[:, :, None], a


def alternate(fit: Moments, check: Moments, d0: Sequence[np.ndarray], a0: Sequence[np.ndarray],
              iters: int = ITERATIONS, ridges: Sequence[float] = RIDGES,
              ) -> tuple[list[np.ndarray], list[np.ndarray], dict[str, Any]]:
    """Alternating least squares of one separable layer (kernels, then pointwise weights and bias), per group.

    Starts from ``d0`` (kernels, ``Mg x r x K`` per group) and ``a0`` (``[P^T; b]``, ``(Mg*r + 1) x Ng``); the
    first pointwise step is the plain refit (its ridge chosen from ``ridges`` by the held-out error, then kept).
    Each step minimises the fitted error over its block, so the fitted error never rises; the iterate with the
    lowest held-out error is returned (the weight-only start included), with a report.
    """
    ds, as_ = [np.array(d, dtype=np.float64) for d in d0], [np.array(a, dtype=np.float64) for a in a0]
    # The kernels stay the same over the start and the ridges of the first step: project the moments once.
    fitted, checked = _projections(fit, ds), _projections(check, ds)
    before = _error(check, checked, as_)
    first: tuple[float, list[np.ndarray], float] | None = None
    for lam in ridges:  # the first step: the pointwise refit of the weight-only kernels
        trial = _every([_p_step(*fitted[gi], as_[gi], lam) for gi in range(fit.group)])
        if trial is None:
            continue
        err = _error(check, checked, trial)
        score = err if err is not None else 0.0
        if first is None or score < first[0]:
            first = (score, trial, lam)
        if err is None:
            break  # nothing held out to choose with: the first ridge stands
    if first is None:
        return ds, as_, {"out_err": before, "refit": "singular normal equations"}
    ridge = first[2]
    best = (before if before is not None else math.inf, ds, as_, 0)
    if first[0] < best[0] or before is None:
        best = (first[0], ds, first[1], 1)
    as_ = first[1]
    for it in range(iters):
        new_d = _every([_d_step(fit.xx[gi], fit.xt[gi], ds[gi], as_[gi], ridge) for gi in range(fit.group)])
        if new_d is None:
            break
        pairs = [_normalise(d, a) for d, a in zip(new_d, as_)]
        ds = [p[0] for p in pairs]
        fitted = _projections(fit, ds)
        new_a = _every([_p_step(*fitted[gi], pairs[gi][1], ridge) for gi in range(fit.group)])
        if new_a is None:
            break
        as_ = new_a
        err = _error(check, _projections(check, ds), as_)
        if err is None or err < best[0]:
            # Without held-out positions the fitted error, which never rises, decides: the last iterate.
            best = (err if err is not None else 0.0, ds, as_, it + 2)
    report: dict[str, Any] = {"out_err": before, "pointwise_err": first[0] if before is not None else None,
                              "refit_err": best[0] if before is not None else None}
    if best[3] == 0:
        report["refit"] = "kept weight-only: no refit lowered the held-out error"
    else:
        report["ridge"] = ridge
        report["alternations"] = best[3] - 1
    return best[1], best[2], report


def start(dw: Depthwise, order: np.ndarray | None) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """The weight-only factors as :func:`alternate`'s start: kernels and ``[P^T; b]`` per group.

    ``order``: the stage writes original output channel ``order[j]`` as its channel ``j`` (group 1 only).
    """
    f = dw.factors
    g, r = dw.group, dw.rank
    mg = dw.channels // g
    ng = dw.weight.shape[0] // g
    ds, as_ = [], []
    for gi in range(g):
        rows = slice(gi * mg, (gi + 1) * mg)
        ds.append(f.vt[rows, :r, :].copy())
        p = f.p[rows, :, :r]  # (Mg, Ng, r)
        a = np.concatenate([p.transpose(0, 2, 1).reshape(mg * r, ng), dw.bias[None, gi * ng:(gi + 1) * ng]])
        as_.append(a[:, order] if order is not None else a)
    return ds, as_


def weights(dw: Depthwise, ds: Sequence[np.ndarray], as_: Sequence[np.ndarray],
            ) -> tuple[list[np.ndarray], list[np.ndarray], np.ndarray]:
    """(depthwise weights, pointwise weights, bias) in ``dw.form``'s layout from per-group kernels and ``[P^T; b]``."""
    r, ng = dw.rank, as_[0].shape[1]
    mg = dw.channels // dw.group
    vt = np.concatenate(list(ds))  # (M, r, K)
    p = np.concatenate([a[:-1].reshape(mg, r, ng).transpose(0, 2, 1) for a in as_])  # (M, Ng, r)
    f = Factors(p=p, s=np.ones((dw.channels, r)), vt=vt, group=dw.group, kernel=dw.kernel)
    dws, pws = separable_weights(f, r, dw.form)
    return dws, pws, np.concatenate([a[-1] for a in as_])

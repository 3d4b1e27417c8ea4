"""Factoring a conv weight slice by slice for the depthwise-separable rewrite (pure numpy, float64).

A Conv weight ``W`` (``N x M/g x k...``, ``K = prod(k)``, group ``g``, ``Ng = N/g`` outputs per group) is a sum
over input channels ``m`` of ``W[:, m] * X_m``. Each slice ``S_m`` (the ``Ng x K`` block of the outputs of ``m``'s
group) is factored by SVD, ``S_m = sum_t s_t u_t v_t^T``: ``v_t`` is a depthwise kernel of channel ``m`` and the
``s_t u_t[n]`` form a 1x1 conv (:mod:`onnxconv.passes.separable` builds the graph). Keeping ``r`` terms gives the
best rank-r approximation of every slice (Eckart-Young); ``r = q = min(Ng, K)`` is exact in exact arithmetic.
:func:`reconstruction_error` says whether it is exact once the factors are stored in the weight's dtype.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .. import counting as C
from .ranks import kept_energy

__all__ = ["FORMS", "Factors", "factor_weight", "separable_weights", "reconstruction_error"]

#: Graph forms of the rank-r rewrite (see :mod:`onnxconv.passes.separable`); :func:`separable_weights` lays the
#: factors out for each.
FORMS = ("concat", "sum", "multiplier", "tiled")


@dataclass
class Factors:
    """Factors of every slice of a conv weight, stacked: slice ``m`` is input channel ``m`` (group ``m // (M/g)``).

    ``p``: (M, Ng, q) the left singular vectors times the singular values (``u_t * s_t``, the 1x1 weights),
    ``s``: (M, q) descending, ``vt``: (M, q, K) the right singular vectors (the depthwise kernels), with
    ``q = min(Ng, K)``; all float64. ``kept[r]`` is the kept energy of rank ``r`` (:mod:`.ranks`).
    """

    p: np.ndarray
    s: np.ndarray
    vt: np.ndarray
    group: int
    kernel: tuple[int, ...]

    @property
    def max_rank(self) -> int:
        return int(self.s.shape[1])

    @property
    def kept(self) -> np.ndarray:
        return kept_energy(self.s)


def factor_weight(weight: np.ndarray, group: int) -> Factors:
    """Factor a Conv weight (``N x M/g x k...``) slice by slice, all slices at once in float64.

    When ``K <= Ng`` (the usual case: 9 taps, dozens of outputs) the right singular vectors come from the
    eigenvectors of the small ``K x K`` Gram matrices ``S^T S`` (batched ``eigh``, several times faster than
    a batched SVD of the tall slices), and ``p = S V`` is computed directly rather than as ``U * s``: no
    division by small singular values, and with all ``K`` vectors ``p V^T = S V V^T = S`` exactly. Otherwise
    (few outputs per group) a batched SVD.
    """
    w = np.asarray(weight)
    n, mg = int(w.shape[0]), int(w.shape[1])
    kernel = tuple(int(d) for d in w.shape[2:])
    k = C.prod(kernel)
    ng = n // group
    # Slice m = (group gi, local input j): rows are gi's outputs, columns the kernel taps.
    stacked = w.astype(np.float64).reshape(group, ng, mg, k).transpose(0, 2, 1, 3).reshape(group * mg, ng, k)
    if k <= ng:
        evals, evecs = np.linalg.eigh(np.matmul(stacked.transpose(0, 2, 1), stacked))
        evals, evecs = evals[:, ::-1], evecs[:, :, ::-1]  # eigh sorts ascending
        s = np.sqrt(np.clip(evals, 0.0, None))
        return Factors(p=np.matmul(stacked, evecs), s=s, vt=evecs.transpose(0, 2, 1), group=group, kernel=kernel)
    u, s, vt = np.linalg.svd(stacked, full_matrices=False)
    return Factors(p=u * s[:, None, :], s=s, vt=vt, group=group, kernel=kernel)


def separable_weights(f: Factors, r: int, form: str) -> tuple[list[np.ndarray], list[np.ndarray]]:
    """(depthwise weights, pointwise weights) of the rank-r rewrite in ``form``, float64.

    * multiplier: one depthwise ``(M*r, 1, k...)`` (output ``m*r + t``) and one pointwise ``(N, (M/g)*r, 1...)``
      with group ``g`` (input ``j*r + t`` of each group);
    * concat (group 1): ``r`` depthwise ``(M, 1, k...)`` and one pointwise ``(N, r*M, 1...)`` (input ``t*M + m``);
    * tiled (group 1): one depthwise ``(r*M, 1, k...)`` (channel ``t*M + m``) and the pointwise of concat;
    * sum: ``r`` depthwise ``(M, 1, k...)`` and ``r`` pointwise ``(N, M/g, 1...)`` with group ``g``.
    """
    m, ng, _ = f.p.shape
    g = f.group
    mg, n = m // g, ng * g
    ones = (1,) * len(f.kernel)
    vt = f.vt[:, :r, :]  # (M, r, K)
    p = f.p[:, :, :r]  # (M, Ng, r): the 1x1 weights, singular values folded in
    if form == "multiplier":
        dw = [vt.reshape(m * r, 1, *f.kernel)]
        pw = [p.reshape(g, mg, ng, r).transpose(0, 2, 1, 3).reshape(n, mg * r, *ones)]
    elif form == "concat":
        if g != 1:
            raise ValueError("the concat form needs group 1 (use sum for grouped convs)")
        dw = [vt[:, t, :].reshape(m, 1, *f.kernel) for t in range(r)]
        pw = [p.transpose(1, 2, 0).reshape(n, r * m, *ones)]
    elif form == "tiled":
        if g != 1:
            raise ValueError("the tiled form needs group 1 (use sum for grouped convs)")
        dw = [vt.transpose(1, 0, 2).reshape(r * m, 1, *f.kernel)]
        pw = [p.transpose(1, 2, 0).reshape(n, r * m, *ones)]
    elif form == "sum":
        dw = [vt[:, t, :].reshape(m, 1, *f.kernel) for t in range(r)]
        pw = [p[:, :, t].reshape(g, mg, ng).transpose(0, 2, 1).reshape(n, mg, *ones) for t in range(r)]
    else:
        raise ValueError(f"unknown form '{form}' (choose from {', '.join(FORMS)})")
    return dw, pw


def reconstruction_error(f: Factors, weight: np.ndarray, r: int | None = None,
                         coverage: np.ndarray | None = None) -> float:
    """Largest relative error, over output channels, of ``weight`` rebuilt from its rank-``r`` factors (default:
    all ``q``) *as stored in the weight's dtype*: ``max_n ||W'[n] - W[n]|| / ||W[n]||``, rows over ``(M/g) x K``.

    Per output channel, not over the whole weight: an outlier (1e16 next to ordinary values) dominates the
    whole weight's norm, so a whole-weight figure would hide ordinary channels that the factoring got wrong.
    ``coverage`` (``K`` counts, :func:`~onnxconv.counting.conv_tap_coverage` per axis) weights each kernel tap's
    squared error by how many outputs read data through it, so the figure is the layer's relative output error
    on random inputs: on a 1x1 input a 3x3 conv with pads 1 reads through its centre tap only, and an error
    there is the whole output's, however small next to 1e30 weights on the taps that only ever see padding.
    A row that is all zero (where covered) counts as reproduced only when it is rebuilt as zero. NaN when a
    factor overflows the dtype (float16 above 65504).
    """
    w = np.asarray(weight)
    q = f.max_rank if r is None else r
    with np.errstate(over="ignore", invalid="ignore"):
        p = f.p[:, :, :q].astype(w.dtype).astype(np.float64)
        vt = f.vt[:, :q, :].astype(w.dtype).astype(np.float64)
        rebuilt = np.matmul(p, vt)  # (M, Ng, K): slice m = (group gi, local input j)
    g, n, mg = f.group, int(w.shape[0]), int(w.shape[1])
    k = rebuilt.shape[2]
    scale = np.ones(k) if coverage is None else np.sqrt(np.asarray(coverage, dtype=np.float64))
    rows = (rebuilt.reshape(g, mg, n // g, k).transpose(0, 2, 1, 3) * scale).reshape(n, mg * k)
    ref = (w.astype(np.float64).reshape(n, mg, k) * scale).reshape(n, mg * k)
    with np.errstate(over="ignore", invalid="ignore"):
        err = np.linalg.norm(rows - ref, axis=1)
        norm = np.linalg.norm(ref, axis=1)
        rel = np.where(norm > 0, err / np.where(norm > 0, norm, 1.0), np.where(err > 0, np.inf, 0.0))
    return float("nan") if not np.all(np.isfinite(rows)) else float(rel.max(initial=0.0))

"""Error of each option on the calibration set, weight-only and after the per-layer refit.

One onnxruntime pass of the original model collects each candidate's input patches at sampled output positions
(:func:`onnxconv.calibration.patches.sample_patches`); the option's weight-only error is the relative output
error ``||P (W - W_o)^T|| / ||P W^T + b||`` of the layer on them, with ``W_o`` the rank-r (separable) or
block-diagonal (grouped) weight. Rank errors for all ``r`` come from one projection: with the SVD of every input
channel's slice, the output splits into terms ``Y_t`` and the rank-r error is ``||sum_{t >= r} Y_t||``. The refit
afterwards lowers that error by very different amounts per layer and option, so by default the choice uses the
error *after the per-layer refit*, estimated from normal equations accumulated on the same patches
(:func:`option_errors`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import onnx

from ..calibration import (
    CalibrationSet, ConvTerm, NormalEquations, activations, best_ridge, draw_positions, out_spatial, sample_patches,
)
from ..passes.separable import Factors, factor_weight
from .candidates import Candidate, elem_type

__all__ = ["MAX_REFIT_FEATURES", "option_errors", "RefitEstimate", "rank_errors", "group_errors"]

#: Largest number of unknowns per output channel for which the refit of an option is estimated (a Gram matrix of
#: that size per layer is accumulated); options above it get their weight-only error scaled (see
#: :func:`option_errors`).
MAX_REFIT_FEATURES = 1536


def option_errors(model: onnx.ModelProto, cands: Sequence[Candidate], calib: CalibrationSet, positions: int,
                  seed: int, providers: Sequence[str], threads: int | None, refit_aware: bool = True) -> None:
    """Fill ``cand.errors`` (option -> relative output error), ``cand.weight_errors`` and ``cand.input_shape``.

    ``weight_errors`` are the weight-only errors (module docstring). With ``refit_aware`` the ``errors``
    the choice uses are the errors *after the per-layer refit* instead, estimated on the same patches: the
    refit fits the option's linear stage ``[X_o, 1] A`` to the original output ``T`` by ridge least squares, and
    every option's ``X_o`` is a linear function of the patches, so one set of normal equations per layer gives
    all of them. Rank r: ``X_r`` = the depthwise outputs ``z_{m,t} = v_{m,t} . p_m`` for ``t < r``, so the
    normal equations of the largest rank hold every smaller rank's as a sub-block. G: per group, the patches of
    the group's input channels against its output channels. The error is the relative held-out error of the
    best ridge of :data:`onnxconv.calibration.normal.RIDGES` (what :func:`onnxconv.calibration.refit` does, without the
    upstream layers' errors), never above the weight-only one. Options with more than
    :data:`MAX_REFIT_FEATURES` unknowns keep their weight-only error times the ratio refit / weight-only of the
    layer's largest estimated option of the same kind (1 when there is none).
    """
    elem = {c.name: elem_type(c.weight) for c in cands}
    names = {c.node.input[0]: elem[c.name] for c in cands}
    factors = {c.name: factor_weight(c.weight, int(c.attrs.get("group", 1) or 1)) for c in cands
               if c.values("rank")}
    err2: dict[str, dict[tuple[str, int], float]] = {c.name: dict.fromkeys(c.options, 0.0) for c in cands}
    total = dict.fromkeys(err2, 0.0)
    refits = {c.name: RefitEstimate(c, factors.get(c.name)) for c in cands} if refit_aware else {}
    per = max(1, math.ceil(positions / calib.size))
    per_check = max(1, per // 4) if refit_aware else 0
    for start, outs in activations(model, names, calib, providers, threads):
        for ci, c in enumerate(cands):
            x = outs[c.node.input[0]]
            if not c.input_shape:
                c.input_shape = (calib.chunk, *x.shape[1:])
            term = ConvTerm(c.node, c.node.input[0], c.node.input[1], tuple(c.weight.shape), c.attrs)
            ranks, groups = c.values("rank"), c.values("groups")
            for i in range(x.shape[0]):
                spatial = out_spatial(term, x.shape[1:])
                pos, chk = draw_positions((seed, ci, start + i), math.prod(spatial), per, per_check, fit_first=True)
                p = sample_patches(x[i], term, spatial, pos).astype(np.float64)
                errs: dict[tuple[str, int], float] = {}
                full = None
                if ranks:
                    full, by_rank = rank_errors(p, factors[c.name], ranks)
                    errs.update({("rank", r): e for r, e in by_rank.items()})
                if groups:
                    full, by_g = group_errors(p, c.weight, c.masks, groups)
                    errs.update({("groups", g): e for g, e in by_g.items()})
                assert full is not None
                if c.bias is not None:
                    full = full + c.bias.astype(np.float64)[None, :]
                total[c.name] += float(np.sum(full * full))
                for key, e in errs.items():
                    err2[c.name][key] += e
                if refit_aware:
                    refits[c.name].add("fit", p, full)
                    if len(chk):
                        q = sample_patches(x[i], term, spatial, chk).astype(np.float64)
                        y = (rank_errors(q, factors[c.name], [])[0] if ranks
                             else group_errors(q, c.weight, c.masks, [])[0])
                        refits[c.name].add("check", q, y + (0.0 if c.bias is None else c.bias[None, :]))
    for c in cands:
        t = total[c.name]
        c.weight_errors = {key: math.sqrt(e / t) if t > 0 else 0.0 for key, e in err2[c.name].items()}
        c.errors = refits[c.name].errors(c.weight_errors) if refit_aware else dict(c.weight_errors)


class RefitEstimate:
    """Normal equations of a candidate's options on sampled patches (see :func:`option_errors`)."""

    def __init__(self, c: Candidate, factors: Factors | None) -> None:
        self.c, self.f = c, factors
        self.g = int(c.attrs.get("group", 1) or 1)
        m, k = c.weight.shape[1] * self.g, math.prod(c.weight.shape[2:])
        self.mg = m // self.g
        ranks = [r for r in c.values("rank") if self.mg * r <= MAX_REFIT_FEATURES]
        self.rmax = max(ranks, default=0)
        self.rank = NormalEquations(self.g, self.mg * self.rmax + 1, c.weight.shape[0] // self.g) if self.rmax else None
        n = c.weight.shape[0]
        # Balanced groups (what grouping assigns) give every group the same shape of normal equations.
        self.groups = {G: NormalEquations(G, m // G * k + 1, n // G) for G in c.values("groups")
                       if m // G * k <= MAX_REFIT_FEATURES
                       and np.all(np.bincount(c.assign[G][0], minlength=G) == n // G)
                       and np.all(np.bincount(c.assign[G][1], minlength=G) == m // G)}

    def add(self, which: str, p: np.ndarray, y: np.ndarray) -> None:
        """Add patches ``p`` (``S x M x K``) with the original outputs ``y`` (``S x N``, bias included)."""
        s = p.shape[0]
        if self.rank is not None and self.f is not None:  # ranks are estimated only with the factors
            z = np.matmul(p.transpose(1, 0, 2), self.f.vt[:, : self.rmax].transpose(0, 2, 1))  # (M, S, rmax)
            z = z.transpose(1, 0, 2).reshape(s, self.g, self.mg * self.rmax)
            ng = y.shape[1] // self.g
            for gi in range(self.g):
                self.rank.add(which, gi, z[:, gi], y[:, gi * ng:(gi + 1) * ng])
        for G, acc in self.groups.items():
            out_g, in_g = self.c.assign[G]
            for gi in range(G):
                acc.add(which, gi, p[:, in_g == gi].reshape(s, -1), y[:, out_g == gi])

    @staticmethod
    def _best(acc: NormalEquations, a0: list[np.ndarray]) -> float | None:
        """The held-out error of the refit's ridge choice (None when nothing is held out or all are singular)."""
        choice = best_ridge(acc, a0)
        return None if choice is None else choice.error

    def errors(self, weight: Mapping[tuple[str, int], float]) -> dict[tuple[str, int], float]:
        """Option -> estimated error after the refit, from the weight-only errors ``weight`` where none is."""
        c, out = self.c, dict(weight)
        done: set[tuple[str, int]] = set()
        n = c.weight.shape[0]
        bias = np.zeros(n) if c.bias is None else c.bias.astype(np.float64)
        if self.rank is not None and self.f is not None:
            ng = n // self.g
            for r in (r for r in c.values("rank") if r <= self.rmax):
                idx = np.array([m * self.rmax + t for m in range(self.mg) for t in range(r)] + [self.rank.d - 1])
                sub = self.rank.subset(idx)
                a0 = [np.concatenate([self.f.p[gi * self.mg:(gi + 1) * self.mg, :, :r].transpose(0, 2, 1)
                                      .reshape(self.mg * r, ng), bias[None, gi * ng:(gi + 1) * ng]])
                      for gi in range(self.g)]
                e = self._best(sub, a0)
                if e is not None:
                    out["rank", r] = min(e, weight["rank", r])
                    done.add(("rank", r))
        w64 = c.weight.astype(np.float64)
        for G, acc in self.groups.items():
            out_g, in_g = c.assign[G]
            a0 = [np.concatenate([w64[out_g == gi][:, in_g == gi].reshape(int(np.sum(out_g == gi)), -1).T,
                                  bias[None, out_g == gi]]) for gi in range(G)]
            e = self._best(acc, a0)
            if e is not None:
                out["groups", G] = min(e, weight["groups", G])
                done.add(("groups", G))
        for kind in ("rank", "groups"):
            # The largest estimated option is the closest in size to the ones too large to estimate.
            last = max((v for k, v in done if k == kind), default=None)
            ratio = out[kind, last] / weight[kind, last] if last is not None and weight[kind, last] > 0 else 1.0
            for v in c.values(kind):
                if (kind, v) not in done:
                    out[kind, v] = weight[kind, v] * ratio
        return out


def rank_errors(p: np.ndarray, f: Factors, ranks: Sequence[int]) -> tuple[np.ndarray, dict[int, float]]:
    """(output without bias ``S x N``, rank -> squared output error) from patches ``p`` (``S x M x K``).

    Slice ``m`` contributes ``sum_t f.p[m,:,t] (v[m,t] . p_m)`` (``f.p`` = singular vectors times singular values,
    :class:`~onnxconv.passes.separable.Factors`); the rank-r error is the part with t >= r.
    """
    m, ng, q = f.p.shape
    g = f.group
    mg = m // g
    z = np.matmul(p.transpose(1, 0, 2), f.vt.transpose(0, 2, 1))  # (M, S, q)
    z = z.reshape(g, mg, -1, q).transpose(0, 3, 2, 1)  # (g, q, S, Mg)
    u = f.p.reshape(g, mg, ng, q).transpose(0, 3, 1, 2)  # (g, q, Mg, Ng)
    terms = np.matmul(z, u)  # (g, q, S, Ng): output of term t
    tail = np.cumsum(terms[:, ::-1], axis=1)[:, ::-1]  # tail[:, t] = sum of terms t..q-1
    full = tail[:, 0].transpose(1, 0, 2).reshape(p.shape[0], g * ng)
    errs = {r: float(np.sum(tail[:, r] ** 2)) if r < q else 0.0 for r in ranks}
    return full, errs


def group_errors(p: np.ndarray, w: np.ndarray, masks: Mapping[int, np.ndarray], groups: Sequence[int],
                  ) -> tuple[np.ndarray, dict[int, float]]:
    """(output without bias, G -> squared output error of dropping the weights outside the groups)."""
    flat = p.reshape(p.shape[0], -1)
    w64 = w.astype(np.float64)
    full = flat @ w64.reshape(w.shape[0], -1).T
    errs = {}
    for g in groups:
        drop = w64 * (~masks[g]).reshape(masks[g].shape + (1,) * (w.ndim - 2))
        d = flat @ drop.reshape(w.shape[0], -1).T
        errs[g] = float(np.sum(d * d))
    return full, errs

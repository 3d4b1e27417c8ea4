"""Channel-to-group assignment for grouped convolution: which channels share a group (pure numpy).

A conv weight ``W`` (``C_out x C_in x k...``) turned into a grouped conv with ``G`` groups keeps only the weights
that connect an output channel to an input channel *of the same group*; everything else is dropped. With output
labels ``r`` (``C_out`` values in ``0..G-1``) and input labels ``c`` (``C_in`` values), each label used equally
often (``C_out/G`` and ``C_in/G`` times: a grouped conv has equal groups), the kept share of the squared norm is

    kept(r, c) = sum_{o, i : r[o] == c[i]} E[o, i] / sum_{o, i} E[o, i],     E[o, i] = sum_taps W[o, i, taps]^2

(``E`` is the *channel energy*). The identity assignment ``r[o] = o // (C_out/G)`` is what grouping without any
reordering keeps; we look for the balanced ``(r, c)`` that maximises ``kept``:

1. **Spectral co-clustering** (Dhillon, KDD 2001): with ``A = sqrt(E)`` (the Frobenius norm of each tap vector;
   ``|W|`` for a 1x1 conv), ``D1 = diag(A 1)``, ``D2 = diag(A^T 1)``, the leading ``G`` singular vectors of
   ``D1^-1/2 A D2^-1/2`` scaled back by ``D1^-1/2`` / ``D2^-1/2`` embed rows and columns in one space where k-means
   finds co-clusters. For a weight that is block diagonal under some hidden permutation, the normalised matrix
   has ``G`` singular values equal to 1 whose vectors are constant on each block, so the clusters are the blocks.
2. **Balanced assignment**: clusters need not have equal sizes, so rows (then columns) are assigned to clusters
   by an exact transportation solve with capacity ``C/G`` per group (:func:`balanced_assign`: cycle cancelling on
   the ``G x G`` graph of best moves, exact because a residual cycle visits each group once).
3. **Refinement**: alternate exact balanced re-assignment of the rows given the columns (row ``o`` scores
   ``sum_{i in group g} E[o, i]`` for group ``g``) and of the columns given the rows. Each step solves its
   sub-problem exactly starting from the current labels, so ``kept`` never decreases (pairwise swaps and longer
   exchange cycles included).
4. The identity assignment, refined the same way, is always a candidate; the best candidate wins.

``in_strata`` constrains the columns: every stratum (a set of input channels, e.g. one group of the previous
grouped conv) must spread evenly over the groups. Under that constraint the reordering between two stacked
grouped convs is exactly a ShuffleNet channel shuffle (see :mod:`onnxconv.passes.shuffle`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

__all__ = [
    "Assignment",
    "channel_energy",
    "kept_energy",
    "identity_labels",
    "group_order",
    "balanced_assign",
    "spectral_coclusters",
    "refine",
    "assign_groups",
]

# Long exchange cycles are searched with Bellman-Ford on the G x G move graph (O(G^3) per step); beyond this many
# groups only pairwise swaps are tried, which keeps huge G (nearly depthwise) affordable.
_MAX_CYCLE_GROUPS = 32
_REFINE_TOL = 1e-7


@dataclass(frozen=True)
class Assignment:
    """A balanced channel-to-group assignment of one conv weight.

    ``out_groups[o]`` / ``in_groups[i]`` are group labels in ``0..G-1``, each used ``C_out/G`` / ``C_in/G`` times.
    ``kept`` is the kept share of the weight's squared norm (1.0 for a zero weight); ``identity_kept`` the share the
    identity order keeps; ``method`` says which candidate won (``identity``, ``spectral``), ``+refined`` when the
    alternating refinement improved it.
    """

    out_groups: np.ndarray
    in_groups: np.ndarray
    kept: float
    identity_kept: float
    method: str

    @property
    def groups(self) -> int:
        return int(self.out_groups.max()) + 1 if self.out_groups.size else 1


def channel_energy(weight: np.ndarray) -> np.ndarray:
    """``E[o, i] = sum over kernel taps of W[o, i, ...]^2`` in float64 (``C_out x C_in`` for a dense weight)."""
    w = np.asarray(weight, dtype=np.float64)
    return (w * w).reshape(w.shape[0], w.shape[1], -1).sum(axis=2)


def kept_energy(energy: np.ndarray, out_groups: np.ndarray, in_groups: np.ndarray) -> float:
    """Kept share ``sum_{r[o]==c[i]} E[o,i] / sum E``, computed as ``1 - dropped/total`` so that a weight with no
    energy outside the groups gives exactly 1.0 (a zero weight also gives 1.0: nothing is lost)."""
    total = float(energy.sum())
    if total <= 0.0:
        return 1.0
    dropped = float(energy[out_groups[:, None] != in_groups[None, :]].sum())
    return 1.0 - dropped / total


def identity_labels(n: int, groups: int) -> np.ndarray:
    """Channel ``i`` in group ``i // (n/G)``: what grouping keeps without reordering."""
    return np.arange(n) // (n // groups)


def group_order(labels: np.ndarray) -> np.ndarray:
    """Channels sorted by (group, index): position ``j`` of the grouped layout holds channel ``order[j]``."""
    return np.argsort(labels, kind="stable")


def _onehot(labels: np.ndarray, groups: int) -> np.ndarray:
    out = np.zeros((labels.size, groups))
    out[np.arange(labels.size), labels] = 1.0
    return out


def _greedy(scores: np.ndarray, cap: int) -> np.ndarray:
    """Start for :func:`balanced_assign`: take (item, group) pairs from the best score down while room is left."""
    n, g = scores.shape
    labels = np.full(n, -1)
    room = np.full(g, cap)
    for flat in np.argsort(-scores, axis=None, kind="stable"):
        i, h = divmod(int(flat), g)
        if labels[i] < 0 and room[h] > 0:
            labels[i] = h
            room[h] -= 1
    return labels


def _positive_cycle(gain: np.ndarray, eps: float) -> list[int] | None:
    """A cycle of groups whose total move gain exceeds ``eps`` (Bellman-Ford on ``-gain``), or None."""
    g = gain.shape[0]
    w = -gain.copy()
    np.fill_diagonal(w, np.inf)
    dist = np.zeros(g)
    pred = np.full(g, -1)
    changed = -1
    for _ in range(g + 1):
        cand = dist[:, None] + w
        best = cand.min(axis=0)
        arg = cand.argmin(axis=0)
        upd = best < dist - eps / (g + 1)
        if not upd.any():
            return None
        dist = np.where(upd, best, dist)
        pred = np.where(upd, arg, pred)
        changed = int(np.flatnonzero(upd)[0])
    node = changed
    for _ in range(g):  # walk back far enough to be on the cycle
        node = int(pred[node])
    cycle = [node]
    cur = int(pred[node])
    while cur != node and len(cycle) <= g:
        cycle.append(cur)
        cur = int(pred[cur])
    cycle.reverse()  # pred points backwards: reversed, consecutive entries are edges g -> h
    total = sum(gain[cycle[k], cycle[(k + 1) % len(cycle)]] for k in range(len(cycle)))
    return cycle if len(cycle) > 1 and total > eps else None


def _swap_all(scores: np.ndarray, labels: np.ndarray, g: int, h: int, eps: float) -> bool:
    """Every improving exchange between groups ``g`` and ``h`` at once: an item's gain depends on its own group
    only, so pairing the best movers of each side in order and stopping at the first non-positive pair is exact."""
    in_g, in_h = np.flatnonzero(labels == g), np.flatnonzero(labels == h)
    gain_g = scores[in_g, h] - scores[in_g, g]
    gain_h = scores[in_h, g] - scores[in_h, h]
    og, oh = np.argsort(-gain_g, kind="stable"), np.argsort(-gain_h, kind="stable")
    pair = gain_g[og] + gain_h[oh] if og.size == oh.size else None
    if pair is None:
        k = min(og.size, oh.size)
        pair = gain_g[og[:k]] + gain_h[oh[:k]]
    k = int(np.argmax(pair <= eps)) if np.any(pair <= eps) else pair.size
    if k == 0:
        return False
    labels[in_g[og[:k]]], labels[in_h[oh[:k]]] = h, g
    return True


def _balanced_one(scores: np.ndarray, groups: int, init: np.ndarray | None, max_steps: int) -> np.ndarray:
    n = scores.shape[0]
    cap = n // groups
    labels = _greedy(scores, cap) if init is None else init.copy()
    scale = float(np.abs(scores).max()) if scores.size else 0.0
    eps = 1e-12 * max(scale, 1e-300) * max(n, 1)
    rows = np.arange(n)
    for _ in range(max_steps):
        # Which group pairs have an improving exchange at all: one vectorised look instead of G^2/2 solves.
        gain = scores - scores[rows, labels][:, None]
        best = np.full((groups, groups), -np.inf)
        np.maximum.at(best, labels, gain)
        pair = best + best.T
        moved = False
        for g, h in zip(*np.nonzero(np.triu(pair > eps, 1))):
            moved |= _swap_all(scores, labels, int(g), int(h), eps)
        if moved:
            continue
        if groups > _MAX_CYCLE_GROUPS or groups < 3:
            break
        # No improving pair left: look for an improving exchange around a longer cycle of groups.
        gainmat = scores - scores[rows, labels][:, None]
        best = np.full((groups, groups), -np.inf)
        who = np.zeros((groups, groups), dtype=np.int64)
        for g in range(groups):
            members = np.flatnonzero(labels == g)
            sub = gainmat[members]
            best[g] = sub.max(axis=0)
            who[g] = members[sub.argmax(axis=0)]
        np.fill_diagonal(best, -np.inf)
        cycle = _positive_cycle(best, eps)
        if cycle is None:
            break
        for k, g in enumerate(cycle):
            h = cycle[(k + 1) % len(cycle)]
            labels[who[g, h]] = h
    return labels


def balanced_assign(
    scores: np.ndarray,
    groups: int,
    *,
    init: np.ndarray | None = None,
    strata: np.ndarray | None = None,
    max_steps: int = 10_000,
) -> np.ndarray:
    """Labels maximising ``sum_i scores[i, labels[i]]`` with every group used ``n/G`` times.

    A transportation problem with equal capacities, solved by cycle cancelling from ``init`` (or a greedy start):
    the move graph has an edge ``g -> h`` weighted by the best gain of moving one item of ``g`` to ``h``; while it
    has a positive cycle (pairwise swaps first, then Bellman-Ford), apply it. A simple cycle in the full residual
    network moves one item out of each group it visits, so "no positive cycle here" means optimal. The result is
    never worse than ``init``.

    With ``strata`` (an integer label per item) each stratum is solved on its own and spreads evenly over the
    groups (its size must be a multiple of ``G``).
    """
    scores = np.asarray(scores, dtype=np.float64)
    n = scores.shape[0]
    if groups < 1 or n % groups:
        raise ValueError(f"{n} items cannot be split into {groups} equal groups")
    if strata is None:
        return _balanced_one(scores, groups, None if init is None else np.asarray(init), max_steps)
    labels = np.empty(n, dtype=np.int64)
    for s in np.unique(strata):
        idx = np.flatnonzero(strata == s)
        if idx.size % groups:
            raise ValueError(f"stratum {s} has {idx.size} items, not a multiple of {groups}")
        sub_init = None if init is None else np.asarray(init)[idx]
        labels[idx] = _balanced_one(scores[idx], groups, sub_init, max_steps)
    return labels


def _kmeans(points: np.ndarray, k: int, rng: np.random.Generator, iters: int = 50) -> tuple[np.ndarray, float]:
    """Centroids and inertia of Lloyd's k-means from a k-means++ start."""
    n = points.shape[0]
    centers = [points[rng.integers(n)]]
    for _ in range(1, k):
        d2 = np.min([((points - c) ** 2).sum(1) for c in centers], axis=0)
        total = d2.sum()
        centers.append(points[rng.choice(n, p=d2 / total)] if total > 0 else points[rng.integers(n)])
    cent = np.array(centers)
    for _ in range(iters):
        lab = ((points[:, None, :] - cent[None]) ** 2).sum(2).argmin(1)
        new = np.array([points[lab == j].mean(0) if np.any(lab == j) else cent[j] for j in range(k)])
        if np.allclose(new, cent):
            break
        cent = new
    inertia = float(((points[:, None, :] - cent[None]) ** 2).sum(2).min(1).sum())
    return cent, inertia


def _top_singular(m: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Leading ``k`` left and right singular vectors of ``m``, from the eigenvectors of the smaller Gram matrix
    (an order of magnitude faster than a full SVD for the few vectors needed)."""
    flip = m.shape[0] > m.shape[1]
    a = m.T if flip else m
    vals, vecs = np.linalg.eigh(a @ a.T)
    u = vecs[:, ::-1][:, :k]
    sv = np.sqrt(np.maximum(vals[::-1][:k], 0.0))
    v = (a.T @ u) / np.where(sv > 1e-12, sv, np.inf)[None, :]
    return (v, u) if flip else (u, v)


def spectral_coclusters(
    energy: np.ndarray, groups: int, *, seed: int = 0, restarts: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """Balanced (out, in) labels from bipartite spectral co-clustering (best of ``restarts`` k-means runs)."""
    a = np.sqrt(np.maximum(energy, 0.0))
    d1, d2 = a.sum(1), a.sum(0)
    # A dead channel (all-zero row/column) has no affinity: embed it at the origin rather than divide by zero.
    s1 = np.where(d1 > 0, 1.0 / np.sqrt(np.where(d1 > 0, d1, 1.0)), 0.0)
    s2 = np.where(d2 > 0, 1.0 / np.sqrt(np.where(d2 > 0, d2, 1.0)), 0.0)
    k = min(groups, *a.shape)
    u, v = _top_singular(a * s1[:, None] * s2[None, :], k)
    zr, zc = u * s1[:, None], v * s2[:, None]
    points = np.vstack([zr, zc])
    # Put the embedding on a unit scale so that the k-means tolerance means the same for every layer.
    spread = float(np.abs(points).max()) or 1.0
    points, zr, zc = points / spread, zr / spread, zc / spread
    rng = np.random.default_rng(seed)
    cent = min((_kmeans(points, groups, rng) for _ in range(max(restarts, 1))), key=lambda ci: ci[1])[0]
    dr = -((zr[:, None, :] - cent[None]) ** 2).sum(2)
    dc = -((zc[:, None, :] - cent[None]) ** 2).sum(2)
    return balanced_assign(dr, groups), balanced_assign(dc, groups)


def refine(
    energy: np.ndarray,
    out_groups: np.ndarray,
    in_groups: np.ndarray,
    groups: int,
    *,
    in_strata: np.ndarray | None = None,
    max_rounds: int = 100,
) -> tuple[np.ndarray, np.ndarray]:
    """Alternate exact balanced re-assignment of rows (given columns) and columns (given rows).

    Row ``o`` in group ``g`` keeps ``(E @ onehot(c))[o, g]``; column ``i`` keeps ``(E^T @ onehot(r))[i, g]``. Each
    half-step is optimal for its side and starts from the current labels, so the kept energy never decreases.
    """
    r, c = out_groups.copy(), in_groups.copy()
    best = kept_energy(energy, r, c)
    for _ in range(max_rounds):
        r = balanced_assign(energy @ _onehot(c, groups), groups, init=r)
        c = balanced_assign(energy.T @ _onehot(r, groups), groups, init=c, strata=in_strata)
        now = kept_energy(energy, r, c)
        # Rounds late in the ascent gain ~1e-6 each; stop there (the kept share is quoted to 3-4 digits).
        if now <= best + _REFINE_TOL:
            break
        best = now
    return r, c


def _strata_start(in_strata: np.ndarray, groups: int) -> np.ndarray:
    """Deal each stratum's channels round robin over the groups (a valid start under the strata constraint)."""
    c = np.empty(in_strata.size, dtype=np.int64)
    for s in np.unique(in_strata):
        idx = np.flatnonzero(in_strata == s)
        c[idx] = np.arange(idx.size) % groups
    return c


def assign_groups(
    weight: np.ndarray,
    groups: int,
    *,
    in_strata: np.ndarray | None = None,
    seed: int = 0,
    restarts: int = 3,
    random_starts: int = 2,
) -> Assignment:
    """The balanced channel-to-group assignment of a dense conv weight that keeps the most squared norm.

    Candidates: the identity order, the spectral co-clustering (best of ``restarts`` k-means runs) and
    ``random_starts`` random balanced labelings, each refined by :func:`refine`; the best wins (ties go to the
    identity, which needs no reordering). With ``in_strata`` every stratum of input
    channels spreads evenly over the groups (the ShuffleNet shuffle constraint).

    Raises:
        ValueError: ``C_out`` or ``C_in`` is not divisible by ``groups``, or a stratum by ``groups``.
    """
    w = np.asarray(weight)
    c_out, c_in = w.shape[0], w.shape[1]
    if groups < 1 or c_out % groups or c_in % groups:
        raise ValueError(f"C_out={c_out} and C_in={c_in} must be divisible by groups={groups}")
    energy = channel_energy(w)
    r0, c0 = identity_labels(c_out, groups), identity_labels(c_in, groups)
    identity_kept = kept_energy(energy, r0, c0)
    if groups == 1:
        return Assignment(r0, c0, 1.0, 1.0, "identity")
    candidates: list[tuple[str, np.ndarray, np.ndarray]] = []
    rng = np.random.default_rng(seed)
    if in_strata is None:
        candidates.append(("identity", r0, c0))
        candidates.append(("spectral", *spectral_coclusters(energy, groups, seed=seed, restarts=restarts)))
        # Random balanced starts: cheap insurance against the local optima of the alternating refinement.
        candidates += [("random", rng.permutation(r0), rng.permutation(c0)) for _ in range(random_starts)]
    else:
        c_start = _strata_start(np.asarray(in_strata), groups)
        r_start = balanced_assign(energy @ _onehot(c_start, groups), groups)
        candidates.append(("strided", r_start, c_start))
        r, _ = spectral_coclusters(energy, groups, seed=seed, restarts=restarts)
        candidates.append(("spectral", r, balanced_assign(energy.T @ _onehot(r, groups), groups, strata=in_strata)))
        for _ in range(random_starts):
            c_rand = np.empty(in_strata.size, dtype=np.int64)
            for s in np.unique(in_strata):
                idx = np.flatnonzero(in_strata == s)
                c_rand[idx] = rng.permutation(np.arange(idx.size) % groups)
            candidates.append(("random", balanced_assign(energy @ _onehot(c_rand, groups), groups), c_rand))
    best: tuple[float, str, np.ndarray, np.ndarray] | None = None
    for name, r, c in candidates:
        before = kept_energy(energy, r, c)
        r2, c2 = refine(energy, r, c, groups, in_strata=in_strata)
        after = kept_energy(energy, r2, c2)
        label = name + ("+refined" if after > before + 1e-12 else "")
        if best is None or after > best[0] + 1e-12:
            best = (after, label, r2, c2)
    assert best is not None
    return Assignment(best[2], best[3], best[0], identity_kept, best[1])

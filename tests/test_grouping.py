"""Channel-to-group assignment (onnxconv.passes.grouping): exact recovery of hidden block structure, exact
balanced assignment (checked against brute force), monotone refinement, the shuffle strata constraint."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from onnxconv.passes import grouping as gr


def hidden_block_weight(rng: np.random.Generator, groups: int, per_out: int, per_in: int, taps: int
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A weight that is block diagonal after a hidden random permutation of its output and input channels;
    returns it with the true group of every output and input channel."""
    c_out, c_in = groups * per_out, groups * per_in
    w = rng.standard_normal((c_out, c_in, taps, taps))
    out_true, in_true = np.arange(c_out) // per_out, np.arange(c_in) // per_in
    w *= (out_true[:, None] == in_true[None, :])[:, :, None, None]
    po, pi = rng.permutation(c_out), rng.permutation(c_in)
    return w[po][:, pi], out_true[po], in_true[pi]


def same_partition(a: np.ndarray, b: np.ndarray) -> bool:
    """Two labelings describe the same partition (up to renaming the groups)."""
    pairs = set(zip(a.tolist(), b.tolist()))
    return len(pairs) == len(set(a.tolist())) == len(set(b.tolist()))


@settings(max_examples=40, deadline=None)
@given(groups=st.sampled_from([2, 3, 4, 8]), per_out=st.integers(1, 6), per_in=st.integers(1, 6),
       taps=st.sampled_from([1, 3]), seed=st.integers(0, 10_000))
def test_hidden_block_diagonal_is_recovered_exactly(groups: int, per_out: int, per_in: int, taps: int,
                                                     seed: int) -> None:
    w, out_true, in_true = hidden_block_weight(np.random.default_rng(seed), groups, per_out, per_in, taps)
    a = gr.assign_groups(w, groups)
    assert a.kept == 1.0
    assert same_partition(a.out_groups, out_true) and same_partition(a.in_groups, in_true)
    # The groups pair up: output group g reads exactly the input group g.
    energy = gr.channel_energy(w)
    assert gr.kept_energy(energy, a.out_groups, a.in_groups) == 1.0


@settings(max_examples=25, deadline=None)
@given(groups=st.sampled_from([2, 4, 8]), per=st.integers(2, 6), seed=st.integers(0, 10_000))
def test_spectral_coclustering_alone_finds_the_blocks(groups: int, per: int, seed: int) -> None:
    w, _, _ = hidden_block_weight(np.random.default_rng(seed), groups, per, per, 1)
    energy = gr.channel_energy(w)
    r, c = gr.spectral_coclusters(energy, groups, seed=seed)
    assert gr.kept_energy(energy, r, c) == 1.0


def test_spectral_start_escapes_where_refining_the_identity_gets_stuck() -> None:
    """Why the spectral candidate exists: on this hidden block structure the alternating refinement from the
    identity order ends in a local optimum, the spectral start does not."""
    w, _, _ = hidden_block_weight(np.random.default_rng(3), 4, 16, 8, 1)
    energy = gr.channel_energy(w)
    r0, c0 = gr.identity_labels(64, 4), gr.identity_labels(32, 4)
    stuck = gr.kept_energy(energy, *gr.refine(energy, r0, c0, 4))
    assert stuck < 0.99
    assert gr.kept_energy(energy, *gr.spectral_coclusters(energy, 4)) == 1.0
    a = gr.assign_groups(w, 4)
    assert a.kept == 1.0 and a.method.startswith("spectral")


def balanced_labelings(n: int, groups: int) -> list[tuple[int, ...]]:
    return [lab for lab in itertools.product(range(groups), repeat=n)
            if all(lab.count(g) == n // groups for g in range(groups))]


@settings(max_examples=40, deadline=None)
@given(shape=st.sampled_from([(6, 2), (6, 3), (8, 2), (8, 4), (9, 3)]), seed=st.integers(0, 10_000),
       start=st.booleans())
def test_balanced_assign_is_optimal(shape: tuple[int, int], seed: int, start: bool) -> None:
    n, groups = shape
    rng = np.random.default_rng(seed)
    scores = rng.standard_normal((n, groups)) ** 3
    every = balanced_labelings(n, groups)
    init = np.array(every[rng.integers(len(every))]) if start else None
    labels = gr.balanced_assign(scores, groups, init=init)
    assert np.bincount(labels, minlength=groups).tolist() == [n // groups] * groups
    best = max(sum(scores[i, lab[i]] for i in range(n)) for lab in every)
    assert scores[np.arange(n), labels].sum() == pytest.approx(best, abs=1e-9)


def test_balanced_assign_with_strata_spreads_each_stratum_evenly() -> None:
    rng = np.random.default_rng(0)
    strata = np.repeat(np.arange(4), 8)
    labels = gr.balanced_assign(rng.standard_normal((32, 4)), 4, strata=strata)
    for s in range(4):
        assert np.bincount(labels[strata == s], minlength=4).tolist() == [2, 2, 2, 2]
    with pytest.raises(ValueError, match="stratum"):
        gr.balanced_assign(rng.standard_normal((12, 4)), 4, strata=np.repeat(np.arange(2), 6))


@settings(max_examples=20, deadline=None)
@given(groups=st.sampled_from([2, 4]), c_out=st.sampled_from([8, 16]), c_in=st.sampled_from([8, 16]),
       seed=st.integers(0, 10_000))
def test_refinement_never_loses_energy_and_beats_the_identity(groups: int, c_out: int, c_in: int, seed: int) -> None:
    rng = np.random.default_rng(seed)
    w = rng.standard_normal((c_out, c_in, 3, 3)) * rng.random((c_out, c_in, 1, 1)) ** 3
    energy = gr.channel_energy(w)
    r, c = rng.permutation(gr.identity_labels(c_out, groups)), rng.permutation(gr.identity_labels(c_in, groups))
    r2, c2 = gr.refine(energy, r, c, groups)
    assert gr.kept_energy(energy, r2, c2) >= gr.kept_energy(energy, r, c) - 1e-12
    a = gr.assign_groups(w, groups, seed=seed)
    assert a.kept >= a.identity_kept
    assert a.identity_kept == pytest.approx(gr.kept_energy(energy, gr.identity_labels(c_out, groups),
                                                           gr.identity_labels(c_in, groups)))
    for labels, n in ((a.out_groups, c_out), (a.in_groups, c_in)):
        assert np.bincount(labels, minlength=groups).tolist() == [n // groups] * groups


def test_strata_constraint_is_respected_by_assign_groups() -> None:
    rng = np.random.default_rng(1)
    strata = rng.permutation(np.repeat(np.arange(4), 8))  # e.g. the previous grouped conv's output groups
    w = rng.standard_normal((16, 32, 1, 1))
    a = gr.assign_groups(w, 4, in_strata=strata)
    for s in range(4):
        assert np.bincount(a.in_groups[strata == s], minlength=4).tolist() == [2, 2, 2, 2]
    # At least as good as dealing each stratum round robin and placing the outputs optimally.
    energy = gr.channel_energy(w)
    c = np.empty(32, dtype=np.int64)
    for s in range(4):
        c[strata == s] = np.arange(8) % 4
    r = gr.balanced_assign(energy @ np.eye(4)[c], 4)
    assert a.kept >= gr.kept_energy(energy, r, c) - 1e-12


def test_energy_conventions() -> None:
    w = np.zeros((4, 4, 3))
    assert gr.kept_energy(gr.channel_energy(w), np.array([0, 0, 1, 1]), np.array([0, 1, 0, 1])) == 1.0
    w = np.arange(16.0).reshape(4, 4, 1)
    e = gr.channel_energy(w)
    assert e[1, 2] == 36.0
    r = c = np.array([0, 0, 1, 1])
    kept = e[:2, :2].sum() + e[2:, 2:].sum()
    assert gr.kept_energy(e, r, c) == pytest.approx(kept / e.sum())
    assert gr.group_order(np.array([1, 0, 1, 0])).tolist() == [1, 3, 0, 2]


def test_indivisible_channels_are_refused() -> None:
    with pytest.raises(ValueError, match="divisible"):
        gr.assign_groups(np.ones((6, 4, 1, 1)), 4)

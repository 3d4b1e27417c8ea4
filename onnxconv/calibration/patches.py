"""Where a layer is sampled: output positions drawn per sample (one seeded sampler) and their input patches."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from ..conv import conv_spec, known
from ..errors import ShapeError
from ..graph import node_label
from .stage import ConvTerm

__all__ = ["draw_positions", "sample_patches", "out_spatial"]


def draw_positions(key: tuple[int, int, int], count: int, n_fit: int, n_check: int, *, fit_first: bool = False,
                   ) -> tuple[np.ndarray, np.ndarray]:
    """(fitted, held-out) flat output positions of one sample: disjoint, sorted, fixed by ``key``.

    ``key`` is ``(seed, layer index, sample index)``, the seed of a ``numpy.random.default_rng``. With at least
    ``n_fit + n_check`` positions to draw from, ``n_fit`` then ``n_check`` of ``rng.choice(count, ...)`` are
    taken. With fewer, every position is used, split one of two ways (kept as the two callers always drew, so
    that their figures stay as they were): by default a permutation cut in the ratio ``n_fit : n_check`` (at
    least one fitted; the refit); with ``fit_first`` the ``rng.choice`` draw of all of them, of which the fit gets
    up to ``n_fit`` and at least one, the held-out part the rest (the planner's estimate).
    """
    rng = np.random.default_rng(key)
    want = n_fit + n_check
    if want >= count and not fit_first:
        order = rng.permutation(count)
        cut = max(1, round(count * n_fit / want)) if count > 1 else count
    else:
        order = rng.choice(count, size=min(want, count), replace=False)
        if want < count:
            cut = n_fit
        else:
            cut = min(n_fit, max(1, count - n_check)) if n_check else count
    return np.sort(order[:cut]), np.sort(order[cut:])


def sample_patches(z: np.ndarray, term: ConvTerm, out_spatial: Sequence[int], positions: np.ndarray) -> np.ndarray:
    """The receptive-field patches of one sample ``z`` (``C x D...``) at flat output ``positions``.

    Returns ``(len(positions), C, prod(kernel))`` in the weight's order (channel, then kernel taps in C order),
    so that ``patch.reshape(S, -1) @ W[n].ravel()`` is the conv's output ``n`` without bias at each position.
    Pads, strides and dilations (auto_pad resolved against ``z``'s size) are those of ``term``'s conv.
    """
    spec = conv_spec("Conv", term.attrs, term.weight_shape, False, (1, *z.shape))
    k = len(spec.kernel_shape)
    if tuple(spec.output_shape[2:]) != tuple(out_spatial):
        raise ShapeError(f"conv '{node_label(term.node)}' outputs {list(spec.output_shape[2:])}, "
                         f"the stage's output is {list(out_spatial)}")
    coords = np.unravel_index(positions, tuple(out_spatial))
    pads = spec.pads or (0,) * (2 * k)
    if all(d == 1 for d in spec.kernel_shape) and not any(pads):
        idx = tuple(c * s for c, s in zip(coords, spec.strides))
        key: tuple[slice | np.ndarray, ...] = (slice(None), *idx)  # every channel at those positions
        return np.moveaxis(z[key], 0, 1)[:, :, None]
    if any(pads):
        z = np.pad(z, [(0, 0)] + [(pads[i], pads[k + i]) for i in range(k)])
    taps = np.indices(spec.kernel_shape).reshape(k, -1)  # (k, K) in C order
    idx = tuple(coords[a][:, None] * spec.strides[a] + taps[a][None, :] * spec.dilations[a] for a in range(k))
    key = (slice(None), *idx)
    return np.moveaxis(z[key], 0, 1)  # (C, S, K) -> (S, C, K)


def out_spatial(term: ConvTerm, shape: Sequence[int]) -> tuple[int, ...]:
    """The output spatial dims of ``term``'s conv on one sample of shape ``shape`` (``C x D...``)."""
    spec = conv_spec("Conv", term.attrs, term.weight_shape, False, (1, *shape))
    dims = known(spec.output_shape[2:])
    assert dims is not None, "the sample's shape is fully known, so is the conv's output"
    return dims

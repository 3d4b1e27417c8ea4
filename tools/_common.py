"""What several benchmark scripts in tools/ need and the library does not: one copy of each, shared.

* :func:`image_like`: a photo-like input batch (the library's :func:`onnxconv.compare.make_inputs` draws
  standard-normal noise, which trained convs see as far from their data);
* :func:`sample_feeds`: that batch and the library's noise, for the same model input;
* :func:`latency_ratio` and :func:`realised_saving`: the figures the scripts print from a
  :class:`onnxconv.bench.ModelResult`, which reports speed-ups (``t(first) / t(model)``) rather than latency
  ratios;
* :func:`run_timed`: wall and CPU time of one child process (the library times onnxruntime sessions, not
  commands).

Everything else (timing loops, MAC counts, random inputs, onnxruntime sessions, output agreement) is the
library's: call :mod:`onnxconv.bench`, :mod:`onnxconv.stats`, :mod:`onnxconv.compare`.
"""

from __future__ import annotations

import math
import resource
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from onnxconv import compare
from onnxconv.bench import ModelResult

__all__ = ["image_like", "sample_feeds", "latency_ratio", "realised_saving", "run_timed"]


def image_like(shape: Sequence[int], seed: int) -> np.ndarray:
    """An ``N x C x H x W`` float32 batch that looks more like photos than white noise does, values in 0..255.

    Per image: a per-channel level in 60..200 plus a linear gradient (slope -40..40 across the image), twelve
    flat rectangles of random colour (each side 1/16 to 1/3 of the image's), Gaussian noise of std 4, clipped
    to 0..255. Trained convs see edges and flat regions in such images, as in their data; their error on
    standard-normal noise says less about their error in use.
    """
    rng = np.random.default_rng(seed)
    n, c, h, w = shape
    img = np.empty(shape, dtype=np.float32)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    for b in range(n):
        base = rng.uniform(60, 200, (c, 1, 1)) + rng.uniform(-40, 40, (c, 1, 1)) * (xx / w + yy / h)
        for _ in range(12):
            y0, x0 = rng.integers(0, h), rng.integers(0, w)
            # max(1, ...): images under 16 pixels a side still get rectangles (integers(0, 0) would raise).
            hh, ww = rng.integers(max(1, h // 16), max(2, h // 3)), rng.integers(max(1, w // 16), max(2, w // 3))
            base[:, y0:y0 + hh, x0:x0 + ww] = rng.uniform(0, 255, (c, 1, 1))
        img[b] = np.clip(base + rng.normal(0, 4, base.shape), 0, 255)
    return img


def sample_feeds(sess: Any, input_shapes: Mapping[str, Sequence[int]] | None = None,
                 seed: int = 0) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Inputs to compare a model and its rewrite on: ``[("image", ...), ("noise", ...)]``.

    ``noise`` is :func:`onnxconv.compare.make_inputs` (standard normal, ``seed``); ``image`` replaces the
    session's first input by :func:`image_like` (seed ``seed + 1``) of the same shape, and is left out when that
    input is not a float tensor of rank 4.
    """
    noise = compare.make_inputs(sess, input_shapes, seed=seed)
    first = sess.get_inputs()[0]
    out = [("noise", noise)]
    x = noise[first.name]
    if x.ndim == 4 and np.issubdtype(x.dtype, np.floating):
        out.insert(0, ("image", {**noise, first.name: image_like(x.shape, seed + 1).astype(x.dtype)}))
    return out


def latency_ratio(result: ModelResult) -> tuple[float, float, float]:
    """(median, p25, p75) over interleaved rounds of ``t(model) / t(first model)``; (1, 1, 1) for the first.

    :func:`onnxconv.bench.bench` reports the per-round speed-up ``t(first) / t(model)``; its reciprocal is the
    latency ratio, and the reciprocal of a quantile is the opposite quantile of the reciprocal, so the
    speed-up's p75 gives the ratio's p25.
    """
    sp = result.speedup
    if sp is None:
        return 1.0, 1.0, 1.0
    return 1.0 / sp.median, 1.0 / sp.p75, 1.0 / sp.p25


def realised_saving(lat_ratio: float, mac_ratio: float) -> float:
    """``(1 - latency ratio) / (1 - MAC ratio)``: the share of the MACs saved that became time saved.

    1 means every MAC saved turned into time; NaN where the rewrite saves (almost) no MACs (MAC ratio at or
    above 0.999), as the quotient then only magnifies noise.
    """
    return (1 - lat_ratio) / (1 - mac_ratio) if mac_ratio < 0.999 else math.nan


def run_timed(cmd: Sequence[str], env: Mapping[str, str] | None = None,
              cwd: str | Path | None = None) -> tuple[float, float]:
    """(wall seconds, CPU seconds user + sys) of one run of ``cmd`` as a child process, its stdout discarded.

    CPU time comes from ``getrusage(RUSAGE_CHILDREN)`` before and after (children are waited for one at a time
    here, so the difference is this child's); it is less disturbed by other load on the machine than wall time.
    Raises ``subprocess.CalledProcessError`` when the command fails.
    """
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    t0 = time.perf_counter()
    subprocess.run(list(cmd), check=True, stdout=subprocess.DEVNULL, env=dict(env) if env is not None else None,
                   cwd=cwd)
    wall = time.perf_counter() - t0
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    return wall, (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)

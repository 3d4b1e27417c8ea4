"""Calibration data: the inputs a refit (or a plan) runs the model on, checked against the model's inputs.

One array per model input, samples on the first axis (an ``.npz`` file or a folder of ``NAME.npy`` files). A
seeded fifth of the samples (:data:`HOLDOUT_FRACTION`; whole batches of a fixed-batch model; none below five) is
held out of the refit (:meth:`CalibrationSet.split`): :func:`held_out_feeds` returns them, so that a
verification runs on inputs like the calibration data that the refit never saw.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto

from ..array_io import read_npy_folder, read_npz
from ..compare import memory_limit_bytes, value_dims
from ..errors import OptionError

__all__ = ["CalibrationSet", "load_calibration", "held_out_feeds", "model_inputs", "HOLDOUT_FRACTION", "FLOAT_TYPES"]

#: Share of the calibration samples (or batches) the refit holds out for verification (:meth:`CalibrationSet.split`).
HOLDOUT_FRACTION = 0.2

#: ONNX element type -> numpy dtype for calibration inputs.
_NP_TYPES: dict[int, type] = {
    TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_,
}
#: ONNX element types of float tensors (the weights a refit can change).
FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


@dataclass
class CalibrationSet:
    """Calibration inputs: one array per model input, the batch (sample) axis first.

    ``chunk`` is how many samples one onnxruntime run takes: the model's fixed batch size, else a few.
    ``batch`` is the model's fixed batch size (None when its batch dim is symbolic).
    """

    arrays: dict[str, np.ndarray]
    source: str
    chunk: int
    batch: int | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def chunks(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first sample index, feeds) for consecutive runs over the whole set."""
        for start in range(0, self.size, self.chunk):
            yield start, {k: v[start:start + self.chunk] for k, v in self.arrays.items()}

    def split(self, seed: int = 0) -> tuple[CalibrationSet, CalibrationSet | None]:
        """(the samples the refit fits on, the held-out samples or None), fixed by ``seed``.

        ``floor(HOLDOUT_FRACTION * units)`` units are held out, a unit being one sample, or one batch of a model
        with a fixed batch size (every run needs a whole batch); fewer than ``1 / HOLDOUT_FRACTION`` units hold
        nothing out. The held-out units are ``default_rng(seed).permutation(units)[:count]``; both parts keep
        the samples' order. They let ``--verify`` test the refitted model on inputs like the calibration data
        that the refit never saw (random normal inputs say little about a model fitted to images).
        """
        unit = self.batch or 1
        units = self.size // unit
        count = int(math.floor(HOLDOUT_FRACTION * units))
        if count == 0:
            return self, None
        held_units = np.zeros(units, dtype=bool)
        held_units[np.random.default_rng(seed).permutation(units)[:count]] = True
        held = np.repeat(held_units, unit)

        def part(mask: np.ndarray, chunk: int) -> CalibrationSet:
            return CalibrationSet({k: np.ascontiguousarray(v[mask]) for k, v in self.arrays.items()}, self.source,
                                  chunk, self.batch)

        return part(~held, self.chunk), part(held, unit if self.batch else count)


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that must be fed (an input with an initializer of the same name has a default)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _read_arrays(p: Path, label: str) -> dict[str, np.ndarray]:
    """The arrays of an .npz file or a folder of .npy files, by :mod:`onnxconv.array_io` (sizes checked before
    anything is allocated, no wait on a FIFO), all together within :func:`~onnxconv.compare.memory_limit_bytes`.
    Non-finite values are refused: one inf makes every least-squares fit NaN, and the model written from it."""
    limit = memory_limit_bytes()
    if p.is_dir():
        return read_npy_folder(p, label, max_bytes=limit, finite=True)
    if p.suffix.lower() != ".npz":
        raise OptionError(f"{label}: expected an .npz file or a folder of .npy files")
    return read_npz(p, label, max_bytes=limit, finite=True)


def load_calibration(path: str | os.PathLike[str], model: onnx.ModelProto, *, chunk: int = 4) -> CalibrationSet:
    """Read calibration inputs and check them against the model's inputs.

    ``path`` is an ``.npz`` file whose array names are the input names, or a folder of ``NAME.npy`` files. Each
    array holds a batch of samples on its first axis: for a model input ``1x3x48xW`` an array ``B x 3 x 48 x W'``
    (a fixed batch size ``b`` of the model needs ``B`` to be a multiple of ``b``; symbolic dims take any size).

    Raises:
        OptionError: unreadable file (not a regular file, damaged, declaring more data than it holds or than
            memory takes), non-finite values, missing or unknown input names, wrong dtype, rank or dims, or arrays
            with different numbers of samples. Every message names the array and what was expected.
    """
    p = Path(path)
    label = f"--calibration {p}"
    if not p.exists():
        raise OptionError(f"{label}: no such file or folder")
    arrays = _read_arrays(p, label)
    inputs = model_inputs(model)
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise OptionError(f"{label}: no array for model input(s) {missing} (arrays: {sorted(arrays)})")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise OptionError(f"{label}: array(s) {extra} match no model input (inputs: {names})")
    sizes: dict[str, int] = {}
    fixed_batch: set[int] = set()
    for vi in inputs:
        a = arrays[vi.name]
        elem = vi.type.tensor_type.elem_type
        want = _NP_TYPES.get(elem)
        if want is not None and a.dtype != np.dtype(want):
            raise OptionError(f"{label}: array '{vi.name}' has dtype {a.dtype}, the model input is "
                              f"{np.dtype(want).name} (save it with .astype(np.{np.dtype(want).name}))")
        dims = value_dims(vi)
        shown = "x".join("?" if d is None else str(d) for d in dims) if dims is not None else "?"
        if dims is not None:
            if a.ndim != len(dims):
                raise OptionError(f"{label}: array '{vi.name}' has shape {list(a.shape)}, expected {len(dims)} "
                                  f"dims like the model input {shown} (the first axis counts samples)")
            for i, (have, d) in enumerate(zip(a.shape[1:], dims[1:]), start=1):
                if d is not None and have != d:
                    raise OptionError(f"{label}: array '{vi.name}' has shape {list(a.shape)}: dim {i} is {have}, "
                                      f"the model input {shown} needs {d}")
            if dims and dims[0] is not None:
                fixed_batch.add(dims[0])
        if a.ndim == 0 or a.shape[0] == 0:
            raise OptionError(f"{label}: array '{vi.name}' has no samples (shape {list(a.shape)})")
        sizes[vi.name] = int(a.shape[0])
    if len(set(sizes.values())) > 1:
        raise OptionError(f"{label}: arrays hold different numbers of samples {sizes} (first axis)")
    if len(fixed_batch) > 1:
        raise OptionError(f"{label}: the model's inputs fix different batch sizes {sorted(fixed_batch)}")
    n = next(iter(sizes.values())) if sizes else 0
    if not sizes:
        raise OptionError(f"{label}: the model has no inputs to calibrate with")
    fixed_batch_size = bool(fixed_batch)
    if fixed_batch:
        b = fixed_batch.pop()
        if n % b:
            raise OptionError(f"{label}: {n} samples, but the model's fixed batch size {b} does not divide it")
        step = b
    else:
        step = max(1, min(chunk, n))
    return CalibrationSet(arrays={k: np.ascontiguousarray(arrays[k]) for k in names}, source=str(p), chunk=step,
                          batch=step if fixed_batch_size else None)


def held_out_feeds(calibration: str | Path | CalibrationSet, model: onnx.ModelProto, *, seed: int = 0,
                   ) -> list[dict[str, np.ndarray]]:
    """The calibration samples :func:`refit` (with the same ``seed``) holds out, as onnxruntime feeds.

    ``calibration`` is a path for :func:`load_calibration` (checked against ``model``, the original model) or a
    loaded set. Returns one feeds dict per run: all held-out samples in one for a model with a symbolic batch
    dim, one per batch for a fixed batch size; an empty list when the set is too small to hold any out
    (:meth:`CalibrationSet.split`), where a caller falls back to other inputs.

    Raises:
        OptionError: a bad calibration file (as :func:`load_calibration`).
    """
    calib = calibration if isinstance(calibration, CalibrationSet) else load_calibration(calibration, model)
    _, held = calib.split(seed)
    return [] if held is None else [feeds for _, feeds in held.chunks()]

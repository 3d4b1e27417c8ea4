"""Input names that collide with numpy.savez's own parameters (``file``, ``allow_pickle``) still reach the archive.

The planner benchmarks the model on its calibration inputs through an .npz file; ``np.savez(path, **feeds)``
failed for an input named ``file`` and dropped one named ``allow_pickle``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import helper

from onnxconv.calibration import CalibrationSet
from onnxconv.compare import read_npz, write_npz
from onnxconv.planning import OrtTimer

from .modelkit import make_model, tensor

NAMES = ["file", "allow_pickle", "x.y", "args"]


def test_write_npz_keeps_every_name(tmp_path: Path) -> None:
    rng = np.random.default_rng(0)
    arrays = {n: rng.standard_normal((2, i + 1)).astype(np.float32) for i, n in enumerate(NAMES)}
    arrays["ints"] = np.arange(6, dtype=np.int64).reshape(2, 3)
    path = tmp_path / "a.npz"
    write_npz(path, arrays)
    back = read_npz(path, "test")
    assert list(back) == list(arrays)
    for n, a in arrays.items():
        assert back[n].dtype == a.dtype
        np.testing.assert_array_equal(back[n], a)
    with np.load(path, allow_pickle=False) as plain:  # numpy reads it as its own savez archive
        assert sorted(plain.files) == sorted(arrays)


@pytest.mark.parametrize("name", ["file", "allow_pickle"])
def test_timer_pair_with_an_input_named_like_a_savez_parameter(name: str) -> None:
    model = make_model([helper.make_node("Relu", [name], ["Y"])], [tensor(name, [1, 4])], [tensor("Y", [1, 4])])
    calib = CalibrationSet({name: np.ones((2, 4), np.float32)}, "test", chunk=1, batch=1)
    seconds, speedup = OrtTimer("cpu", 1, model_iters=2).pair(model, None, next(calib.chunks())[1])
    assert seconds > 0 and speedup is None

"""Weights the factoring or the grouping cannot handle: huge outliers under ``--exact``, NaN/Inf values."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from onnxconv import compare
from onnxconv.passes.ranks import RankPolicy, exact_tolerance
from onnxconv.passes.separable import factor_weight, reconstruction_error
from onnxconv.passes.separable import separate
from onnxconv.passes.shuffle import group_shuffle

from .modelkit import init, make_model, tensor


def two_convs(w_a: np.ndarray, w_b: np.ndarray, dtype: int = TensorProto.FLOAT) -> onnx.ModelProto:
    """X -> conv a -> Relu -> conv b -> Y (3x3 or 5x5 kernels, 'same' padding)."""
    pads_a, pads_b = [w_a.shape[2] // 2] * 4, [w_b.shape[2] // 2] * 4
    nodes = [
        helper.make_node("Conv", ["X", "Wa"], ["A"], name="a", pads=pads_a),
        helper.make_node("Relu", ["A"], ["R"], name="relu"),
        helper.make_node("Conv", ["R", "Wb"], ["Y"], name="b", pads=pads_b),
    ]
    return make_model(nodes, [tensor("X", [1, w_a.shape[1], 9, 9], dtype)], [tensor("Y", None, dtype)],
                      [init("Wa", w_a), init("Wb", w_b)])


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return compare.run_model(compare.session(model, opt_level="disable"), feeds)["Y"]


def outlier_weight(rng: np.random.Generator) -> np.ndarray:
    """A 5x5 weight (more taps than outputs: the batched-SVD path) with one value 1e16 times the others."""
    w = rng.standard_normal((10, 4, 5, 5)).astype(np.float32)
    w[2, 1, 2, 2] = -3e16
    return w


def test_exact_leaves_a_layer_its_dtype_cannot_factor_exactly_and_rewrites_the_rest() -> None:
    rng = np.random.default_rng(0)
    model = two_convs(rng.standard_normal((4, 3, 3, 3)).astype(np.float32), outlier_weight(rng))
    result = separate(model, RankPolicy("exact"), min_channels=1)
    rows = {c.name: c for c in result.layers}
    assert rows["a"].rewritten
    assert not rows["b"].rewritten and rows["b"].reason.startswith("not exactly factorable in float32")
    # Every output channel agrees with the original as closely as float32 allows (channels without the outlier
    # too: relative to each channel's own size, not to the outlier's).
    feeds = compare.make_inputs(compare.session(model))
    ref, new = run(model, feeds), run(result.model, feeds)
    err = np.abs(new - ref).reshape(10, -1).max(axis=1) / np.abs(ref).reshape(10, -1).max(axis=1)
    assert err.max() < 1e-5, err


@pytest.mark.parametrize("dtype", [np.float32, np.float16, np.float64])
@pytest.mark.parametrize("shape,group", [((16, 8, 3, 3), 1), ((6, 2, 5, 5), 1), ((12, 3, 3, 3), 2),
                                         ((64, 32, 7, 7), 1), ((8, 4, 3, 3, 3), 1)])
def test_ordinary_weights_pass_the_exactness_check(shape: tuple[int, ...], group: int, dtype: type) -> None:
    rng = np.random.default_rng(1)
    w = (rng.standard_normal(shape) * rng.uniform(0.01, 100.0, size=(shape[0],) + (1,) * (len(shape) - 1)))
    w = w.astype(dtype)
    f = factor_weight(w, group)
    assert reconstruction_error(f, w) <= exact_tolerance(w.dtype, f.max_rank) / 4


def test_float16_factors_that_overflow_are_not_exact() -> None:
    w = np.zeros((4, 2, 3, 3), dtype=np.float16)
    w[:, :, 1, 1] = w[:, :, 0, 0] = 60000.0  # the 1x1 weight of each slice, 60000 * sqrt(2), overflows float16
    f = factor_weight(w, 1)
    assert np.isnan(reconstruction_error(f, w))


def nonfinite_weights(value: float) -> tuple[onnx.ModelProto, np.ndarray]:
    rng = np.random.default_rng(2)
    w_a = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    w_b = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    w_b[1, 2, 0, 0] = value
    w_b[5, 7, 2, 1] = value
    return two_convs(w_a, w_b), w_b


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
def test_nonfinite_weights_are_left_with_their_count_in_both_passes(value: float) -> None:
    model, _ = nonfinite_weights(value)
    for result in (separate(model, RankPolicy("rank", 2), min_channels=1, force=True),
                   separate(model, RankPolicy("exact"), min_channels=1),
                   group_shuffle(model, groups=2)):
        rows = {c.name: c for c in result.layers}
        assert rows["a"].rewritten, result.pass_name
        assert not rows["b"].rewritten
        assert rows["b"].reason == "weight has NaN/Inf values (2 of 576)"

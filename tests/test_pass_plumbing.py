"""What the two passes share: one base check, and typed LayerChange fields the report's ``details`` derive from."""

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


def test_details_are_derived_from_the_typed_fields() -> None:
    """Each pass sets typed fields only; ``details`` (what the report and the table read) is built from them, so
    a field changed later shows there and nothing can write a figure into ``details`` alone."""
    sep, shuf = passes(chain())
    for c in sep.layers:
        assert c.pass_name == "separable" and c.rewritten and c.rank == 2 and c.groups is None
        assert list(c.details.items()) == [("rank", 2), ("max_rank", c.max_rank), ("weight_error", c.weight_error),
                                           ("rel_error", c.weight_error), ("energy", c.energy), ("form", c.form)]
        c.rank, c.forced = 3, True
        assert c.details["rank"] == 3 and c.details["forced"] is True
    for c in shuf.layers:
        assert c.pass_name == "shuffle" and c.rewritten and c.rank is None and c.form is None
        assert c.in_groups is not None and c.out_groups is not None and sorted(c.in_groups) == [0] * 4 + [1] * 4
        assert dict(c.details) == {"groups": 2, "kept_energy": c.kept_energy, "identity_kept": c.identity_kept,
                                   "method": c.method, "permutation": c.permutation,
                                   "output_reorder": c.output_reorder, "in_groups": list(c.in_groups),
                                   "out_groups": list(c.out_groups)}
    with pytest.raises(TypeError):
        sep.layers[0].details["rank"] = 1  # type: ignore[index]


def test_report_layout_puts_every_figure_in_details_in_order() -> None:
    change = LayerChange("n", "Conv", True, pass_name="separable", rank=2, max_rank=9, weight_error=0.25,
                         energy=0.9375, form="sum", forced=True, groups=2, kept_energy=0.5, identity_kept=0.4,
                         method="spectral", permutation="shuffle", output_reorder=["shuffle before m"],
                         in_groups=(0, 1), out_groups=(1, 0), plan="r=2 10->5us err=0.1",
                         refit_report={"out_err": 0.3, "refit_err": 0.2, "ridge": 1e-6})
    d = change.to_dict()
    assert list(d) == ["name", "op_type", "rewritten", "reason", "params_before", "params_after", "macs_before",
                       "macs_after", "details"]
    assert list(d["details"].items()) == [
        ("rank", 2), ("max_rank", 9), ("weight_error", 0.25), ("rel_error", 0.25), ("energy", 0.9375),
        ("form", "sum"), ("forced", True), ("groups", 2), ("kept_energy", 0.5), ("identity_kept", 0.4),
        ("method", "spectral"), ("permutation", "shuffle"), ("output_reorder", ["shuffle before m"]),
        ("in_groups", [0, 1]), ("out_groups", [1, 0]), ("plan", "r=2 10->5us err=0.1"), ("out_err", 0.3),
        ("refit_err", 0.2), ("ridge", 1e-6)]
    d["details"]["output_reorder"].append("x")  # the report's copy: the change itself is not touched
    assert change.output_reorder == ["shuffle before m"]
    assert LayerChange("n", "Conv", False, reason="why").to_dict()["details"] == {}  # unset figures are left out
    sep, shuf = (json.dumps(r.to_dict()) for r in passes(chain()))
    assert '"pass_name"' not in sep + shuf
    assert '"in_groups": [' in shuf  # details keep the labels as JSON lists

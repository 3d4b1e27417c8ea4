"""The refit's reuse of final tensors between waves: same result as recomputing them, fewer nodes run.

Every test refits once with the cache (the default) and once with a zero budget, which keeps nothing and so
runs each wave's copy from the graph inputs as before; the layer reports and the refitted weights must agree,
and the cached refit must have built smaller copies (so a cache that silently does nothing fails).
"""

from __future__ import annotations

import importlib
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from onnxconv import calibration, compare
from onnxconv.calibration.layers import changed_waves, plan_layer, waves
from onnxconv.passes.common import PassResult
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import separate

from .modelkit import init, make_model, tensor
from .test_calibrate import calib, lowrank_weight, smooth_inputs

acts = importlib.import_module("onnxconv.calibration.activations")  # the package exports a function of that name


def conv(x: str, w: str, y: str, name: str) -> onnx.NodeProto:
    return helper.make_node("Conv", [x, w], [y], name=name, pads=[1, 1, 1, 1])


def weights(rng: np.random.Generator, *names: str, c: int = 8) -> list[onnx.TensorProto]:
    return [init(n, lowrank_weight(rng, c, c, 3, 2, 0.5)) for n in names]


Copies = list[tuple[list[str], int]]  # (outputs, nodes) of every cut-down copy a refit built


def refit_both(model: onnx.ModelProto, res: PassResult, cal: calibration.CalibrationSet,
               monkeypatch: pytest.MonkeyPatch, options: calibration.FitOptions = calibration.FitOptions(),
               reference: onnx.ModelProto | None = None) -> tuple[PassResult, Copies, PassResult, Copies]:
    """(cached refit, the copies it built, uncached refit, the copies it built)."""
    copies: Copies = []
    plain = acts.truncate_model

    def counting(m: onnx.ModelProto, outputs: dict[str, int], given: Any = None) -> onnx.ModelProto:
        cut = plain(m, outputs, given)
        copies.append((list(outputs), len(cut.graph.node)))
        return cut

    monkeypatch.setattr(acts, "truncate_model", counting)
    cached = calibration.refit(model, res, cal, options, reference=reference)
    made = list(copies)
    copies.clear()
    monkeypatch.setattr(acts, "CACHE_BUDGET", 0)
    uncached = calibration.refit(model, res, cal, options, reference=reference)
    monkeypatch.setattr(acts, "truncate_model", plain)
    return cached, made, uncached, copies


def nodes(copies: Copies) -> int:
    return sum(n for _, n in copies)


def assert_same(a: PassResult, b: PassResult) -> None:
    """Same reports (errors to float rounding) and same weights on every node."""
    for ca, cb in zip(a.layers, b.layers):
        assert ca.name == cb.name and ca.details.get("refit") == cb.details.get("refit")
        for key in ("out_err", "refit_err"):
            assert ca.details.get(key) == pytest.approx(cb.details.get(key), rel=1e-5, abs=1e-9), (ca.name, key)
    arrays = [{t.name: numpy_helper.to_array(t) for t in r.model.graph.initializer} for r in (a, b)]
    for na, nb in zip(a.model.graph.node, b.model.graph.node):
        assert na.op_type == nb.op_type and len(na.input) == len(nb.input)
        for ia, ib in zip(na.input, nb.input):
            if ia in arrays[0]:
                np.testing.assert_allclose(arrays[0][ia], arrays[1][ib], rtol=1e-4, atol=1e-6)


def chain(rng: np.random.Generator) -> onnx.ModelProto:
    """X -> c0 -> Relu -> c1 -> Relu -> c2 -> Relu -> c3 -> Y (8 channels, 10x10)."""
    nodes = [conv("X", "W0", "a", "c0"), helper.make_node("Relu", ["a"], ["ra"]),
             conv("ra", "W1", "b", "c1"), helper.make_node("Relu", ["b"], ["rb"]),
             conv("rb", "W2", "c", "c2"), helper.make_node("Relu", ["c"], ["rc"]),
             conv("rc", "W3", "Y", "c3")]
    return make_model(nodes, [tensor("X", ["N", 8, 10, 10])], [tensor("Y", None)], weights(rng, "W0", "W1", "W2", "W3"))


@pytest.mark.parametrize("depthwise", [True, False])
def test_a_chain_reuses_each_layers_input(tmp_path, monkeypatch, depthwise) -> None:
    rng = np.random.default_rng(0)
    model = chain(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 12, 8, 10))  # 10 fitted: chunks of 4, 4 and 2
    res = separate(model, RankPolicy("rank", 1), force=True)
    options = calibration.FitOptions(depthwise=depthwise)
    cached, made, uncached, plain = refit_both(model, res, cal, monkeypatch, options)
    assert_same(cached, uncached)
    assert all("ridge" in c.details for c in cached.layers)
    assert nodes(made) < nodes(plain)


def skip_model(rng: np.random.Generator) -> onnx.ModelProto:
    """stem -> (left, right) -> Concat(left, right, stem's Relu) -> head -> Add(head, stem's Relu scaled by a
    Constant) -> Y; ``left`` (a rewritten layer's output) is also a graph output, and the head reads its input
    through an If whose branches read an outer tensor (implicit inputs)."""
    two = helper.make_tensor("two", TensorProto.FLOAT, [], [2.0])
    then_g = helper.make_graph([helper.make_node("Identity", ["cat"], ["sel_t"])], "then", [], [tensor("sel_t", None)])
    else_g = helper.make_graph([helper.make_node("Neg", ["cat"], ["sel_e"])], "else", [], [tensor("sel_e", None)])
    nodes = [
        conv("X", "W0", "s", "stem"), helper.make_node("Relu", ["s"], ["r"]),
        conv("r", "W1", "left", "left"), conv("r", "W2", "b", "right"),
        helper.make_node("Concat", ["left", "b", "r"], ["cat"], axis=1),
        helper.make_node("Constant", [], ["yes"], value=helper.make_tensor("v", TensorProto.BOOL, [], [True])),
        helper.make_node("If", ["yes"], ["sel"], then_branch=then_g, else_branch=else_g),
        helper.make_node("Conv", ["sel", "W3"], ["h"], name="head", pads=[1, 1, 1, 1]),
        helper.make_node("Constant", [], ["k"], value=two),
        helper.make_node("Mul", ["r", "k"], ["r2"]), helper.make_node("Add", ["h", "r2"], ["Y"]),
    ]
    inits = [*weights(rng, "W0", "W1", "W2"), init("W3", lowrank_weight(rng, 8, 24, 3, 2, 0.5))]
    return make_model(nodes, [tensor("X", ["N", 8, 10, 10])], [tensor("Y", None), tensor("left", None)], inits)


def test_branches_and_skip_connections_reuse_the_earlier_tensor(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    model = skip_model(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 10, 8, 10))
    res = separate(model, RankPolicy("rank", 1), force=True)
    cached, made, uncached, plain = refit_both(model, res, cal, monkeypatch)
    assert_same(cached, uncached)
    assert {c.name for c in cached.layers if "ridge" in c.details} == {"stem", "left", "right", "head"}
    assert nodes(made) < nodes(plain)
    x = {"X": smooth_inputs(rng, 2, 8, 10)}
    got, want = compare.run_model(compare.session(cached.model), x), compare.run_model(compare.session(uncached.model), x)
    np.testing.assert_allclose(got["Y"], want["Y"], rtol=1e-4, atol=1e-4)


def test_a_fixed_batch_model_reuses_per_batch(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    model = skip_model(rng)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 10, 8, 10))
    assert cal.chunk == 2
    res = separate(model, RankPolicy("rank", 1), force=True)
    cached, made, uncached, plain = refit_both(model, res, cal, monkeypatch, calibration.FitOptions(depthwise=False))
    assert_same(cached, uncached)
    assert nodes(made) < nodes(plain)


def test_tensors_over_the_budget_are_recomputed(tmp_path, monkeypatch) -> None:
    """A budget that holds one layer input of the chain, not two: the first stays held (the next one does not
    fit beside it) and later waves start from it; the result is the same."""
    rng = np.random.default_rng(3)
    model = chain(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 10, 8, 10))  # 8 fitted
    res = separate(model, RankPolicy("rank", 1), force=True)
    full, made_full, _, _ = refit_both(model, res, cal, monkeypatch)
    monkeypatch.setattr(acts, "CACHE_BUDGET", 8 * 8 * 10 * 10 * 4)  # one 8x10x10 float tensor of 8 samples
    partial, made, uncached, plain = refit_both(model, res, cal, monkeypatch)
    assert_same(partial, uncached)
    assert_same(full, uncached)
    assert nodes(made_full) < nodes(made) < nodes(plain)


def test_only_tensors_downstream_of_a_later_wave_change() -> None:
    rng = np.random.default_rng(4)
    model = skip_model(rng)
    res = separate(model, RankPolicy("rank", 1), force=True)
    plans = []
    for c in res.rewritten:
        found = plan_layer(model, res.model, c, len(plans))
        assert not isinstance(found, str)
        plans.append(found)
    waves(res.model, [p.stage for p in plans])
    changed = changed_waves(res.model, plans)
    assert "X" not in changed and "k" not in changed  # an input, a Constant
    assert changed["r"] == changed["r2"] == 0  # the stem's wave
    assert changed["cat"] == changed["sel"] == 1 and changed["Y"] == 2  # through the If's implicit input too


def test_a_cut_copy_reads_the_given_tensors_as_inputs() -> None:
    rng = np.random.default_rng(5)
    model = skip_model(rng)
    x = smooth_inputs(rng, 3, 8, 10)
    full = compare.run_model(compare.session(acts.truncate_model(model, {"Y": 1, "r": 1})), {"X": x})
    cache = acts.TensorCache()
    cache.add({0: {"r": full["r"]}})
    cut = acts.truncate_model(model, {"Y": 1}, {"r": cache.value_info("r")})
    assert all(n.name != "stem" and n.op_type != "Relu" for n in cut.graph.node)  # r's producers are cut off
    assert [i.name for i in cut.graph.input] == ["X", "r"]
    got = compare.run_model(compare.session(cut), {"X": x, "r": full["r"]})
    np.testing.assert_allclose(got["Y"], full["Y"], rtol=1e-5, atol=1e-5)


def test_a_mixed_plan_shares_a_wave_input_between_its_two_runs(tmp_path, monkeypatch) -> None:
    """Separable layers refitted whole and grouped ones in the same wave read the same tensor: the second run of
    the wave takes it from the cache. The grouped layers' channel orders come from the plan's reference."""
    from types import SimpleNamespace

    from onnxconv.planning.build import build_plan
    from onnxconv.planning.choose import LayerOptions, Option

    rng = np.random.default_rng(6)
    model = skip_model(rng)
    chosen = {"stem": ("rank", 1), "left": ("rank", 1), "right": ("groups", 2), "head": ("groups", 2)}
    layers = [LayerOptions(n, [Option("keep", 0, 2.0, 0.0), Option(k, v, 1.0, 0.0)]) for n, (k, v) in chosen.items()]
    res, reference = build_plan(model, layers, (1,) * len(layers), [SimpleNamespace(params=0, macs=0)] * len(layers), {}, "concat",
                                None, None)
    assert reference is not None
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 10, 8, 10))
    cached, made, uncached, plain = refit_both(model, res, cal, monkeypatch, reference=reference)
    # Wave 1: the separable 'left' reads r (computed, kept), then the grouped 'right' reads r in its grouped order:
    # that copy is the reordering alone, from the kept r.
    assert [outs for outs, _ in made[-3:]] == [["r"], ["r_reordered"], ["sel_reordered"]]
    assert made[-2][1] == 1
    assert_same(cached, uncached)
    assert {c.name for c in cached.layers if "ridge" in c.details} == set(chosen)
    assert nodes(made) < nodes(plain)


def test_a_run_reads_a_held_tensor_it_fetches_and_keeps_what_it_is_told(tmp_path) -> None:
    rng = np.random.default_rng(7)
    model = skip_model(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 6, 8, 10))
    cache = acts.TensorCache()
    asked: list[frozenset[str]] = []
    first = dict(acts.activations(model, {"r": 1}, cal, cache=cache, keep=lambda made: asked.append(made) or {"s", "r"}))
    assert asked == [frozenset({"s", "r"})] and cache.names == {"s", "r"}  # both computed, both fit
    assert all(not v.flags.writeable for c in cache.chunks.values() for v in c.values())
    again = dict(acts.activations(model, {"r": 1, "Y": 1}, cal, cache=cache))
    for start, outs in first.items():
        assert again[start]["r"] is cache.chunks[start]["r"]  # read, not recomputed
        np.testing.assert_array_equal(again[start]["r"], outs["r"])
    cache.keep_only({"r"})
    assert cache.names == {"r"} and cache.nbytes == sum(c["r"].nbytes for c in cache.chunks.values())

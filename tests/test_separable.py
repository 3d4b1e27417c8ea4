"""The depthwise-separable pass: exactness in onnxruntime, low-rank reproduction, rank choice, skips, preservation."""

from __future__ import annotations

import math

import numpy as np
import onnx
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxconv import compare
from onnxconv.errors import OptionError, ShapeError
from onnxconv.model_io import load_model
from onnxconv.passes.common import NodeFilter, PassResult
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import FORMS, MIN_CHANNELS, factor_weight, separable_weights
from onnxconv.passes.separable import separate as separate_pass

from .modelkit import IR_VERSION, init, make_model, real_model, single_conv, tensor


def separate(model: onnx.ModelProto, policy: RankPolicy, **kw: object) -> PassResult:
    """The pass with ``min_channels=1``: the tiny test models have stem-like channel counts."""
    kw.setdefault("min_channels", 1)
    return separate_pass(model, policy, **kw)  # type: ignore[arg-type]


def outputs(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    return compare.run_model(compare.session(model, opt_level="all"), feeds)


def agreement(a: onnx.ModelProto, b: onnx.ModelProto, seed: int = 0) -> list[compare.Agreement]:
    feeds = compare.make_inputs(compare.session(a), seed=seed)
    return compare.compare_outputs(outputs(a, feeds), outputs(b, feeds))


def ops(model: onnx.ModelProto) -> list[str]:
    return [n.op_type for n in model.graph.node]


def conv_model(x_shape, w: np.ndarray, *, bias: np.ndarray | None = None, dtype: int = TensorProto.FLOAT,
               **attrs: object) -> onnx.ModelProto:
    inits = [init("W", w)]
    ins = ["X", "W"]
    if bias is not None:
        inits.append(init("B", bias))
        ins.append("B")
    node = helper.make_node("Conv", ins, ["Y"], name="conv", **attrs)
    return make_model([node], [tensor("X", x_shape, dtype)], [tensor("Y", None, dtype)], inits)


# ----------------------------------------------------------------------------------------------------------------
# Exactness over random configurations


@st.composite
def conv_configs(draw: st.DrawFn) -> dict:
    k = draw(st.sampled_from([1, 2, 3]))
    group = draw(st.sampled_from([1, 1, 2, 3]))
    mg = draw(st.integers(1, 3)) if group == 1 else draw(st.integers(2, 3))  # mg == 1 with group > 1 is depthwise
    ng = draw(st.integers(1, 4))
    kernel = draw(st.lists(st.integers(1, 3), min_size=k, max_size=k))
    if math.prod(kernel) == 1:
        kernel[draw(st.integers(0, k - 1))] = draw(st.integers(2, 3))  # 1x1 convs are skipped, tested apart
    size_hi = {1: 12, 2: 8, 3: 5}[k]
    spatial = draw(st.lists(st.integers(3, size_hi), min_size=k, max_size=k))
    strides = draw(st.lists(st.integers(1, 2), min_size=k, max_size=k))
    dilations = draw(st.lists(st.integers(1, 2), min_size=k, max_size=k))
    auto_pad = draw(st.sampled_from(["NOTSET", "NOTSET", "SAME_UPPER", "SAME_LOWER", "VALID"]))
    pads = draw(st.lists(st.integers(0, 2), min_size=2 * k, max_size=2 * k)) if auto_pad == "NOTSET" else None
    return dict(k=k, group=group, mg=mg, ng=ng, kernel=kernel, spatial=spatial, strides=strides,
                dilations=dilations, auto_pad=auto_pad, pads=pads, bias=draw(st.booleans()),
                batch=draw(st.integers(1, 2)), form=draw(st.sampled_from(FORMS)), seed=draw(st.integers(0, 99)))


def build(cfg: dict) -> onnx.ModelProto:
    m, n = cfg["mg"] * cfg["group"], cfg["ng"] * cfg["group"]
    attrs: dict[str, object] = {"strides": cfg["strides"], "dilations": cfg["dilations"], "group": cfg["group"]}
    if cfg["auto_pad"] == "NOTSET":
        attrs["pads"] = cfg["pads"]
    else:
        attrs["auto_pad"] = cfg["auto_pad"]
    return single_conv([cfg["batch"], m, *cfg["spatial"]], [n, cfg["mg"], *cfg["kernel"]], bias=cfg["bias"],
                       seed=cfg["seed"], **attrs)


def effective_pads(cfg: dict) -> list[int]:
    if cfg["auto_pad"] == "NOTSET":
        return cfg["pads"]
    if cfg["auto_pad"] == "VALID":
        return [0] * (2 * cfg["k"])
    begins, ends = [], []
    for d, k, s, dil in zip(cfg["spatial"], cfg["kernel"], cfg["strides"], cfg["dilations"]):
        out = -(-d // s)
        total = max(0, (out - 1) * s + dil * (k - 1) + 1 - d)
        small, big = total // 2, total - total // 2
        b, e = (small, big) if cfg["auto_pad"] == "SAME_UPPER" else (big, small)
        begins.append(b)
        ends.append(e)
    return begins + ends


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(conv_configs())
def test_exact_rank_matches_original_in_onnxruntime(cfg: dict) -> None:
    pads = effective_pads(cfg)
    for i in range(cfg["k"]):
        assume(cfg["spatial"][i] + pads[i] + pads[cfg["k"] + i] >= cfg["dilations"][i] * (cfg["kernel"][i] - 1) + 1)
    model = build(cfg)
    result = separate(model, RankPolicy("exact"), form=cfg["form"])
    (layer,) = result.layers
    assert layer.rewritten, layer.reason
    assert layer.details["rank"] == min(cfg["ng"], math.prod(cfg["kernel"]))
    assert layer.details["rel_error"] < 1e-6
    reference = model
    if cfg["auto_pad"].startswith("SAME") and any(d > 1 for d in cfg["dilations"]):
        # onnxruntime refuses SAME_* with dilation > 1 (docs/conv-math.md, "onnxruntime facts"): compare with the explicit-pads conv.
        reference = build({**cfg, "auto_pad": "NOTSET", "pads": pads})
    (agree,) = agreement(reference, result.model, seed=cfg["seed"])
    assert agree.rel_error <= 1e-5, (agree, cfg)
    # Explicit pads always reach the depthwise stage, so the result runs whatever the dilation.
    dw = [n for n in result.model.graph.node if n.op_type == "Conv" and "/dw" in n.name]
    assert dw and all({a.name for a in n.attribute} >= {"pads"} for n in dw)
    assert not any(a.name == "auto_pad" for n in dw for a in n.attribute)


@pytest.mark.parametrize("form", FORMS)
def test_forms_have_the_expected_structure(form: str) -> None:
    model = single_conv([1, 4, 8, 8], [8, 4, 3, 3], bias=True, pads=[1, 1, 1, 1])
    result = separate(model, RankPolicy("rank", 3), form=form)
    expected = {
        "concat": ["Conv"] * 3 + ["Concat", "Conv"],
        "sum": ["Conv"] * 6 + ["Add"] * 2,
        "multiplier": ["Conv", "Conv"],
        "tiled": ["Concat", "Conv", "Conv"],
    }[form]
    assert sorted(ops(result.model)) == sorted(expected)
    assert result.layers[0].details["form"] == form
    groups = {n.name: helper.get_attribute_value(next(a for a in n.attribute if a.name == "group"))
              for n in result.model.graph.node if n.op_type == "Conv"}
    dw_groups = {v for k, v in groups.items() if "/dw" in k}
    # Depthwise over the 4 input channels; tiled: over the 3 stacked copies of them.
    assert dw_groups == ({12} if form == "tiled" else {4})
    # The bias is applied once (pointwise stage / first branch).
    assert sum("B" in n.input for n in result.model.graph.node) == 1


@pytest.mark.parametrize("form", ["concat", "tiled"])
def test_grouped_concat_falls_back_to_sum_and_rank_one_is_two_convs(form: str) -> None:
    grouped = single_conv([1, 4, 6, 6], [6, 2, 3, 3], group=2)
    res = separate(grouped, RankPolicy("rank", 2), form=form)
    assert res.layers[0].details["form"] == "sum" and "Concat" not in ops(res.model)
    assert agreement(grouped, separate(grouped, RankPolicy("exact"), form=form).model)[0].rel_error <= 1e-5
    res1 = separate(single_conv([1, 4, 6, 6], [6, 4, 3, 3]), RankPolicy("rank", 1), form=form)
    assert ops(res1.model) == ["Conv", "Conv"]


def test_sum_blocks_keep_emission_order_and_stay_topological() -> None:
    """Each sum block runs dw0, pw0, dw1, pw1, add1, ...; Adds take the branch first (the NCHWc fusion target)."""
    rng = np.random.default_rng(5)
    w1, w2 = (0.3 * rng.standard_normal((8, 8, 3, 3)).astype(np.float32) for _ in range(2))
    # A bias made at run time by a chain deeper than the depthwise convs (their level in the export's sort),
    # and a node independent of c1 that the sort puts between c1's nodes.
    nodes = [helper.make_node("Relu", ["B"], ["b1"], name="bias1"),
             helper.make_node("Neg", ["b1"], ["b2"], name="bias2"),
             helper.make_node("Neg", ["b2"], ["bias"], name="bias3"),
             helper.make_node("Conv", ["X", "W1", "bias"], ["a"], name="c1", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["X"], ["side"], name="side"),
             helper.make_node("Conv", ["a", "W2"], ["b"], name="c2", pads=[1, 1, 1, 1]),
             helper.make_node("Add", ["b", "side"], ["Y"], name="residual")]
    model = make_model(nodes, [tensor("X", [1, 8, 6, 6]), tensor("B", [8])], [tensor("Y", [1, 8, 6, 6])],
                       [init("W1", w1), init("W2", w2)])
    result = separate(model, RankPolicy("rank", 3), form="sum")
    onnx.checker.check_model(result.model)  # nodes in topological order
    names = [n.name for n in result.model.graph.node]
    for c in ("c1", "c2"):
        block = [n for n in names if n.startswith(f"{c}/")]
        assert block == [f"{c}/dw0", f"{c}/pw0", f"{c}/dw1", f"{c}/pw1", f"{c}/add1", f"{c}/dw2", f"{c}/pw2",
                         f"{c}/add2"]
        first = names.index(block[0])
        assert names[first:first + len(block)] == block  # contiguous
    by_name = {n.name: n for n in result.model.graph.node}
    assert by_name["c1/add2"].input[0] == by_name["c1/pw2"].output[0]
    assert by_name["c1/add2"].input[1] == by_name["c1/add1"].output[0]
    exact = separate(model, RankPolicy("exact"), form="sum").model
    onnx.checker.check_model(exact)
    assert agreement(model, exact)[0].rel_error <= 1e-5


# ----------------------------------------------------------------------------------------------------------------
# Low rank


def separable_weight(rng: np.random.Generator, n: int, mg: int, kernel: tuple[int, ...], group: int,
                     r: int) -> np.ndarray:
    """A weight whose every slice (outputs of a group x kernel taps) is a sum of r outer products."""
    ng, k = n // group, math.prod(kernel)
    w = np.zeros((group, ng, mg, k))
    for gi in range(group):
        for j in range(mg):
            a = rng.standard_normal((ng, r))
            b = rng.standard_normal((r, k))
            w[gi, :, j, :] = a @ b
    return w.reshape(n, mg, *kernel).astype(np.float32)


@settings(max_examples=25, deadline=None)
@given(r=st.integers(1, 3), group=st.sampled_from([1, 2]), form=st.sampled_from(FORMS), seed=st.integers(0, 50),
       dims=st.sampled_from([1, 2, 3]))
def test_weights_built_from_r_terms_are_reproduced_at_rank_r(r: int, group: int, form: str, seed: int,
                                                             dims: int) -> None:
    rng = np.random.default_rng(seed)
    kernel = (5,) if dims == 1 else (3,) * dims  # K > r, so rank r is below the exact rank and saves MACs
    n, mg = 8 * group, 3
    w = separable_weight(rng, n, mg, kernel, group, r)
    spatial = {1: [10], 2: [7, 7], 3: [5, 5, 5]}[dims]
    model = conv_model([1, mg * group, *spatial], w, group=group, pads=[kernel[0] // 2] * (2 * dims))
    result = separate(model, RankPolicy("rank", r), form=form)
    (layer,) = result.layers
    assert layer.rewritten and layer.details["rank"] == r
    assert layer.details["rel_error"] < 1e-6
    assert layer.macs_after < layer.macs_before
    (agree,) = agreement(model, result.model, seed=seed)
    assert agree.rel_error <= 1e-5
    if r > 1:
        lower = separate(model, RankPolicy("rank", r - 1), form=form).layers[0]
        assert lower.details["rel_error"] > 1e-3


# concat needs group 1 (grouped convs are emitted as sum, tested above).
@pytest.mark.parametrize(("form", "group"), [("concat", 1), ("tiled", 1), ("sum", 1), ("sum", 2), ("multiplier", 1),
                                             ("multiplier", 2)])
def test_factors_give_the_best_rank_r_approximation_of_every_slice(form: str, group: int) -> None:
    """Rebuild W from the emitted depthwise and pointwise weights and compare with a per-slice truncated SVD."""
    rng = np.random.default_rng(3)
    n, mg, kernel, r = 6, 4, (3, 2), 2
    w = rng.standard_normal((n, mg, *kernel))
    f = factor_weight(w, group)
    dw, pw = separable_weights(f, r, form)
    m, ng, k = mg * group, n // group, 6
    if form == "multiplier":
        vt = dw[0].reshape(m, r, k)
    elif form == "tiled":  # one depthwise over the r stacked copies of the input: channel t*M + m
        vt = dw[0].reshape(r, m, k).transpose(1, 0, 2)
    else:
        vt = np.stack([d.reshape(m, k) for d in dw], 1)
    if form == "multiplier":
        p = pw[0].reshape(group, ng, mg, r).transpose(0, 2, 1, 3).reshape(m, ng, r)
    elif form in ("concat", "tiled"):
        p = pw[0].reshape(n, r, m).transpose(2, 0, 1)
    else:
        p = np.stack([x.reshape(group, ng, mg).transpose(0, 2, 1).reshape(m, ng) for x in pw], 2)
    rebuilt = np.einsum("mnt,mtk->mnk", p, vt)
    for gi in range(group):
        for j in range(mg):
            s = w[gi * ng:(gi + 1) * ng, j].reshape(ng, k)
            u_, sv, v_ = np.linalg.svd(s, full_matrices=False)
            best = (u_[:, :r] * sv[:r]) @ v_[:r]
            np.testing.assert_allclose(rebuilt[gi * mg + j], best, atol=1e-10)
    slices = np.moveaxis(w.reshape(group, ng, mg, k), 2, 1).reshape(m, ng, k)
    err = np.linalg.norm(rebuilt - slices) / np.linalg.norm(w)
    assert math.isclose(err, math.sqrt(1 - f.kept[r]), rel_tol=1e-9)


# ----------------------------------------------------------------------------------------------------------------
# Choosing ranks


def decaying_model(seed: int = 0) -> onnx.ModelProto:
    """Two convs whose slices have fast-decaying spectra, like trained weights."""
    rng = np.random.default_rng(seed)

    def weight(n: int, m: int) -> np.ndarray:
        u = rng.standard_normal((m, n, 9))
        v = rng.standard_normal((m, 9, 9))
        scale = 0.5 ** np.arange(9)
        return np.einsum("mnt,t,mtk->nmk", u, scale, v).reshape(n, m, 3, 3).astype(np.float32)

    nodes = [
        helper.make_node("Conv", ["X", "W1"], ["H"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["H"], ["R"], name="relu"),
        helper.make_node("Conv", ["R", "W2"], ["Y"], name="c2", pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    return make_model(nodes, [tensor("X", [1, 16, 16, 16])], [tensor("Y", [1, 32, 8, 8])],
                      [init("W1", weight(16, 16)), init("W2", weight(32, 16))])


def test_energy_and_max_error_pick_the_smallest_sufficient_rank() -> None:
    model = decaying_model()
    for energy in (0.5, 0.9, 0.99):
        for layer in separate(model, RankPolicy("energy", energy), force=True).layers:
            r = layer.details["rank"]
            assert layer.details["energy"] >= energy - 1e-12
            if r > 1:
                lower = separate(model, RankPolicy("rank", r - 1), force=True, node_filter=NodeFilter(
                    [f"^{layer.name}$"])).layers
                assert next(x for x in lower if x.name == layer.name).details["energy"] < energy
    for max_error in (0.05, 0.3):
        for layer in separate(model, RankPolicy("max-error", max_error), force=True).layers:
            assert layer.details["rel_error"] <= max_error + 1e-12
            assert layer.details["rel_error"] == pytest.approx(math.sqrt(1 - layer.details["energy"]))


@pytest.mark.parametrize("budget", [0.35, 0.5, 0.8])
def test_budget_bounds_total_macs(budget: float) -> None:
    model = decaying_model()
    result = separate(model, RankPolicy("budget", budget))
    t = result.totals()
    assert t["macs_after"] <= budget * t["macs_before"]
    assert result.rewritten
    # Greedy by error per MAC saved: a looser budget never adds error.
    tighter = separate(model, RankPolicy("budget", budget / 2)).layers
    for loose, tight in zip(result.layers, tighter):
        if loose.rewritten:
            assert tight.rewritten and tight.details["rank"] <= loose.details["rank"]
    (agree,) = agreement(model, result.model)
    assert agree.cosine > 0.9


def test_unreachable_budget_and_bad_policies_are_option_errors() -> None:
    with pytest.raises(OptionError, match="smallest reachable"):
        separate(decaying_model(), RankPolicy("budget", 0.01))
    for kind, value in (("rank", 0), ("rank", 1.5), ("energy", 0), ("energy", 1.2), ("max-error", 1),
                        ("budget", 0), ("budget", 2), ("svd", 1)):
        with pytest.raises(OptionError):
            RankPolicy(kind, value)
    with pytest.raises(OptionError, match="--form"):
        separate(decaying_model(), RankPolicy("rank", 1), form="diagonal")


def test_budget_needs_known_shapes() -> None:
    model = single_conv(["N", 4, "H", "W"], [8, 4, 3, 3])
    with pytest.raises(ShapeError, match="--input-shape"):
        separate(model, RankPolicy("budget", 0.5))
    res = separate(model, RankPolicy("budget", 0.9), input_shapes={"X": [1, 4, 10, 10]})
    assert res.layers[0].macs_before == 8 * 4 * 9 * 64
    # Other policies work without shapes; MACs are then unknown, not wrong.
    unknown = separate(model, RankPolicy("rank", 1)).layers[0]
    assert unknown.rewritten and unknown.macs_before is None and unknown.macs_after is None


# ----------------------------------------------------------------------------------------------------------------
# Skips


def skip_reason(model: onnx.ModelProto, **kw: object) -> str:
    result = separate(model, kw.pop("policy", RankPolicy("rank", 1)), **kw)  # type: ignore[arg-type]
    (layer,) = result.layers
    assert not layer.rewritten
    assert [n.op_type for n in result.model.graph.node] == [n.op_type for n in model.graph.node]
    return layer.reason


def test_skip_reasons() -> None:
    assert "ConvTranspose" in skip_reason(single_conv([1, 4, 5, 5], [4, 2, 3, 3], op="ConvTranspose"))
    assert "1x1 kernel" in skip_reason(single_conv([1, 4, 5, 5], [8, 4, 1, 1]))
    assert "already depthwise" in skip_reason(single_conv([1, 4, 5, 5], [8, 1, 3, 3], group=4))
    assert "saves no MACs" in skip_reason(single_conv([1, 4, 5, 5], [2, 4, 3, 3]), policy=RankPolicy("rank", 2))
    narrow = single_conv([1, MIN_CHANNELS - 1, 5, 5], [16, MIN_CHANNELS - 1, 3, 3])
    assert f"only {MIN_CHANNELS - 1} input channels" in skip_reason(narrow, min_channels=MIN_CHANNELS)
    assert separate(narrow, RankPolicy("rank", 1), min_channels=MIN_CHANNELS, force=True).layers[0].rewritten
    assert "--exclude" in skip_reason(single_conv([1, 4, 5, 5], [8, 4, 3, 3]), node_filter=NodeFilter([], ["^conv$"]))
    assert "--include" in skip_reason(single_conv([1, 4, 5, 5], [8, 4, 3, 3]), node_filter=NodeFilter(["nomatch"]))

    runtime = make_model([helper.make_node("Conv", ["X", "W"], ["Y"], name="conv")],
                         [tensor("X", [1, 4, 5, 5]), tensor("W", [8, 4, 3, 3])], [tensor("Y", [1, 8, 3, 3])])
    assert "computed at run time" in skip_reason(runtime)

    qdq_nodes = [
        helper.make_node("DequantizeLinear", ["Wq", "s", "z"], ["W"], name="dq"),
        helper.make_node("Conv", ["X", "W"], ["Y"], name="conv"),
    ]
    qdq = make_model(qdq_nodes, [tensor("X", [1, 4, 5, 5])], [tensor("Y", [1, 8, 3, 3])],
                     [init("Wq", np.ones((8, 4, 3, 3), np.int8)), init("s", np.float32(0.1)), init("z", np.int8(0))])
    assert "quantized weight" in skip_reason(qdq)

    qconv = make_model(
        [helper.make_node("ConvInteger", ["X", "W"], ["Y"], name="conv")],
        [tensor("X", [1, 4, 5, 5], TensorProto.UINT8)], [tensor("Y", [1, 8, 3, 3], TensorProto.INT32)],
        [init("W", np.ones((8, 4, 3, 3), np.uint8))])
    assert "quantized conv (ConvInteger)" in skip_reason(qconv)


def test_force_rewrites_a_layer_that_saves_nothing() -> None:
    model = single_conv([1, 4, 5, 5], [2, 4, 3, 3], bias=True)
    layer = separate(model, RankPolicy("rank", 2), force=True).layers[0]
    assert layer.rewritten and layer.details.get("forced") and layer.macs_after >= layer.macs_before


def test_conv_in_a_function_is_skipped_with_reason() -> None:
    fn = helper.make_function("local", "Block", ["x", "w"], ["y"],
                              [helper.make_node("Conv", ["x", "w"], ["y"], name="inner", pads=[1, 1, 1, 1])],
                              [helper.make_opsetid("", 17)])
    model = make_model([helper.make_node("Block", ["X", "W"], ["Y"], name="call", domain="local")],
                       [tensor("X", [1, 4, 6, 6])], [tensor("Y", [1, 8, 6, 6])],
                       [init("W", np.ones((8, 4, 3, 3), np.float32))])
    model.opset_import.append(helper.make_opsetid("local", 1))
    model.functions.append(fn)
    result = separate(model, RankPolicy("rank", 1))
    (layer,) = result.layers
    assert not layer.rewritten and "model-local function" in layer.reason
    assert result.model.functions[0] == fn


# ----------------------------------------------------------------------------------------------------------------
# Graphs, weights and preservation


def test_if_branch_conv_is_rewritten() -> None:
    rng = np.random.default_rng(1)
    w = rng.standard_normal((6, 3, 3, 3)).astype(np.float32)
    then_g = helper.make_graph([helper.make_node("Conv", ["X", "W"], ["ty"], name="then_conv", pads=[1, 1, 1, 1])],
                               "then", [], [tensor("ty", [1, 6, 5, 5])])
    else_g = helper.make_graph([helper.make_node("Relu", ["X"], ["ey0"], name="erelu"),
                                helper.make_node("Conv", ["ey0", "W"], ["ey"], name="else_conv", pads=[1, 1, 1, 1])],
                               "else", [], [tensor("ey", [1, 6, 5, 5])])
    node = helper.make_node("If", ["cond"], ["Y"], name="branch", then_branch=then_g, else_branch=else_g)
    model = make_model([node], [tensor("cond", [], TensorProto.BOOL), tensor("X", [1, 3, 5, 5])],
                       [tensor("Y", [1, 6, 5, 5])], [init("W", w)])
    result = separate(model, RankPolicy("exact"))
    assert {layer.name for layer in result.rewritten} == {"branch/then_branch/then_conv",
                                                          "branch/else_branch/else_conv"}
    x = rng.standard_normal((1, 3, 5, 5)).astype(np.float32)
    for cond in (True, False):
        feeds = {"cond": np.array(cond), "X": x}
        np.testing.assert_allclose(outputs(result.model, feeds)["Y"], outputs(model, feeds)["Y"], rtol=1e-4, atol=1e-5)


def test_shared_weight_is_not_mutated_for_the_other_user() -> None:
    rng = np.random.default_rng(2)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["X", "W"], ["A"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["X", "W"], ["B"], name="b", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["X", "W"], ["C"], name="c", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor("X", [1, 4, 6, 6])], [tensor(o, [1, 8, 6, 6]) for o in "ABC"], [init("W", w)])
    result = separate(model, RankPolicy("rank", 2), node_filter=NodeFilter([], ["^c$"]))
    inits = {t.name: onnx.numpy_helper.to_array(t) for t in result.model.graph.initializer}
    np.testing.assert_array_equal(inits["W"], w)
    keeper = next(n for n in result.model.graph.node if n.name == "c")
    assert list(keeper.input) == ["X", "W"]
    # a and b shared W, so they share one set of new weights too (rank 2, sum: 2 depthwise + 2 pointwise).
    assert len(inits) == 1 + 4
    feeds = {"X": rng.standard_normal((1, 4, 6, 6)).astype(np.float32)}
    ref, new = outputs(model, feeds), outputs(result.model, feeds)
    np.testing.assert_array_equal(new["C"], ref["C"])
    np.testing.assert_allclose(new["A"], new["B"])


def test_weight_behind_cast_and_identity_is_used_and_its_dead_chain_removed() -> None:
    w16 = np.random.default_rng(4).standard_normal((8, 4, 3, 3)).astype(np.float16)
    nodes = [helper.make_node("Cast", ["W16"], ["W32"], name="cast", to=TensorProto.FLOAT),
             helper.make_node("Identity", ["W32"], ["W"], name="ident"),
             helper.make_node("Conv", ["X", "W"], ["Y"], name="conv", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor("X", [1, 4, 6, 6])], [tensor("Y", [1, 8, 6, 6])], [init("W16", w16)])
    result = separate(model, RankPolicy("exact"))
    assert result.layers[0].rewritten
    assert "Cast" not in ops(result.model) and "Identity" not in ops(result.model)
    assert agreement(model, result.model)[0].rel_error <= 1e-5


def test_fp16_weights_stay_fp16() -> None:
    rng = np.random.default_rng(5)
    w = rng.standard_normal((8, 4, 3, 3)).astype(np.float16)
    model = conv_model([1, 4, 7, 7], w, bias=rng.standard_normal(8).astype(np.float16), dtype=TensorProto.FLOAT16,
                       pads=[1, 1, 1, 1])
    result = separate(model, RankPolicy("exact"))
    assert result.layers[0].rewritten
    assert {t.data_type for t in result.model.graph.initializer} == {TensorProto.FLOAT16}
    feeds = {"X": rng.standard_normal((1, 4, 7, 7)).astype(np.float16)}
    y_new = outputs(result.model, feeds)["Y"].astype(np.float64)
    ref = outputs(conv_model([1, 4, 7, 7], w.astype(np.float32), bias=None, pads=[1, 1, 1, 1]),
                  {"X": feeds["X"].astype(np.float32)})["Y"]
    bias = onnx.numpy_helper.to_array(model.graph.initializer[1]).astype(np.float64)
    ref = ref + bias[None, :, None, None]
    assert np.linalg.norm(y_new - ref) / np.linalg.norm(ref) < 3e-3


def test_everything_else_is_preserved() -> None:
    rng = np.random.default_rng(6)
    nodes = [
        helper.make_node("Relu", ["X"], ["R"], name="relu", doc_string="relu doc"),
        helper.make_node("Conv", ["R", "W"], ["C"], name="conv", pads=[1, 1, 1, 1], doc_string="conv doc"),
        helper.make_node("Sigmoid", ["Z"], ["S"], name="sig"),
        helper.make_node("Add", ["C", "S"], ["Y"], name="add"),
        helper.make_node("Neg", ["Z"], ["dead"], name="dead_node"),  # dead code the model already had
    ]
    nodes[0].metadata_props.add(key="origin", value="torch")
    graph = helper.make_graph(
        nodes, "preserve", [tensor("Z", [1, 8, 5, 5]), tensor("X", [1, 4, 5, 5])],
        [tensor("Y", [1, 8, 5, 5]), tensor("R", [1, 4, 5, 5])],
        [init("W", rng.standard_normal((8, 4, 3, 3)).astype(np.float32)), init("unused", np.arange(3.0))],
        doc_string="graph doc", value_info=[tensor("S", [1, 8, 5, 5]), tensor("C", [1, 8, 5, 5])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17), helper.make_opsetid("ai.onnx.ml", 3)],
                              producer_name="exporter", producer_version="9.9", doc_string="model doc")
    model.ir_version = IR_VERSION
    model.model_version = 7
    helper.set_model_props(model, {"license": "mit", "author": "me"})
    result = separate(model, RankPolicy("rank", 2))
    out = result.model
    assert result.layers[0].rewritten
    assert out.ir_version == IR_VERSION
    assert [(o.domain, o.version) for o in out.opset_import] == [("", 17), ("ai.onnx.ml", 3)]
    assert (out.producer_name, out.producer_version, out.doc_string, out.model_version) == (
        "exporter", "9.9", "model doc", 7)
    assert {p.key: p.value for p in out.metadata_props} == {"license": "mit", "author": "me"}
    assert out.graph.name == "preserve" and out.graph.doc_string == "graph doc"
    assert [i.name for i in out.graph.input] == ["Z", "X"]
    assert [o.name for o in out.graph.output] == ["Y", "R"]
    by_name = {n.name: n for n in out.graph.node}
    assert {"relu", "sig", "add", "dead_node"} <= set(by_name) and "conv" not in by_name
    assert by_name["relu"].doc_string == "relu doc"
    assert {p.key: p.value for p in by_name["relu"].metadata_props} == {"origin": "torch"}
    assert {"S", "C"} <= {vi.name for vi in out.graph.value_info}
    assert {"unused", "W"} & {t.name for t in out.graph.initializer} == {"unused"}
    for name in ("Y", "R"):
        ref = next(o for o in model.graph.output if o.name == name)
        assert next(o for o in out.graph.output if o.name == name).type == ref.type
    onnx.checker.check_model(out)
    feeds = compare.make_inputs(compare.session(model))
    a, b = outputs(model, feeds), outputs(out, feeds)
    np.testing.assert_array_equal(a["R"], b["R"])
    assert model.graph.node[1].name == "conv"  # the input model is not modified


def test_runtime_bias_passes_through() -> None:
    rng = np.random.default_rng(7)
    nodes = [helper.make_node("Conv", ["X", "W", "B"], ["Y"], name="conv", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor("X", [1, 4, 5, 5]), tensor("B", [8])], [tensor("Y", [1, 8, 5, 5])],
                       [init("W", rng.standard_normal((8, 4, 3, 3)).astype(np.float32))])
    result = separate(model, RankPolicy("exact"), form="sum")
    assert result.layers[0].rewritten
    assert agreement(model, result.model)[0].rel_error <= 1e-5


def test_loop_body_conv_is_rewritten() -> None:
    """A conv in a Loop body, reading the loop-carried tensor and an outer-scope weight."""
    rng = np.random.default_rng(8)
    w = (0.2 * rng.standard_normal((4, 4, 3, 3))).astype(np.float32)
    body = helper.make_graph(
        [helper.make_node("Identity", ["cond_in"], ["cond_out"], name="keep_going"),
         helper.make_node("Conv", ["x_in", "W"], ["x_out"], name="body_conv", pads=[1, 1, 1, 1])],
        "body",
        [tensor("i", [], TensorProto.INT64), tensor("cond_in", [], TensorProto.BOOL), tensor("x_in", [1, 4, 6, 6])],
        [tensor("cond_out", [], TensorProto.BOOL), tensor("x_out", [1, 4, 6, 6])])
    loop = helper.make_node("Loop", ["trips", "", "X"], ["Y"], name="loop", body=body)
    model = make_model([loop], [tensor("X", [1, 4, 6, 6])], [tensor("Y", [1, 4, 6, 6])],
                       [init("W", w), init("trips", np.array(3, np.int64))])
    result = separate(model, RankPolicy("exact"))
    assert [layer.name for layer in result.rewritten] == ["loop/body/body_conv"]
    assert agreement(model, result.model)[0].rel_error <= 1e-5


@pytest.mark.realmodel
def test_trained_detector_exact_and_energy_order() -> None:
    """YOLOX from the ddddocr wheel: exact is exact; keeping more energy never increases the output error."""
    path = real_model("ddddocr_det.onnx")
    model = load_model(path, load_weights=True)
    exact = separate_pass(model, RankPolicy("exact"))
    assert len(exact.rewritten) > 20
    assert agreement(model, exact.model)[0].rel_error <= 1e-5
    errors = []
    for energy in (0.9, 0.99):
        result = separate_pass(model, RankPolicy("energy", energy))
        assert result.totals()["macs_after"] < result.totals()["macs_before"]
        errors.append(agreement(model, result.model)[0].rel_error)
    assert errors[1] < errors[0] < 1.0

"""Calibration refit: it lowers output error against weight-only, is exact when the rank suffices, and checks
calibration files. onnxruntime is the oracle throughout."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import TensorProto, helper

from onnxconv import calibration, compare
from onnxconv.calibration import depthwise
from onnxconv.calibration.layers import waves
from onnxconv.errors import OptionError
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import separate

from .modelkit import init, make_model, tensor


def lowrank_weight(rng: np.random.Generator, n: int, m: int, k: int, r: int, noise: float) -> np.ndarray:
    """Conv weight whose per-input-channel slices have rank ``r``, plus Gaussian noise."""
    u = rng.standard_normal((m, n, r))
    v = rng.standard_normal((m, r, k * k))
    w = np.einsum("mnr,mrk->nmk", u, v) + noise * rng.standard_normal((n, m, k * k))
    return w.reshape(n, m, k, k).astype(np.float32)


def smooth_inputs(rng: np.random.Generator, n: int, c: int, size: int) -> np.ndarray:
    """Spatially correlated inputs (box-filtered noise), as images are; white noise would make the weight-only
    SVD already optimal for the first layer."""
    x = rng.standard_normal((n, c, size + 4, size + 4))
    csum = np.cumsum(np.cumsum(np.pad(x, ((0, 0), (0, 0), (1, 0), (1, 0))), 2), 3)
    box = csum[:, :, 5:, 5:] - csum[:, :, :-5, 5:] - csum[:, :, 5:, :-5] + csum[:, :, :-5, :-5]
    return (box / 5).astype(np.float32)


def two_layer(rng: np.random.Generator, *, group: int = 1, bias2: bool = False, c: int = 8) -> onnx.ModelProto:
    """X (N x c x H x W) -> conv 3x3 (bias) -> Relu -> conv 3x3 (group) -> Y, with low-rank-plus-noise weights."""
    w1 = lowrank_weight(rng, 16, c, 3, 2, 0.5)
    w2 = np.concatenate([lowrank_weight(rng, 16 // group, 16 // group, 3, 2, 0.5) for _ in range(group)])
    inits = [init("W1", w1), init("B1", rng.standard_normal(16).astype(np.float32)), init("W2", w2)]
    ins2 = ["r", "W2"]
    if bias2:
        inits.append(init("B2", rng.standard_normal(16).astype(np.float32)))
        ins2.append("B2")
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ins2, ["Y"], name="c2", pads=[1, 1, 1, 1], group=group),
    ]
    return make_model(nodes, [tensor("X", ["N", c, 12, 12])], [tensor("Y", None)], inits)


def run(model: onnx.ModelProto, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return compare.run_model(compare.session(model), feeds)["Y"]


def rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a.astype(np.float64) - b) / np.linalg.norm(a.astype(np.float64)))


def calib(tmp_path, model: onnx.ModelProto, **arrays: np.ndarray) -> calibration.CalibrationSet:
    path = tmp_path / "cal.npz"
    np.savez(path, **arrays)
    return calibration.load_calibration(path, model)


# ----------------------------------------------------------------------------------------------------------------
# The refit lowers the error of what the network computes


@settings(max_examples=6, deadline=None)
@given(form=st.sampled_from(["concat", "sum", "multiplier"]), group=st.sampled_from([1, 2]),
       bias2=st.booleans(), seed=st.integers(0, 2**16))
def test_refit_beats_weight_only_on_held_out_inputs(tmp_path_factory, form, group, bias2, seed) -> None:
    rng = np.random.default_rng(seed)
    model = two_layer(rng, group=group, bias2=bias2)
    cal = calib(tmp_path_factory.mktemp("cal"), model, X=smooth_inputs(rng, 16, 8, 12))
    weight_only = separate(model, RankPolicy("rank", 2), form=form)
    fitted = calibration.refit(model, weight_only, cal)
    test = {"X": smooth_inputs(rng, 8, 8, 12)}  # inputs the refit never saw
    ref = run(model, test)
    e_w, e_r = rel(ref, run(weight_only.model, test)), rel(ref, run(fitted.model, test))
    assert e_r < 0.9 * e_w, (e_w, e_r)
    for c in fitted.layers:
        assert c.details["refit_err"] <= c.details["out_err"]
    # The pass result given to the refit is left as it was.
    assert rel(run(weight_only.model, test), run(separate(model, RankPolicy("rank", 2), form=form).model, test)) == 0


@settings(max_examples=8, deadline=None)
@given(form=st.sampled_from(["concat", "sum", "multiplier", "tiled"]), group=st.sampled_from([1, 2]),
       rank=st.sampled_from([1, 2]), seed=st.integers(0, 2**16))
def test_refitting_the_kernels_too_beats_the_pointwise_refit(tmp_path_factory, form, group, rank, seed) -> None:
    """Alternating least squares over depthwise kernels and the 1x1 stage (the default) vs the 1x1 stage alone,
    on one conv (whose output error is what both minimise): lower error on inputs neither saw, in onnxruntime,
    for every form's weight layout."""
    if group > 1 and form in ("concat", "tiled"):
        form = "sum"  # those forms need group 1 (the pass emits sum for grouped convs)
    rng = np.random.default_rng(seed)
    w = np.concatenate([lowrank_weight(rng, 16 // group, 16 // group, 3, 3, 0.5) for _ in range(group)])
    model = make_model([helper.make_node("Conv", ["X", "W", "B"], ["Y"], name="conv", pads=[1, 1, 1, 1],
                                         group=group)],
                       [tensor("X", ["N", 16, 12, 12])], [tensor("Y", None)],
                       [init("W", w), init("B", rng.standard_normal(16).astype(np.float32))])
    cal = calib(tmp_path_factory.mktemp("cal"), model, X=smooth_inputs(rng, 16, 16, 12))
    weight_only = separate(model, RankPolicy("rank", rank), form=form)
    pointwise = calibration.refit(model, weight_only, cal, calibration.FitOptions(depthwise=False))
    whole = calibration.refit(model, weight_only, cal)
    test = {"X": smooth_inputs(rng, 8, 16, 12)}
    ref = run(model, test)
    e_p, e_w = rel(ref, run(pointwise.model, test)), rel(ref, run(whole.model, test))
    assert e_w < 0.99 * e_p, (e_p, e_w)
    d = whole.layers[0].details
    assert d["refit_err"] < d["pointwise_err"] <= d["out_err"] and d["alternations"] >= 1, d
    assert d["pointwise_err"] == pytest.approx(pointwise.layers[0].details["refit_err"], rel=1e-6)
    # Only weights changed: same nodes in the same order.
    assert [n.op_type for n in whole.model.graph.node] == [n.op_type for n in weight_only.model.graph.node]


def test_without_held_out_positions_the_last_alternation_is_kept(tmp_path) -> None:
    """Nothing held out to choose an iterate with: the fitted error (which never rises) decides."""
    rng = np.random.default_rng(9)
    model = two_layer(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 8, 8, 12))
    out = calibration.refit(model, separate(model, RankPolicy("rank", 1)), cal,
                            calibration.FitOptions(check_fraction=0))
    assert all(c.details["alternations"] == depthwise.ITERATIONS and c.details["refit_err"] is None for c in out.layers)


def test_kernels_are_kept_with_a_reason_when_they_cannot_be_refitted(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(8)
    model = two_layer(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 8, 8, 12))
    res = separate(model, RankPolicy("rank", 2))
    # A depthwise weight that is no longer the SVD's (a later edit): c1's kernels stay, its 1x1 stage is refitted.
    dw = next(n for n in res.model.graph.node if n.name.startswith("c1") and "dw" in n.name)
    t = next(t for t in res.model.graph.initializer if t.name == dw.input[1])
    t.CopyFrom(init(t.name, onnx.numpy_helper.to_array(t) * 1.5))
    out = calibration.refit(model, res, cal)
    c1, c2 = out.layers
    assert "not the weight-only factors" in c1.details["depthwise"] and "ridge" in c1.details
    assert "depthwise" not in c2.details and "alternations" in c2.details
    monkeypatch.setattr(depthwise, "MAX_UNKNOWNS", 8)
    out = calibration.refit(model, separate(model, RankPolicy("rank", 2)), cal)
    assert all("the 1x1 stage alone is refitted" in c.details["depthwise"] for c in out.layers)


@pytest.mark.parametrize("group,mg,r,k", [(1, 5, 1, 9), (2, 3, 2, 4), (1, 1, 3, 1)])
def test_the_kernel_refits_shortcuts_are_the_dense_formulas(group, mg, r, k) -> None:
    """The moments without a column of ones, the block-sparse projection ``Z X^T X Z^T`` and the held-out error
    from the projected moments equal the dense formulas they replace (to rounding)."""
    rng = np.random.default_rng(3)
    ng, s = 4, 40
    patches = rng.standard_normal((s, group * mg, k)).astype(np.float32)
    t = rng.standard_normal((s, group * ng)).astype(np.float32)
    mom = depthwise.Moments(group, mg, k, ng)
    mom.add(patches[:25], t[:25])
    mom.add(patches[25:], t[25:])
    for gi in range(group):
        x = patches[:, gi * mg:(gi + 1) * mg].reshape(s, -1).astype(np.float64)
        xa = np.concatenate([x, np.ones((s, 1))], axis=1)
        np.testing.assert_allclose(mom.xx[gi], xa.T @ xa, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(mom.xt[gi], xa.T @ t[:, gi * ng:(gi + 1) * ng], rtol=1e-12, atol=1e-12)
    assert mom.n == s and mom.tt == pytest.approx(float(np.sum(t.astype(np.float64) ** 2)), rel=1e-12)
    ds = [rng.standard_normal((mg, r, k)) for _ in range(group)]
    as_ = [rng.standard_normal((mg * r + 1, ng)) for _ in range(group)]
    err2 = mom.tt
    for gi, (d, a) in enumerate(zip(ds, as_)):
        z = np.zeros((mg * r + 1, mg * k + 1))  # depthwise input patch and its 1 -> depthwise outputs and the 1
        for m in range(mg):
            z[m * r:(m + 1) * r, m * k:(m + 1) * k] = d[m]
        z[-1, -1] = 1.0
        zz, zt = depthwise._project(mom.xx[gi], mom.xt[gi], d)
        np.testing.assert_allclose(zz, z @ mom.xx[gi] @ z.T, rtol=1e-12, atol=1e-10)
        np.testing.assert_allclose(zt, z @ mom.xt[gi], rtol=1e-12, atol=1e-10)
        w = z.T @ a  # the whole layer as one linear map of the input patch
        err2 += float(np.sum(w * (mom.xx[gi] @ w)) - 2.0 * np.sum(w * mom.xt[gi]))
    got = depthwise._error(mom, depthwise._projections(mom, ds), as_)
    assert got == pytest.approx(np.sqrt(err2 / mom.tt), rel=1e-10)


def test_the_kernel_steps_conjugate_gradients_reach_the_lu_solution() -> None:
    """The kernel step's solver: the LU solution to its tolerance on a well-posed system (from any start, within
    its step limit), the LU solve's answer where it cannot converge in that limit, and None (as LU) when the
    system is singular."""
    rng = np.random.default_rng(5)
    blocks, q = 12, 3
    n = blocks * q
    x = rng.standard_normal((4 * n, n)) * np.repeat(rng.uniform(0.1, 10, blocks), q)  # channels of unequal scale
    h = x.T @ x + 1e-3 * np.eye(n)
    rhs = rng.standard_normal(n)
    exact = np.linalg.solve(h, rhs)
    got = depthwise._solve_spd(h, rhs, rng.standard_normal(n), blocks)
    assert got is not None
    assert np.linalg.norm(rhs - h @ got) <= depthwise.CG_TOLERANCE * np.linalg.norm(rhs) * 1.0001
    np.testing.assert_allclose(got, exact, rtol=1e-3, atol=1e-3 * np.abs(exact).max())
    # Ill-conditioned beyond what the step limit converges on: the LU solve's answer.
    u = np.linalg.qr(rng.standard_normal((n, n)))[0]
    hard = (u * np.logspace(0, 12, n)) @ u.T
    hard = (hard + hard.T) / 2
    np.testing.assert_allclose(depthwise._solve_spd(hard, rhs, np.zeros(n), blocks), np.linalg.solve(hard, rhs))
    assert depthwise._solve_spd(np.zeros((n, n)), rhs, np.zeros(n), blocks) is None


@pytest.mark.parametrize("mixing", ["energy", "shuffle"])
def test_shuffle_mode_refit_beats_weight_only_grouping(tmp_path, mixing) -> None:
    """Grouped weights and bias refitted: the grouped convs' channel layouts (gather, shuffle, folded orders) are
    matched to the original's, and held-out error drops."""
    from onnxconv.passes.shuffle import group_shuffle

    rng = np.random.default_rng(10)
    model = two_layer(rng, bias2=True)
    grouped = group_shuffle(model, groups=2, mixing=mixing)
    assert len(grouped.rewritten) == 2
    fitted = calibration.refit(model, grouped, calib(tmp_path, model, X=smooth_inputs(rng, 16, 8, 12)))
    assert all("refit" not in c.details and c.details["refit_err"] <= c.details["out_err"] for c in fitted.layers)
    test = {"X": smooth_inputs(rng, 8, 8, 12)}
    ref = run(model, test)
    e_w, e_r = rel(ref, run(grouped.model, test)), rel(ref, run(fitted.model, test))
    assert e_r < 0.8 * e_w, (e_w, e_r)
    # Only weights and biases changed: same ops, and the grouped convs keep their group.
    assert [n.op_type for n in fitted.model.graph.node] == [n.op_type for n in grouped.model.graph.node]


def test_refit_is_exact_when_the_rank_suffices_for_the_data(tmp_path) -> None:
    """Inputs constant along the width make a 3x3 conv (no padding) act through 3 numbers per channel, so rank 3
    fits the outputs exactly although the weight has rank 9 per slice: weight-only is far off, the refit exact."""
    rng = np.random.default_rng(1)
    w = rng.standard_normal((12, 6, 3, 3)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["X", "W"], ["Y"], name="conv")], [tensor("X", ["N", 6, 10, 10])],
                       [tensor("Y", None)], [init("W", w)])
    cols = rng.standard_normal((24, 6, 10, 1)).astype(np.float32)
    cal = calib(tmp_path, model, X=np.repeat(cols[:16], 10, axis=3))
    weight_only = separate(model, RankPolicy("rank", 3), force=True)
    fitted = calibration.refit(model, weight_only, cal)
    test = {"X": np.repeat(cols[16:], 10, axis=3)}
    ref = run(model, test)
    assert rel(ref, run(weight_only.model, test)) > 0.1
    assert rel(ref, run(fitted.model, test)) < 1e-4
    assert fitted.layers[0].details["refit_err"] < 1e-4


def test_refit_keeps_an_exact_low_rank_weight_exact(tmp_path) -> None:
    rng = np.random.default_rng(2)
    model = two_layer(rng)
    for name in ("W1", "W2"):  # drop the noise: every slice has rank 2 exactly
        t = next(t for t in model.graph.initializer if t.name == name)
        t.CopyFrom(init(name, lowrank_weight(rng, 16, t.dims[1], 3, 2, 0.0)))
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 8, 8, 12))
    fitted = calibration.refit(model, separate(model, RankPolicy("rank", 2)), cal)
    test = {"X": smooth_inputs(rng, 4, 8, 12)}
    assert rel(run(model, test), run(fitted.model, test)) < 1e-4


def test_layer_inputs_come_from_the_refitted_upstream(tmp_path) -> None:
    """Asymmetric scheme: the second layer is exact-rank (weight-only error 0 on its own input), yet its refit
    error with the lossy upstream is below its weight-only error there - it compensates the upstream error."""
    rng = np.random.default_rng(3)
    model = two_layer(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 16, 8, 12))
    res = separate(model, RankPolicy("rank", 1), form="concat", force=True)
    fitted = calibration.refit(model, res, cal)
    c2 = next(c for c in fitted.layers if c.name == "c2")
    assert c2.details["out_err"] > 0.05  # the upstream rank-1 error reaches c2's output
    assert c2.details["refit_err"] < c2.details["out_err"]


def test_shared_weights_get_their_own_refitted_copies(tmp_path) -> None:
    rng = np.random.default_rng(4)
    w = lowrank_weight(rng, 8, 8, 3, 2, 0.5)
    nodes = [
        helper.make_node("Conv", ["X", "W"], ["a"], name="ca", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["a"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "W"], ["Y"], name="cb", pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, [tensor("X", ["N", 8, 10, 10])], [tensor("Y", None)], [init("W", w)])
    res = separate(model, RankPolicy("rank", 2), form="concat")
    pw_weights = {n.input[1] for n in res.model.graph.node if n.name.endswith("/pw")}
    assert len(pw_weights) == 1  # the pass shares the pointwise weight between the two layers
    fitted = calibration.refit(model, res, calib(tmp_path, model, X=smooth_inputs(rng, 8, 8, 10)))
    pw = [n for n in fitted.model.graph.node if n.name.endswith("/pw")]
    assert len({n.input[1] for n in pw}) == 2
    test = {"X": smooth_inputs(rng, 4, 8, 10)}
    assert rel(run(model, test), run(fitted.model, test)) < rel(run(model, test), run(res.model, test))


def test_refit_options_are_recorded_and_checked(tmp_path) -> None:
    rng = np.random.default_rng(5)
    model = two_layer(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 4, 8, 12))
    res = separate(model, RankPolicy("rank", 2))
    out = calibration.refit(model, res, cal, calibration.FitOptions(ridge=1e-3, positions=100))
    assert out.options["calibration"]["samples"] == 4 and out.options["calibration"]["ridge"] == 1e-3
    assert all(c.details["ridge"] == 1e-3 for c in out.layers)
    with pytest.raises(OptionError, match="ridge"):
        calibration.refit(model, res, cal, calibration.FitOptions(ridge=-1.0))
    with pytest.raises(OptionError, match="positions"):
        calibration.refit(model, res, cal, calibration.FitOptions(positions=0))


def test_layers_on_parallel_branches_share_a_wave() -> None:
    rng = np.random.default_rng(6)
    ws = {f"W{i}": rng.standard_normal((8, 8, 3, 3)).astype(np.float32) for i in range(4)}
    nodes = [
        helper.make_node("Conv", ["X", "W0"], ["a"], name="stem", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "W1"], ["b"], name="left", pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["a", "W2"], ["c"], name="right", pads=[1, 1, 1, 1]),
        helper.make_node("Add", ["b", "c"], ["d"], name="add"),
        helper.make_node("Conv", ["d", "W3"], ["Y"], name="head", pads=[1, 1, 1, 1]),
    ]
    model = make_model(nodes, [tensor("X", [1, 8, 6, 6])], [tensor("Y", None)], [init(k, v) for k, v in ws.items()])
    res = separate(model, RankPolicy("rank", 2))
    stages = [calibration.find_stage(res.model, y, n) for n, y in
              (("stem", "a"), ("left", "b"), ("right", "c"), ("head", "Y"))]
    assert all(isinstance(s, calibration.LinearStage) for s in stages)
    waves(res.model, stages)  # type: ignore[arg-type]
    assert [s.wave for s in stages] == [0, 1, 1, 2]  # type: ignore[union-attr]


# ----------------------------------------------------------------------------------------------------------------
# Building blocks


@settings(max_examples=25, deadline=None)
@given(kernel=st.sampled_from([(1, 1), (3, 3), (2, 3), (1, 3)]), stride=st.sampled_from([1, 2]),
       dilation=st.sampled_from([1, 2]), pad=st.sampled_from(["none", "explicit", "SAME_UPPER", "SAME_LOWER"]),
       group=st.sampled_from([1, 2]), seed=st.integers(0, 1000))
def test_patches_times_weights_is_the_conv_output(kernel, stride, dilation, pad, group, seed) -> None:
    rng = np.random.default_rng(seed)
    attrs: dict[str, object] = {"kernel_shape": list(kernel), "strides": [stride] * 2, "group": group}
    if pad == "explicit":
        attrs["pads"] = [1, 0, 0, 2]
    elif pad != "none":
        attrs["auto_pad"] = pad
        dilation = 1  # onnxruntime refuses SAME_* with dilation > 1 (docs/conv-math.md, "onnxruntime facts")
    attrs["dilations"] = [dilation] * 2
    w = rng.standard_normal((4, 4 // group, *kernel)).astype(np.float32)
    model = make_model([helper.make_node("Conv", ["X", "W"], ["Y"], name="c", **attrs)], [tensor("X", [1, 4, 9, 8])],
                       [tensor("Y", None)], [init("W", w)])
    x = rng.standard_normal((1, 4, 9, 8)).astype(np.float32)
    y = run(model, {"X": x})[0]
    term = calibration.ConvTerm(model.graph.node[0], "X", "W", w.shape, attrs)
    pos = rng.choice(int(np.prod(y.shape[1:])), size=min(10, int(np.prod(y.shape[1:]))), replace=False)
    patches = calibration.sample_patches(x[0], term, y.shape[1:], pos)
    cg, ng = 4 // group, 4 // group
    for gi in range(group):
        got = patches[:, gi * cg:(gi + 1) * cg].reshape(len(pos), -1) @ w[gi * ng:(gi + 1) * ng].reshape(ng, -1).T
        want = y.reshape(4, -1)[gi * ng:(gi + 1) * ng, pos].T
        np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_truncate_model_runs_only_what_the_outputs_need() -> None:
    rng = np.random.default_rng(7)
    model = two_layer(rng)
    cut = calibration.truncate_model(model, {"h": TensorProto.FLOAT})
    assert [n.name for n in cut.graph.node] == ["c1"]
    assert {t.name for t in cut.graph.initializer} == {"W1", "B1"}
    x = rng.standard_normal((2, 8, 12, 12)).astype(np.float32)
    h = compare.run_model(compare.session(cut), {"X": x})["h"]
    assert h.shape == (2, 16, 12, 12)


def test_fixed_batch_model_is_fed_one_sample_at_a_time(tmp_path) -> None:
    rng = np.random.default_rng(8)
    model = two_layer(rng)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 1
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 6, 8, 12))
    assert cal.chunk == 1 and [s for s, _ in cal.chunks()] == list(range(6))
    out = calibration.refit(model, separate(model, RankPolicy("rank", 2)), cal)
    assert all(c.details["refit_err"] < c.details["out_err"] for c in out.layers)


# ----------------------------------------------------------------------------------------------------------------
# Calibration files


@pytest.fixture
def model() -> onnx.ModelProto:
    return two_layer(np.random.default_rng(9))


def test_a_folder_of_npy_files_loads(tmp_path, model) -> None:
    np.save(tmp_path / "X.npy", np.zeros((3, 8, 12, 12), np.float32))
    cal = calibration.load_calibration(tmp_path, model)
    assert cal.size == 3 and set(cal.arrays) == {"X"}


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"x": np.zeros((2, 8, 12, 12), np.float32)}, r"no array for model input\(s\) \['X'\].*arrays: \['x'\]"),
        ({"X": np.zeros((2, 8, 12, 12), np.float32), "Z": np.zeros(2, np.float32)},
         r"array\(s\) \['Z'\] match no model input"),
        ({"X": np.zeros((2, 8, 12, 12), np.float64)}, r"'X' has dtype float64, the model input is float32"),
        ({"X": np.zeros((8, 12, 12), np.float32)}, r"'X' has shape \[8, 12, 12\], expected 4 dims like the model "
                                                    r"input \?x8x12x12 \(the first axis counts samples\)"),
        ({"X": np.zeros((2, 3, 12, 12), np.float32)}, r"'X' has shape \[2, 3, 12, 12\]: dim 1 is 3, .* needs 8"),
        ({"X": np.zeros((0, 8, 12, 12), np.float32)}, r"'X' has no samples"),
    ],
)
def test_bad_calibration_files_get_clear_messages(tmp_path, model, arrays, message) -> None:
    path = tmp_path / "cal.npz"
    np.savez(path, **arrays)
    with pytest.raises(OptionError, match=message):
        calibration.load_calibration(path, model)


def test_calibration_path_errors(tmp_path, model) -> None:
    with pytest.raises(OptionError, match="no such file or folder"):
        calibration.load_calibration(tmp_path / "missing.npz", model)
    (tmp_path / "empty").mkdir()
    with pytest.raises(OptionError, match="folder has no .npy files"):
        calibration.load_calibration(tmp_path / "empty", model)
    (tmp_path / "cal.txt").write_text("x")
    with pytest.raises(OptionError, match="expected an .npz file or a folder of .npy files"):
        calibration.load_calibration(tmp_path / "cal.txt", model)
    (tmp_path / "bad.npz").write_bytes(b"not a zip")
    with pytest.raises(OptionError, match="not an .npz archive"):  # the message of every npz loader
        calibration.load_calibration(tmp_path / "bad.npz", model)


def test_sample_counts_and_fixed_batch_are_checked(tmp_path) -> None:
    a = helper.make_node("Add", ["A", "B"], ["Y"], name="add")
    two = make_model([a], [tensor("A", [2, 3]), tensor("B", [2, 3])], [tensor("Y", None)])
    path = tmp_path / "cal.npz"
    np.savez(path, A=np.zeros((4, 3), np.float32), B=np.zeros((6, 3), np.float32))
    with pytest.raises(OptionError, match=r"different numbers of samples \{'A': 4, 'B': 6\}"):
        calibration.load_calibration(path, two)
    np.savez(path, A=np.zeros((3, 3), np.float32), B=np.zeros((3, 3), np.float32))
    with pytest.raises(OptionError, match="fixed batch size 2 does not divide it"):
        calibration.load_calibration(path, two)


def unused_initializers(model: onnx.ModelProto) -> list[str]:
    """Initializers of any graph (subgraphs too) that no node of that graph or below reads and no output names."""
    def reads(graph: onnx.GraphProto) -> set[str]:
        out = {o.name for o in graph.output}
        for n in graph.node:
            out.update(n.input)
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    out |= reads(sub)
        return out

    def walk(graph: onnx.GraphProto) -> list[str]:
        used = reads(graph)
        found = [t.name for t in graph.initializer if t.name not in used]
        for n in graph.node:
            for a in n.attribute:
                for sub in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                    found += walk(sub)
        return found

    return walk(model.graph)


@pytest.mark.parametrize("form", ["sum", "concat", "multiplier", "tiled"])
@pytest.mark.parametrize("depthwise", [True, False])
def test_refit_leaves_no_unused_initializer(tmp_path, form, depthwise) -> None:
    """The sum form's bias moves onto the first term of the Add tree: the bias the pass put on another branch
    must go, not stay behind as an initializer nobody reads (onnxruntime warns about each on every session)."""
    rng = np.random.default_rng(11)
    model = two_layer(rng, bias2=True)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 8, 8, 12))
    res = separate(model, RankPolicy("rank", 2), form=form)
    assert unused_initializers(res.model) == []
    out = calibration.refit(model, res, cal, calibration.FitOptions(depthwise=depthwise))
    assert all("ridge" in c.details for c in out.layers)
    assert unused_initializers(out.model) == []


def test_shuffle_refit_leaves_no_unused_initializer(tmp_path) -> None:
    from onnxconv.passes.shuffle import group_shuffle

    rng = np.random.default_rng(12)
    model = two_layer(rng, bias2=True)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 8, 8, 12))
    out = calibration.refit(model, group_shuffle(model, groups=2), cal)
    assert all("ridge" in c.details for c in out.layers)
    assert unused_initializers(out.model) == []


def test_a_bias_shared_with_another_node_stays(tmp_path) -> None:
    """The refit drops the bias from a branch of the sum, but a tensor another node reads too is kept."""
    rng = np.random.default_rng(13)
    model = two_layer(rng, bias2=True)
    model.graph.node.insert(0, helper.make_node("Identity", ["B1"], ["b1_copy"], name="reads_b1"))
    model.graph.output.append(tensor("b1_copy", None))
    res = separate(model, RankPolicy("rank", 2), form="sum")
    out = calibration.refit(model, res, calib(tmp_path, model, X=smooth_inputs(rng, 8, 8, 12)))
    assert unused_initializers(out.model) == []
    assert "B1" in {t.name for t in out.model.graph.initializer}
    feeds = {"X": smooth_inputs(rng, 2, 8, 12)}
    got = compare.run_model(compare.session(out.model), feeds)["b1_copy"]
    assert np.array_equal(got, compare.run_model(compare.session(model), feeds)["b1_copy"])


# ----------------------------------------------------------------------------------------------------------------
# Held-out samples for --verify


def test_the_refit_never_fits_the_held_out_samples(tmp_path) -> None:
    """held_out_feeds returns samples the refit did not use: replacing them by anything leaves the refitted model
    byte for byte the same, while changing a fitted sample changes it. The split is seeded and documented."""
    rng = np.random.default_rng(14)
    model = two_layer(rng, bias2=True)
    x = smooth_inputs(rng, 10, 8, 12)
    np.savez(tmp_path / "cal.npz", X=x)
    held = calibration.held_out_feeds(tmp_path / "cal.npz", model)
    assert len(held) == 1 and held[0]["X"].shape[0] == int(10 * calibration.HOLDOUT_FRACTION)
    is_held = np.array([any(np.array_equal(s, h) for h in held[0]["X"]) for s in x])
    assert is_held.sum() == held[0]["X"].shape[0]
    # The same seed gives the same samples; the refit records how many it held out.
    assert all(np.array_equal(a["X"], b["X"]) for a, b in zip(held, calibration.held_out_feeds(tmp_path / "cal.npz",
                                                                                              model)))
    res = separate(model, RankPolicy("rank", 2))
    (tmp_path / "a").mkdir()
    base = calibration.refit(model, res, calib(tmp_path / "a", model, X=x))
    assert base.options["calibration"]["samples"] == 8 and base.options["calibration"]["held_out"] == 2
    other = x.copy()
    other[is_held] = 100.0 * rng.standard_normal(other[is_held].shape)
    (tmp_path / "b").mkdir()
    same = calibration.refit(model, res, calib(tmp_path / "b", model, X=other))
    assert same.model.SerializeToString() == base.model.SerializeToString()
    other = x.copy()
    other[np.flatnonzero(~is_held)[0]] *= 2.0
    (tmp_path / "c").mkdir()
    changed = calibration.refit(model, res, calib(tmp_path / "c", model, X=other))
    assert changed.model.SerializeToString() != base.model.SerializeToString()
    # The held-out feeds run as they are.
    assert run(same.model, held[0]).shape[0] == 2


def test_held_out_samples_are_whole_batches_of_a_fixed_batch_model(tmp_path) -> None:
    rng = np.random.default_rng(15)
    model = two_layer(rng)
    model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 20, 8, 12))
    fit, held = cal.split()
    assert held is not None and (fit.size, held.size) == (16, 4) and held.chunk == 2 and fit.chunk == 2
    feeds = calibration.held_out_feeds(cal, model)
    assert [f["X"].shape[0] for f in feeds] == [2, 2]
    for f in feeds:  # each a whole batch the fixed-batch model runs
        assert run(model, f).shape[0] == 2
    x = cal.arrays["X"].reshape(10, 2, 8, 12, 12)
    pairs = [next(i for i in range(10) if np.array_equal(x[i], f["X"])) for f in feeds]
    assert len(set(pairs)) == 2  # whole batches of the file, not samples torn out of them


def test_a_small_set_holds_nothing_out(tmp_path) -> None:
    rng = np.random.default_rng(16)
    model = two_layer(rng)
    cal = calib(tmp_path, model, X=smooth_inputs(rng, 4, 8, 12))
    assert cal.split() == (cal, None) and calibration.held_out_feeds(cal, model) == []

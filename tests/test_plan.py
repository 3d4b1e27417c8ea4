"""Hardware-aware planning: the knapsack choice, option errors against onnxruntime, the latency cache, and the
whole plan (with layer latencies fixed through the cache, so that what is asserted does not depend on timing)."""

from __future__ import annotations

import itertools
import json

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from onnx import helper

from onnxconv import progress, calibration, compare, planning
from onnxconv.planning import timer
from onnxconv.cli import main
from onnxconv.errors import OptionError
from onnxconv.passes.common import NodeFilter
from onnxconv.passes.ranks import RankPolicy
from onnxconv.passes.separable import separate
from onnxconv.passes.shuffle import group_shuffle, masked_reference

from . import plankit
from .modelkit import init, make_model, tensor
from .test_calibrate import lowrank_weight, rel, smooth_inputs, unused_initializers


# ----------------------------------------------------------------------------------------------------------------
# The choice


@st.composite
def instances(draw: st.DrawFn) -> tuple[list[planning.LayerOptions], float, float]:
    layers = []
    for i in range(draw(st.integers(1, 4))):
        keep = draw(st.floats(1.0, 10.0))
        opts = [planning.Option("keep", 0, keep, 0.0)]
        for r in range(1, draw(st.integers(1, 4)) + 1):
            opts.append(planning.Option("rank", r, draw(st.floats(0.1, 12.0)), draw(st.floats(0.0, 1.0))))
        layers.append(planning.LayerOptions(f"l{i}", opts))
    model_s = sum(lay.keep.latency_s for lay in layers) + draw(st.floats(0.0, 10.0))
    return layers, model_s, draw(st.floats(1.01, 3.0))


@settings(max_examples=60, deadline=None)
@given(instances())
def test_choice_is_the_least_error_plan_that_saves_enough(inst) -> None:
    layers, model_s, target = inst
    need = model_s * (1 - 1 / target)
    combos = list(itertools.product(*[range(len(lay.options)) for lay in layers]))

    def saved(c):  # noqa: ANN001, ANN202
        return sum(lay.keep.latency_s - lay.options[i].latency_s for lay, i in zip(layers, c))

    def cost(c):  # noqa: ANN001, ANN202
        return sum(lay.options[i].error ** 2 for lay, i in zip(layers, c))

    try:
        picked, predicted = planning.choose(layers, model_s, target)
    except OptionError as e:
        assert "largest predicted speed-up" in str(e)
        # Unreachable means: even the fastest option everywhere saves too little (savings rounded down to buckets).
        fastest = sum(max(lay.keep.latency_s - o.latency_s for o in lay.options) for lay in layers)
        assert fastest < need + len(layers) * need / planning.BUCKETS
        return
    assert saved(picked) >= need - 1e-9
    assert predicted == pytest.approx(model_s / max(model_s - saved(picked), 1e-9 * model_s))
    # Savings are rounded down to buckets, so the plan can only lose to one that saves a little more than needed.
    margin = len(layers) * need / planning.BUCKETS
    better = [c for c in combos if saved(c) >= need + margin and cost(c) < cost(picked) - 1e-12]
    assert not better


def test_a_target_lost_to_bucket_rounding_is_unreachable_not_an_empty_plan() -> None:
    """Three layers that each save exactly a third of what is needed: the raw sum reaches the target, the savings
    rounded down to buckets do not. The choice must say so rather than return a plan that keeps every layer."""
    layers = [planning.LayerOptions(f"l{i}", [planning.Option("keep", 0, 1.0, 0.0),
                                              planning.Option("rank", 1, 1.0 - 1 / 6, 0.1)])
              for i in range(3)]
    with pytest.raises(OptionError, match="largest predicted speed-up"):
        planning.choose(layers, 1.0, 2.0)  # need 0.5 s, three savings of 1/6 s


def test_unreachable_target_names_the_largest_speedup() -> None:
    lay = planning.LayerOptions("a", [planning.Option("keep", 0, 1.0, 0.0), planning.Option("rank", 1, 0.5, 0.1)])
    with pytest.raises(OptionError, match=r"--target-speedup 3: the largest predicted speed-up is 1\.333x"):
        planning.choose([lay], 2.0, 3.0)


# ----------------------------------------------------------------------------------------------------------------
# Option errors agree with onnxruntime


def conv_chain(rng: np.random.Generator, c: int = 16, size: int = 10) -> onnx.ModelProto:
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "W2"], ["Y"], name="c2", pads=[1, 1, 1, 1], strides=[2, 2]),
    ]
    inits = [init("W1", lowrank_weight(rng, c, c, 3, 3, 0.3)), init("B1", rng.standard_normal(c).astype(np.float32)),
             init("W2", lowrank_weight(rng, c, c, 3, 2, 0.3))]
    return make_model(nodes, [tensor("X", ["N", c, size, size])], [tensor("Y", None)], inits)


@pytest.mark.parametrize("mode", ["separable", "shuffle", "mixed"])
def test_option_errors_match_onnxruntime_on_the_first_layer(tmp_path, mode) -> None:
    """The first layer's input is the model input, so the patch-based error of every option must equal the error
    onnxruntime measures between the original and the rewritten layer (all output positions sampled)."""
    rng = np.random.default_rng(0)
    model = conv_chain(rng)
    x = smooth_inputs(rng, 3, 16, 10)
    np.savez(tmp_path / "cal.npz", X=x)
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    cands, _ = planning.find_candidates(model, mode, "sum", (2, 4), None, None, None)
    assert [c.name for c in cands] == ["c1", "c2"]
    kinds = {"separable": {"rank"}, "shuffle": {"groups"}, "mixed": {"rank", "groups"}}[mode]
    assert {k for c in cands for k, _ in c.options} == kinds
    planning.option_errors(model, cands, cal, positions=3 * 100, seed=0, providers=["CPUExecutionProvider"],
                        threads=None, refit_aware=False)
    c1 = cands[0]
    ref = compare.run_model(compare.session(calibration.truncate_model(model, {"h": 1})), {"X": x})["h"]
    for kind, v in c1.options:
        if kind == "rank":
            got = separate(model, RankPolicy("rank", v), force=True).model
        else:
            got = masked_reference(model, group_shuffle(model, groups=v, force=True))
        out = compare.run_model(compare.session(calibration.truncate_model(got, {"h": 1})), {"X": x})["h"]
        assert c1.weight_errors[kind, v] == pytest.approx(rel(ref, out), rel=1e-4, abs=1e-6), (kind, v)
    assert all(c.errors == c.weight_errors for c in cands)


# ----------------------------------------------------------------------------------------------------------------
# Latency cache


def test_latencies_are_cached_per_shape(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(1)
    w = lowrank_weight(rng, 16, 16, 3, 2, 0.3)
    nodes = [helper.make_node("Conv", ["X", "W"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "V"], ["Y"], name="b", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor("X", [1, 16, 8, 8])], [tensor("Y", None)],
                       [init("W", w), init("V", w * 2)])
    cands, _ = planning.find_candidates(model, "separable", "sum", (), None, None, None)
    for c in cands:
        c.input_shape = (1, 16, 8, 8)
    calls = []
    real = timer.bench

    def counting(*args, **kwargs):  # noqa: ANN002, ANN003, ANN202
        calls.append(args[0])
        return real(*args, **kwargs)

    monkeypatch.setattr(timer, "bench", counting)  # what the in-process timer calls
    cache = planning.LatencyCache(tmp_path / "lat.json")
    times = planning.measure_latencies(cands, "sum", planning.OrtTimer("cpu", None, layer_iters=3), cache)
    assert len(calls) == 1  # two layers, one shape: timed once
    assert times["a"] == times["b"] and set(times["a"]) == {planning.KEEP, *cands[0].options}
    assert all(t > 0 for t in times["a"].values())
    # A new cache object reads the file back: nothing is timed again.
    again = planning.measure_latencies(cands, "sum", planning.OrtTimer("cpu", None, layer_iters=3),
                                       planning.LatencyCache(tmp_path / "lat.json"))
    assert len(calls) == 1 and again == times
    assert len(json.loads((tmp_path / "lat.json").read_text())) == len(times["a"])


# ----------------------------------------------------------------------------------------------------------------
# The whole plan


def fixed_cache(model: onnx.ModelProto, cal: calibration.CalibrationSet, keep_s: float, option_s: float,
                mode: str = "separable", form: str = "sum") -> planning.LatencyCache:
    """A cache holding made-up layer latencies, so the choice does not depend on this machine's timing."""
    cands, _ = planning.find_candidates(model, mode, form, planning.GROUP_CHOICES, None, None, None)
    cache = planning.LatencyCache()
    shapes = {"c1": (cal.chunk, 16, 10, 10), "c2": (cal.chunk, 16, 10, 10)}
    for c in cands:
        c.input_shape = shapes[c.name]
        for o in [planning.KEEP, *c.options]:
            cache.put(planning.latency_key(c, "cpu", None, form, o), keep_s if o == planning.KEEP else option_s)
    return cache


@pytest.mark.parametrize("mode", ["separable", "shuffle"])
def test_plan_picks_the_least_error_option_and_refits(tmp_path, mode, monkeypatch) -> None:
    rng = np.random.default_rng(2)
    plankit.fake_timer(monkeypatch, lambda o, r, *a: (1.0, None if r is None else 1.5))
    model = conv_chain(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 6, 16, 10))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    # Every option saves a whole second: any single one reaches the target, so the plan is the one option of
    # least error in the whole model, and nothing else is rewritten.
    cache = fixed_cache(model, cal, keep_s=2.0, option_s=1.0, mode=mode)
    result, report = plankit.plan_rewrite(model, cal, target_speedup=1.5, mode=mode, form="sum", cache=cache,
                                       layer_iters=3, model_iters=3, rounds=1)
    errors = [(o.error, lay.name, o.label) for lay in report.layers for o in lay.options[1:]]
    least = min(errors)
    assert report.choices() == {least[1]: least[2]}
    done = [c for c in result.layers if c.rewritten]
    assert [c.name for c in done] == [least[1]]
    assert done[0].details["plan"].startswith(least[2] + " ")
    assert done[0].details["refit_err"] <= done[0].details["out_err"]
    assert unused_initializers(result.model) == []  # the refit of the plan leaves no bias behind
    assert report.measured is not None and report.measured > 0 and len(report.rounds) == 1
    note = result.options["notes"][-1]
    assert ("predicted" in note or "no prediction (the layers timed alone" in note) and "measured" in note
    assert result.options["plan"]["layers"][0]["options"][0]["kind"] == "keep"
    x = smooth_inputs(rng, 2, 16, 10)
    out = compare.run_model(compare.session(result.model), {"X": x})["Y"]
    assert out.shape == compare.run_model(compare.session(model), {"X": x})["Y"].shape


def test_plan_refuses_bad_targets(tmp_path) -> None:
    rng = np.random.default_rng(3)
    model = conv_chain(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 2, 16, 10))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    with pytest.raises(OptionError, match="must be a number above 1"):
        plankit.plan_rewrite(model, cal, target_speedup=1.0)
    with pytest.raises(OptionError, match="--provider nope: unknown"):
        plankit.plan_rewrite(model, cal, target_speedup=2.0, provider="nope")
    cache = fixed_cache(model, cal, keep_s=1e-9, option_s=0.9e-9)  # saves far less than the model takes
    # 50x is out of reach of the cheapest plan: refused by the quick bound, before any error is estimated.
    seen: list[str] = []
    with pytest.raises(OptionError, match=r"^--target-speedup 50: out of reach: the cheapest plan \(all 2 candidate "
                                          r"layer\(s\) at their fewest MACs\) measures .*x of the original"):
        with progress.reporting(lambda phase, done, total: seen.append(phase)):
            plankit.plan_rewrite(model, cal, target_speedup=50.0, cache=cache, form="sum", layer_iters=3,
                                  model_iters=3)
    assert seen and seen[-1].startswith("timing the cheapest plan")  # nothing after it: no estimate, no refit


def test_cli_target_speedup_options(tmp_path) -> None:
    rng = np.random.default_rng(4)
    path = tmp_path / "m.onnx"
    onnx.save(conv_chain(rng), path)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 2, 16, 10))
    run = CliRunner().invoke
    res = run(main, ["separate", str(path), "-o", str(tmp_path / "o.onnx"), "--target-speedup", "2"])
    assert res.exit_code == 1 and "Error: --target-speedup needs --calibration" in res.output
    res = run(main, ["separate", str(path), "-o", str(tmp_path / "o.onnx"), "--target-speedup", "2", "--rank", "1",
                     "--calibration", str(tmp_path / "cal.npz")])
    assert res.exit_code == 1 and "chooses the ranks itself" in res.output
    res = run(main, ["separate", str(path), "-o", str(tmp_path / "o.onnx"), "--target-speedup", "0.5",
                     "--calibration", str(tmp_path / "cal.npz")])
    assert res.exit_code == 1 and "Error: --target-speedup 0.5: must be a number above 1" in res.output
    assert not (tmp_path / "o.onnx").exists()


def test_plan_rescales_layer_savings_by_the_measured_speedup(tmp_path, monkeypatch) -> None:
    """Layers alone promise more than the model delivers: the first plan falls short when measured, the layer
    savings are scaled by what was measured, and the second plan (more layers) reaches the target."""
    rng = np.random.default_rng(5)
    model = conv_chain(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 2, 16, 10))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    cache = fixed_cache(model, cal, keep_s=0.5, option_s=0.1)  # each option saves 0.4 s of a 1 s model

    def fake_bench(original, rewritten, *args):  # noqa: ANN001, ANN002, ANN202
        if rewritten is None:
            return 1.0, None
        done = sum(1 for n in rewritten.graph.node if "/dw" in n.name) > 0
        layers = len({n.name.split("/")[0] for n in rewritten.graph.node if "/dw" in n.name})
        return 1.0, 1.0 / (1.0 - 0.2 * layers) if done else 1.0  # the model saves half the promised time

    plankit.fake_timer(monkeypatch, fake_bench)
    result, report = plankit.plan_rewrite(model, cal, target_speedup=1.6, cache=cache, form="sum", do_refit=False)
    assert [r["measured"] for r in report.rounds] == pytest.approx([1 / 0.8, 1 / 0.6])
    assert report.rounds[1]["scale"] == pytest.approx(0.5)
    assert report.measured == pytest.approx(1 / 0.6) and len(result.rewritten) == 2


def test_plan_backs_off_an_overshoot_to_spend_less_error(tmp_path, monkeypatch) -> None:
    """The layers promise too little: the first plan (two layers) overshoots the target, so the savings are
    rescaled and the one-layer plan, which still reaches it with less error, is the one kept."""
    rng = np.random.default_rng(6)
    model = conv_chain(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 2, 16, 10))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    cache = fixed_cache(model, cal, keep_s=0.3, option_s=0.1)  # 0.2 s promised per layer, 0.4 s delivered

    def fake_bench(original, rewritten, *args):  # noqa: ANN001, ANN002, ANN202
        if rewritten is None:
            return 1.0, None
        layers = len({n.name.split("/")[0] for n in rewritten.graph.node if "/dw" in n.name})
        return 1.0, 1.0 / (1.0 - 0.4 * layers)

    plankit.fake_timer(monkeypatch, fake_bench)
    result, report = plankit.plan_rewrite(model, cal, target_speedup=1.6, cache=cache, form="sum", do_refit=False)
    assert [r["measured"] for r in report.rounds] == pytest.approx([1 / 0.2, 1 / 0.6])
    assert report.measured == pytest.approx(1 / 0.6) and len(result.rewritten) == 1


def rank_then_grouped(rng: np.random.Generator, c: int = 16, size: int = 10) -> onnx.ModelProto:
    """c1 (per-channel rank 1 plus noise) -> Relu -> c2 (block diagonal for G=2 under a shuffled assignment):
    the least-error option is a rank for c1 and G=2 for c2, and c1's pointwise output feeds a grouped conv, so
    the shuffle pass reorders it."""
    w2 = rng.standard_normal((c, c, 3, 3)).astype(np.float32)
    out_g, in_g = rng.permutation(np.arange(c) % 2), rng.permutation(np.arange(c) % 2)
    w2 *= (out_g[:, None] == in_g[None, :])[:, :, None, None]
    w2 += 0.01 * rng.standard_normal(w2.shape).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["X", "W1", "B1"], ["h"], name="c1", pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["h"], ["r"], name="relu"),
        helper.make_node("Conv", ["r", "W2"], ["Y"], name="c2", pads=[1, 1, 1, 1]),
    ]
    inits = [init("W1", lowrank_weight(rng, c, c, 3, 1, 0.2)), init("B1", rng.standard_normal(c).astype(np.float32)),
             init("W2", w2)]
    return make_model(nodes, [tensor("X", ["N", c, size, size])], [tensor("Y", None)], inits)


def test_mixed_plan_uses_both_kinds_and_refits_through_the_reordering(tmp_path, monkeypatch) -> None:
    rng = np.random.default_rng(7)
    model = rank_then_grouped(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 6, 16, 10))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    # 0.4 s saved per layer of 1 s. The concat form ends in one pointwise conv, which the shuffle pass reorders.
    cache = fixed_cache(model, cal, keep_s=0.5, option_s=0.1, mode="mixed", form="concat")
    plankit.fake_timer(monkeypatch, lambda original, rewritten, *a: (1.0, None if rewritten is None
                                                                                 else 2.5))
    weight_only, report = plankit.plan_rewrite(model, cal, target_speedup=2.5, mode="mixed", form="concat",
                                                cache=cache, do_refit=False)
    chosen = {lay.name: lay.options[p] for lay, p in zip(report.layers, report.picks)}
    assert chosen["c1"].kind == "rank" and (chosen["c2"].kind, chosen["c2"].value) == ("groups", 2)
    assert weight_only.pass_name == "mixed" and report.reference is not None
    assert {c.name for c in weight_only.rewritten} == {"c1", "c2"}
    # The rewrite computes the reference exactly, up to the channel order the shuffle pass gave c1's output.
    x = smooth_inputs(rng, 2, 16, 10)
    outs = {name: compare.run_model(compare.session(m), {"X": x})["Y"]
            for name, m in (("orig", model), ("ref", report.reference), ("new", weight_only.model))}
    assert rel(outs["ref"], outs["new"]) < 1e-5
    fitted = calibration.refit(model, weight_only, cal, reference=report.reference)
    for c in fitted.rewritten:
        assert "refit" not in c.details, (c.name, c.details.get("refit"))  # matched and refitted, not skipped
        assert c.details["refit_err"] < c.details["out_err"]
    got = compare.run_model(compare.session(fitted.model), {"X": x})["Y"]
    assert rel(outs["orig"], got) < rel(outs["orig"], outs["new"])
    # c1's depthwise kernels are refitted too, through the output order folded into its 1x1 weights: in
    # onnxruntime that beats refitting its 1x1 stage alone.
    c1 = next(c for c in fitted.rewritten if c.name == "c1")
    assert c1.details["alternations"] >= 1 and "depthwise" not in c1.details, c1.details
    pointwise = calibration.refit(model, weight_only, cal, calibration.FitOptions(depthwise=False),
                                  reference=report.reference)
    got_pw = compare.run_model(compare.session(pointwise.model), {"X": x})["Y"]
    assert rel(outs["orig"], got) < 0.95 * rel(outs["orig"], got_pw)
    # Without the reference, c1's reordered output cannot be refitted against the original's channel order.
    blind = calibration.refit(model, weight_only, cal)
    c1 = next(c for c in blind.rewritten if c.name == "c1")
    assert c1.details["refit_err"] > next(c for c in fitted.rewritten if c.name == "c1").details["refit_err"]


def test_refit_aware_errors_estimate_the_refit_of_the_first_layer(tmp_path) -> None:
    """The first layer sees the model input, so its estimated error after the refit must be close to what
    calibration.refit reaches when only that layer is rewritten with the option (both on held-out positions), and
    below the weight-only error on these smooth inputs, where the weight-only factors are not optimal."""
    rng = np.random.default_rng(8)
    model = conv_chain(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 8, 16, 10))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    cands, _ = planning.find_candidates(model, "mixed", "sum", (2, 4), None, None, None)
    planning.option_errors(model, cands, cal, positions=8 * 100, seed=0, providers=["CPUExecutionProvider"],
                        threads=None)
    c1 = cands[0]
    only = NodeFilter(include=["^c1$"])
    for kind, v in c1.options:
        res = (separate(model, RankPolicy("rank", v), force=True, node_filter=only) if kind == "rank"
               else group_shuffle(model, groups=v, force=True, node_filter=only))
        done = next(c for c in calibration.refit(model, res, cal).rewritten if c.name == "c1")
        assert c1.errors[kind, v] < c1.weight_errors[kind, v], (kind, v)
        assert c1.errors[kind, v] == pytest.approx(done.details["refit_err"], rel=0.15), (kind, v)


def test_shuffle_plan_with_several_group_counts_is_refitted_everywhere(tmp_path, monkeypatch) -> None:
    """Two shuffle passes (G=2 for one layer, G=4 for the other): the second pass sees a weight the first one
    permuted, and the refit must still match every layer's channels."""
    rng = np.random.default_rng(9)
    model = conv_chain(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 4, 16, 10))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    cands, _ = planning.find_candidates(model, "shuffle", "sum", (2, 4), None, None, None)
    layers = [planning.LayerOptions(c.name, [planning.Option("keep", 0, 1.0, 0.0)]
                                + [planning.Option(k, v, 0.5, 0.1) for k, v in c.options]) for c in cands]
    picks = (next(i for i, o in enumerate(layers[0].options) if o.value == 2),
             next(i for i, o in enumerate(layers[1].options) if o.value == 4))
    result, reference = planning.build_plan(model, layers, picks, cands, {}, "sum", None, None)
    assert reference is not None and [c.details["groups"] for c in result.rewritten] == [2, 4]
    x = smooth_inputs(rng, 2, 16, 10)
    assert rel(compare.run_model(compare.session(reference), {"X": x})["Y"],
               compare.run_model(compare.session(result.model), {"X": x})["Y"]) < 1e-5
    fitted = calibration.refit(model, result, cal, reference=reference)
    assert all("refit" not in c.details and c.details["refit_err"] < c.details["out_err"] for c in fitted.rewritten)


def test_cli_mode_mixed_needs_a_target(tmp_path) -> None:
    rng = np.random.default_rng(10)
    path = tmp_path / "m.onnx"
    onnx.save(conv_chain(rng), path)
    run = CliRunner().invoke
    res = run(main, ["separate", str(path), "-o", str(tmp_path / "o.onnx"), "--mode", "mixed"])
    assert res.exit_code == 1 and "Error: --mode mixed needs --target-speedup" in res.output
    res = run(main, ["separate", str(path), "-o", str(tmp_path / "o.onnx"), "--mode", "mixed", "--groups", "2",
                     "--target-speedup", "2"])
    assert res.exit_code == 1 and "Error: --target-speedup needs --calibration" in res.output
    assert not (tmp_path / "o.onnx").exists()


@pytest.mark.parametrize("mode", ["separable", "shuffle", "mixed"])
def test_a_weight_cast_from_fp16_is_left_with_its_reason(mode: str) -> None:
    """The passes rewrite a conv whose weight is an fp16 initializer behind Cast; the planner, which builds its
    layer models from the weight initializer, leaves it with a reason (it raised KeyError: found by the fuzz
    tool's every-mode cases on messy_export)."""
    rng = np.random.default_rng(0)
    w = lowrank_weight(rng, 16, 16, 3, 2, 0.3)
    nodes = [helper.make_node("Cast", ["W16"], ["W"], name="cast", to=onnx.TensorProto.FLOAT),
             helper.make_node("Conv", ["X", "W"], ["a"], name="a", pads=[1, 1, 1, 1]),
             helper.make_node("Conv", ["a", "V"], ["Y"], name="b", pads=[1, 1, 1, 1])]
    model = make_model(nodes, [tensor("X", [1, 16, 8, 8])], [tensor("Y", None)],
                       [init("W16", w.astype(np.float16)), init("V", w)])
    cands, skipped = planning.find_candidates(model, mode, "sum", (2, 4), None, None, None)
    assert [c.name for c in cands] == ["b"]
    assert "Cast" in (skipped["a"].reason or "")
    del model.graph.node[1].input[1:]  # a conv without a weight (the fuzz tool's seed 11 case 910)
    cands, skipped = planning.find_candidates(model, mode, "sum", (2, 4), None, None, None)
    assert [c.name for c in cands] == ["b"] and "a" in skipped

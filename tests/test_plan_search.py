"""The planner's search on measurements: both sides of the target, the error budget, both together, and the
frontier (table, report, plot). Layer latencies come from a fixed cache and the end-to-end timing from a
deterministic timer (:class:`tests.plankit.FakeTimer`), built so that the layer timings mislead; the end-to-end errors are
real (onnxruntime on the held-out calibration samples)."""

from __future__ import annotations

import numpy as np
import onnx
import pytest
from onnx import helper

from onnxconv import calibration, planning
from onnxconv.errors import OptionError
from onnxconv.planning import planner

from . import plankit
from .modelkit import init, make_model, tensor
from .test_calibrate import lowrank_weight, smooth_inputs

C, SIZE = 16, 8
#: Layers c1, c2 are exactly rank 1 per input channel (their rank-1 rewrite loses nothing); c3, c4 are not.
EXACT = ("c1", "c2")


def four_convs(rng: np.random.Generator) -> onnx.ModelProto:
    nodes, inits, x = [], [], "X"
    for i in range(1, 5):
        name = f"c{i}"
        noise = 0.0 if name in EXACT else 1.0
        inits.append(init(f"W{i}", lowrank_weight(rng, C, C, 3, 1, noise) / 4))
        nodes.append(helper.make_node("Conv", [x, f"W{i}"], [f"h{i}"], name=name, pads=[1, 1, 1, 1]))
        if i < 4:
            nodes.append(helper.make_node("Relu", [f"h{i}"], [f"r{i}"], name=f"relu{i}"))
            x = f"r{i}"
    return make_model(nodes, [tensor("X", ["N", C, SIZE, SIZE])], [tensor("h4", None)], inits)


def setup(tmp_path, samples: int = 10, keep_s: float = 0.5, option_s: float = 0.48,
          ) -> tuple[onnx.ModelProto, calibration.CalibrationSet, planning.LatencyCache]:
    """The model, its calibration set (a fifth held out) and layer latencies that promise ``keep_s - option_s``
    seconds saved per layer of a 1 s model (0.02 s: at most 1.087x from layer timings)."""
    rng = np.random.default_rng(0)
    model = four_convs(rng)
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, samples, C, SIZE))
    cal = calibration.load_calibration(tmp_path / "cal.npz", model)
    cands, _ = planning.find_candidates(model, "separable", "sum", planning.GROUP_CHOICES, None, None, None)
    cache = planning.LatencyCache()
    for c in cands:
        c.input_shape = (cal.chunk, C, SIZE, SIZE)
        for o in [planning.KEEP, *c.options]:
            cache.put(planning.latency_key(c, "cpu", None, "sum", o), keep_s if o == planning.KEEP else option_s)
    return model, cal, cache


def rewritten_layers(model: onnx.ModelProto) -> set[str]:
    """The layers a plan rewrote: separable ones by their depthwise node's name, grouped ones by their group."""
    grouped = {n.name.split("/")[0] for n in model.graph.node if n.op_type == "Conv"
               and any(a.name == "group" and a.i > 1 for a in n.attribute)}
    return {n.name.split("/")[0] for n in model.graph.node if "/dw" in n.name} | grouped


def fake_bench(speedups: dict[int, float]):  # noqa: ANN201
    """A timer's ``pair`` with the original at 1 s and a rewrite measuring ``speedups[layers rewritten]``."""
    def bench(original, rewritten, *args):  # noqa: ANN001, ANN002, ANN202
        return 1.0, None if rewritten is None else speedups[len(rewritten_layers(rewritten))]
    return bench


#: What the whole model measures with L layers rewritten: far more than the layer timings promise (1.02x per layer).
CURVE = {0: 1.0, 1: 1.1, 2: 1.2, 3: 1.4, 4: 1.6}


def plan(tmp_path, monkeypatch, curve: dict[int, float] = CURVE, **kwargs):  # noqa: ANN003, ANN201
    model, cal, cache = setup(tmp_path)
    plankit.fake_timer(monkeypatch, fake_bench(curve))
    return plankit.plan_rewrite(model, cal, cache=cache, form="sum", do_refit=False, **kwargs)


def test_unreachable_by_layer_timings_searches_the_measured_curve_down_to_the_target(tmp_path, monkeypatch) -> None:
    """Layer timings call 1.4x unreachable; the fastest plan measures 1.6x (an overshoot that costs error), so
    the search rescales and returns the three-layer plan that measures 1.4x, not the fastest."""
    result, report = plan(tmp_path, monkeypatch, target_speedup=1.4)
    assert report.rounds[0]["how"] == "fastest" and report.rounds[0]["measured"] == pytest.approx(1.6)
    assert report.rounds[0]["predicted"] == pytest.approx(1 / (1 - 4 * 0.02))
    assert report.rounds[0]["timing_ratio"] == pytest.approx((1 - 1 / 1.6) / 0.08)  # layer timings off ~4.7x
    assert report.measured == pytest.approx(1.4) and len(result.rewritten) == 3
    assert {c.name for c in result.rewritten} >= set(EXACT)  # the least-error three
    assert all({"predicted", "measured", "error"} <= set(r) for r in report.rounds)
    assert "what the layer timings promised" in result.options["notes"][-1]


def test_the_fastest_plan_only_when_nothing_slower_reaches_the_target(tmp_path, monkeypatch) -> None:
    """Only the fastest plan reaches 1.5x: slower plans are measured, found short, and the fastest is returned."""
    curve = {0: 1.0, 1: 1.05, 2: 1.1, 3: 1.2, 4: 2.0}
    result, report = plan(tmp_path, monkeypatch, curve=curve, target_speedup=1.5)
    assert report.measured == pytest.approx(2.0) and len(result.rewritten) == 4
    assert any(r["measured"] < 1.5 for r in report.rounds)  # slower plans were tried first


def test_least_error_plan_among_those_reaching_the_target(tmp_path, monkeypatch) -> None:
    """Every plan of two or more layers reaches 1.15x within tolerance of nothing (all overshoot); among them the
    one of least measured error (two exact layers) wins."""
    curve = {0: 1.0, 1: 1.05, 2: 1.3, 3: 1.35, 4: 1.4}
    result, report = plan(tmp_path, monkeypatch, curve=curve, target_speedup=1.15)
    reach = [r for r in report.rounds if r["measured"] >= 1.15 * 0.97]
    assert report.error == min(r["error"] for r in reach)
    assert {c.name for c in result.rewritten} == set(EXACT)


def test_a_target_even_the_fastest_plan_misses_is_refused_with_its_figure(tmp_path, monkeypatch) -> None:
    # 1.7x is within the quick bound's margin of the cheapest plan (1.6x): the search measures, then refuses.
    with pytest.raises(OptionError, match=r"^--target-speedup 1\.7: the largest measured speed-up is 1\.60x"):
        plan(tmp_path, monkeypatch, target_speedup=1.7)


def test_error_budget_returns_the_fastest_plan_within_it(tmp_path, monkeypatch) -> None:
    """c1 and c2 lose nothing at rank 1, c3 and c4 lose much: within 1e-3 the fastest plan rewrites exactly c1
    and c2, whatever the layer timings say."""
    result, report = plan(tmp_path, monkeypatch, max_output_error=1e-3)
    assert {c.name for c in result.rewritten} == set(EXACT)
    assert report.error is not None and report.error <= 1e-3 and report.measured == pytest.approx(1.2)
    assert any(r["error"] > 1e-3 for r in report.rounds)  # faster plans were measured and found over budget
    assert "held-out" in report.error_inputs


def test_error_budget_and_target_together(tmp_path, monkeypatch) -> None:
    result, report = plan(tmp_path, monkeypatch, max_output_error=1e-3, target_speedup=1.2)
    assert {c.name for c in result.rewritten} == set(EXACT) and report.measured == pytest.approx(1.2)
    with pytest.raises(OptionError, match=r"^--target-speedup 1\.4 and --max-output-error 0\.001 cannot both hold: "
                                          r"the plans that reach 1\.4x measure held-out error .* at least"):
        plan(tmp_path, monkeypatch, max_output_error=1e-3, target_speedup=1.4)


def test_error_budget_no_plan_meets(tmp_path, monkeypatch) -> None:
    with pytest.raises(OptionError, match=r"^--max-output-error 1e-09: no measured plan is within it"):
        plan(tmp_path, monkeypatch, max_output_error=1e-9)


def test_end_to_end_error_is_measured_on_the_held_out_samples(tmp_path, monkeypatch) -> None:
    """The reported error of the chosen plan is the worst output's relative error on exactly the samples
    calibration.held_out_feeds returns (recomputed here with onnxruntime)."""
    from onnxconv import compare

    model, cal, cache = setup(tmp_path)
    plankit.fake_timer(monkeypatch, fake_bench(CURVE))
    result, report = plankit.plan_rewrite(model, cal, cache=cache, form="sum", target_speedup=1.4)
    feeds = calibration.held_out_feeds(cal, model)
    assert len(feeds) == 1 and feeds[0]["X"].shape[0] == 2
    a = compare.run_model(compare.session(model), feeds[0])["h4"]
    b = compare.run_model(compare.session(result.model), feeds[0])["h4"]
    assert report.whole_error == pytest.approx(float(np.linalg.norm(a - b) / np.linalg.norm(a)), rel=1e-4)
    # The error budgets bound includes every channel at its own scale (NCHW: axis 1).
    errs = compare.channel_errors(a, b, 1)
    assert report.error == pytest.approx(max(float(errs.max()), report.whole_error), rel=1e-4)
    assert report.worst_channels["h4"]["index"] == int(errs.argmax())
    assert result.options["calibration"]["held_out"] == 2  # the refit never saw them


# ----------------------------------------------------------------------------------------------------------------
# int8: latencies and errors on the quantized models


def test_int8_plan_ships_the_quantized_rewrite_with_errors_against_fp32(tmp_path, monkeypatch) -> None:
    """Every measured plan is quantized (QDQ) after its refit and timed against the quantized original; its error
    is taken against the fp32 original on the held-out samples; the returned model is the quantized rewrite."""
    from onnxconv import compare

    model, cal, _ = setup(tmp_path)
    timed: list[tuple[bool, bool]] = []

    def bench(original, rewritten, feeds):  # noqa: ANN001, ANN202
        quantized = lambda m: any(n.op_type == "QuantizeLinear" for n in m.graph.node)  # noqa: E731
        timed.append((quantized(original), rewritten is None or quantized(rewritten)))
        assert feeds["X"].shape[0] == 1  # the quantized models have a static batch of one sample
        return 1.0, None if rewritten is None else CURVE[len(rewritten_layers(rewritten))]

    timer = plankit.fake_timer(monkeypatch, bench)
    result, report = plankit.plan_rewrite(model, cal, form="sum", target_speedup=1.4, precision="int8")
    layer_models = [models[planning.KEEP] for models in timer.layers]  # every layer alone, as it ships: int8
    # Every plan against the quantized original, and once the quantized original against the fp32 one (the
    # speed-ups over fp32).
    assert timed.count((False, True)) == 1 and all(t == (True, True) for t in timed if t != (False, True))
    assert any(n.op_type == "QuantizeLinear" for n in layer_models[0].graph.node)
    ops = {n.op_type for n in result.model.graph.node}
    assert {"QuantizeLinear", "DequantizeLinear"} <= ops and report.precision == "int8-qdq-uint8-int8"
    assert report.measured == pytest.approx(1.4) and len(result.rewritten) == 3
    feeds = calibration.held_out_feeds(cal, model)[0]
    a = compare.run_model(compare.session(model), feeds)["h4"]
    sess = compare.session(result.model)
    b = np.concatenate([compare.run_model(sess, {"X": feeds["X"][i:i + 1]})["h4"] for i in range(2)])
    assert report.whole_error == pytest.approx(float(np.linalg.norm(a - b) / np.linalg.norm(a)), rel=1e-4)
    # The error budgets bound includes every channel at its own scale (NCHW: axis 1).
    errs = compare.channel_errors(a, b, 1)
    assert report.error == pytest.approx(max(float(errs.max()), report.whole_error), rel=1e-4)
    assert report.worst_channels["h4"]["index"] == int(errs.argmax())
    assert report.error > 1e-4  # int8 rounding is in it: the error is not the fp32 rewrite's


def stub_timings(monkeypatch, speedup: float) -> None:  # noqa: ANN001
    """Every plan measures ``speedup``; every layer option is timed 0.48 s against 0.5 s kept (int8 runs, whose
    layer models the fixed cache of :func:`setup` does not hold)."""
    plankit.fake_timer(monkeypatch, lambda o, r, *a: (1.0, None if r is None else speedup))


def test_int8_target_no_plan_reaches_is_one_line(tmp_path, monkeypatch) -> None:
    model, cal, _ = setup(tmp_path)
    stub_timings(monkeypatch, 0.95)
    # Far out of reach: the quick bound times the cheapest plan, quantized, against the quantized original.
    with pytest.raises(OptionError, match=r"^--target-speedup 1\.4: out of reach: the cheapest plan \(all 4 "
                                          r"candidate layer\(s\) at their fewest MACs\) measures 0\.95x of the "
                                          r"quantized original, before any refit$"):
        plankit.plan_rewrite(model, cal, form="sum", target_speedup=1.4, precision="int8", do_refit=False)
    # Within the margin (1.02x): the search measures the fastest plan, then refuses with its figure.
    with pytest.raises(OptionError, match=r"^--precision int8: the fastest plan measures 0\.95x of the quantized "
                                          r"original \(--target-speedup 1\.02 asked\)$"):
        plankit.plan_rewrite(model, cal, form="sum", target_speedup=1.02, precision="int8", do_refit=False)


def test_int8_layer_latencies_are_timed_quantized_and_cached_apart(tmp_path) -> None:
    model, cal, _ = setup(tmp_path)
    cands, _ = planning.find_candidates(model, "separable", "sum", (), None, None, None)
    cands = cands[:1]
    cands[0].input_shape = (1, C, SIZE, SIZE)
    quant = planning.Quantizer([{"X": np.zeros((1, C, SIZE, SIZE), np.float32)}])
    cache = planning.LatencyCache()
    times = planning.measure_latencies(cands, "sum", planning.OrtTimer("cpu", 1, layer_iters=2), cache, quantize=quant)
    assert all(t > 0 for t in times["c1"].values()) and len(cache.times) == 1 + len(cands[0].options)
    assert all("int8-qdq-uint8-int8" in k for k in cache.times)


def test_rounds_running_out_short_of_the_target_measure_the_fastest_plan(tmp_path, monkeypatch) -> None:
    """One round, and the layer timings' first plan misses: the fastest plan is measured before anything is
    returned, and it reaches the target (a plan that misses is not returned while it is unmeasured)."""
    result, report = plan(tmp_path, monkeypatch, curve={0: 1.0, 1: 1.0, 2: 1.0, 3: 1.0, 4: 1.05},
                          target_speedup=1.05, rounds=1)
    assert [r["how"] for r in report.rounds] == ["target", "fastest"]
    assert report.measured == pytest.approx(1.05) and len(result.rewritten) == 4


# ----------------------------------------------------------------------------------------------------------------
# The error budget's edges: a plan no faster than the original, a refusal's frontier, symbolic spatial dims


def test_error_budget_whose_best_plan_is_no_faster_than_the_original_is_one_line(tmp_path, monkeypatch) -> None:
    """Within 1e-3 only the two exact layers fit, and rewriting them measures 1.01x: that is no plan worth
    shipping (within the 3% tolerance of the original), so the planner says so with the nearest plan over the
    budget, and the refusal still carries every measured plan."""
    curve = {0: 1.0, 1: 1.0, 2: 1.01, 3: 1.4, 4: 1.6}
    with pytest.raises(planning.PlanRefused, match=r"^--max-output-error 0\.001: no measured plan within it is "
                                                   r"faster than the original \(the fastest within it measures "
                                                   r"1\.01x, error .*; the least error over it is .*, at 1\.40x\)$"
                       ) as info:
        plan(tmp_path, monkeypatch, curve=curve, max_output_error=1e-3)
    rounds = info.value.report.rounds
    assert rounds and any(r["error"] <= 1e-3 and r["measured"] == pytest.approx(1.01) for r in rounds)
    assert len(info.value.report.round_models) == len(rounds)


def test_error_budget_search_is_regula_falsi_on_the_estimated_errors(tmp_path, monkeypatch) -> None:
    """Regula falsi on the estimated errors from the original and the fastest plan points at the two exact
    layers (1.2x) within three measured plans, where a bisection on the saving (the smallest plan, then half the
    saving) spends its third round on a three-layer plan over the budget and returns one layer."""
    result, report = plan(tmp_path, monkeypatch, max_output_error=1e-3, rounds=3)
    assert {c.name for c in result.rewritten} == set(EXACT) and report.measured == pytest.approx(1.2)
    assert report.rounds[0]["how"] == "fastest" and len(report.rounds) <= 3


def test_a_refused_target_keeps_its_measured_plans(tmp_path, monkeypatch) -> None:
    with pytest.raises(planning.PlanRefused) as info:
        plan(tmp_path, monkeypatch, target_speedup=1.7)
    assert [r["how"] for r in info.value.report.rounds][:1] == ["fastest"]
    assert all(r["measured"] < 1.7 * 0.97 for r in info.value.report.rounds)


def test_int8_budget_below_the_quantized_originals_own_error_is_one_line(tmp_path, monkeypatch) -> None:
    model, cal, _ = setup(tmp_path)
    stub_timings(monkeypatch, 1.2)
    with pytest.raises(OptionError, match=r"^--max-output-error 1e-09: the quantized original alone measures "
                                          r"[0-9.e-]+ on 2 held-out calibration samples"):
        plankit.plan_rewrite(model, cal, form="sum", max_output_error=1e-9, precision="int8", do_refit=False)


def test_macs_are_counted_at_the_calibration_shape_when_the_model_leaves_them_symbolic(tmp_path, monkeypatch
                                                                                       ) -> None:
    """The model's spatial dims are symbolic (as in PP-OCR's exports): the pass cannot count MACs, so the frontier's
    MACs are both models counted at the calibration samples' shape, batch 1."""
    from onnxconv.stats import analyze

    model, cal, cache = setup(tmp_path)
    for d, name in zip(model.graph.input[0].type.tensor_type.shape.dim[2:], ("H", "W")):
        d.dim_param = name
    plankit.fake_timer(monkeypatch, fake_bench(CURVE))
    _, report = plankit.plan_rewrite(model, cal, cache=cache, form="sum", do_refit=False, target_speedup=1.6)
    assert report.macs_before == 4 * C * C * 9 * SIZE * SIZE
    rewritten = analyze(report.round_models[-1], input_shapes={"X": [1, C, SIZE, SIZE]}).totals["macs"]
    assert report.rounds[-1]["macs"] == rewritten < report.macs_before


def test_option_errors_are_estimated_on_the_fitted_samples_only(tmp_path, monkeypatch) -> None:
    """The held-out samples judge each plan's end-to-end error: the estimate the choice ranks options by must not
    have seen them."""
    sizes: list[int] = []
    real = planner.option_errors

    def spy(model, cands, cal, *args, **kwargs):  # noqa: ANN001, ANN002, ANN003, ANN202
        sizes.append(cal.size)
        return real(model, cands, cal, *args, **kwargs)

    monkeypatch.setattr(planner, "option_errors", spy)
    model, cal, _ = setup(tmp_path)
    plan(tmp_path, monkeypatch, target_speedup=1.4)
    assert sizes == [cal.split(0)[0].size] == [8]

"""What users lose, where outputs are compared: the planner's bounds (per-channel error, --metric/--min-metric),
separate --verify and bench --max-error, on tiny models with onnxruntime as the oracle.

The planner's timings are the deterministic stand-ins of tests/test_plan_search.py; errors and metrics are
real (onnxruntime on the held-out calibration samples).
"""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import helper

from onnxconv import metrics, planning
from onnxconv.cli import main
from onnxconv.errors import OptionError

from . import plankit
from .modelkit import init, make_model, tensor
from .test_plan_cli import files  # noqa: F401 - the fixture is used by name
from .test_plan_search import CURVE, EXACT, fake_bench, setup

#: A metric plug-in: 1 minus the worst whole-tensor relative error (1.0 = as the original).
PLUGIN = textwrap.dedent("""
    import numpy as np

    def agreement(reference, candidate):
        worst = 0.0
        for ref, cand in zip(reference, candidate):
            for name, a in ref.items():
                b = cand[name]
                worst = max(worst, float(np.linalg.norm(a - b) / np.linalg.norm(a)))
        return 1.0 - worst
""")


@pytest.fixture
def plugin(tmp_path: Path) -> str:
    path = tmp_path / "task_metric.py"
    path.write_text(PLUGIN)
    return f"{path}:agreement"


def plan(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, curve: dict[int, float] = CURVE, **kwargs):  # noqa: ANN003, ANN201
    model, cal, cache = setup(tmp_path)
    plankit.fake_timer(monkeypatch, fake_bench(curve))
    return plankit.plan_rewrite(model, cal, cache=cache, form="sum", do_refit=False, **kwargs)


def test_min_metric_returns_the_fastest_plan_that_keeps_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                            plugin: str) -> None:
    """c1 and c2 lose nothing at rank 1, c3 and c4 lose much: a metric floor of 0.999 keeps exactly c1 and c2."""
    judge = planning.Judge(metrics.load_metric(plugin), 0.999)
    result, report = plan(tmp_path, monkeypatch, judge=judge)
    assert {c.name for c in result.rewritten} == set(EXACT)
    assert report.metric is not None and report.metric["value"] >= 0.999 and report.metric["min"] == 0.999
    assert report.measured == pytest.approx(1.2)
    assert any(r["metric"] < 0.999 for r in report.rounds)  # faster plans were measured and lost too much
    assert all(r["metric"] is not None for r in report.rounds)
    assert "metric >= 0.999" in result.options["notes"][-1]


def test_target_with_a_metric_returns_the_best_metric_plan_that_reaches_it(tmp_path: Path,
                                                                             monkeypatch: pytest.MonkeyPatch,
                                                                             plugin: str) -> None:
    curve = {0: 1.0, 1: 1.05, 2: 1.3, 3: 1.35, 4: 1.4}
    result, report = plan(tmp_path, monkeypatch, curve=curve, target_speedup=1.15,
                          judge=planning.Judge(metrics.load_metric(plugin)))
    reach = [r for r in report.rounds if r["measured"] >= 1.15 * 0.97]
    assert len(reach) >= 2 and report.metric is not None
    assert report.metric["value"] == max(r["metric"] for r in reach)
    assert {c.name for c in result.rewritten} == set(EXACT)


def test_a_metric_floor_no_plan_keeps_is_refused_with_the_best_figure(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                                     plugin: str) -> None:
    with pytest.raises(planning.PlanRefused, match=r"^--min-metric 1\.5: no measured plan reaches it \(the best "
                                                   r"metric measured is"):
        plan(tmp_path, monkeypatch, judge=planning.Judge(metrics.load_metric(plugin), 1.5))
    with pytest.raises(OptionError, match="--min-metric needs --metric"):
        planning.Judge(None, 0.9)


def test_target_and_metric_floor_that_cannot_both_hold(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                       plugin: str) -> None:
    """Only plans of 3+ layers reach 1.35x, and each loses more than a 0.999 floor allows."""
    curve = {0: 1.0, 1: 1.05, 2: 1.1, 3: 1.4, 4: 1.6}
    with pytest.raises(planning.PlanRefused, match=r"--target-speedup 1\.35 and --min-metric 0\.999 cannot all "
                                                   r"hold: the plans that reach 1\.35x measure metric"):
        plan(tmp_path, monkeypatch, curve=curve, target_speedup=1.35,
             judge=planning.Judge(metrics.load_metric(plugin), 0.999))


# ---------------------------------------------------------------------------------------------------------------
# A head that joins pixel-scale boxes and [0, 1] scores in one tensor


def head_model(score_gain: float = 1.0) -> onnx.ModelProto:
    """X (N x 8 x 6 x 6) -> 1x1 conv to 4 box channels x 320 (pixels) and to 2 score channels -> Sigmoid,
    joined by a Concat: N x 6 x 6 x 6. ``score_gain`` scales the score logits (0: every score 0.5)."""
    rng = np.random.default_rng(0)
    wb = rng.standard_normal((4, 8, 1, 1)).astype(np.float32)
    ws = (rng.standard_normal((2, 8, 1, 1)) * 3 * score_gain).astype(np.float32)
    nodes = [
        helper.make_node("Conv", ["X", "WB"], ["b0"], name="box"),
        helper.make_node("Mul", ["b0", "S"], ["boxes"], name="scale"),
        helper.make_node("Conv", ["X", "WS"], ["s0"], name="score"),
        helper.make_node("Sigmoid", ["s0"], ["scores"], name="sigmoid"),
        helper.make_node("Concat", ["boxes", "scores"], ["Y"], name="join", axis=1),
    ]
    inits = [init("WB", wb), init("WS", ws), init("S", np.array(320.0, np.float32))]
    return make_model(nodes, [tensor("X", ["N", 8, 6, 6])], [tensor("Y", None)], inits)


def test_bench_max_error_catches_lost_scores_the_whole_tensor_misses(tmp_path: Path) -> None:
    onnx.save(head_model(), tmp_path / "a.onnx")
    onnx.save(head_model(score_gain=0.0), tmp_path / "b.onnx")  # every score 0.5: the detections are gone
    args = ["bench", str(tmp_path / "a.onnx"), str(tmp_path / "b.onnx"), "--iters", "2", "--warmup", "0",
            "--batch", "2", "--format", "json"]
    ok = CliRunner().invoke(main, [*args, "--max-error", "0.05"])
    assert ok.exit_code == 3, ok.output
    out = json.loads(ok.stdout)["runs"][0]["models"][1]["agreement"][0]
    assert out["rel_error"] < 0.05  # the whole tensor hardly moves (pixels dominate its norm) ...
    assert out["worst_channel"]["axis"] == 1 and out["worst_channel"]["index"] in (4, 5)  # ... a score channel
    assert out["worst_channel"]["rel_error"] > 0.3
    assert "worst channel" in ok.stderr and "exceeds 0.05" in ok.stderr
    # With the channel axis set to the spatial one, no single channel holds the scores: the figure changes.
    other = CliRunner().invoke(main, [*args, "--channel-axis", "Y=3"])
    assert json.loads(other.stdout)["runs"][0]["models"][1]["agreement"][0]["worst_channel"]["axis"] == 3


def test_separate_verify_reports_worst_channel_and_metric(tmp_path: Path, plugin: str) -> None:
    rng = np.random.default_rng(1)
    model = head_model()
    # A 3x3 conv in front gives separate something to rewrite (rank 1: lossy).
    w = rng.standard_normal((8, 8, 3, 3)).astype(np.float32) * 0.2
    model.graph.initializer.append(init("W0", w))
    model.graph.node.insert(0, helper.make_node("Conv", ["X0", "W0"], ["X"], name="stem", pads=[1, 1, 1, 1]))
    model.graph.input[0].name = "X0"
    onnx.save(model, tmp_path / "m.onnx")
    np.savez(tmp_path / "in.npz", X0=rng.standard_normal((2, 8, 6, 6)).astype(np.float32))
    res = CliRunner().invoke(main, ["separate", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"),
                                    "--rank", "1", "--inputs", str(tmp_path / "in.npz"), "--metric", plugin,
                                    "--report", str(tmp_path / "r.json")])
    assert res.exit_code == 0, res.output
    assert "worst channel" in res.output and "verify metric" in res.output
    data = json.loads((tmp_path / "r.json").read_text())
    out = data["verify"]["outputs"][0]
    assert out["worst_channel"]["axis"] == 1 and out["error"] >= out["rel_error"]
    assert data["verify"]["metric"]["value"] == pytest.approx(1.0 - out["rel_error"], rel=1e-5)


def test_separate_min_metric_plans_through_the_cli(files: Path, plugin: str) -> None:  # noqa: F811
    t = files
    res = CliRunner().invoke(main, ["separate", str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--metric", plugin,
                                    "--min-metric", "0.999", "--calibration", str(t / "cal.npz"), "--report",
                                    str(t / "r.json"), "--plot", str(t / "p.png")])
    assert res.exit_code == 0, res.output
    table = res.output.split("plans measured")[1].splitlines()
    assert table[1].split() == ["plan", "how", "layers", "predicted", "measured", "error", "whole", "metric", "MACs",
                                "chosen"]
    plan = json.loads((t / "r.json").read_text())["options"]["plan"]
    assert plan["metric"]["value"] >= 0.999 and plan["metric"]["spec"] == plugin
    import matplotlib.image

    assert matplotlib.image.imread(t / "p.png").shape[1] > 1000  # two panels: error and metric


@pytest.mark.parametrize("args, message", [
    (["--min-metric", "0.9"], "--min-metric needs --metric"),
    (["--metric", "boxes:conf=x", "--rank", "1"], "not a valid"),
    (["--channel-axis", "Y", "--rank", "1", "--verify"], "--channel-axis 'Y': give OUTPUT=AXIS"),
])
def test_separate_refuses_bad_judging_options_in_one_line(tmp_path: Path, args: list[str], message: str) -> None:
    onnx.save(head_model(), tmp_path / "m.onnx")
    res = CliRunner().invoke(main, ["separate", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), *args])
    assert res.exit_code == 1 and message in res.output and "Traceback" not in res.output
    assert not (tmp_path / "o.onnx").exists()



def test_planner_reports_each_phase_and_round_with_time_left(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Long work says what it is doing: the quick bound, the estimates, the layer timings, each plan (which one,
    and from the second on how long is left) and the refit's waves."""
    from onnxconv import progress

    model, cal, cache = setup(tmp_path)
    plankit.fake_timer(monkeypatch, fake_bench(CURVE))
    seen: list[tuple[str, float, float]] = []
    with progress.reporting(lambda phase, done, total: seen.append((phase, done, total))):
        plankit.plan_rewrite(model, cal, cache=cache, form="sum", target_speedup=1.4)
    phases = [p for p, _, _ in seen]
    assert phases[0].startswith("timing the cheapest plan")
    assert any(p.startswith("estimating the error of every option") for p in phases)
    assert any(p.startswith("timing every option") for p in phases)
    rounds = [p for p in phases if p.startswith("plan ")]
    assert rounds[0].startswith("plan 1 of at most 5: measuring the fastest plan (4 of 4 layers rewritten)")
    assert len(rounds) >= 2 and all(" left" in p for p in rounds[1:])
    assert any(p.startswith("refit: wave 1 of") for p in phases)
    assert all(0 <= done <= total for _, done, total in seen)


def test_separate_progress_line_on_stderr(files: Path) -> None:  # noqa: F811
    t = files
    res = CliRunner().invoke(main, ["separate", str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--target-speedup", "1.4",
                                    "--calibration", str(t / "cal.npz"), "--progress", "on"])
    assert res.exit_code == 0, res.output
    assert "plan 1 of at most" in res.stderr and "plan 1 of at most" not in res.stdout
    quiet = CliRunner().invoke(main, ["separate", str(t / "m.onnx"), "-o", str(t / "q.onnx"), "--target-speedup",
                                      "1.4", "--calibration", str(t / "cal.npz")])
    assert quiet.exit_code == 0 and quiet.stderr == ""  # not a terminal: nothing


def test_int8_plan_ends_with_one_summary_line_against_fp32(files: Path) -> None:  # noqa: F811
    t = files
    res = CliRunner().invoke(main, ["separate", str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error",
                                    "0.5", "--precision", "int8", "--calibration", str(t / "cal.npz")])
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    summary = [line for line in lines if line.startswith("summary: ")]
    assert len(summary) == 1 and lines[-2] == summary[0]  # the line before "wrote ..."
    assert "faster than the fp32 original" in summary[0] and "over its own int8 quantization" in summary[0]
    assert "worst channel" in summary[0]
    # The input was N x 16 x 8 x 8; the quantized model takes the calibration chunk's static shape, said here.
    assert "input shapes made static: X=1x16x8x8" in summary[0]
    fp32 = CliRunner().invoke(main, ["separate", str(t / "m.onnx"), "-o", str(t / "f.onnx"), "--target-speedup",
                                     "1.4", "--calibration", str(t / "cal.npz")])
    line = [x for x in fp32.output.splitlines() if x.startswith("summary: ")]
    assert line and line[0].startswith("summary: 1.40x faster; held-out error") and "static" not in line[0]

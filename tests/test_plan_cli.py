"""``onnxconv separate`` with the planner's new options: --max-output-error, the frontier table, --report's
rounds, --plot (a PNG read back), and --verify on the held-out calibration samples."""

from __future__ import annotations

import json
import sys

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxconv import calibration, compare, planning
from onnxconv.cli import main
from onnxconv.planning import planner

from . import plankit
from .test_calibrate import smooth_inputs
from .test_plan_search import C, CURVE, EXACT, SIZE, fake_bench, four_convs


@pytest.fixture
def files(tmp_path, monkeypatch):  # noqa: ANN001, ANN201
    rng = np.random.default_rng(0)
    onnx.save(four_convs(rng), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 10, C, SIZE))
    plankit.fake_timer(monkeypatch, fake_bench(CURVE))
    return tmp_path


def separate(*args: str):  # noqa: ANN201
    return CliRunner().invoke(main, ["separate", *args])


def test_cli_error_budget_writes_the_plan_table_report_and_plot(files) -> None:
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error", "0.001", "--calibration",
                   str(t / "cal.npz"), "--report", str(t / "r.json"), "--plot", str(t / "f.png"), "--verify")
    assert res.exit_code == 0, res.output
    assert "plans measured (the frontier; * = chosen):" in res.output
    table = res.output.split("plans measured")[1].splitlines()
    assert table[1].split() == ["plan", "how", "layers", "predicted", "measured", "error", "whole", "MACs", "chosen"]
    assert table[3].split()[0] == "original"
    chosen = [line for line in table if line.rstrip().endswith("*")]
    assert len(chosen) == 1 and "1.20x" in chosen[0]
    data = json.loads((t / "r.json").read_text())
    plan = data["options"]["plan"]
    assert plan["max_output_error"] == 0.001 and plan["error"] <= 0.001 and plan["measured"] == pytest.approx(1.2)
    rows = [line for line in table[3:] if line.split() and (line.split()[0] == "original" or line.split()[0].isdigit())]
    assert len(rows) == 1 + len(plan["rounds"]) and len(plan["rounds"]) >= 2  # the original, then every plan
    assert {"measured", "error", "whole_error", "worst_channel", "metric", "macs", "predicted",
            "timing_ratio"} <= set(plan["rounds"][0])
    assert plan["error"] >= plan["whole_error"] and set(plan["worst_channels"]) == {"h4"}
    assert {c["name"] for c in data["layers"] if c["rewritten"]} == set(EXACT)
    # --verify ran on the held-out samples (2 of 10), and agrees with onnxruntime on them.
    assert data["verify"]["inputs"].startswith("held-out calibration samples (2 of ")
    assert "verify on held-out calibration samples (2 of " in res.output
    model = onnx.load(t / "m.onnx")
    feeds = calibration.held_out_feeds(str(t / "cal.npz"), model)
    a = compare.run_model(compare.session(model), feeds[0])["h4"]
    b = compare.run_model(compare.session(str(t / "o.onnx")), feeds[0])["h4"]
    assert data["verify"]["outputs"][0]["rel_error"] == pytest.approx(float(np.linalg.norm(a - b) / np.linalg.norm(a)),
                                                                      rel=1e-4, abs=1e-9)
    # The picture: a real PNG, read back.
    import matplotlib.image

    img = matplotlib.image.imread(t / "f.png")
    assert img.ndim == 3 and img.shape[0] > 300 and img.shape[1] > 500
    assert not [p.name for p in t.iterdir() if p.name.endswith(".tmp")]


def test_cli_target_and_budget_that_cannot_both_hold_is_one_error_line(files) -> None:
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error", "0.001", "--target-speedup",
                   "1.4", "--calibration", str(t / "cal.npz"))
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: --target-speedup 1.4 and --max-output-error 0.001 "
                                                     "cannot both hold")
    # What the search measured before refusing: the frontier table, on stdout (no file is written).
    assert "plans measured (the frontier; none meets what was asked):" in res.stdout
    assert "quantized" not in res.stdout and "original" in res.stdout and "fastest" in res.stdout
    assert not (t / "o.onnx").exists()


def test_cli_new_option_combinations(files) -> None:
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error", "0.01")
    assert res.exit_code == 1 and "Error: --max-output-error needs --calibration" in res.output
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--rank", "1", "--plot", str(t / "f.png"))
    assert res.exit_code == 1 and "Error: --plot draws the planner's frontier" in res.output
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error", "0.01", "--rank", "1",
                   "--calibration", str(t / "cal.npz"))
    assert res.exit_code == 1 and "Error: --max-output-error chooses the ranks itself" in res.output
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error", "-1")
    assert res.exit_code == 2 and "-1" in res.output  # click's range
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--mode", "mixed", "--max-output-error", "0.01",
                   "--calibration", str(t / "cal.npz"), "--plot", str(t / "m.onnx"))
    assert res.exit_code == 1 and "Error: --plot" in res.output
    assert not (t / "o.onnx").exists()


def test_cli_plot_without_matplotlib_is_one_error_line_naming_the_extra(files, monkeypatch) -> None:
    t = files
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import matplotlib now raises ImportError
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error", "0.001", "--calibration",
                   str(t / "cal.npz"), "--plot", str(t / "f.png"))
    assert res.exit_code == 1
    assert res.output.strip().splitlines() == ["Error: --plot needs matplotlib, the 'plot' extra: "
                                               "pip install 'onnxconv[plot]'"]
    assert not (t / "o.onnx").exists() and not (t / "f.png").exists()


def test_cli_verify_with_calibration_uses_the_held_out_samples(files) -> None:
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--rank", "1", "--calibration", str(t / "cal.npz"),
                   "--verify", "--report", str(t / "r.json"))
    assert res.exit_code == 0, res.output
    data = json.loads((t / "r.json").read_text())
    assert data["verify"]["inputs"] == f"held-out calibration samples (2 of {t / 'cal.npz'})"
    model = onnx.load(t / "m.onnx")
    x = np.load(t / "cal.npz")["X"][np.sort(np.random.default_rng(0).permutation(10)[:2])]
    a = compare.run_model(compare.session(model), {"X": x})["h4"]
    b = compare.run_model(compare.session(str(t / "o.onnx")), {"X": x})["h4"]
    assert data["verify"]["outputs"][0]["rel_error"] == pytest.approx(float(np.linalg.norm(a - b) / np.linalg.norm(a)),
                                                                      rel=1e-4)


def test_cli_verify_falls_back_to_random_inputs_when_nothing_is_held_out(tmp_path) -> None:
    rng = np.random.default_rng(1)
    onnx.save(four_convs(rng), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", X=smooth_inputs(rng, 4, C, SIZE))  # fewer than 5: nothing held out
    res = separate(str(tmp_path / "m.onnx"), "-o", str(tmp_path / "o.onnx"), "--rank", "1", "--calibration",
                   str(tmp_path / "cal.npz"), "--verify", "--report", str(tmp_path / "r.json"))
    assert res.exit_code == 0, res.output
    assert "note: verify on random (standard normal, seed 0): --calibration" in res.output
    assert "too small to hold samples out" in res.output
    assert json.loads((tmp_path / "r.json").read_text())["verify"]["inputs"].startswith("random")


def test_cli_int8_writes_the_quantized_rewrite_and_verifies_it_on_held_out_samples(files) -> None:
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--max-output-error", "0.5", "--precision", "int8",
                   "--calibration", str(t / "cal.npz"), "--verify", "--report", str(t / "r.json"),
                   "--plot", str(t / "int8.png"))
    assert res.exit_code == 0, res.output
    written = onnx.load(t / "o.onnx")
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in written.graph.node}
    data = json.loads((t / "r.json").read_text())
    assert data["options"]["plan"]["precision"] == "int8-qdq-uint8-int8"
    # Beside the quantized original: its own error against fp32, in the report and the table.
    assert 0 < data["options"]["plan"]["quantized_original_error"] < 0.5
    assert any(line.startswith("quantized original") for line in res.output.splitlines())
    import matplotlib.image

    assert matplotlib.image.imread(t / "int8.png").ndim == 3
    assert data["verify"]["inputs"].startswith("held-out calibration samples (2 of ")
    # --verify's figure is the planner's: the same samples, the same fp32 reference.
    assert data["verify"]["outputs"][0]["error"] == pytest.approx(data["options"]["plan"]["error"], rel=1e-4)
    assert data["verify"]["outputs"][0]["rel_error"] == pytest.approx(data["options"]["plan"]["whole_error"], rel=1e-4)


def test_cli_int8_options_need_the_planner(files) -> None:
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--rank", "1", "--precision", "int8")
    assert res.exit_code == 1 and "Error: --precision int8 applies to the planner" in res.output
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--rank", "1", "--activation-type", "int8")
    assert res.exit_code == 1 and "Error: --activation-type/--weight-type apply to --precision int8" in res.output
    assert not (t / "o.onnx").exists()


def test_cli_verify_on_held_out_samples_fits_a_fixed_batch(files) -> None:
    """--fix-input-shape writes batch 1: the two held-out samples are run one at a time."""
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--rank", "1", "--calibration", str(t / "cal.npz"),
                   "--verify", "--batch", "1", "--fix-input-shape")
    assert res.exit_code == 0, res.output
    assert "verify on held-out calibration samples (2 of " in res.output


def test_cli_threads_reach_the_planners_timings_and_need_calibration(files, monkeypatch) -> None:
    """--threads is the deployment's intra-op thread count: every end-to-end timing of the plan uses it."""
    t = files
    seen: list[object] = []
    timer = plankit.FakeTimer(fake_bench(CURVE))

    def spy(options):  # noqa: ANN001, ANN202
        made = planning.make_timer(options)  # what the planner would time with
        seen.append((made.threads, options.timing.threads))
        return timer

    monkeypatch.setattr(planner, "make_timer", spy)
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--target-speedup", "1.4", "--calibration",
                   str(t / "cal.npz"), "--threads", "1")
    assert res.exit_code == 0, res.output
    assert seen == [(1, 1)]
    res = separate(str(t / "m.onnx"), "-o", str(t / "p.onnx"), "--rank", "1", "--threads", "1")
    assert res.exit_code == 1 and res.stderr.strip() == ("Error: --threads applies to --calibration (its runs and "
                                                         "the planner's timings)")
    assert not (t / "p.onnx").exists()


def test_cli_refused_plan_writes_its_report_and_plot_but_no_model(files) -> None:
    """A refusal is a result: --report gets the refusal and every measured plan (a pipeline reads the closest
    figures there), --plot the picture; the model is not written and the one Error line stays one line."""
    t = files
    # 1.7x: within the quick bound's margin of the cheapest plan's 1.6x, so the full search measures and refuses.
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--target-speedup", "1.7", "--calibration",
                   str(t / "cal.npz"), "--report", str(t / "r.json"), "--plot", str(t / "f.png"))
    assert res.exit_code == 1
    errors = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(errors) == 1 and errors[0].startswith("Error: --target-speedup 1.7: the largest measured speed-up is")
    data = json.loads((t / "r.json").read_text())
    assert data["output"] is None and data["refused"] == errors[0][len("Error: "):]
    assert data["plan"]["rounds"] and all(r["measured"] < 1.7 for r in data["plan"]["rounds"])
    assert (t / "f.png").stat().st_size > 1000 and not (t / "o.onnx").exists()
    assert not [p.name for p in t.iterdir() if p.name.endswith(".tmp")]


@pytest.mark.parametrize("target", ["1.4", "1.7"])  # a plan written, and a plan refused by the search
@pytest.mark.parametrize("option", ["--report", "--plot"])
def test_cli_report_or_plot_never_replaces_the_inputs_external_data(files, option, target) -> None:
    t = files
    model = onnx.load(t / "m.onnx")
    onnx.save(model, t / "e.onnx", save_as_external_data=True, all_tensors_to_one_file=True, location="e.data",
              size_threshold=0)
    before = (t / "e.data").read_bytes()
    res = separate(str(t / "e.onnx"), "-o", str(t / "o.onnx"), "--target-speedup", target, "--calibration",
                   str(t / "cal.npz"), option, str(t / "e.data"))
    assert res.exit_code != 0
    assert "is the input model's external data file" in res.stderr
    assert (t / "e.data").read_bytes() == before and not (t / "o.onnx").exists()


def test_cli_an_impossible_target_is_refused_before_any_fit(files) -> None:
    """2x is out of reach of the cheapest plan (1.6x): one line with that figure, before errors are estimated or
    anything refitted, and nothing written."""
    t = files
    res = separate(str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--target-speedup", "2", "--calibration",
                   str(t / "cal.npz"), "--report", str(t / "r.json"))
    assert res.exit_code == 1
    assert res.stderr.strip() == ("Error: --target-speedup 2: out of reach: the cheapest plan (all 4 candidate "
                                  "layer(s) at their fewest MACs) measures 1.60x of the original, before any refit")
    assert not (t / "o.onnx").exists() and not (t / "r.json").exists()

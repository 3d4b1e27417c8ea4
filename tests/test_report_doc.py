"""docs/report-json.md against real reports: every key its tables name is in a report the CLI writes."""

from __future__ import annotations

import json
import re
from pathlib import Path

from click.testing import CliRunner

from onnxconv.cli import main
from onnxconv.separate_io import REPORT_SCHEMA_VERSION

from .test_fidelity_plan import PLUGIN
from .test_plan_cli import files  # noqa: F401 - the fixture is used by name

DOC = Path(__file__).resolve().parent.parent / "docs" / "report-json.md"


def doc_tables() -> dict[str, list[str]]:
    """The keys of each table, by the heading or ``marker:`` line above it."""
    out: dict[str, list[str]] = {}
    title = ""
    for line in DOC.read_text().splitlines():
        if line.startswith("## "):
            title = line[3:].strip()
        elif re.fullmatch(r"`[^`]+`:", line.strip()):
            title = line.strip()[1:-2]
        m = re.match(r"\| `([a-z_0-9]+)` \|", line)
        if m:
            out.setdefault(title, []).append(m.group(1))
    return out


def test_every_documented_key_is_in_a_real_report(files: Path) -> None:  # noqa: F811
    t = files
    plugin = t / "metric.py"
    plugin.write_text(PLUGIN)
    res = CliRunner().invoke(main, ["separate", str(t / "m.onnx"), "-o", str(t / "o.onnx"), "--target-speedup", "1.4",
                                    "--calibration", str(t / "cal.npz"), "--metric", f"{plugin}:agreement",
                                    "--report", str(t / "r.json")])
    assert res.exit_code == 0, res.output
    data = json.loads((t / "r.json").read_text())
    tables = doc_tables()
    assert data["schema_version"] == REPORT_SCHEMA_VERSION == 1
    assert set(tables["Top level"]) - {"refused"} <= set(data)
    assert set(tables["`layers[]`"]) <= set(data["layers"][0])
    assert set(tables["`verify`"]) <= set(data["verify"])
    assert set(tables["verify.outputs[]"]) <= set(data["verify"]["outputs"][0])
    plan = data["options"]["plan"]
    assert set(tables["`options.plan` (the planner)"]) <= set(plan)
    assert set(tables["options.plan.rounds[]"]) <= set(plan["rounds"][0])
    rewritten = [c for c in data["layers"] if c["rewritten"]]
    assert rewritten and all(c["details"]["weight_error"] == c["details"]["rel_error"] for c in rewritten)
    # A refusal's report: the same version, and the reason.
    refused = CliRunner().invoke(main, ["separate", str(t / "m.onnx"), "-o", str(t / "x.onnx"), "--target-speedup",
                                        "1.7", "--calibration", str(t / "cal.npz"), "--report", str(t / "no.json")])
    assert refused.exit_code == 1
    no = json.loads((t / "no.json").read_text())
    assert no["schema_version"] == 1 and no["output"] is None and no["refused"]


def test_quantize_report_has_every_documented_key(tmp_path: Path) -> None:
    import numpy as np
    import onnx

    from .test_fidelity_plan import head_model

    onnx.save(head_model(), tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", X=np.random.default_rng(0).standard_normal((10, 8, 6, 6)).astype(np.float32))
    res = CliRunner().invoke(main, ["quantize", str(tmp_path / "m.onnx"), "-o", str(tmp_path / "q.onnx"),
                                    "--calibration", str(tmp_path / "cal.npz"), "--max-output-error", "1",
                                    "--duration", "0.2", "--report", str(tmp_path / "q.json")])
    assert res.exit_code == 0, res.output
    data = json.loads((tmp_path / "q.json").read_text())
    assert set(doc_tables()["`onnxconv quantize --report FILE.json`"]) <= set(data)
    assert data["schema_version"] == 1

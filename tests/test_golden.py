"""tools/golden.py: a capture compares equal with a second capture of the same code, and a changed output
(report value, model initializer, stdout) is reported as different, with where it differs."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import shutil
import sys
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

ROOT = Path(__file__).resolve().parent.parent
CASES = "^(stats-json-tiny_cnn|sep-rank2-sum-tiny_cnn|err-two-policies)$"


def _golden() -> ModuleType:
    spec = importlib.util.spec_from_file_location("golden_tool", ROOT / "tools" / "golden.py")
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules["golden_tool"] = mod
    spec.loader.exec_module(mod)
    return mod


@pytest.fixture(scope="module")
def captures(tmp_path_factory: pytest.TempPathFactory) -> tuple[ModuleType, Path, Path]:
    g = _golden()
    base = tmp_path_factory.mktemp("golden")
    a, b = base / "a", base / "b"
    for d in (a, b):
        assert g.capture(d, quick=True, only=CASES, root=ROOT, log=lambda _: None) == 0
    return g, a, b


def _rehash(capture: Path, case: str, rel: str, graph: bool = False) -> None:
    """Update the manifest for a file edited by the test (as a capture of changed code would have it)."""
    g = _golden()
    mpath = capture / "manifest.json"
    man = json.loads(mpath.read_text())
    path = capture / "cases" / case / rel
    if rel == "stdout.txt":
        man["cases"][case]["stdout_sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    else:
        man["cases"][case]["files"][rel] = hashlib.sha256(path.read_bytes()).hexdigest()
    if graph:
        man["cases"][case]["graphs"][rel] = g.graph_sha(path)
    mpath.write_text(json.dumps(man))


def test_capture_records_cases(captures: tuple[ModuleType, Path, Path]) -> None:
    _, a, _ = captures
    man = json.loads((a / "manifest.json").read_text())
    assert set(man["cases"]) == {"stats-json-tiny_cnn", "sep-rank2-sum-tiny_cnn", "err-two-policies"}
    sep = man["cases"]["sep-rank2-sum-tiny_cnn"]
    assert sep["exit_code"] == 0 and set(sep["files"]) == {"out.onnx", "report.json"}
    assert sep["graphs"]["out.onnx"] is not None
    report = json.loads((a / "cases/sep-rank2-sum-tiny_cnn/report.json").read_text())
    assert report["output"] == "cases/sep-rank2-sum-tiny_cnn/out.onnx"  # relative: same in every capture
    err = man["cases"]["err-two-policies"]
    assert err["exit_code"] == 1
    assert (a / "cases/err-two-policies/stdout.txt").read_text().startswith("Error: ")
    assert not (a / "models").exists()  # the symlinks into the checkout are gone


def test_same_code_compares_same(captures: tuple[ModuleType, Path, Path]) -> None:
    g, a, b = captures
    lines: list[str] = []
    assert g.compare(a, b, log=lines.append) == 0
    assert lines[-1] == "3 cases: all same"


def test_changed_outputs_are_reported(captures: tuple[ModuleType, Path, Path], tmp_path: Path) -> None:
    g, a, b = captures
    c = tmp_path / "c"
    shutil.copytree(b, c)
    case = c / "cases" / "sep-rank2-sum-tiny_cnn"
    report = json.loads((case / "report.json").read_text())
    report["layers"][1]["macs_after"] = -1
    (case / "report.json").write_text(json.dumps(report, indent=2))
    _rehash(c, "sep-rank2-sum-tiny_cnn", "report.json")
    model = onnx.load(str(case / "out.onnx"))
    init = model.graph.initializer[0]
    arr = numpy_helper.to_array(init).copy()
    arr.flat[0] += np.asarray(0.5, dtype=arr.dtype)
    init.CopyFrom(numpy_helper.from_array(arr, init.name))
    onnx.save(model, str(case / "out.onnx"))
    _rehash(c, "sep-rank2-sum-tiny_cnn", "out.onnx", graph=True)
    stats_out = c / "cases" / "stats-json-tiny_cnn" / "stdout.txt"
    stats_out.write_text(stats_out.read_text().replace('"macs"', '"MACS"', 1))
    _rehash(c, "stats-json-tiny_cnn", "stdout.txt")

    lines: list[str] = []
    assert g.compare(a, c, log=lines.append) == 1
    text = "\n".join(lines)
    assert "same err-two-policies" in lines
    sep = next(line for line in lines if line.startswith("DIFFERENT sep-rank2-sum-tiny_cnn"))
    assert "$.layers[1].macs_after" in sep
    assert f"initializer '{init.name}': values differ (max abs difference 0.5)" in sep
    assert "DIFFERENT stats-json-tiny_cnn: stdout line" in text
    assert lines[-1] == "3 cases: 1 same, 2 different"


def test_missing_case_and_bad_folder(captures: tuple[ModuleType, Path, Path], tmp_path: Path,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    g, a, b = captures
    c = tmp_path / "c"
    shutil.copytree(b, c)
    man = json.loads((c / "manifest.json").read_text())
    del man["cases"]["err-two-policies"]
    (c / "manifest.json").write_text(json.dumps(man))
    lines: list[str] = []
    # c was captured with --only: a case it did not run is listed, not counted as a difference.
    assert g.compare(a, c, log=lines.append) == 0
    assert "not compared err-two-policies: only in A (B was captured with --quick or --only)" in lines
    assert lines[-1] == "2 cases: all same (1 not compared)"
    man["meta"].update(quick=False, only=None)  # an unrestricted capture must have every case
    (c / "manifest.json").write_text(json.dumps(man))
    lines.clear()
    assert g.compare(a, c, log=lines.append) == 1
    assert "DIFFERENT err-two-policies: only in A" in lines

    assert g.main(["compare", str(a), str(tmp_path / "nothing")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and err.count("\n") == 1
    assert g.main(["capture", str(a)]) == 2  # exists: never overwritten
    assert "already exists" in capsys.readouterr().err
    man["cases"]["../../escape"] = man["cases"].pop("stats-json-tiny_cnn")  # hostile: names become paths
    (c / "manifest.json").write_text(json.dumps(man))
    assert g.main(["compare", str(a), str(c)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("Error: ") and "bad case entry '../../escape'" in err and err.count("\n") == 1
    assert g.main(["capture", str(tmp_path / "d"), "--list", "--only", "("]) == 2
    assert "not a regular expression" in capsys.readouterr().err


def test_json_diff_paths() -> None:
    g = _golden()
    assert g.json_diff({"a": [1, {"b": 2}]}, {"a": [1, {"b": 3}]}) == "$.a[1].b: 2 vs 3"
    assert g.json_diff({"a": 1}, {"a": 1, "c": 0}) == "$.c: only in B"
    assert g.json_diff([1, 2], [1, 2]) is None


def test_calibration_inputs_compared(captures: tuple[ModuleType, Path, Path], tmp_path: Path) -> None:
    g, a, b = captures
    copies = []
    for name, digest in (("a2", "11"), ("b2", "22")):
        d = tmp_path / name
        shutil.copytree(a if name == "a2" else b, d)
        man = json.loads((d / "manifest.json").read_text())
        man["inputs"] = {"calib/tiny_cnn.npz": {"input": digest}}
        (d / "manifest.json").write_text(json.dumps(man))
        copies.append(d)
    lines: list[str] = []
    assert g.compare(copies[0], copies[1], log=lines.append) == 1
    assert "DIFFERENT calibration input calib/tiny_cnn.npz.input: '11' vs '22'" in lines
    assert lines[-1] == "3 cases: all same; 1 calibration input(s) differ"

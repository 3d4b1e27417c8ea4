"""``onnxconv separate`` as library calls, without click: what a script writes is what the command writes.

The command is a thin callback (issue 19): build a :class:`~onnxconv.requests.SeparateRequest`, check the
outputs (:func:`onnxconv.separate_io.check_outputs`), run (:func:`onnxconv.requests.run_separate`), verify
(:func:`onnxconv.verify.verify`), write (:func:`onnxconv.separate_io.write_result`), print. These tests make the
same calls and compare the files byte for byte with the command's.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from click.testing import CliRunner

from onnxconv.cli import main
from onnxconv.errors import OptionError
from onnxconv.model_io import OutputPaths, check_not_data
from onnxconv.requests import SeparateRequest, run_separate
from onnxconv.separate_io import check_outputs, report_data, write_result
from onnxconv.verify import RANDOM_INPUTS, Verification, verify

from .test_cli_separate import two_conv_model


@pytest.mark.parametrize("form", ["sum", "concat"])
def test_the_library_calls_write_what_the_command_writes(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                         form: str) -> None:
    monkeypatch.chdir(tmp_path)
    onnx.save(two_conv_model(), "m.onnx")
    res = CliRunner().invoke(main, ["separate", "m.onnx", "-o", "cli.onnx", "--rank", "1", "--form", form,
                                    "--verify", "--report", "cli.json"])
    assert res.exit_code == 0, res.output

    request = SeparateRequest(model="m.onnx", output="lib.onnx", rank=1, form=form, verify=True,
                              report_path="lib.json")
    outputs = check_outputs(request)
    outcome = run_separate(request)
    verification = verify(request, outcome)
    write_result(request, outputs, outcome, verification)

    assert Path("lib.onnx").read_bytes() == Path("cli.onnx").read_bytes()
    cli, lib = json.loads(Path("cli.json").read_text()), json.loads(Path("lib.json").read_text())
    assert lib.pop("output") == "lib.onnx" and cli.pop("output") == "cli.onnx"
    assert lib == cli
    assert isinstance(verification, Verification) and verification.inputs == RANDOM_INPUTS
    assert lib["verify"] == verification.to_dict()
    assert report_data(request, outcome, verification)["verify"]["outputs"][0]["output"] == "Y"


def test_verify_is_none_when_the_request_does_not_verify(tmp_path: Path) -> None:
    onnx.save(two_conv_model(), tmp_path / "m.onnx")
    request = SeparateRequest(model=str(tmp_path / "m.onnx"), output=str(tmp_path / "o.onnx"), rank=1)
    outcome = run_separate(request)
    assert verify(request, outcome) is None
    assert "verify" not in report_data(request, outcome, None)


def test_a_refusal_may_write_its_report_where_the_model_would_keep_its_weights(tmp_path: Path) -> None:
    """check_not_data: the report may not replace the input's weights; nor the -o model's weights file, unless no
    model is written (a refused plan writes its report and plot only)."""
    data = tmp_path / "w.bin"
    data.write_bytes(np.zeros(4, np.float32).tobytes())
    out = str(tmp_path / "o.onnx")
    with pytest.raises(OptionError, match="is the input model's external data file"):
        check_not_data(OutputPaths(out, report=data), [str(data)], model_written=False)
    on_weights = OutputPaths(out, report=Path(out + ".data"))
    with pytest.raises(OptionError, match="is the -o model's external data file"):
        check_not_data(on_weights, [])
    check_not_data(on_weights, [], model_written=False)

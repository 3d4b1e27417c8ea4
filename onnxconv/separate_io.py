"""The files of ``onnxconv separate``: checked before any work, then written all together or not at all.

* :func:`check_outputs`: ``-o``, ``--report`` and ``--plot`` checked before the rewrite (which may take
  minutes): none may replace the input, the data the run reads (``--inputs``, ``--calibration``) or each other,
  and ``--plot`` needs matplotlib. Once the input is loaded, :func:`onnxconv.model_io.check_not_data` keeps its
  external data files from being replaced as well.
* :func:`write_result`: the model (:func:`~onnxconv.model_io.save_model`), the ``--report`` JSON (the layout of
  docs/report-json.md, :data:`REPORT_SCHEMA_VERSION`) and the ``--plot`` PNG, staged in one
  :class:`~onnxconv.model_io.StagedFiles` and renamed together.
* :func:`write_refusal`: when the planner refuses, no model, but the report and the picture of what it measured.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx

from .errors import OnnxConvError
from .model_io import (OutputPaths, StagedFiles, check_not_data, check_not_read, check_output_paths,
                       external_data_files, json_bytes, load_model, save_model)
from .planning.plot import frontier_png, require_matplotlib
from .requests import SeparateOutcome, SeparateRequest
from .verify import Verification

__all__ = ["check_outputs", "write_result", "write_refusal", "report_data", "REPORT_SCHEMA_VERSION"]

#: Version of the --report JSON layout (docs/report-json.md): keys are only added; a key that changes meaning or
#: disappears bumps it.
REPORT_SCHEMA_VERSION = 1

#: Weights above this many bytes go to an external data file (protobuf cannot serialise 2 GB in one message).
_EXTERNAL_ABOVE = 1_800_000_000


def check_outputs(request: SeparateRequest) -> OutputPaths:
    """The request's outputs, checked before any work (:func:`~onnxconv.model_io.check_output_paths` and
    :func:`~onnxconv.model_io.check_not_read`); matplotlib is required before a plan that takes minutes when
    ``--plot`` is asked for. A refused plan writes ``--report`` and ``--plot`` too, so what they may not replace
    is checked here, whatever the outcome.

    Raises:
        OptionError: the first output that may not be written, naming its option.
        OnnxConvError: ``--plot`` without matplotlib.
    """
    outputs = check_output_paths(request.model, request.output, request.report_path, request.plot_path,
                                 overwrite=request.overwrite)
    if outputs.plot is not None:
        require_matplotlib()
    reads = []
    if request.inputs is not None:
        reads.append((request.inputs, "the --inputs file"))
    folder = request.calibration if request.calibration is not None and os.path.isdir(request.calibration) else None
    if request.calibration is not None and folder is None:
        reads.append((request.calibration, "the --calibration file"))
    check_not_read(outputs, reads, folder)
    return outputs


def report_data(request: SeparateRequest, outcome: SeparateOutcome,
                verification: Verification | None) -> dict[str, Any]:
    """The ``--report`` JSON of a written rewrite (docs/report-json.md): the per-layer changes, the plan, and
    the ``verify`` section when the run verified."""
    data = {"schema_version": REPORT_SCHEMA_VERSION, **outcome.result.to_dict()}
    data["model"], data["output"] = request.model, request.output
    if verification is not None:
        data["verify"] = verification.to_dict()
    return data


def write_result(request: SeparateRequest, outputs: OutputPaths, outcome: SeparateOutcome,
                 verification: Verification | None) -> None:
    """Write the rewritten model, and the report and the plot when asked for, all or none.

    Every output is prepared under a temporary name beside its destination, then all are renamed at once: an
    error or a signal before the commit (drawing the plot takes seconds) leaves none of them. The model keeps
    its weights in an external data file when the input did or when they pass protobuf's 2 GB.

    Raises:
        OnnxConvError: an output cannot be written (one line; what was already in place is named).
    """
    result = outcome.result
    external = outcome.external or _tensor_bytes(result.model) > _EXTERNAL_ABOVE
    with StagedFiles() as staged:
        save_model(result.model, request.output, source=request.model, overwrite_source=request.overwrite,
                   external_data=external, staged=staged)
        if outputs.report is not None:
            staged.write(outputs.report, json_bytes(report_data(request, outcome, verification)), "--report")
        if outputs.plot is not None:
            staged.write(outputs.plot, frontier_png(result.options["plan"]), "--plot")
        staged.commit()


def write_refusal(request: SeparateRequest, outputs: OutputPaths, refusal: str, plan: Mapping[str, Any]) -> str:
    """Write a refused plan's ``--report`` and ``--plot`` (no model), both or neither: the report and the
    picture of a refusal are complete in themselves, and a pipeline reads from the report what the closest
    plans measure instead of parsing the error line.

    Args:
        refusal: the planner's one-line refusal (the report's ``refused``).
        plan: the figures of every plan it measured (:meth:`~onnxconv.planning.PlanReport.to_dict`).

    Returns:
        What could not be written ("" when all was), for the refusal's one line.

    Raises:
        OptionError: the report or the plot would replace the input's external data (its graph points at it).
    """
    if outputs.report is None and outputs.plot is None:
        return ""
    data_files = [os.path.join(os.path.dirname(request.model), loc)
                  for loc in external_data_files(load_model(request.model))]
    check_not_data(outputs, data_files, model_written=False)
    data = {"schema_version": REPORT_SCHEMA_VERSION, "model": request.model, "output": None, "refused": refusal,
            "plan": plan}
    try:
        with StagedFiles() as staged:
            if outputs.report is not None:
                staged.write(outputs.report, json_bytes(data), "--report")
            if outputs.plot is not None:
                staged.write(outputs.plot, frontier_png(plan), "--plot")
            staged.commit()
    except OnnxConvError as err:
        return str(err)
    return ""


def _tensor_bytes(model: onnx.ModelProto) -> int:
    """Bytes of the initializers (from dims and type, without touching the data) of the main graph."""
    total = 0
    for t in model.graph.initializer:
        size = onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize if t.data_type else 4
        total += size * int(np.prod(t.dims, dtype=np.int64))
    return total

"""Running parts of a model on the calibration set: a copy cut down to the tensors needed, run chunk by chunk."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING

import numpy as np
import onnx
from onnx import helper

from .. import compare
from ..errors import OnnxConvError
from ..graph import node_inputs_with_implicit, toposort
from .data import CalibrationSet, model_inputs

if TYPE_CHECKING:  # compare.session imports onnxruntime when it makes one; here only the name is needed
    from onnxruntime import InferenceSession

__all__ = ["truncate_model", "activations"]


def truncate_model(model: onnx.ModelProto, outputs: Mapping[str, int]) -> onnx.ModelProto:
    """A copy of ``model`` that computes only ``outputs`` (name -> element type), as its graph outputs.

    Keeps every graph input (the caller feeds them all), the nodes the outputs depend on and the initializers
    those nodes read. onnxruntime then runs the prefix of the network that matters and nothing else.
    """
    needed = set(outputs)
    keep: list[onnx.NodeProto] = []
    for node in reversed(toposort(model.graph.node)):
        if any(o in needed for o in node.output):
            keep.append(node)
            needed.update(node_inputs_with_implicit(node))
    keep.reverse()
    m = onnx.ModelProto()
    m.ir_version = model.ir_version
    m.opset_import.extend(model.opset_import)
    m.functions.extend(model.functions)
    g = m.graph
    g.name = model.graph.name
    inits = {t.name for t in model.graph.initializer}
    g.input.extend(i for i in model.graph.input if i.name not in inits or i.name in needed)
    g.initializer.extend(t for t in model.graph.initializer if t.name in needed)
    g.sparse_initializer.extend(model.graph.sparse_initializer)
    g.node.extend(keep)
    g.output.extend(helper.make_tensor_value_info(n, t, None) for n, t in outputs.items())
    return m


def _run(sess: InferenceSession, feeds: Mapping[str, np.ndarray],
         names: Sequence[str]) -> dict[str, np.ndarray]:
    try:
        return dict(zip(names, sess.run(list(names), dict(feeds))))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise OnnxConvError(f"onnxruntime failed on the calibration inputs: {first[:300]}") from e


def activations(model: onnx.ModelProto, outputs: Mapping[str, int], calib: CalibrationSet,
                providers: Sequence[str] = ("CPUExecutionProvider",), threads: int | None = None,
                first_only: bool = False) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
    """(first sample index, name -> array) over the calibration set for the tensors ``outputs`` (name -> element
    type) of ``model``, computed by a copy cut down to them; graph inputs among them come from the feeds."""
    fed = {i.name for i in model_inputs(model)}
    computed = {n: t for n, t in outputs.items() if n not in fed}
    sess = None
    if computed:
        sess = compare.session(truncate_model(model, computed), providers=list(providers), threads=threads)
    for start, feeds in calib.chunks():
        outs = _run(sess, feeds, list(computed)) if sess is not None else {}
        outs.update({n: feeds[n] for n in outputs if n in fed})
        yield start, outs
        if first_only:
            return

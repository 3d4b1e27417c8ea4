"""Tiny-model builders shared by the tests (onnx.helper / onnx.parser; every model sets its IR version)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

#: IR version of every test model: onnx >= 1.23 defaults to 14, newer than some onnxruntime builds load.
IR_VERSION = 10
OPSET = 17


def make_model(
    nodes: Sequence[onnx.NodeProto],
    inputs: Sequence[onnx.ValueInfoProto],
    outputs: Sequence[onnx.ValueInfoProto],
    initializers: Sequence[onnx.TensorProto] = (),
    opset: int = OPSET,
    ir_version: int = IR_VERSION,
    name: str = "g",
) -> onnx.ModelProto:
    graph = helper.make_graph(list(nodes), name, list(inputs), list(outputs), list(initializers))
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = ir_version
    return model


def tensor(name: str, shape: Sequence[int | str | None] | None, dtype: int = TensorProto.FLOAT) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, dtype, None if shape is None else list(shape))


def init(name: str, array: np.ndarray) -> onnx.TensorProto:
    return numpy_helper.from_array(np.asarray(array), name)


def single_conv(
    x_shape: Sequence[int | str],
    w_shape: Sequence[int],
    *,
    op: str = "Conv",
    bias: bool = False,
    seed: int = 0,
    **attrs: object,
) -> onnx.ModelProto:
    """X -> one Conv/ConvTranspose (random weights) -> Y, output shape left to inference."""
    rng = np.random.default_rng(seed)
    inits = [init("W", rng.standard_normal(w_shape).astype(np.float32))]
    ins = ["X", "W"]
    if bias:
        c_out = w_shape[0] if op != "ConvTranspose" else w_shape[1] * int(attrs.get("group", 1))  # type: ignore[call-overload]
        inits.append(init("B", rng.standard_normal(c_out).astype(np.float32)))
        ins.append("B")
    node = helper.make_node(op, ins, ["Y"], name="conv", **attrs)
    return make_model([node], [tensor("X", x_shape)], [tensor("Y", None)], inits)


#: Trained models unpacked from PyPI wheels by tools/realmodels.py (git-ignored; CI fetches them first).
REALMODELS = Path(__file__).resolve().parent.parent / "realmodels"


def real_model(name: str) -> Path:
    """Path of a fetched trained model; skips the calling test, saying how to fetch it, when it is absent."""
    path = REALMODELS / name
    if not path.is_file():
        pytest.skip(f"{path} absent (trained model from a PyPI wheel; fetch with: python tools/realmodels.py)")
    return path

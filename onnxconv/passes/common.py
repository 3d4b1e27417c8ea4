"""What every rewrite pass shares: the result record, node selection, constant lookup and model finishing.

A pass works on an ``onnx_graphsurgeon.Graph``: for each conv it runs a *check* step that returns the reason
the node is left alone (or None), and only then a *rewrite* step. Every conv the pass sees ends up in
:attr:`PassResult.layers`, rewritten or with its skip reason, so a user always learns why a node was left.

:func:`finish_model` exports the edited graph and puts back what onnx-graphsurgeon's export drops (model
metadata, doc strings, IR version, every opset import, model-local functions), then checks the result with
``onnx.checker`` and shape inference so that an invalid model is never written.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx
import onnx_graphsurgeon as gs

from ..errors import OptionError, RewriteError

__all__ = [
    "LayerChange",
    "PassResult",
    "NodeFilter",
    "constant_array",
    "tensor_users",
    "iter_graphs",
    "finish_model",
    "unique_name",
]


@dataclass
class LayerChange:
    """What a pass did to one conv node.

    ``reason`` is empty for a rewritten node and says why otherwise. ``details`` holds pass-specific figures
    (rank and relative weight error for separable; groups and kept energy for shuffle; form; ...).
    """

    name: str
    op_type: str
    rewritten: bool
    reason: str = ""
    params_before: int | None = None
    params_after: int | None = None
    macs_before: int | None = None
    macs_after: int | None = None
    details: dict[str, Any] = field(default_factory=dict)


@dataclass
class PassResult:
    """The rewritten model and one :class:`LayerChange` per conv node the pass looked at."""

    model: onnx.ModelProto
    layers: list[LayerChange]
    pass_name: str = ""
    options: dict[str, Any] = field(default_factory=dict)

    @property
    def rewritten(self) -> list[LayerChange]:
        return [c for c in self.layers if c.rewritten]

    @property
    def skipped(self) -> list[LayerChange]:
        return [c for c in self.layers if not c.rewritten]

    def totals(self) -> dict[str, int]:
        """MACs and params before/after over all convs seen (a skipped conv counts the same on both sides)."""
        out = {"layers": len(self.layers), "rewritten": len(self.rewritten), "skipped": len(self.skipped)}
        for key in ("macs", "params"):
            before = sum(c.__dict__[f"{key}_before"] or 0 for c in self.layers)
            after = sum(
                (c.__dict__[f"{key}_after"] if c.rewritten else c.__dict__[f"{key}_before"]) or 0 for c in self.layers
            )
            out[f"{key}_before"], out[f"{key}_after"] = before, after
        return out

    def to_dict(self) -> dict[str, Any]:
        return {
            "pass": self.pass_name,
            "options": self.options,
            "layers": [asdict(c) for c in self.layers],
            "totals": self.totals(),
        }


class NodeFilter:
    """``--include``/``--exclude`` regexes matched (``re.search``) against node names.

    A node is selected when it matches some include pattern (or there are none) and no exclude pattern.
    """

    def __init__(self, include: Sequence[str] = (), exclude: Sequence[str] = ()) -> None:
        self.include = [self._compile(p, "--include") for p in include]
        self.exclude = [self._compile(p, "--exclude") for p in exclude]

    @staticmethod
    def _compile(pattern: str, option: str) -> re.Pattern[str]:
        try:
            return re.compile(pattern)
        except re.error as e:
            raise OptionError(f"{option} '{pattern}': not a valid regular expression ({e})") from None

    def reason(self, name: str) -> str | None:
        """None when selected, else the skip reason."""
        if self.include and not any(p.search(name) for p in self.include):
            return "not matched by --include"
        for p in self.exclude:
            if p.search(name):
                return f"matched by --exclude '{p.pattern}'"
        return None


_DTYPE_CAST = {
    onnx.TensorProto.FLOAT: np.float32,
    onnx.TensorProto.FLOAT16: np.float16,
    onnx.TensorProto.DOUBLE: np.float64,
}


def constant_array(tensor: gs.Tensor) -> np.ndarray | None:
    """The value of ``tensor`` when it is a constant: an initializer, a ``Constant`` node's output, or either
    behind ``Identity``/``Cast`` to a float type. None for anything computed at run time."""
    if isinstance(tensor, gs.Constant):
        return np.asarray(tensor.values)
    if not tensor.inputs:
        return None
    node = tensor.inputs[0]
    if node.op == "Constant" and node.domain in ("", "ai.onnx", None):
        value = node.attrs.get("value")
        if isinstance(value, gs.Constant):
            return np.asarray(value.values)
        for key in ("value_float", "value_floats"):
            if key in node.attrs:
                return np.asarray(node.attrs[key], dtype=np.float32)
        return None
    if node.op == "Identity" and node.inputs:
        return constant_array(node.inputs[0])
    if node.op == "Cast" and node.inputs:
        to = node.attrs.get("to")
        inner = constant_array(node.inputs[0])
        if inner is None or to not in _DTYPE_CAST:
            return None
        return inner.astype(_DTYPE_CAST[to])
    return None


def tensor_users(tensor: gs.Tensor) -> list[gs.Node]:
    """Nodes reading ``tensor`` (a shared weight has more than one)."""
    return list(tensor.outputs)


def iter_graphs(graph: gs.Graph) -> Iterable[gs.Graph]:
    """The graph and every subgraph below it (If branches, Loop/Scan bodies)."""
    yield graph
    for node in graph.nodes:
        for value in node.attrs.values():
            if isinstance(value, gs.Graph):
                yield from iter_graphs(value)
            elif isinstance(value, (list, tuple)):
                for v in value:
                    if isinstance(v, gs.Graph):
                        yield from iter_graphs(v)


def unique_name(graph: gs.Graph, base: str) -> str:
    """A tensor/node name not used in ``graph`` (or its ancestors' name pools), starting from ``base``."""
    used = set(graph.tensors().keys()) | {n.name for n in graph.nodes}
    if base not in used:
        return base
    i = 1
    while f"{base}_{i}" in used:
        i += 1
    return f"{base}_{i}"


def finish_model(original: onnx.ModelProto, graph: gs.Graph, *, check: bool = True) -> onnx.ModelProto:
    """Export ``graph`` and restore what export drops, keeping everything the pass did not touch.

    Keeps the original IR version (the installed onnxruntime loaded the input, so it loads this), all opset
    imports, model metadata, doc strings, producer fields, model-local functions and value_info of tensors that
    still exist. Raises :class:`RewriteError` when the result fails ``onnx.checker`` or shape inference.
    """
    graph.cleanup(remove_unused_graph_inputs=False).toposort()
    model = gs.export_onnx(graph, do_type_check=False)
    model.ir_version = original.ir_version
    del model.opset_import[:]
    model.opset_import.extend(original.opset_import)
    for name in ("producer_name", "producer_version", "domain", "model_version", "doc_string"):
        setattr(model, name, getattr(original, name))
    del model.metadata_props[:]
    model.metadata_props.extend(original.metadata_props)
    del model.functions[:]
    model.functions.extend(original.functions)
    model.graph.doc_string = original.graph.doc_string
    model.graph.name = original.graph.name
    # Put back value_info the export lost for tensors that survive the rewrite.
    have = {vi.name for vi in model.graph.value_info}
    alive = {o for n in model.graph.node for o in n.output}
    for vi in original.graph.value_info:
        if vi.name in alive and vi.name not in have:
            model.graph.value_info.append(vi)
    if check:
        check_model(model)
    return model


def check_model(model: onnx.ModelProto) -> None:
    """onnx.checker plus strict shape inference; one-line :class:`RewriteError` on failure."""
    try:
        if model.ByteSize() < 2_000_000_000:
            onnx.checker.check_model(model)
            onnx.shape_inference.infer_shapes(model, strict_mode=True)
    except Exception as e:  # noqa: BLE001 - checker and inference raise several types
        first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise RewriteError(f"the rewritten model is invalid ({first[:300]}); nothing was written") from e

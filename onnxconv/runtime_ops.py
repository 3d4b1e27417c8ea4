"""onnxruntime's own conv-family ops, lowered to the standard ops they compute, on the weight-free copy that
``stats`` counts (:func:`lower_runtime_ops`; :func:`lowered_from` names the op a lowered node stood for).

A model saved by onnxruntime after optimisation (``SessionOptions.optimized_model_filepath``) holds ops onnx
cannot infer. What onnxruntime writes (checked by saving optimised models, tests/test_stats_ort.py):

* com.microsoft.FusedConv: Conv + activation (+ an optional 4th input Z added to the result). Weight OIHW.
* com.microsoft.nchwc.Conv: Conv on NCHWc-blocked activations; the weight keeps a 4-D OIHW shape whose
  channel counts are padded up to the block size (8 or 16, depending on the CPU) with zero filters, and so is
  the blocked tensor's channel axis. ReorderInput/ReorderOutput convert to and from the blocked layout;
  ReorderOutput's ``channels`` drops the padding. The real channel counts are recovered from the weights by
  :mod:`onnxconv.analysis.nchwc`.
* com.microsoft.QLinearConv (``channels_last``), NhwcConv, NhwcFusedConv, com.ms.internal.nhwc.Conv and
  QLinearConv: the standard op on NHWC activations, the weight still OIHW: lowered to
  Transpose -> op -> Transpose.
* Ops onnxruntime fuses whose output has their first input's shape: activations in com.microsoft (QuickGelu
  for ``x * sigmoid(a * x)``, Gelu, FastGelu, BiasGelu), SkipLayerNormalization, and the normalisations it
  writes into the ONNX domain whatever the model's opset (LayerNormalization, standard only from opset 17;
  SimplifiedLayerNormalization, never standard). onnx cannot infer them, so every conv after one would be
  left without shapes: lowered to Identity when only their first output is used.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import helper, numpy_helper

from .graph import as_floats, as_int, as_ints, attrs_of

__all__ = ["lower_runtime_ops", "lowered_from"]

_NCHWC = "com.microsoft.nchwc"
_MS = "com.microsoft"
_NHWC_INTERNAL = "com.ms.internal.nhwc"
#: doc_string marking a lowered node: "<marker><domain>.<op>".
_LOWERED = "onnxconv:lowered:"
#: Attributes of the vendor ops that the standard op does not have.
_VENDOR_ATTRS = frozenset({"activation", "activation_params", "channels_last"})
#: (domain, op) -> (standard op, activations are NHWC: None = read the channels_last attribute).
_LOWER: dict[tuple[str, str], tuple[str, bool | None]] = {
    (_NCHWC, "Conv"): ("Conv", False),
    (_MS, "FusedConv"): ("Conv", False),
    (_MS, "NhwcConv"): ("Conv", True),
    (_MS, "NhwcFusedConv"): ("Conv", True),
    (_MS, "QLinearConv"): ("QLinearConv", None),
    (_NHWC_INTERNAL, "Conv"): ("Conv", True),
    (_NHWC_INTERNAL, "QLinearConv"): ("QLinearConv", True),
    (_NCHWC, "MaxPool"): ("MaxPool", False),
    (_NCHWC, "AveragePool"): ("AveragePool", False),
    (_NCHWC, "GlobalMaxPool"): ("GlobalMaxPool", False),
    (_NCHWC, "GlobalAveragePool"): ("GlobalAveragePool", False),
}
#: onnxruntime's fused ops whose first output has the shape of their first input (elementwise activations and
#: normalisations; a bias or skip input is broadcast onto the first), with the first opset (0: none) from which
#: onnx knows the op itself.
_SAME_SHAPE = {(_MS, "QuickGelu"): 0, (_MS, "Gelu"): 0, (_MS, "FastGelu"): 0, (_MS, "BiasGelu"): 0,
               (_MS, "SkipLayerNormalization"): 0, ("", "LayerNormalization"): 17,
               ("", "SimplifiedLayerNormalization"): 0}
#: Inputs the standard op keeps (FusedConv's Z and nchwc.Conv's Sum are added after the conv: not a MAC).
_KEEP_INPUTS = {"Conv": 3, "QLinearConv": 9}


def lowered_from(node: onnx.NodeProto) -> str | None:
    """``domain.op`` of the onnxruntime op :func:`lower_runtime_ops` turned ``node`` into, else None."""
    return node.doc_string[len(_LOWERED):] if node.doc_string.startswith(_LOWERED) else None


def lower_runtime_ops(model: onnx.ModelProto) -> int:
    """Rewrite onnxruntime's conv-family ops (and the vendor activations between them) of the shape-only
    ``model`` (in place) into standard ops.

    Returns the number of nodes rewritten. Only the copy made for counting is touched; names the rewrite adds
    end in ``::onnxconv_lowered`` so they cannot meet a model's own.
    """
    opset = max((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), default=0)
    return _lower_graph(model.graph, opset)


def _lower_graph(graph: onnx.GraphProto, opset: int) -> int:
    ranks = {t.name: len(t.dims) for t in graph.initializer}
    ranks.update({vi.name: len(vi.type.tensor_type.shape.dim) for vi in graph.input
                  if vi.type.tensor_type.HasField("shape")})
    count = 0
    nodes: list[onnx.NodeProto] = []
    for node in graph.node:
        for a in node.attribute:
            for g in ([a.g] if a.type == onnx.AttributeProto.GRAPH else list(a.graphs)):
                count += _lower_graph(g, opset)
        new = _lower_node(node, ranks, opset)
        if new is None:
            nodes.append(node)
        else:
            nodes.extend(new)
            count += 1
    if count:
        del graph.node[:]
        graph.node.extend(nodes)
    return count


def _tmp(name: str, what: str) -> str:
    return f"{name}::onnxconv_lowered_{what}"


def _lower_node(node: onnx.NodeProto, ranks: Mapping[str, int], opset: int) -> list[onnx.NodeProto] | None:
    dom, op = node.domain or "", node.op_type
    special = {"ReorderInput": lambda: _reorder(node, "input", opset),
               "ReorderOutput": lambda: _reorder(node, "output", opset),
               "Upsample": lambda: _upsample(node, opset)}
    if dom == _NCHWC and op in special:
        out = special[op]()
        if out:
            out[-1].doc_string = f"{_LOWERED}{dom}.{op}"  # the node writing the op's output says what it was
        return out
    known_from = _SAME_SHAPE.get(("" if dom == "ai.onnx" else dom, op))
    if known_from is not None and not (known_from and opset >= known_from) and node.input and node.output and \
            not any(node.output[1:]):
        same = helper.make_node("Identity", [node.input[0]], [node.output[0]], name=node.name)
        same.doc_string = f"{_LOWERED}{dom}.{op}"
        return [same]
    target = _LOWER.get((dom, op))
    if target is None or not node.input or not node.output:
        return None
    std, nhwc = target
    at = attrs_of(node)
    if nhwc is None:
        nhwc = bool(at.get("channels_last", 0))
    new = onnx.NodeProto()
    new.CopyFrom(node)
    new.domain, new.op_type = "", std
    new.doc_string = f"{_LOWERED}{dom}.{op}"
    keep = [a for a in new.attribute if a.name not in _VENDOR_ATTRS]
    del new.attribute[:]
    new.attribute.extend(keep)
    if std in _KEEP_INPUTS:
        del new.input[_KEEP_INPUTS[std]:]
    if not nhwc:
        return [new]
    widx = 3 if std == "QLinearConv" else 1
    kernel = at.get("kernel_shape")
    rank = ranks.get(node.input[widx]) if len(node.input) > widx else None
    rank = rank or (len(as_ints(kernel)) + 2 if kernel else 4)
    to_nchw = [0, rank - 1, *range(1, rank - 1)]
    to_nhwc = [0, *range(2, rank), 1]
    x, y = new.input[0], new.output[0]
    new.input[0], new.output[0] = _tmp(x, "nchw"), _tmp(y, "nchw")
    return [helper.make_node("Transpose", [x], [new.input[0]], perm=to_nchw), new,
            helper.make_node("Transpose", [new.output[0]], [y], perm=to_nhwc)]


def _reorder(node: onnx.NodeProto, which: str, opset: int) -> list[onnx.NodeProto]:
    """ReorderInput: NCHW (or NHWC with channels_last) to blocked, whose logical shape is NCHW; the padding of
    the blocked channels is not visible in shapes here. ReorderOutput: blocked to NCHW/NHWC, keeping
    ``channels`` channels (dropping the block padding)."""
    at = attrs_of(node)
    x, y = node.input[0], node.output[0]
    last = bool(at.get("channels_last", 0))
    out: list[onnx.NodeProto] = []
    if which == "input":
        if last:
            return [helper.make_node("Transpose", [x], [y], perm=[0, 3, 1, 2])]
        return [helper.make_node("Identity", [x], [y])]
    channels = at.get("channels")
    cur = x
    if channels is not None:
        sliced = _tmp(y, "sliced") if last else y
        if opset >= 10:
            consts = []
            for what, value in (("starts", 0), ("ends", as_int(channels)), ("axes", 1)):
                consts.append(helper.make_node("Constant", [], [_tmp(y, what)],
                                               value=numpy_helper.from_array(np.array([value], np.int64))))
            out.extend(consts)
            out.append(helper.make_node("Slice", [cur, _tmp(y, "starts"), _tmp(y, "ends"), _tmp(y, "axes")], [sliced]))
        else:
            out.append(helper.make_node("Slice", [cur], [sliced], starts=[0], ends=[as_int(channels)], axes=[1]))
        cur = sliced
    if last:
        out.append(helper.make_node("Transpose", [cur], [y], perm=[0, 2, 3, 1]))
    elif cur != y:
        out.append(helper.make_node("Identity", [cur], [y]))
    return out


def _upsample(node: onnx.NodeProto, opset: int) -> list[onnx.NodeProto] | None:
    """nchwc.Upsample (integer ``scales`` per axis) as the model's opset's op with those scales: Resize from
    opset 10 (opsets 11 and 12 want a ``roi`` input, empty here; 13 on leaves it out), Upsample before."""
    scales = attrs_of(node).get("scales")
    if opset < 7 or not scales or not node.input or not node.output:
        return None
    name = _tmp(node.output[0], "scales")
    out = [helper.make_node("Constant", [], [name],
                            value=numpy_helper.from_array(np.array(as_floats(scales), np.float32)))]
    x, y = node.input[0], node.output[0]
    if opset < 9:
        return [helper.make_node("Upsample", [x], [y], mode="nearest", scales=as_floats(scales))]
    if opset < 10:
        return [*out, helper.make_node("Upsample", [x, name], [y], mode="nearest")]
    if opset < 11:
        return [*out, helper.make_node("Resize", [x, name], [y], mode="nearest")]
    if opset < 13:
        roi = _tmp(y, "roi")
        out.append(helper.make_node("Constant", [], [roi], value=numpy_helper.from_array(np.zeros(0, np.float32))))
        return [*out, helper.make_node("Resize", [x, roi, name], [y], mode="nearest")]
    return [*out, helper.make_node("Resize", [x, "", name], [y], mode="nearest")]

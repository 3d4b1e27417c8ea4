"""Latency of each option: the layer alone, timed on the provider, cached per shape.

The layer alone has its real input shape, attributes and the rewrite's exact graph form (a plain grouped conv for
G); all options of a layer are timed together by the planner's :class:`~.timer.Timer` (onnxruntime here, or
``--latency-command``), cached per (timer, threads, shapes, attributes, option) in a :class:`LatencyCache`
(optionally a JSON file) so that layers of the same shape are timed once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import helper, numpy_helper

from ..accuracy import AccuracyOptions, QuantizeResult, quantize_with_accuracy
from ..model_io import write_file
from ..passes.ranks import RankPolicy
from ..passes.separable import separate
from ..quantize import cpu_int8, quantize_qdq, settings_for_cpu
from .candidates import Candidate, elem_type
from .choose import KEEP
from .timer import Timer

__all__ = ["LatencyCache", "Quantizer", "latency_key", "layer_model", "option_models", "measure_latencies"]


class LatencyCache:
    """Measured seconds per (provider, threads, shapes, attributes, option) key, optionally kept in a JSON file."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path) if path else None
        self.times: dict[str, float] = {}
        if self.path is not None and self.path.is_file():
            try:
                self.times = {str(k): float(v) for k, v in json.loads(self.path.read_text()).items()}
            except (OSError, ValueError, AttributeError):
                self.times = {}  # an unreadable cache is only a cache: measure again

    def get(self, key: str) -> float | None:
        return self.times.get(key)

    def put(self, key: str, seconds: float) -> None:
        self.times[key] = seconds

    def save(self) -> None:
        """Write the times to the cache file, if any, through :func:`onnxconv.model_io.write_file`: complete or
        not at all, and no temporary file left when the write fails or a signal stops it.

        Raises:
            OnnxConvError: the file cannot be written (one line).
        """
        if self.path is None:
            return
        write_file(self.path, json.dumps(self.times, indent=1, sort_keys=True).encode(), "latency cache")


def layer_model(c: Candidate, weight: np.ndarray, attrs: Mapping[str, Any]) -> onnx.ModelProto:
    """The layer alone: X (its real input shape) -> Conv -> Y."""
    inits = [numpy_helper.from_array(weight, "W")]
    ins = ["X", "W"]
    if c.bias is not None:
        inits.append(numpy_helper.from_array(c.bias, "B"))
        ins.append("B")
    node = helper.make_node("Conv", ins, ["Y"], name=c.name, **attrs)
    elem = elem_type(c.weight)
    graph = helper.make_graph([node], "layer", [helper.make_tensor_value_info("X", elem, list(c.input_shape))],
                              [helper.make_tensor_value_info("Y", elem, None)], inits)
    m = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    return m


def option_models(c: Candidate, form: str) -> dict[tuple[str, int], onnx.ModelProto]:
    """Option (``("keep", 0)`` first) -> the layer alone in that form."""
    base = layer_model(c, c.weight, c.attrs)
    out = {KEEP: base}
    for kind, v in c.options:
        if kind == "rank":
            out[kind, v] = separate(base, RankPolicy("rank", v), form=form, force=True).model
        else:
            w = c.weight[:, : c.weight.shape[1] // v]  # the values do not matter for the time; the shape does
            out[kind, v] = layer_model(c, np.ascontiguousarray(w), {**c.attrs, "group": v})
    return out


def latency_key(c: Candidate, provider: str, threads: int | None, form: str, option: tuple[str, int]) -> str:
    """The cache key of one option's time: everything the layer's time depends on, not its weights' values."""
    attrs = {k: v for k, v in sorted(c.attrs.items())}
    kind, value = option
    return json.dumps([provider, threads, list(c.input_shape), list(c.weight.shape), c.bias is not None, attrs,
                       kind, form if kind == "rank" else "", value], default=str)


def measure_latencies(cands: Sequence[Candidate], form: str, timer: Timer, cache: LatencyCache,
                      quantize: Quantizer | None = None) -> dict[str, dict[tuple[str, int], float]]:
    """Candidate -> option (:data:`KEEP` first) -> seconds, through the cache: all options of a layer timed
    together by ``timer`` (:meth:`~.timer.Timer.layer`), cached under the timer's key.

    ``quantize`` (a :class:`Quantizer`) times every option as it ships in int8: the layer alone quantized like
    the whole model (QDQ, the same types), on random inputs of its shape; the cache keys carry its tag."""
    out: dict[str, dict[tuple[str, int], float]] = {}
    where = timer.key if quantize is None else f"{timer.key}/{quantize.tag}"
    for c in cands:
        keys = {o: latency_key(c, where, timer.threads, form, o) for o in [KEEP, *c.options]}
        if any(cache.get(k) is None for k in keys.values()):
            models = option_models(c, form)
            if quantize is not None:
                models = {o: quantize.layer(m, c) for o, m in models.items()}
            for o, seconds in timer.layer(models, c.name).items():
                cache.put(keys[o], seconds)
        out[c.name] = {v: cache.times[k] for v, k in keys.items()}  # every key is cached by now
    cache.save()
    return out


class Quantizer:
    """How ``--precision int8`` quantizes: :func:`onnxconv.accuracy.quantize_with_accuracy` with these types and
    ``accuracy``'s criterion (default :class:`~onnxconv.accuracy.AccuracyOptions`: worst output channel within
    :data:`~onnxconv.accuracy.DEFAULT_MAX_OUTPUT_ERROR`), calibrated on ``feeds`` and measured on ``held_out``
    (default: the calibration feeds themselves) for whole models, so that the original and every plan are
    quantized alike; a layer alone (a conv, which stays int8) with the same settings on random normal inputs of
    its shape.

    The settings (``reduce_range`` on x86 without VNNI) are chosen once, for this CPU or ``accuracy.cpu``.
    Where not even all but the convs in float meets the criterion, a model as close as that one is returned
    (``closest``: the fewest groups float within :data:`~onnxconv.accuracy.CLOSEST_MARGIN` of its figures),
    with :attr:`last` saying so: the planner's own error budget judges it.
    """

    def __init__(self, feeds: Sequence[Mapping[str, np.ndarray]], activation_type: str = "uint8",
                 weight_type: str = "int8", accuracy: AccuracyOptions | None = None,
                 held_out: Sequence[Mapping[str, np.ndarray]] | None = None) -> None:
        self.feeds = list(feeds)
        self.held_out = list(held_out) if held_out is not None else None
        self.activation_type, self.weight_type = activation_type, weight_type
        options = replace(accuracy or AccuracyOptions(), activation_type=activation_type, weight_type=weight_type,
                          closest=True)
        cpu = options.cpu or cpu_int8()
        self.options = replace(options, cpu=cpu)
        self.settings, self.settings_reason = settings_for_cpu(activation_type, weight_type, cpu)
        #: The last whole model's :class:`~onnxconv.accuracy.QuantizeResult` (kept-float groups, figures).
        self.last: QuantizeResult | None = None

    @property
    def tag(self) -> str:
        return f"int8-qdq-{self.activation_type}-{self.weight_type}"

    def quantize(self, model: onnx.ModelProto) -> QuantizeResult:
        """The whole model quantized with accuracy control (held to the closest figures where the criterion
        cannot hold: ``result.met`` False)."""
        self.last = quantize_with_accuracy(model, self.feeds, self.options, held_out=self.held_out)
        return self.last

    def model(self, model: onnx.ModelProto) -> onnx.ModelProto:
        return self.quantize(model).model

    def layer(self, model: onnx.ModelProto, c: Candidate) -> onnx.ModelProto:
        rng = np.random.default_rng(0)
        x = rng.standard_normal(tuple(int(d) for d in c.input_shape)).astype(c.weight.dtype)
        return quantize_qdq(model, [{"X": x}], self.settings).model

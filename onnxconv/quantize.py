"""Static int8 quantization in onnxruntime's QDQ format: the seam ``--precision int8`` measures through.

:func:`quantize_static_qdq` quantizes a float model the way onnxruntime's ``quantize_static`` does it, so that
latencies and errors measured on its result are those of the model a user would ship:

* **Format QDQ**: every quantized tensor ``x`` becomes ``DequantizeLinear(QuantizeLinear(x))``; onnxruntime's
  graph optimiser later fuses a ``DQ -> op -> Q`` group into an integer kernel (QLinearConv, QLinearAdd,
  QLinearConcat, QLinearMul, ...) where it has one, and leaves the float op between a DQ and a Q where not.
* **Activations**: ``activation_type`` (uint8 by default, the fast path of x86 CPUs with VNNI; with int8
  activations onnxruntime fuses QDQ groups into integer kernels on ARM only, ``QDQIsInt8Allowed()``, so on
  x86 an int8-activation model runs as DequantizeLinear -> float op -> QuantizeLinear, slower than the float
  model: BENCHMARKS.md, "int8 (issue 12)"), asymmetric:
  ``scale = (max(rmax, 0) - min(rmin, 0)) / (qmax - qmin)``, ``zero_point = round(qmin - min(rmin, 0) / scale)``,
  with ``[rmin, rmax]`` the range the calibration method gives over the calibration feeds (``minmax``: the
  plain min and max of every tensor over all feeds).
* **Weights**: ``weight_type`` (int8 by default), symmetric (``zero_point = 0``, ``scale = max|w| / 127``),
  per output channel (axis 0 of a Conv weight) with ``per_channel=True``, else one scale per tensor. Bias
  becomes int32 with ``scale = input_scale * weight_scale``.
* **Which ops**: every op type the quantizer knows (Conv, Add, Mul, Concat, MaxPool, Resize, ...), or only
  ``op_types_to_quantize``; nodes named in ``nodes_to_exclude`` stay float (their neighbours' QDQ pairs then
  end at them).

The quantizer works on files, so the model goes through a private temporary folder and comes back as a
ModelProto; nothing the caller owns is written. Preparation (``preprocess=True``, onnxruntime's
``quant_pre_process`` without its sympy-based symbolic pass): onnx shape inference and onnxruntime's basic
graph optimisations (constant folding, BatchNorm folded into the conv before it), so that weights are
quantized after folding, as the quantizer's documentation asks.

Shapes: the result has static input shapes, those of the calibration feeds (or ``input_shapes``): the
calibrated ranges hold for them, and the preparation step needs them. A model with symbolic dims is fixed to
them; feeds of different shapes for one symbolic input are refused, since no one static model fits them all.

Opset: per-axis ``DequantizeLinear`` (per-channel weights) exists from opset 13; an older model is converted
to opset 13 first (onnx's version converter). The IR version of the result is at most 13, which the installed
onnxruntime loads.

**Saturation on x86 without VNNI.** onnxruntime's u8 x s8 integer kernels for AVX2 and AVX-512BW multiply with
``vpmaddubsw``, which adds two adjacent ``u8 * s8`` products into a *saturating* int16: ``2 * 255 * 127 = 64770``
does not fit in 32767, so large activations meeting large weights of one sign are clipped (a YOLOX's worst output
channel errs 0.92 instead of 0.19). CPUs with VNNI (``avx512_vnni``, ``avx_vnni``) or AMX (``amx_int8``)
accumulate in int32 and do not saturate; neither do ARM's dot-product kernels, nor u8 x u8 (widened to int16
first). ``reduce_range`` quantizes weights to 7 bits (``[-64, 64]``): ``2 * 255 * 64 = 32640`` fits.
:func:`settings_for_cpu` chooses it from the CPU's flags (:func:`cpu_int8`), and says why.
"""

from __future__ import annotations

import logging
import os
import platform
import re
import tempfile
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import version_converter

from .compare import ort_message
from .errors import OptionError, RewriteError, ShapeError
from .passes.finish import declare_initializers
from .text import printable

__all__ = ["QuantizeError", "quantize_static_qdq", "quantize_qdq", "QuantSettings", "QdqModels", "CpuInt8",
           "cpu_int8", "settings_for_cpu", "QUANT_TYPES", "CALIBRATION_METHODS", "PER_CHANNEL_OPSET",
           "MAX_IR_VERSION", "INT32_DOT_FLAGS"]

#: Quantized element types by the name callers give.
QUANT_TYPES = ("uint8", "int8")
#: Calibration methods of onnxruntime's quantizer by the name callers give.
CALIBRATION_METHODS = ("minmax", "entropy", "percentile")
#: First opset whose DequantizeLinear takes an ``axis`` (per-channel weights).
PER_CHANNEL_OPSET = 13
#: Highest IR version the installed onnxruntime loads (onnx 1.23 writes 14 by default).
MAX_IR_VERSION = 13

_ONNX_FLOAT_TYPES: dict[int, type[np.floating[Any]]] = {onnx.TensorProto.FLOAT: np.float32, onnx.TensorProto.FLOAT16: np.float16,
                     onnx.TensorProto.DOUBLE: np.float64}


class QuantizeError(RewriteError):
    """onnxruntime's quantizer could not quantize the model (its reason in one line); nothing is returned."""


@dataclass(frozen=True)
class QuantSettings:
    """How onnxruntime's quantizer is asked to quantize (the module docstring says what each one does).

    ``keep_activations`` keeps Relu/Clip nodes that the quantizer would otherwise fold into the quantization range
    of the tensor before them (onnxruntime's ``QDQKeepRemovableActivations``): onnxruntime's graph optimiser
    folds them at run time just the same, and a node later kept in float then still applies its activation.
    """

    activation_type: str = "uint8"
    weight_type: str = "int8"
    per_channel: bool = True
    reduce_range: bool = False
    calibrate_method: str = "minmax"
    keep_activations: bool = False

    def validate(self) -> None:
        """Raises OptionError for an unknown type or calibration method (one line, naming the choices)."""
        _quant_type(self.activation_type, "activation type")
        _quant_type(self.weight_type, "weight type")
        _calibrate_method(self.calibrate_method)

    def describe(self) -> str:
        """E.g. ``uint8 activations, int8 weights per channel, 7-bit weights (reduce_range)``."""
        weights = f"{self.weight_type} weights {'per channel' if self.per_channel else 'per tensor'}"
        return (f"{self.activation_type} activations, {weights}"
                + (", 7-bit weights (reduce_range)" if self.reduce_range else ""))

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class QdqModels:
    """A quantization's two models: ``prepared``, the float model the quantizer quantized (static input shapes,
    BatchNorm folded, every node named), and ``model``, its QDQ form (the same node names)."""

    prepared: onnx.ModelProto
    model: onnx.ModelProto


#: /proc/cpuinfo flags of x86 CPUs whose u8 x s8 kernels accumulate in int32 (VNNI, AMX): no saturation.
INT32_DOT_FLAGS = ("avx512_vnni", "avx_vnni", "amx_int8")
_X86 = ("x86_64", "amd64", "i386", "i686", "x86")


@dataclass(frozen=True)
class CpuInt8:
    """What the CPU's integer kernels do with int8 products: its architecture and, on x86, its flags (None when
    they could not be read)."""

    machine: str
    flags: frozenset[str] | None = None

    @property
    def x86(self) -> bool:
        return self.machine.lower() in _X86

    @property
    def int32_dot(self) -> list[str]:
        """The flags of :data:`INT32_DOT_FLAGS` the CPU has."""
        return [f for f in INT32_DOT_FLAGS if self.flags is not None and f in self.flags]


def _proc_cpuinfo_flags(path: str = "/proc/cpuinfo") -> frozenset[str] | None:
    try:
        text = Path(path).read_text(errors="replace")
    except OSError:
        return None
    for line in text.splitlines():
        key, sep, value = line.partition(":")
        if sep and key.strip() in ("flags", "Features"):
            return frozenset(value.split())
    return None


def cpu_int8(read_flags: Callable[[], frozenset[str] | None] = _proc_cpuinfo_flags) -> CpuInt8:
    """The CPU this process runs on: ``platform.machine()`` and the flags ``read_flags`` gives (Linux: the first
    ``flags`` line of /proc/cpuinfo; elsewhere None, unknown)."""
    return CpuInt8(platform.machine() or "unknown", read_flags())


def settings_for_cpu(activation_type: str, weight_type: str, cpu: CpuInt8, per_channel: bool = True,
                     ) -> tuple[QuantSettings, str]:
    """Settings that do not saturate on ``cpu``, and why (one line for reports).

    ``reduce_range`` is chosen for uint8 activations with int8 weights on an x86 CPU without VNNI or AMX, or
    whose flags are unknown (7-bit weights cost a little precision; saturation can cost whole channels).
    """
    settings = QuantSettings(activation_type, weight_type, per_channel)
    settings.validate()
    if (activation_type, weight_type) != ("uint8", "int8"):
        why = (f"8-bit weights: {activation_type} x {weight_type} products do not saturate int16 "
               "(only uint8 x int8 kernels pair them)")
        return settings, why
    if not cpu.x86:
        return settings, f"8-bit weights: {cpu.machine} integer kernels accumulate in int32 (no saturation)"
    if cpu.int32_dot:
        return settings, f"8-bit weights: this CPU has {', '.join(cpu.int32_dot)} (int32 accumulation, no saturation)"
    settings = QuantSettings(activation_type, weight_type, per_channel, reduce_range=True)
    if cpu.flags is None:
        return settings, ("reduce_range (7-bit weights): the CPU's flags could not be read, and x86 without VNNI "
                          "saturates uint8 x int8 products in int16")
    return settings, ("reduce_range (7-bit weights): this x86 CPU has no VNNI or AMX, whose uint8 x int8 kernels "
                      "add product pairs in saturating int16")


def _quant_type(name: str, what: str) -> Any:
    from onnxruntime.quantization import QuantType  # lazy: ~200 ms to import, int8 runs only

    types = {"uint8": QuantType.QUInt8, "int8": QuantType.QInt8}
    key = str(name).strip().lower()
    if key not in types:
        raise OptionError(f"{what} '{printable(str(name))}': choose from {', '.join(QUANT_TYPES)}")
    return types[key]


def _calibrate_method(name: str) -> Any:
    from onnxruntime.quantization import CalibrationMethod  # lazy: ~200 ms to import, int8 runs only

    methods = {"minmax": CalibrationMethod.MinMax, "entropy": CalibrationMethod.Entropy,
               "percentile": CalibrationMethod.Percentile}
    key = str(name).strip().lower()
    if key not in methods:
        raise OptionError(f"calibration method '{printable(str(name))}': choose from {', '.join(CALIBRATION_METHODS)}")
    return methods[key]


def _graph_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {t.name for t in model.graph.initializer}
    return [vi for vi in model.graph.input if vi.name not in inits]


def _dims(vi: onnx.ValueInfoProto) -> list[int | str]:
    return [d.dim_value if d.HasField("dim_value") else (d.dim_param or "?")
            for d in vi.type.tensor_type.shape.dim]


def _shape_text(shape: Sequence[int | str]) -> str:
    return "x".join(str(d) for d in shape)


def _static_shapes(inputs: Sequence[onnx.ValueInfoProto], feeds: Sequence[Mapping[str, np.ndarray]],
                   input_shapes: Mapping[str, Sequence[int]] | None) -> dict[str, list[int]]:
    """One static shape per graph input: ``input_shapes``, else the calibration feeds' (which must agree).

    Every feed must have that shape, and the shape must fit the model's fixed dims.
    """
    given = dict(input_shapes or {})
    unknown = sorted((k for k in given if k not in {vi.name for vi in inputs}), key=str)
    if unknown:
        raise OptionError(f"input shape given for '{printable(unknown[0])}', which is not an input of the model")
    shapes: dict[str, list[int]] = {}
    for vi in inputs:
        dims, name = _dims(vi), printable(vi.name)
        seen = {tuple(np.shape(f[vi.name])) for f in feeds}
        if vi.name in given:
            shape = [int(d) for d in given[vi.name]]
        elif len(seen) == 1:
            shape = list(next(iter(seen)))
        else:
            a, b = sorted(seen)[:2]
            raise ShapeError(f"input '{name}' has dynamic dims {_shape_text(dims)} and the calibration feeds "
                             f"differ in shape ({_shape_text(a)} vs {_shape_text(b)}): give input_shapes, the one "
                             "static shape to quantize for")
        if any(d < 1 for d in shape):
            raise ShapeError(f"input '{name}': shape {_shape_text(shape)} must have positive dims")
        if dims and (len(dims) != len(shape) or any(isinstance(d, int) and d > 0 and d != s
                                                  for d, s in zip(dims, shape))):
            raise ShapeError(f"input '{name}' is {_shape_text(dims)} in the model, not {_shape_text(shape)}")
        bad = sorted(s for s in seen if list(s) != shape)
        if bad:
            raise ShapeError(f"calibration feed for input '{name}' is {_shape_text(bad[0])}, not the "
                             f"{_shape_text(shape)} the model is quantized for")
        shapes[vi.name] = shape
    return shapes


def _checked_feeds(inputs: Sequence[onnx.ValueInfoProto],
                   feeds: Iterable[Mapping[str, np.ndarray]]) -> list[dict[str, np.ndarray]]:
    """The feeds as a list of dicts with exactly the model's float inputs, cast to each input's element type."""
    out = []
    names = [vi.name for vi in inputs]
    for k, feed in enumerate(feeds):
        if not isinstance(feed, Mapping):
            raise OptionError(f"calibration feed {k} is a {type(feed).__name__}, not a mapping input name -> array")
        missing = [n for n in names if n not in feed]
        extra = sorted((key for key in feed if key not in names), key=str)
        if missing or extra:
            what = (f"lacks input '{printable(missing[0])}'" if missing
                    else f"has '{printable(str(extra[0]))}', which is not a model input")
            raise OptionError(f"calibration feed {k} {what} (model inputs: {printable(', '.join(names))})")
        row = {}
        for vi in inputs:
            dtype = _ONNX_FLOAT_TYPES.get(vi.type.tensor_type.elem_type)
            if dtype is None:
                raise OptionError(f"input '{printable(vi.name)}' is not a float tensor: only float models are "
                                  "quantized")
            arr = np.asarray(feed[vi.name])
            if arr.dtype.kind not in "fiu":
                raise OptionError(f"calibration feed {k}, input '{printable(vi.name)}': {arr.dtype} is not numeric")
            if not np.all(np.isfinite(arr)):
                raise OptionError(f"calibration feed {k}, input '{printable(vi.name)}' holds NaN or infinity")
            row[vi.name] = arr.astype(dtype, copy=False)
        out.append(row)
    if not out:
        raise OptionError("no calibration feeds: give at least one sample to calibrate activation ranges on")
    return out


def _fixed(model: onnx.ModelProto, shapes: Mapping[str, Sequence[int]], per_channel: bool) -> onnx.ModelProto:
    """A copy with static input shapes, stale intermediate shapes dropped, opset >= 13 for per-channel weights."""
    m = onnx.ModelProto()
    m.CopyFrom(model)
    for vi in m.graph.input:
        if vi.name in shapes:
            shape = vi.type.tensor_type.shape
            shape.ClearField("dim")
            for d in shapes[vi.name]:
                shape.dim.add().dim_value = int(d)
    del m.graph.value_info[:]  # symbolic shapes of the old inputs; shape inference redoes them statically
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset is None:
        raise QuantizeError("the model imports no ai.onnx opset: nothing the quantizer knows")
    if per_channel and opset < PER_CHANNEL_OPSET:
        try:
            m = version_converter.convert_version(m, PER_CHANNEL_OPSET)
        except Exception as e:  # noqa: BLE001 - the converter raises untyped errors from C++
            raise QuantizeError(f"per-channel weights need opset {PER_CHANNEL_OPSET}, and converting the model "
                                f"from opset {opset} failed: {ort_message(e)}") from e
    return m


def _reader(feeds: Sequence[dict[str, np.ndarray]]) -> Any:
    """onnxruntime's CalibrationDataReader over a list of feeds (``get_next`` -> the next one, then None)."""
    from onnxruntime.quantization import CalibrationDataReader  # lazy: ~200 ms to import, int8 runs only

    class _FeedReader(CalibrationDataReader):
        def __init__(self) -> None:
            self._next = 0

        def get_next(self) -> dict[str, np.ndarray] | None:
            if self._next >= len(feeds):
                return None
            self._next += 1
            return feeds[self._next - 1]

        def __len__(self) -> int:
            return len(feeds)

        def set_range(self, start_index: int, end_index: int) -> None:
            self._next = start_index

    return _FeedReader()


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    m = onnx.ModelProto()
    m.CopyFrom(model)
    return m


def _name_nodes(model: onnx.ModelProto) -> None:
    """Give every unnamed node of the main graph a unique name (``<op>_<index>``): kept-float choices and the
    prepared model's weights are found by node name."""
    taken = {n.name for n in model.graph.node if n.name}
    for i, node in enumerate(model.graph.node):
        if not node.name:
            name, k = f"{node.op_type}_{i}", 0
            while name in taken:
                k += 1
                name = f"{node.op_type}_{i}_{k}"
            node.name = name
            taken.add(name)


def quantize_static_qdq(
    model: onnx.ModelProto,
    feeds: Iterable[Mapping[str, np.ndarray]],
    *,
    activation_type: str = "uint8",
    weight_type: str = "int8",
    per_channel: bool = True,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    op_types_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    calibrate_method: str = "minmax",
    preprocess: bool = True,
) -> onnx.ModelProto:
    """Quantize ``model`` to QDQ int8 with onnxruntime's static quantizer, calibrated on ``feeds``.

    Args:
        model: a float model with its weights loaded (``load_model(path, load_weights=True)``); not modified.
        feeds: calibration samples, each a mapping graph input name -> array (batch included).
        activation_type: ``uint8`` (default; asymmetric, VNNI fast path on x86) or ``int8``.
        weight_type: ``int8`` (default; symmetric) or ``uint8``.
        per_channel: one weight scale per output channel (default; a depthwise kernel's channels differ in
            range by orders of magnitude, one scale for all loses the small ones) rather than per tensor.
        input_shapes: the static shape of each graph input; default: the feeds' shape.
        op_types_to_quantize: quantize only these op types (default: all the quantizer supports).
        nodes_to_exclude: names of nodes left in float.
        calibrate_method: ``minmax`` (default), ``entropy`` or ``percentile``.
        preprocess: run onnxruntime's preparation (shape inference, BatchNorm folding) before quantizing.

    Returns:
        The quantized model (QuantizeLinear/DequantizeLinear pairs around the quantized ops), static input
        shapes, IR version at most :data:`MAX_IR_VERSION` (below 4, as the input's, with every initializer a
        graph input as that IR version asks). Full 8-bit weights: :func:`quantize_qdq` with
        :func:`settings_for_cpu`'s settings avoids the saturation of x86 CPUs without VNNI.

    Raises:
        OptionError: an unknown type or method, feeds that are missing, misnamed, non-finite or non-float inputs.
        ShapeError: feeds whose shapes disagree for a dynamic input, or do not fit the model.
        QuantizeError: onnxruntime's quantizer (or the opset conversion) failed; its reason in one line.
    """
    settings = QuantSettings(activation_type, weight_type, per_channel, calibrate_method=calibrate_method)
    return quantize_qdq(model, feeds, settings, input_shapes=input_shapes, op_types_to_quantize=op_types_to_quantize,
                        nodes_to_exclude=nodes_to_exclude, preprocess=preprocess).model


#: onnxruntime's "Load model from PATH failed:" where PATH is a temporary copy the quantizer made.
_SCRATCH_LOAD = re.compile(r"Load model from .*? failed: ?")


def quantize_qdq(
    model: onnx.ModelProto,
    feeds: Iterable[Mapping[str, np.ndarray]],
    settings: QuantSettings | None = None,
    *,
    input_shapes: Mapping[str, Sequence[int]] | None = None,
    op_types_to_quantize: Sequence[str] | None = None,
    nodes_to_exclude: Sequence[str] | None = None,
    preprocess: bool = True,
) -> QdqModels:
    """:func:`quantize_static_qdq` with its settings in one object, returning the prepared float model too.

    Unnamed nodes are given names (``<op>_<index>``) before quantizing, so that each node of the QDQ model has
    its counterpart, with its float weights, in ``prepared``.
    """
    from onnxruntime.quantization import QuantFormat, quantize_static  # lazy: ~200 ms to import, int8 runs only
    from onnxruntime.quantization.shape_inference import quant_pre_process

    settings = settings or QuantSettings()
    settings.validate()
    act = _quant_type(settings.activation_type, "activation type")
    wt = _quant_type(settings.weight_type, "weight type")
    method = _calibrate_method(settings.calibrate_method)
    inputs = _graph_inputs(model)
    rows = _checked_feeds(inputs, feeds)
    shapes = _static_shapes(inputs, rows, input_shapes)
    fixed = _fixed(model, shapes, settings.per_channel)
    quant_logger = logging.getLogger()
    level = quant_logger.level
    # The preprocessing logs a failed optimisation as an error with its traceback, and goes on; the quantizer then
    # fails on the same model, which our one Error line reports: its log is not ours to print.
    pre_logger = logging.getLogger("onnxruntime.quantization.shape_inference")
    pre_level = pre_logger.level
    with tempfile.TemporaryDirectory(prefix="onnxconv-quantize-") as tmp:
        src, pre, out = (os.path.join(tmp, f) for f in ("float.onnx", "prepared.onnx", "int8.onnx"))
        try:
            # External data keeps models over 2 GB savable; the quantizer reads it from beside the file. Saving
            # that way moves the weights out of the proto it is given: it is given copies.
            prepared = fixed
            if preprocess:
                onnx.save_model(_copy(fixed), src, save_as_external_data=True, location="float.onnx.data")
                pre_logger.setLevel(logging.CRITICAL + 1)
                quant_pre_process(src, pre, skip_symbolic_shape=True, save_as_external_data=True,
                                  external_data_location="prepared.onnx.data")
                prepared = onnx.load_model(pre)
            # onnxruntime's optimiser may add nodes without names: named here, after it.
            _name_nodes(prepared)
            src = os.path.join(tmp, "named.onnx")
            onnx.save_model(_copy(prepared), src, save_as_external_data=True, location="named.onnx.data")
            # The quantizer logs its advice and warnings on the root logger (logging.warning): not ours to print;
            # the level is restored below.
            quant_logger.setLevel(max(level, logging.ERROR))
            quantize_static(
                src, out, _reader(rows), quant_format=QuantFormat.QDQ,
                op_types_to_quantize=list(op_types_to_quantize) if op_types_to_quantize else None,
                per_channel=settings.per_channel, reduce_range=settings.reduce_range, activation_type=act,
                weight_type=wt, nodes_to_exclude=list(nodes_to_exclude) if nodes_to_exclude else None,
                calibrate_method=method, use_external_data_format=True,
                extra_options={"QDQKeepRemovableActivations": settings.keep_activations},
            )
            result = onnx.load_model(out)  # reads the external data before the folder goes
        except (OptionError, ShapeError, QuantizeError):
            raise
        except Exception as e:  # noqa: BLE001 - the quantizer and onnxruntime raise untyped errors
            # The file it names is one of the quantizer's temporary copies, gone by now: not the user's concern.
            why = _SCRATCH_LOAD.sub("", ort_message(e))
            raise QuantizeError(f"onnxruntime's quantizer failed: {why}") from e
        finally:
            quant_logger.setLevel(level)
            pre_logger.setLevel(pre_level)
    for m in (prepared, result):
        if m.ir_version > MAX_IR_VERSION:
            m.ir_version = MAX_IR_VERSION
    declare_initializers(result)  # IR < 4 keeps its rule: the scales, zero points and int8 weights are inputs too
    return QdqModels(prepared, result)

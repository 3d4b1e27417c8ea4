"""Calibration refit: fit each rewritten layer to the activations the model really sees.

Weight-only SVD (separable) and block-diagonal grouping (shuffle) minimise the *weight* error. Given a few
inputs, the rewritten layer can instead be fitted to what the network computes. Every rewritten layer ends in a
*linear stage*: the original output ``Y`` is a sum of convs (one for the concat/multiplier forms and for a
grouped conv, one per branch for the sum form), all with the same group ``g``::

    Y = sum_t conv(Z_t, W_t) + b

For a grouped conv the inputs ``Z_t`` of the stage stay as they are; the weights ``W_t`` and the bias ``b`` are
refitted. For a separable layer (by default) the depthwise kernels that make ``Z_t`` are refitted too, by
alternating least squares with the 1x1 stage (:mod:`onnxconv.depthwise_fit`); the rest of this docstring
describes the linear-stage refit that is used alone for grouped layers and as its first step. At an output position ``p`` of group ``gi`` the stage is linear in its
weights: ``y_p = x_p^T A`` with ``x_p`` the receptive-field patch of the ``Z_t`` channels of the group
(``C_t/g * prod(k_t)`` values each, for a 1x1 stage simply the channel vector) followed by a 1, and
``A`` the ``(D + 1) x N/g`` matrix of the group's weights and bias. The refit solves, per group, the ridge
problem

    min_A  sum_p || x_p^T A - t_p ||^2 + lam * || A - A0 ||^2

where ``t_p`` is the *original* model's output of the layer on the calibration inputs and ``x_p`` comes from
the *already refitted* rewritten network (Zhang et al., "Accelerating Very Deep Convolutional Networks",
the asymmetric scheme: a layer learns to undo the error its upstream layers left, so errors do not add up).
``A0`` is the weight-only solution, so the ridge pulls an ill-conditioned fit back towards it rather than
towards zero: ``(X^T X + lam I) A = X^T T + lam A0``.

Memory stays bounded whatever the model: per layer a fixed number of output positions is drawn (fixed seed)
from every calibration sample; only the normal equations ``X^T X`` and ``X^T T`` are accumulated (float64),
never the samples. The original model's outputs at those positions are collected once for every layer (the
largest buffer: ``positions * (1 + check_fraction) * C_out`` float32 values per layer); the rewritten model is
run once per *wave*, the layers whose inputs depend on no layer still to be refitted (a chain has one layer
per wave; parallel branches share one). Each run uses a copy of the model cut down to the tensors it needs.

``lam = ridge * mean(diag(X^T X))``: with ``ridge`` None it is chosen per layer from :data:`RIDGE_GRID` by the
error on held-out positions (drawn apart from the fitted ones). The held-out error of the weight-only stage and
of the refitted one are reported per layer (``details["out_err"]``, ``details["refit_err"]``); when no ridge
lowers the held-out error the weight-only weights are kept, so the refit never makes a layer worse there.

Besides those held-out *positions*, a seeded fifth of the calibration *samples* (:data:`HOLDOUT_FRACTION`,
whole batches for a fixed-batch model, none for fewer than five) is not fitted on at all: :func:`held_out_feeds`
returns them so that a verification runs on inputs like the calibration data the refit never saw.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from .compare import value_dims
from .conv import conv_spec
from .errors import OnnxConvError, OptionError, ShapeError
from .graph import attrs_of, node_inputs_with_implicit, node_label, subgraphs_of, toposort
from .passes.common import LayerChange, NamePool, PassResult, check_model

__all__ = [
    "CalibrationSet",
    "load_calibration",
    "held_out_feeds",
    "HOLDOUT_FRACTION",
    "model_inputs",
    "LinearStage",
    "find_stage",
    "truncate_model",
    "activations",
    "sample_patches",
    "refit",
    "refit_from_file",
    "RIDGE_GRID",
]

#: Relative ridge values tried when ``ridge`` is None (times the mean diagonal of ``X^T X``).
RIDGE_GRID = (1e-6, 1e-4, 1e-3, 1e-2, 1e-1, 1.0)

#: Share of the calibration samples (or batches) the refit holds out for verification (:meth:`CalibrationSet.split`).
HOLDOUT_FRACTION = 0.2

#: ONNX element type -> numpy dtype for calibration inputs.
_NP_TYPES: dict[int, type] = {
    TensorProto.FLOAT: np.float32, TensorProto.FLOAT16: np.float16, TensorProto.DOUBLE: np.float64,
    TensorProto.INT64: np.int64, TensorProto.INT32: np.int32, TensorProto.INT8: np.int8,
    TensorProto.UINT8: np.uint8, TensorProto.BOOL: np.bool_,
}
_FLOAT_TYPES = (TensorProto.FLOAT, TensorProto.FLOAT16, TensorProto.DOUBLE)


# --------------------------------------------------------------------------------------------------------------
# Calibration data


@dataclass
class CalibrationSet:
    """Calibration inputs: one array per model input, the batch (sample) axis first.

    ``chunk`` is how many samples one onnxruntime run takes: the model's fixed batch size, else a few.
    ``batch`` is the model's fixed batch size (None when its batch dim is symbolic).
    """

    arrays: dict[str, np.ndarray]
    source: str
    chunk: int
    batch: int | None = None

    @property
    def size(self) -> int:
        return int(next(iter(self.arrays.values())).shape[0])

    def chunks(self) -> Iterator[tuple[int, dict[str, np.ndarray]]]:
        """(first sample index, feeds) for consecutive runs over the whole set."""
        for start in range(0, self.size, self.chunk):
            yield start, {k: v[start:start + self.chunk] for k, v in self.arrays.items()}

    def split(self, seed: int = 0) -> tuple[CalibrationSet, CalibrationSet | None]:
        """(the samples the refit fits on, the held-out samples or None), fixed by ``seed``.

        ``floor(HOLDOUT_FRACTION * units)`` units are held out, a unit being one sample, or one batch of a model
        with a fixed batch size (every run needs a whole batch); fewer than ``1 / HOLDOUT_FRACTION`` units hold
        nothing out. The held-out units are ``default_rng(seed).permutation(units)[:count]``; both parts keep
        the samples' order. They let ``--verify`` test the refitted model on inputs like the calibration data
        that the refit never saw (random normal inputs say little about a model fitted to images).
        """
        unit = self.batch or 1
        units = self.size // unit
        count = int(math.floor(HOLDOUT_FRACTION * units))
        if count == 0:
            return self, None
        held_units = np.zeros(units, dtype=bool)
        held_units[np.random.default_rng(seed).permutation(units)[:count]] = True
        held = np.repeat(held_units, unit)

        def part(mask: np.ndarray, chunk: int) -> CalibrationSet:
            return CalibrationSet({k: np.ascontiguousarray(v[mask]) for k, v in self.arrays.items()}, self.source,
                                  chunk, self.batch)

        return part(~held, self.chunk), part(held, unit if self.batch else count)


def model_inputs(model: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    """Graph inputs that must be fed (an input with an initializer of the same name has a default)."""
    inits = {t.name for t in model.graph.initializer}
    return [i for i in model.graph.input if i.name not in inits]


def _read_arrays(p: Path, label: str) -> dict[str, np.ndarray]:
    if p.is_dir():
        files = sorted(p.glob("*.npy"))
        if not files:
            raise OptionError(f"{label}: folder has no .npy files (one file per model input, named after it)")
        out = {}
        for f in files:
            try:
                out[f.stem] = np.load(f, allow_pickle=False)
            except (OSError, ValueError) as e:
                raise OptionError(f"{label}: cannot read {f.name} as .npy ({str(e).splitlines()[0]})") from None
        return out
    if p.suffix.lower() != ".npz":
        raise OptionError(f"{label}: expected an .npz file or a folder of .npy files")
    try:
        with np.load(p, allow_pickle=False) as data:
            return {k: data[k] for k in data.files}
    except (OSError, ValueError) as e:
        raise OptionError(f"{label}: cannot read as .npz ({str(e).splitlines()[0]})") from None


def load_calibration(path: str | Path, model: onnx.ModelProto, *, chunk: int = 4) -> CalibrationSet:
    """Read calibration inputs and check them against the model's inputs.

    ``path`` is an ``.npz`` file whose array names are the input names, or a folder of ``NAME.npy`` files. Each
    array holds a batch of samples on its first axis: for a model input ``1x3x48xW`` an array ``B x 3 x 48 x W'``
    (a fixed batch size ``b`` of the model needs ``B`` to be a multiple of ``b``; symbolic dims take any size).

    Raises:
        OptionError: unreadable file, missing or unknown input names, wrong dtype, rank or dims, or arrays with
            different numbers of samples. Every message names the array and what was expected.
    """
    p = Path(path)
    label = f"--calibration {p}"
    if not p.exists():
        raise OptionError(f"{label}: no such file or folder")
    arrays = _read_arrays(p, label)
    inputs = model_inputs(model)
    names = [i.name for i in inputs]
    missing = [n for n in names if n not in arrays]
    if missing:
        raise OptionError(f"{label}: no array for model input(s) {missing} (arrays: {sorted(arrays)})")
    extra = sorted(set(arrays) - set(names))
    if extra:
        raise OptionError(f"{label}: array(s) {extra} match no model input (inputs: {names})")
    sizes: dict[str, int] = {}
    fixed_batch: set[int] = set()
    for vi in inputs:
        a = arrays[vi.name]
        elem = vi.type.tensor_type.elem_type
        want = _NP_TYPES.get(elem)
        if want is not None and a.dtype != np.dtype(want):
            raise OptionError(f"{label}: array '{vi.name}' has dtype {a.dtype}, the model input is "
                              f"{np.dtype(want).name} (save it with .astype(np.{np.dtype(want).name}))")
        dims = value_dims(vi)
        shown = "x".join("?" if d is None else str(d) for d in dims) if dims is not None else "?"
        if dims is not None:
            if a.ndim != len(dims):
                raise OptionError(f"{label}: array '{vi.name}' has shape {list(a.shape)}, expected {len(dims)} "
                                  f"dims like the model input {shown} (the first axis counts samples)")
            for i, (have, d) in enumerate(zip(a.shape[1:], dims[1:]), start=1):
                if d is not None and have != d:
                    raise OptionError(f"{label}: array '{vi.name}' has shape {list(a.shape)}: dim {i} is {have}, "
                                      f"the model input {shown} needs {d}")
            if dims and dims[0] is not None:
                fixed_batch.add(dims[0])
        if a.ndim == 0 or a.shape[0] == 0:
            raise OptionError(f"{label}: array '{vi.name}' has no samples (shape {list(a.shape)})")
        sizes[vi.name] = int(a.shape[0])
    if len(set(sizes.values())) > 1:
        raise OptionError(f"{label}: arrays hold different numbers of samples {sizes} (first axis)")
    if len(fixed_batch) > 1:
        raise OptionError(f"{label}: the model's inputs fix different batch sizes {sorted(fixed_batch)}")
    n = next(iter(sizes.values())) if sizes else 0
    if not sizes:
        raise OptionError(f"{label}: the model has no inputs to calibrate with")
    fixed_batch_size = bool(fixed_batch)
    if fixed_batch:
        b = fixed_batch.pop()
        if n % b:
            raise OptionError(f"{label}: {n} samples, but the model's fixed batch size {b} does not divide it")
        step = b
    else:
        step = max(1, min(chunk, n))
    return CalibrationSet(arrays={k: np.ascontiguousarray(arrays[k]) for k in names}, source=str(p), chunk=step,
                          batch=step if fixed_batch_size else None)


def held_out_feeds(calibration: str | Path | CalibrationSet, model: onnx.ModelProto, *, seed: int = 0,
                   ) -> list[dict[str, np.ndarray]]:
    """The calibration samples :func:`refit` (with the same ``seed``) holds out, as onnxruntime feeds.

    ``calibration`` is a path for :func:`load_calibration` (checked against ``model``, the original model) or a
    loaded set. Returns one feeds dict per run: all held-out samples in one for a model with a symbolic batch
    dim, one per batch for a fixed batch size; an empty list when the set is too small to hold any out
    (:meth:`CalibrationSet.split`), where a caller falls back to other inputs.

    Raises:
        OptionError: a bad calibration file (as :func:`load_calibration`).
    """
    calib = calibration if isinstance(calibration, CalibrationSet) else load_calibration(calibration, model)
    _, held = calib.split(seed)
    return [] if held is None else [feeds for _, feeds in held.chunks()]


# --------------------------------------------------------------------------------------------------------------
# The linear stage of a rewritten layer


@dataclass
class ConvTerm:
    """One conv of a linear stage: it reads ``input`` with weight initializer ``weight``."""

    node: onnx.NodeProto
    input: str
    weight: str
    weight_shape: tuple[int, ...]
    attrs: dict[str, Any]

    @property
    def group(self) -> int:
        return int(self.attrs.get("group", 1) or 1)  # type: ignore[call-overload]

    @property
    def c_in_group(self) -> int:
        return self.weight_shape[1]

    @property
    def taps(self) -> int:
        return math.prod(self.weight_shape[2:])


@dataclass
class LinearStage:
    """``output = sum of the terms' convs + bias``: the part of a rewritten layer the refit changes."""

    layer: str
    output: str
    terms: list[ConvTerm]
    elem_type: int
    wave: int = 0

    @property
    def group(self) -> int:
        return self.terms[0].group

    @property
    def c_out(self) -> int:
        return self.terms[0].weight_shape[0]

    @property
    def features(self) -> int:
        """Unknowns per output channel, bias included: ``sum_t C_t/g * prod(k_t) + 1``."""
        return sum(t.c_in_group * t.taps for t in self.terms) + 1


def find_stage(model: onnx.ModelProto, output: str, layer: str) -> LinearStage | str:
    """The linear stage producing ``output`` in ``model`` (top-level graph), or the reason there is none.

    The stage is one Conv, or an Add tree whose leaves are Convs (the sum form); every conv needs an
    initializer weight of a float type, and all need the same group and output channels.
    """
    producers = {o: n for n in model.graph.node for o in n.output if o}
    inits = {t.name: t for t in model.graph.initializer}
    terms: list[ConvTerm] = []

    def walk(name: str, depth: int) -> str | None:
        node = producers.get(name)
        if node is None:
            return f"'{name}' is not computed by a node of the main graph"
        if node.op_type == "Add" and (node.domain or "") in ("", "ai.onnx") and depth < 64:
            for i in node.input:
                why = walk(i, depth + 1)
                if why:
                    return why
            return None
        if node.op_type != "Conv" or (node.domain or "") not in ("", "ai.onnx"):
            return f"'{name}' comes from {node.op_type}, not from a conv or a sum of convs"
        w = inits.get(node.input[1]) if len(node.input) > 1 else None
        if w is None or w.data_type not in _FLOAT_TYPES:
            return f"conv '{node_label(node)}' has no float initializer weight"
        terms.append(ConvTerm(node, node.input[0], w.name, tuple(int(d) for d in w.dims), attrs_of(node)))
        return None

    why = walk(output, 0)
    if why:
        return why
    if len({(t.group, t.weight_shape[0]) for t in terms}) != 1:
        return "the stage's convs differ in group or output channels"
    return LinearStage(layer, output, terms, inits[terms[0].weight].data_type)


# --------------------------------------------------------------------------------------------------------------
# Running parts of a model


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


def _session(model: onnx.ModelProto, providers: Sequence[str], threads: int | None):  # type: ignore[no-untyped-def]
    from . import compare

    return compare.session(model, providers=list(providers), threads=threads)


def _run(sess, feeds: Mapping[str, np.ndarray], names: Sequence[str]) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
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
    sess = _session(truncate_model(model, computed), providers, threads) if computed else None
    for start, feeds in calib.chunks():
        outs = _run(sess, feeds, list(computed)) if sess is not None else {}
        outs.update({n: feeds[n] for n in outputs if n in fed})
        yield start, outs
        if first_only:
            return


# --------------------------------------------------------------------------------------------------------------
# Sampling


def _draw(seed: int, layer: int, sample: int, positions: int, n_fit: int, n_check: int) -> tuple[np.ndarray, np.ndarray]:
    """(fit, held-out) flat output positions of one sample for one layer: disjoint, fixed by the seed."""
    rng = np.random.default_rng((seed, layer, sample))
    want = n_fit + n_check
    if want >= positions:
        order = rng.permutation(positions)
        cut = max(1, round(positions * n_fit / want)) if positions > 1 else positions
        return np.sort(order[:cut]), np.sort(order[cut:])
    pick = rng.choice(positions, size=want, replace=False)
    return np.sort(pick[:n_fit]), np.sort(pick[n_fit:])


def sample_patches(z: np.ndarray, term: ConvTerm, out_spatial: Sequence[int], positions: np.ndarray) -> np.ndarray:
    """The receptive-field patches of one sample ``z`` (``C x D...``) at flat output ``positions``.

    Returns ``(len(positions), C, prod(kernel))`` in the weight's order (channel, then kernel taps in C order),
    so that ``patch.reshape(S, -1) @ W[n].ravel()`` is the conv's output ``n`` without bias at each position.
    Pads, strides and dilations (auto_pad resolved against ``z``'s size) are those of ``term``'s conv.
    """
    spec = conv_spec("Conv", term.attrs, term.weight_shape, False, (1, *z.shape))
    k = len(spec.kernel_shape)
    if tuple(spec.output_shape[2:]) != tuple(out_spatial):
        raise ShapeError(f"conv '{node_label(term.node)}' outputs {list(spec.output_shape[2:])}, "
                         f"the stage's output is {list(out_spatial)}")
    coords = np.unravel_index(positions, tuple(out_spatial))
    pads = spec.pads or (0,) * (2 * k)
    if all(d == 1 for d in spec.kernel_shape) and not any(pads):
        idx = tuple(c * s for c, s in zip(coords, spec.strides))
        return np.moveaxis(z[(slice(None), *idx)], 0, 1)[:, :, None]
    if any(pads):
        z = np.pad(z, [(0, 0)] + [(pads[i], pads[k + i]) for i in range(k)])
    taps = np.indices(spec.kernel_shape).reshape(k, -1)  # (k, K) in C order
    idx = tuple(coords[a][:, None] * spec.strides[a] + taps[a][None, :] * spec.dilations[a] for a in range(k))
    return np.moveaxis(z[(slice(None), *idx)], 0, 1)  # (C, S, K) -> (S, C, K)


# --------------------------------------------------------------------------------------------------------------
# Normal equations and the solve


@dataclass
class _Normal:
    """Per-group ``X^T X``, ``X^T T`` and ``sum T^2`` (float64) for the fitted and the held-out positions."""

    g: int
    d: int
    n: int
    fit: list[list[np.ndarray]] = field(default_factory=list)
    check: list[list[np.ndarray]] = field(default_factory=list)
    tt_check: float = 0.0
    samples: int = 0

    def __post_init__(self) -> None:
        self.fit = [[np.zeros((self.d, self.d)), np.zeros((self.d, self.n))] for _ in range(self.g)]
        self.check = [[np.zeros((self.d, self.d)), np.zeros((self.d, self.n))] for _ in range(self.g)]

    def add(self, which: str, gi: int, x: np.ndarray, t: np.ndarray) -> None:
        acc = (self.fit if which == "fit" else self.check)[gi]
        a = np.concatenate([x.astype(np.float64), np.ones((x.shape[0], 1))], axis=1)
        t64 = t.astype(np.float64)
        acc[0] += a.T @ a
        acc[1] += a.T @ t64
        if which == "check":
            self.tt_check += float(np.sum(t64 * t64))
        else:
            self.samples += x.shape[0] if gi == 0 else 0

    def check_error(self, coefs: Sequence[np.ndarray]) -> float | None:
        """Relative held-out error ``||X A - T|| / ||T||`` from the normal equations (None without held-out)."""
        if self.tt_check <= 0.0:
            return None
        err = 0.0
        for (xx, xt), a in zip(self.check, coefs):
            err += float(np.sum(a * (xx @ a)) - 2.0 * np.sum(a * xt))
        return math.sqrt(max(0.0, err + self.tt_check) / self.tt_check)

    def solve(self, a0: Sequence[np.ndarray], ridge: float) -> list[np.ndarray] | None:
        """Ridge solution towards ``a0`` per group; None when the system is singular even with the ridge."""
        out = []
        for (xx, xt), prior in zip(self.fit, a0):
            scale = float(np.mean(np.diag(xx)[:-1])) if self.d > 1 else 1.0
            lam = ridge * (scale if scale > 0 else 1.0)
            try:
                out.append(np.linalg.solve(xx + lam * np.eye(self.d), xt + lam * prior))
            except np.linalg.LinAlgError:
                return None
        return out


# --------------------------------------------------------------------------------------------------------------
# Weights in and out of the model


def _stage_coefs(stage: LinearStage, arrays: Mapping[str, np.ndarray], bias: np.ndarray) -> list[np.ndarray]:
    """The stage's current weights as one ``(D + 1) x N/g`` matrix per group (rows: features, then bias)."""
    g, n = stage.group, stage.c_out
    ng = n // g
    out = []
    for gi in range(g):
        rows = [arrays[t.weight][gi * ng:(gi + 1) * ng].reshape(ng, -1).T for t in stage.terms]
        rows.append(bias[None, gi * ng:(gi + 1) * ng])
        out.append(np.concatenate(rows, axis=0).astype(np.float64))
    return out


def _stage_bias(stage: LinearStage, arrays: Mapping[str, np.ndarray]) -> np.ndarray:
    total = np.zeros(stage.c_out)
    for t in stage.terms:
        if len(t.node.input) > 2 and t.node.input[2]:
            b = arrays.get(t.node.input[2])
            if b is None:
                raise KeyError(t.node.input[2])
            total = total + b.astype(np.float64)
    return total


class _Writer:
    """Writes refitted weights into the model, copying an initializer another node still reads."""

    def __init__(self, model: onnx.ModelProto) -> None:
        self.model = model
        self.names = NamePool(model)
        self.index = {t.name: i for i, t in enumerate(model.graph.initializer)}
        self.users: dict[str, int] = {}
        self.released: set[str] = set()

        def count(graph: onnx.GraphProto) -> None:
            for n in graph.node:
                for i in n.input:
                    self.users[i] = self.users.get(i, 0) + 1
                for _, sub in subgraphs_of(n):
                    count(sub)

        count(model.graph)
        for o in model.graph.output:
            self.users[o.name] = self.users.get(o.name, 0) + 1

    def array(self, name: str) -> np.ndarray | None:
        i = self.index.get(name)
        return None if i is None else numpy_helper.to_array(self.model.graph.initializer[i])

    def put(self, node: onnx.NodeProto, slot: int, value: np.ndarray, base: str) -> None:
        """Make input ``slot`` of ``node`` an initializer holding ``value`` (in place when nobody else reads it)."""
        current = node.input[slot] if len(node.input) > slot else ""
        if current and current in self.index and self.users.get(current, 0) == 1:
            i = self.index[current]
            self.model.graph.initializer[i].CopyFrom(numpy_helper.from_array(value, current))
            return
        name = self.names.new(base)
        self.model.graph.initializer.append(numpy_helper.from_array(value, name))
        self.index[name] = len(self.model.graph.initializer) - 1
        self.users[name] = 1
        if current:
            self._release(current)
        while len(node.input) <= slot:
            node.input.append("")
        node.input[slot] = name

    def drop_bias(self, node: onnx.NodeProto) -> None:
        """Remove ``node``'s bias input (a sum of convs keeps one bias, on its first term)."""
        if len(node.input) > 2:
            if node.input[2]:
                self._release(node.input[2])
            del node.input[2:]

    def _release(self, name: str) -> None:
        """One reader fewer for ``name``; an initializer nobody reads any more is removed at :meth:`prune`."""
        self.users[name] = self.users.get(name, 1) - 1
        if self.users[name] <= 0 and name in self.index:
            self.released.add(name)

    def prune(self) -> None:
        """Remove the initializers this writer left unread (a bias moved onto another term, a weight replaced by
        a copy). onnxruntime warns about every unused initializer on every session; tensors another node, a
        subgraph or a graph output still reads are counted as users and stay, and so do graph inputs (an
        initializer there is the input's default: part of the model's interface)."""
        inputs = {i.name for i in self.model.graph.input}
        drop = {n for n in self.released if self.users.get(n, 0) <= 0 and n not in inputs}
        if not drop:
            return
        keep = [t for t in self.model.graph.initializer if t.name not in drop]
        del self.model.graph.initializer[:]
        self.model.graph.initializer.extend(keep)
        self.index = {t.name: i for i, t in enumerate(self.model.graph.initializer)}
        self.released -= drop

    def write(self, stage: LinearStage, coefs: Sequence[np.ndarray]) -> None:
        g, ng = stage.group, stage.c_out // stage.group
        row = 0
        bias = np.concatenate([c[-1] for c in coefs])
        for k, t in enumerate(stage.terms):
            size = t.c_in_group * t.taps
            w = np.concatenate([c[row:row + size].T for c in coefs], axis=0)  # (N, C_t/g * K_t)
            row += size
            dtype = self.array(t.weight).dtype  # type: ignore[union-attr]
            base = node_label(t.node)
            self.put(t.node, 1, w.reshape(t.weight_shape).astype(dtype), f"{base}_refit_W")
            if k == 0:
                self.put(t.node, 2, bias.astype(dtype), f"{base}_refit_B")
            else:
                self.drop_bias(t.node)  # the whole bias now sits on the first term
        assert row + 1 == stage.features and len(coefs) == g and coefs[0].shape[1] == ng


# --------------------------------------------------------------------------------------------------------------
# The refit


def _waves(model: onnx.ModelProto, stages: Sequence[LinearStage]) -> None:
    """Set ``stage.wave``: 1 + the largest wave of a refitted layer upstream of its inputs (0 when none)."""
    by_output = {s.output: s for s in stages}
    level: dict[str, int] = {}
    for node in toposort(model.graph.node):
        lv = max((level.get(i, 0) for i in node_inputs_with_implicit(node)), default=0)
        for o in node.output:
            level[o] = lv
            s = by_output.get(o)
            if s is not None:
                s.wave = max((level.get(t.input, 0) for t in s.terms), default=0)
                level[o] = s.wave + 1


def _top_level_node(model: onnx.ModelProto, label: str, op_type: str = "Conv") -> onnx.NodeProto | None:
    """The node of the main graph the passes call ``label`` (its name, else its first output)."""
    return next((n for n in model.graph.node if n.op_type == op_type and node_label(n) == label), None)


@dataclass
class _Plan:
    """One layer to refit: its stage in the rewritten model and its target in the original.

    The target is the original tensor ``target`` with its channels taken in ``order`` (the grouped layout of a
    shuffle-mode conv: output ``j`` of the grouped conv is original channel ``order[j]``), or as they are.
    """

    stage: LinearStage
    index: int
    target: str
    order: np.ndarray | None = None
    out_spatial: tuple[int, ...] = ()
    n_fit: int = 0
    n_check: int = 0
    t_fit: np.ndarray | None = None
    t_check: np.ndarray | None = None
    report: dict[str, Any] = field(default_factory=dict)
    depthwise: Any = None  # a depthwise_fit.Depthwise when its kernels are refitted to the data
    dw_note: str = ""


def _grouped(change: LayerChange) -> bool:
    """Whether the shuffle pass rewrote this layer (its grouping is recorded), else the separable pass did."""
    return "in_groups" in change.details


def _plan_layer(original: onnx.ModelProto, model: onnx.ModelProto, change: LayerChange, index: int) -> _Plan | str:
    """What to refit for one rewritten layer, or why it is not refitted.

    Separable: the layer's original output tensor is still produced, by the pointwise stage. Shuffle: the
    grouped conv keeps the node's name and writes the original channels in a grouped order, which
    :func:`_grouped_orders` finds afterwards.
    """
    old = _top_level_node(original, change.name)
    if old is None or not old.output:
        return "inside a subgraph: not refitted"
    target = old.output[0]
    if _grouped(change):
        new = _top_level_node(model, change.name)
        if new is None or not new.output:
            return "the grouped conv is not found in the rewritten model"
        found = find_stage(model, new.output[0], change.name)
    else:
        found = find_stage(model, target, change.name)
    return found if isinstance(found, str) else _Plan(found, index, target)


def _check_depthwise(model: onnx.ModelProto, plan: _Plan) -> None:
    """Keep the kernels of a layer a later pass changed (other than by reordering its outputs) as they are."""
    from .depthwise_fit import holds_weight_only

    dw = plan.depthwise
    if dw is None:
        return
    if plan.order is not None and dw.group > 1:
        plan.depthwise, plan.dw_note = None, "its output channels were reordered across groups by a later pass"
    elif not holds_weight_only(model, dw, plan.order):
        plan.depthwise = None
        plan.dw_note = "its weights are not the weight-only factors of the original (changed by a later pass)"


def _plan_depthwise(original: onnx.ModelProto, model: onnx.ModelProto, change: LayerChange, plan: _Plan) -> None:
    """Attach the layer's depthwise stage to ``plan`` for the data-aware kernels, or note why not."""
    from .depthwise_fit import find_depthwise

    if _grouped(change):
        return
    from .depthwise_fit import MAX_UNKNOWNS

    found = find_depthwise(original, model, change.name, change.details, [t.node for t in plan.stage.terms])
    if isinstance(found, str):
        plan.dw_note = found
    elif found.unknowns > MAX_UNKNOWNS:
        plan.dw_note = (f"{found.unknowns} kernel taps per group to fit together (more than {MAX_UNKNOWNS}): "
                        "the 1x1 stage alone is refitted")
    else:
        plan.depthwise = found


def _grouped_orders(reference: onnx.ModelProto, model: onnx.ModelProto, plans: list[_Plan],
                    calib: CalibrationSet, providers: Sequence[str], threads: int | None) -> dict[int, str]:
    """Set ``plan.order`` by matching channels with ``reference``; returns plan index -> skip reason.

    The shuffle pass's rewrite computes exactly its masked reference (the original with every weight outside
    the groups zeroed), so on any input the grouped conv's output channel ``j`` equals one channel ``order[j]``
    of the reference's output of the same layer. Matching on the first calibration chunk finds that order
    whatever layout the pass chose (folded orders, shuffles, gathers); a channel without an exact, unique match
    leaves the layer unfitted rather than fitted to the wrong channels. The same holds for a separable layer
    whose output the shuffle pass reordered (a plan that mixes both passes), with the separable model as the
    reference's base.
    """
    _, ref = next(activations(reference, {p.target: p.stage.elem_type for p in plans}, calib, providers, threads,
                              first_only=True))
    _, new = next(activations(model, {p.stage.output: p.stage.elem_type for p in plans}, calib, providers, threads,
                              first_only=True))
    skipped: dict[int, str] = {}
    for p in plans:
        a = np.moveaxis(new[p.stage.output], 1, 0).reshape(p.stage.c_out, -1).astype(np.float64)
        b = np.moveaxis(ref[p.target], 1, 0).reshape(p.stage.c_out, -1).astype(np.float64)
        d2 = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
        order = np.argmin(d2, axis=1)
        scale = float(np.mean(b * b)) * b.shape[1] + 1e-30
        best = d2[np.arange(len(order)), order]
        second = np.partition(d2, 1, axis=1)[:, 1] if d2.shape[1] > 1 else np.full(len(order), np.inf)
        if len(set(order.tolist())) != len(order) or np.any(best > 1e-6 * scale) or np.any(second <= 1e-6 * scale):
            skipped[p.index] = "the grouped conv's output channels cannot be matched one to one with the original's"
            continue
        p.order = order
    return skipped


def _collect_targets(original: onnx.ModelProto, plans: Sequence[_Plan], calib: CalibrationSet, positions: int,
                     check_fraction: float, seed: int, providers: Sequence[str], threads: int | None) -> None:
    """One pass of the original model: each layer's output at its sampled positions (float32)."""
    outputs = {p.target: p.stage.elem_type for p in plans}
    per = max(1, math.ceil(positions / calib.size))
    per_check = max(1, math.ceil(positions * check_fraction / calib.size)) if check_fraction > 0 else 0
    for start, outs in activations(original, outputs, calib, providers, threads):
        for p in plans:
            y = outs[p.target] if p.order is None else outs[p.target][:, p.order]
            if p.t_fit is None:
                p.out_spatial = tuple(int(d) for d in y.shape[2:])
                total = math.prod(p.out_spatial)
                fit0, chk0 = _draw(seed, p.index, 0, total, per, per_check)
                p.n_fit, p.n_check = len(fit0), len(chk0)
                p.t_fit = np.zeros((calib.size, p.n_fit, y.shape[1]), np.float32)
                p.t_check = np.zeros((calib.size, p.n_check, y.shape[1]), np.float32)
            flat = y.reshape(y.shape[0], y.shape[1], -1)
            for i in range(y.shape[0]):
                fit, chk = _draw(seed, p.index, start + i, flat.shape[2], per, per_check)
                p.t_fit[start + i] = flat[i][:, fit].T
                p.t_check[start + i] = flat[i][:, chk].T  # type: ignore[index]


def _accumulate(plan: _Plan, outs: Mapping[str, np.ndarray], start: int, count: int, acc: _Normal, seed: int,
                per: int, per_check: int) -> None:
    stage = plan.stage
    g, ng = stage.group, stage.c_out // stage.group
    for i in range(count):
        sample = start + i
        fit, chk = _draw(seed, plan.index, sample, math.prod(plan.out_spatial), per, per_check)
        for which, pos, t in (("fit", fit, plan.t_fit[sample]), ("check", chk, plan.t_check[sample])):  # type: ignore[index]
            if len(pos) == 0:
                continue
            patches = [sample_patches(outs[term.input][i], term, plan.out_spatial, pos) for term in stage.terms]
            for gi in range(g):
                x = np.concatenate(
                    [p[:, gi * term.c_in_group:(gi + 1) * term.c_in_group, :].reshape(len(pos), -1)
                     for p, term in zip(patches, stage.terms)], axis=1)
                acc.add(which, gi, x, t[:, gi * ng:(gi + 1) * ng])


def refit(
    original: onnx.ModelProto,
    result: PassResult,
    calibration: CalibrationSet,
    *,
    positions: int = 8192,
    check_fraction: float = 0.25,
    ridge: float | None = None,
    seed: int = 0,
    providers: Sequence[str] = ("CPUExecutionProvider",),
    threads: int | None = None,
    reference: onnx.ModelProto | None = None,
    depthwise: bool = True,
) -> PassResult:
    """Refit the linear stage of every rewritten layer of ``result`` to the original model's outputs.

    Args:
        original: the model the pass rewrote (weights loaded); gives the target outputs.
        result: the pass's result; not modified.
        calibration: inputs from :func:`load_calibration` (checked against ``original``). A seeded share of
            the samples is held out and never fitted on (:meth:`CalibrationSet.split` with ``seed``;
            :func:`held_out_feeds` returns them, to verify the result on).
        positions: output positions per layer used for the fit (spread over the samples); ``check_fraction``
            times as many more are held out to choose the ridge and report errors.
        ridge: relative ridge ``lam / mean(diag(X^T X))``; None picks it per layer from :data:`RIDGE_GRID`.
        seed: the seed of the position sampling and of the held-out samples.
        providers, threads: onnxruntime settings for collecting activations.
        reference: the model ``result`` computes exactly up to channel orders, with the original's tensor names;
            every layer's output is then matched to it channel by channel. Needed when the shuffle pass ran on a
            model the separable pass had already rewritten (:func:`onnxconv.plan.plan_rewrite` with both kinds
            returns it); by default the shuffle pass's masked reference for grouped layers, none for separable.
        depthwise: first refactor each separable layer's depthwise kernels to the covariance of the patches it
            reads (:mod:`onnxconv.depthwise_fit`), then refit its pointwise stage; False keeps the weight-only
            kernels.

    Returns:
        A new :class:`PassResult` with the refitted model. Each rewritten layer's ``details`` gain ``out_err``
        and ``refit_err`` (relative output error on held-out positions, weight-only vs refitted, with the
        refitted upstream network) and ``ridge``, or ``refit`` with the reason the layer was not refitted.

    Raises:
        OptionError: bad ``positions``/``check_fraction``/``ridge``. OnnxConvError: onnxruntime fails on the
        inputs. RewriteError: the refitted model fails the checker (it should not: only weights change).
    """
    if positions < 1:
        raise OptionError(f"positions {positions}: must be at least 1")
    if not 0 <= check_fraction <= 1:
        raise OptionError(f"check fraction {check_fraction}: must be in [0, 1]")
    if ridge is not None and not (ridge >= 0 and math.isfinite(ridge)):
        raise OptionError(f"ridge {ridge}: must be a finite number >= 0")
    calibration, held = calibration.split(seed)  # held-out samples are for verification, never fitted
    model = onnx.ModelProto()
    model.CopyFrom(result.model)
    layers = [replace(c, details=dict(c.details)) for c in result.layers]
    plans: list[_Plan] = []
    plan_of: dict[int, _Plan] = {}
    for change in layers:
        if not change.rewritten:
            continue
        found = _plan_layer(original, model, change, len(plans))
        if isinstance(found, str):
            change.details["refit"] = found
            continue
        if depthwise:
            _plan_depthwise(original, model, change, found)
        plans.append(found)
        plan_of[id(change)] = found
    grouped = {plan_of[id(c)].index for c in layers if id(c) in plan_of and _grouped(c)}
    if plans and (grouped or reference is not None):
        # Without a reference only grouped layers have a reordered output; with one, any layer may.
        matched = plans if reference is not None else [p for p in plans if p.index in grouped]
        if reference is None:
            from .passes.shuffle import masked_reference

            reference = masked_reference(original, result)
        skipped = _grouped_orders(reference, model, matched, calibration, providers, threads)
        for change in layers:
            plan = plan_of.get(id(change))
            if plan is not None and plan.index in skipped:
                change.details["refit"] = skipped[plan.index]
                del plan_of[id(change)]
        plans = [p for p in plans if p.index not in skipped]
    for p in plans:
        _check_depthwise(model, p)
    if plans:
        _collect_targets(original, plans, calibration, positions, check_fraction, seed, providers, threads)
        _refit_waves(model, plans, calibration, positions, check_fraction, ridge, seed, providers, threads)
    for change in layers:
        if id(change) in plan_of:
            change.details.update(plan_of[id(change)].report)
    check_model(model, original)
    options = dict(result.options)
    options["calibration"] = {"source": calibration.source, "samples": calibration.size,
                              "held_out": 0 if held is None else held.size, "positions": positions,
                              "check_fraction": check_fraction, "ridge": "auto" if ridge is None else ridge,
                              "seed": seed, "layers_refitted": sum(1 for p in plans if "ridge" in p.report),
                              "depthwise": depthwise}
    return PassResult(model=model, layers=layers, pass_name=result.pass_name, options=options)


def _refit_waves(model: onnx.ModelProto, plans: Sequence[_Plan], calib: CalibrationSet, positions: int,
                 check_fraction: float, ridge: float | None, seed: int, providers: Sequence[str],
                 threads: int | None) -> None:
    writer = _Writer(model)
    _waves(model, [p.stage for p in plans])
    per = max(1, math.ceil(positions / calib.size))
    per_check = max(1, math.ceil(positions * check_fraction / calib.size)) if check_fraction > 0 else 0
    for wave in sorted({p.stage.wave for p in plans}):
        members = [p for p in plans if p.stage.wave == wave]
        whole = [p for p in members if p.depthwise is not None]
        if whole:
            _alternate(model, whole, calib, writer, seed, per, per_check, ridge, providers, threads)
        members = [p for p in members if p.depthwise is None]
        if not members:
            continue
        feature_names = {t.input: p.stage.elem_type for p in members for t in p.stage.terms}
        accs = {p.index: _Normal(p.stage.group, p.stage.features, p.stage.c_out // p.stage.group) for p in members}
        for start, outs in activations(model, feature_names, calib, providers, threads):
            count = next(iter(outs.values())).shape[0]
            for p in members:
                _accumulate(p, outs, start, count, accs[p.index], seed, per, per_check)
        for p in members:
            p.report = _solve_and_write(p.stage, accs[p.index], writer, ridge)
            if p.dw_note:
                p.report["depthwise"] = f"kernels kept: {p.dw_note}"
    writer.prune()


def _alternate(model: onnx.ModelProto, plans: Sequence[_Plan], calib: CalibrationSet, writer: _Writer,
               seed: int, per: int, per_check: int, ridge: float | None, providers: Sequence[str],
               threads: int | None) -> None:
    """Refit each plan's separable layer whole (depthwise kernels and pointwise stage, alternating), in place.

    One run of the (partly refitted) model gives every layer's depthwise input; its patches at the refit's own
    positions, with the original outputs there, give the moments :func:`onnxconv.depthwise_fit.alternate`
    works from.
    """
    from .depthwise_fit import RIDGES, Moments, alternate, start, weights

    geometry: dict[int, ConvTerm] = {}
    moments: dict[int, tuple[Moments, Moments]] = {}
    for p in plans:
        dw = p.depthwise
        geometry[p.index] = ConvTerm(dw.nodes[0], dw.input, "", dw.dw_shape, dict(dw.attrs, group=dw.channels))
        shape = (dw.group, dw.channels // dw.group, math.prod(dw.kernel), p.stage.c_out // dw.group)
        moments[p.index] = (Moments(*shape), Moments(*shape))
    names = {p.depthwise.input: p.stage.elem_type for p in plans}
    for first, outs in activations(model, names, calib, providers, threads):
        for p in plans:
            z = outs[p.depthwise.input]
            for i in range(z.shape[0]):
                sample = first + i
                fit, chk = _draw(seed, p.index, sample, math.prod(p.out_spatial), per, per_check)
                for mom, pos, t in ((moments[p.index][0], fit, p.t_fit[sample]),  # type: ignore[index]
                                    (moments[p.index][1], chk, p.t_check[sample])):  # type: ignore[index]
                    if len(pos):
                        mom.add(sample_patches(z[i], geometry[p.index], p.out_spatial, pos), t)
    for p in plans:
        dw = p.depthwise
        d0, a0 = start(dw, p.order)
        ds, as_, report = alternate(*moments[p.index], d0, a0, ridges=RIDGES if ridge is None else (ridge,))
        report["samples"] = moments[p.index][0].n
        if "ridge" in report:
            _write_separable(writer, dw, *weights(dw, ds, as_))
            for t in p.stage.terms:
                t.weight = t.node.input[1]
        p.report = report


def _write_separable(writer: _Writer, dw: Any, dws: Sequence[np.ndarray], pws: Sequence[np.ndarray],
                     bias: np.ndarray) -> None:
    """Write a separable layer's depthwise and pointwise weights; the whole bias goes on the first 1x1 conv."""
    dtype = writer.array(dw.nodes[0].input[1]).dtype  # type: ignore[union-attr]
    for node, w in zip(dw.nodes, dws):
        writer.put(node, 1, w.astype(dtype), f"{node_label(node)}_refit_W")
    for k, (node, w) in enumerate(zip(dw.pointwise, pws)):
        writer.put(node, 1, w.astype(dtype), f"{node_label(node)}_refit_W")
        if k == 0:
            writer.put(node, 2, bias.astype(dtype), f"{node_label(node)}_refit_B")
        else:
            writer.drop_bias(node)


def _solve_and_write(stage: LinearStage, acc: _Normal, writer: _Writer, ridge: float | None) -> dict[str, Any]:
    arrays = {t.weight: writer.array(t.weight) for t in stage.terms}
    arrays.update({t.node.input[2]: writer.array(t.node.input[2]) for t in stage.terms
                   if len(t.node.input) > 2 and t.node.input[2]})
    if any(v is None for v in arrays.values()):
        return {"refit": "a weight or bias of the stage is not an initializer"}
    a0 = _stage_coefs(stage, arrays, _stage_bias(stage, arrays))  # type: ignore[arg-type]
    before = acc.check_error(a0)
    grid = RIDGE_GRID if ridge is None else (ridge,)
    best: tuple[float, float, list[np.ndarray]] | None = None
    for lam in grid:
        coefs = acc.solve(a0, lam)
        if coefs is None:
            continue
        err = acc.check_error(coefs)
        score = err if err is not None else 0.0
        if best is None or score < best[0]:
            best = (score, lam, coefs)
        if err is None:
            break  # nothing held out to choose with: the first (or given) ridge stands
    report: dict[str, Any] = {"out_err": before, "samples": acc.samples}
    if best is None:
        report["refit"] = "singular normal equations"
        return report
    after = acc.check_error(best[2])
    if before is not None and after is not None and after >= before:
        report["refit_err"] = before
        report["refit"] = "kept weight-only: no ridge lowered the held-out error"
        return report
    writer.write(stage, best[2])
    report["refit_err"] = after
    report["ridge"] = best[1]
    return report


def refit_from_file(original: onnx.ModelProto, result: PassResult, path: str | Path, *, provider: str = "cpu",
                    threads: int | None = None, depthwise: bool = True) -> PassResult:
    """:func:`refit` with inputs read by :func:`load_calibration` and a provider by short name (cpu/cuda/...).

    Raises:
        OptionError: a bad calibration file or an unavailable provider (one line each).
    """
    from .bench import resolve_provider

    chain = resolve_provider(provider).chain
    return refit(original, result, load_calibration(path, original), providers=chain, threads=threads,
                 depthwise=depthwise)

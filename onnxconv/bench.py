"""Time models with onnxruntime and compare their outputs: the library behind ``onnxconv bench``.

How the clock is read
    * Every model gets its own session with the same options (:func:`onnxconv.compare.session`). Session creation
      and the first run are timed on their own and never enter the statistics: the first run sizes the memory
      arena, and on CUDA/TensorRT picks kernels or builds engines.
    * Inputs are drawn once (random, from the first model's input specs, or read from an .npz file) and bound to
      every session with IO binding: the arrays become OrtValues once, on the provider's device (copied to the GPU
      once on CUDA), and outputs stay on that device, so a timed run holds the model and nothing else. On CUDA the
      run is synchronised (``IOBinding.synchronize_outputs``) before the clock is read.
    * ``warmup`` more runs per model are discarded; then models are timed in rounds of one run each, the order
      reversed every other round (A B, B A, A B, ...). Drift of a shared machine (other jobs, clock boost, heat)
      then hits every model alike, and no model always runs right after the same other one.
    * Speed-up of model m against the first model: per round r, ``ratio_r = t_first,r / t_m,r`` (> 1: m is
      faster); the report gives the median over rounds and the spread of the ratios (quartiles, 10th/90th
      percentiles). A ratio of two runs taken milliseconds apart cancels slow drift that a ratio of two means
      would keep.
    * With several models and more than one intra-op thread, idle threads of one session would spin-wait and
      steal cores from the next session's run; spinning is turned off then (``BenchConfig.spinning`` overrides).

Figures per model: mean, p50, p90, p99, min, max and sample stdev of the timed runs; throughput = batch / mean
(items per second, batch = first dim of the first input).

Memory
    ``rss_added_mb`` is the growth of the resident set across this model's session creation and first run
    (current RSS from /proc/self/statm: memory the other models hold is not counted, memory freed before the
    reading is not either, and a later model may grow less because it reuses pages an earlier session freed:
    the same ResNet-18 twice read 123 then 50 MiB in one process, 122 and 139 MiB isolated). In one process a
    per-model *peak* cannot be told apart (getrusage's maximum is process-wide and never falls), so
    ``isolate=True`` runs every session in its own worker process (still timed in interleaved rounds: the parent
    sends "run once" between runs, outside the clock) and reports the worker's peak RSS beside its RSS before
    the session was made (Python + onnxruntime). On CUDA, device memory is read
    with NVML for this process when it can, else device-wide with cudaMemGetInfo (which counts other processes);
    ``device_scope`` says which. onnxruntime's arena does not shrink, so the reading after the runs is the peak.

Profile (``profile=True``)
    After timing, each model gets a fresh session with onnxruntime's profiler on (so the profiler's own cost never
    reaches the timed figures), runs ``warmup`` + ``profile_runs`` times, and the node events of the last
    ``profile_runs`` runs are averaged per node. Nodes are joined by name with the rows of
    :func:`onnxconv.stats.analyze` (convs, Gemm/MatMul) to give achieved MAC/s = MACs / mean node time.
    onnxruntime names an unnamed node ``<op_type>_<index>``, and its NCHWc layout pass renames a conv
    ``<output>_nchwc`` after the tensor it writes, which may be the output of a Relu/Add fused into it: those are
    traced back to the conv. Layers still unmatched are listed. On CUDA, node times are the host-side time of
    each kernel's launch unless onnxruntime was built with CUDA profiling: read them as an ordering, not as GPU time.
"""

from __future__ import annotations

import bisect
import json
import math
import os
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from typing import Any

import numpy as np
import onnx

from .compare import OPT_LEVELS, Agreement, compare_outputs, feeds_for, load_inputs, make_inputs, session
from .errors import OnnxConvError, OptionError
from .stats import LayerStats

__all__ = [
    "BenchConfig", "BenchReport", "ProviderRun", "ModelResult", "Timing", "SpeedUp", "Memory", "NodeTime",
    "Profile", "Provider", "ProviderError", "PROVIDERS", "bench", "resolve_provider", "timing_stats",
    "speedup_stats", "validate_thresholds", "check_thresholds", "render", "FORMATS", "parse_profile",
    "join_profile", "profile_model", "current_rss_bytes", "peak_rss_bytes", "device_memory_bytes",
]

#: ``progress(phase, done, total)``: called between runs (never inside a timed one).
ProgressFn = Callable[[str, float, float], None]

#: Short provider names -> the execution providers a session is given, in order (CPU last: it runs what the
#: accelerator provider has no kernel for).
PROVIDERS: dict[str, tuple[str, ...]] = {
    "cpu": ("CPUExecutionProvider",),
    "cuda": ("CUDAExecutionProvider", "CPUExecutionProvider"),
    "tensorrt": ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"),
}
_ALIASES = {"gpu": "cuda", "trt": "tensorrt", **{v[0].lower(): k for k, v in PROVIDERS.items()}}
_DEVICE = {"cpu": "cpu", "cuda": "cuda", "tensorrt": "cuda"}

FORMATS = ("table", "json")
#: Time budget of the timed rounds when neither ``iters`` nor ``duration`` is given (seconds, per provider).
DEFAULT_DURATION = 5.0
#: Fewest timed rounds in duration mode, so percentiles and the ratio spread mean something.
MIN_ROUNDS = 5
_MB = 1024.0 * 1024.0


class ProviderError(OptionError):
    """A requested execution provider is not in this onnxruntime build, or could not start."""


# --------------------------------------------------------------------------------------------------------------
# Options and results


@dataclass
class BenchConfig:
    """Everything :func:`bench` can be told; ``validate`` turns bad values into one-line :class:`OptionError`.

    ``iters`` and ``duration`` exclude each other; with neither, rounds run for :data:`DEFAULT_DURATION` seconds
    (and at least :data:`MIN_ROUNDS`). ``spinning=None`` means: off when several models share the machine with
    more than one thread each, else onnxruntime's default.
    """

    providers: tuple[str, ...] = ("cpu",)
    warmup: int = 5
    iters: int | None = None
    duration: float | None = None
    threads: int | None = None
    opt_level: str = "all"
    batch: int | None = None
    input_shapes: dict[str, list[int]] = field(default_factory=dict)
    inputs: str | None = None
    seed: int = 0
    profile: bool = False
    profile_runs: int = 20
    isolate: bool = False
    spinning: bool | None = None
    device_id: int = 0

    def validate(self) -> None:
        if not self.providers:
            raise OptionError("give at least one --provider")
        if self.warmup < 0:
            raise OptionError(f"--warmup must be 0 or more, got {self.warmup}")
        if self.iters is not None and self.duration is not None:
            raise OptionError("--iters and --duration exclude each other: give one")
        if self.iters is not None and self.iters < 1:
            raise OptionError(f"--iters must be at least 1, got {self.iters}")
        if self.duration is not None and not self.duration > 0:
            raise OptionError(f"--duration must be positive, got {self.duration}")
        if self.threads is not None and self.threads < 1:
            raise OptionError(f"--threads must be at least 1, got {self.threads}")
        if self.opt_level not in OPT_LEVELS:
            raise OptionError(f"--opt-level {self.opt_level}: choose from {', '.join(OPT_LEVELS)}")
        if self.batch is not None and self.batch < 1:
            raise OptionError(f"--batch must be at least 1, got {self.batch}")
        if self.device_id < 0:
            raise OptionError(f"--device-id must be 0 or more, got {self.device_id}")
        if self.profile_runs < 1:
            raise OptionError(f"profile runs must be at least 1, got {self.profile_runs}")


@dataclass
class Timing:
    """Statistics of the timed runs of one model, in seconds; ``throughput`` in items (batch rows) per second."""

    runs: int
    mean_s: float
    p50_s: float
    p90_s: float
    p99_s: float
    min_s: float
    max_s: float
    stdev_s: float
    throughput: float


@dataclass
class SpeedUp:
    """Pairwise speed-up against the first model: percentiles of ``t_first,r / t_m,r`` over rounds r."""

    median: float
    p10: float
    p25: float
    p75: float
    p90: float
    rounds: int


@dataclass
class Memory:
    """Memory figures of one model, in MiB (see the module docstring for what each one means); None: unknown."""

    rss_added_mb: float | None
    rss_peak_mb: float | None = None
    rss_base_mb: float | None = None
    device_mb: float | None = None
    device_scope: str = ""


@dataclass
class NodeTime:
    """One node of onnxruntime's profile: mean time per run, joined with the counted layer behind it, if any."""

    node: str
    op_type: str
    provider: str
    mean_us: float
    p50_us: float
    share: float
    layer: str | None = None
    macs: int | None = None
    macs_per_s: float | None = None


@dataclass
class Profile:
    """Per-node times of one model (largest first), the MACs joined to them, and what could not be joined.

    ``unjoined``: counted layers no profiled node could be traced to; ``uncounted``: layers joined to a node whose
    MACs ``onnxconv stats`` could not work out (an input shape unknown to shape inference).
    """

    runs: int
    total_us: float
    nodes: list[NodeTime]
    layer_macs: int
    joined_macs: int
    joined_us: float
    unjoined: list[str] = field(default_factory=list)
    uncounted: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


@dataclass
class ModelResult:
    """Everything measured for one model on one provider; ``speedup`` is None for the first (reference) model."""

    name: str
    session_s: float
    first_run_s: float
    timing: Timing
    memory: Memory
    speedup: SpeedUp | None = None
    agreement: list[Agreement] = field(default_factory=list)
    profile: Profile | None = None


@dataclass
class ProviderRun:
    """All models timed together on one provider."""

    provider: str
    execution_providers: list[str]
    rounds: int
    timed_s: float
    spinning: bool | None
    models: list[ModelResult]


@dataclass
class BenchReport:
    """The result of :func:`bench`; ``to_dict`` is the JSON interface."""

    runs: list[ProviderRun]
    inputs: dict[str, list[int]]
    input_source: str
    batch: int
    config: dict[str, Any]
    onnxruntime: str
    process_peak_rss_mb: float | None
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# --------------------------------------------------------------------------------------------------------------
# Providers


@dataclass(frozen=True)
class Provider:
    """A resolved provider: short name, the execution providers a session gets, and where tensors live."""

    name: str
    chain: tuple[str, ...]
    device: str


def resolve_provider(name: str, available: Sequence[str] | None = None) -> Provider:
    """Map ``cpu|cuda|tensorrt`` (or a full execution-provider name) to a :class:`Provider`.

    Raises:
        ProviderError: unknown name, or not available in this onnxruntime build (one line that lists the
            available ones and the ``gpu`` extra).
    """
    if available is None:
        import onnxruntime as ort

        available = ort.get_available_providers()
    key = _ALIASES.get(name.strip().lower(), name.strip().lower())
    if key not in PROVIDERS:
        raise ProviderError(f"--provider {name}: unknown; choose from {', '.join(PROVIDERS)}")
    chain = PROVIDERS[key]
    if chain[0] not in available:
        short = {v[0]: k for k, v in PROVIDERS.items()}
        listed = ", ".join(short.get(a, a) for a in available) or "none"
        hint = (" (for GPUs install the gpu extra, pip install 'onnxconv[gpu]', which brings onnxruntime-gpu;"
                " uninstall onnxruntime first)") if key != "cpu" else ""
        raise ProviderError(f"provider '{key}' ({chain[0]}) is not available; available: {listed}{hint}")
    return Provider(key, tuple(p for p in chain if p in available), _DEVICE[key])


# --------------------------------------------------------------------------------------------------------------
# Statistics


def timing_stats(times: Sequence[float], batch: int = 1) -> Timing:
    """Mean, percentiles (linear interpolation), min/max and sample stdev of run times in seconds."""
    if not times:
        raise ValueError("no timed runs")
    t = np.asarray(times, dtype=np.float64)
    p50, p90, p99 = (float(v) for v in np.percentile(t, [50, 90, 99]))
    mean = float(t.mean())
    return Timing(
        runs=len(t), mean_s=mean, p50_s=p50, p90_s=p90, p99_s=p99, min_s=float(t.min()), max_s=float(t.max()),
        stdev_s=float(t.std(ddof=1)) if len(t) > 1 else 0.0, throughput=batch / mean if mean > 0 else math.inf,
    )


def speedup_stats(ref_times: Sequence[float], times: Sequence[float]) -> SpeedUp:
    """Percentiles of the per-round ratios ``ref_times[r] / times[r]`` (> 1: faster than the reference)."""
    if len(ref_times) != len(times) or not times:
        raise ValueError("speed-up needs the same, non-zero number of rounds for both models")
    ratios = np.asarray(ref_times, dtype=np.float64) / np.asarray(times, dtype=np.float64)
    p10, p25, p50, p75, p90 = (float(v) for v in np.percentile(ratios, [10, 25, 50, 75, 90]))
    return SpeedUp(median=p50, p10=p10, p25=p25, p75=p75, p90=p90, rounds=len(ratios))


# --------------------------------------------------------------------------------------------------------------
# Memory readings


def current_rss_bytes() -> int | None:
    """Resident set of this process now (Linux /proc), or None where it cannot be read."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def peak_rss_bytes() -> int | None:
    """Largest resident set this process has had (getrusage; process-wide and monotonic)."""
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS reports bytes, Linux KiB


def device_memory_bytes(device_id: int = 0) -> tuple[int | None, str]:
    """GPU memory in use: (bytes, "process") from NVML for this pid, else (bytes, "device-wide"), else (None, "")."""
    try:
        import pynvml  # type: ignore[import-not-found]

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid() and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory), "process"
    except Exception:  # noqa: BLE001 - NVML absent, no driver, or pid namespaces hide us: try the runtime
        pass
    import ctypes

    for lib in ("libcudart.so", "libcudart.so.12", "libcudart.so.11.0", "cudart64_12.dll"):
        try:
            cudart = ctypes.CDLL(lib)
        except OSError:
            continue
        free, total = ctypes.c_size_t(), ctypes.c_size_t()
        if cudart.cudaSetDevice(device_id) == 0 and cudart.cudaMemGetInfo(ctypes.byref(free), ctypes.byref(total)) == 0:
            return int(total.value - free.value), "device-wide"
        break
    return None, ""


def _mb(n: int | None) -> float | None:
    return None if n is None else n / _MB


# --------------------------------------------------------------------------------------------------------------
# Runners: one session with its inputs bound, here or in a worker process


def _first_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else type(e).__name__)[:300]


_PRIMED: set[tuple[tuple[str, ...], int]] = set()
_GPU_EPS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def _session_providers(provider: Provider, device_id: int) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider chain with ``device_id`` given to the GPU providers (IO binding must use the same device)."""
    return [(ep, {"device_id": device_id}) if ep in _GPU_EPS else ep for ep in provider.chain]


def _prime(provider: Provider, device_id: int) -> None:
    """Pay onnxruntime's once-per-process costs (environment, thread-pool code, CUDA context) on a one-node model.

    Without this the first model's session time and RSS growth would carry them, and look worse than the rest.
    """
    if (provider.chain, device_id) in _PRIMED:
        return
    from onnx import TensorProto, helper

    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "prime",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx >= 1.23 would write 14, newer than some onnxruntime builds load
    sess = session(model, providers=_session_providers(provider, device_id))
    sess.run(None, {"x": np.zeros((1, 8), np.float32)})
    _PRIMED.add((provider.chain, device_id))


class _Runner:
    """One model's session in this process, timed through IO binding on the provider's device."""

    def __init__(self, source: str | onnx.ModelProto, name: str, provider: Provider, cfg: BenchConfig,
                 spinning: bool | None, profile_prefix: str | None = None) -> None:
        self.name = name
        self.provider = provider
        self.device_id = cfg.device_id
        self._on_gpu = provider.device == "cuda"
        _prime(provider, cfg.device_id)
        self._rss0 = current_rss_bytes()
        self._dev0 = device_memory_bytes(cfg.device_id)[0] if self._on_gpu else None
        t0 = time.perf_counter()
        self.sess = session(source, providers=_session_providers(provider, cfg.device_id), threads=cfg.threads,
                            opt_level=cfg.opt_level, profile_prefix=profile_prefix, spinning=spinning)
        self.session_s = time.perf_counter() - t0
        if provider.chain[0] not in self.sess.get_providers():
            # onnxruntime-gpu lists CUDA even when the CUDA/cuDNN libraries are missing, then falls back silently.
            raise ProviderError(
                f"provider '{provider.name}' could not start for {name} (CUDA/cuDNN libraries missing or no "
                f"device?); onnxruntime fell back to {', '.join(self.sess.get_providers())}"
            )
        self._rss_session = current_rss_bytes()
        self.output_names = [o.name for o in self.sess.get_outputs()]
        self._binding: Any = None
        self._values: list[Any] = []
        self._rss_first_added: int | None = None

    def io(self) -> Any:
        return self.sess

    def bind(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        """Bind ``feeds`` (copied to the device once) and outputs on the device; time the first run."""
        import onnxruntime as ort

        mapped = feeds_for(self.sess, feeds)
        self._binding = self.sess.io_binding()
        self._values = []
        for input_name, arr in mapped.items():
            value = ort.OrtValue.ortvalue_from_numpy(np.ascontiguousarray(arr), self.provider.device, self.device_id)
            self._values.append(value)  # the binding does not own it: keep it alive
            self._binding.bind_ortvalue_input(input_name, value)
        self._bind_outputs()
        if self._on_gpu:
            self._binding.synchronize_inputs()
        before = current_rss_bytes()
        first = self.run_once()
        after = current_rss_bytes()
        if before is not None and after is not None:
            self._rss_first_added = after - before
        return first, dict(zip(self.output_names, self._binding.copy_outputs_to_cpu()))

    def _bind_outputs(self) -> None:
        # Fresh outputs for every run, bound outside the clock: a run that reuses the previous run's output
        # OrtValues is checked against the declared output shape, and exports that declare a wrong rank (the
        # ddddocr OCR models: [1, seqlen] for a 3-D output) would fail from the second run on.
        self._binding.clear_binding_outputs()
        for out in self.output_names:
            self._binding.bind_output(out, self.provider.device, self.device_id)

    def run_once(self) -> float:
        """One run, synchronised on the device before the clock is read; seconds."""
        binding = self._binding
        self._bind_outputs()
        t0 = time.perf_counter()
        try:
            self.sess.run_with_iobinding(binding)
        except Exception as e:  # noqa: BLE001 - onnxruntime raises its own untyped errors
            raise OnnxConvError(f"onnxruntime failed to run {self.name}: {_first_line(e)}") from e
        if self._on_gpu:
            binding.synchronize_outputs()
        return time.perf_counter() - t0

    def memory(self, isolated: bool = False) -> Memory:
        added = None
        if self._rss0 is not None and self._rss_session is not None:
            added = self._rss_session - self._rss0 + (self._rss_first_added or 0)
        mem = Memory(rss_added_mb=_mb(added))
        if isolated:
            mem.rss_peak_mb, mem.rss_base_mb = _mb(peak_rss_bytes()), _mb(self._rss0)
        if self._on_gpu:
            used, scope = device_memory_bytes(self.device_id)
            if used is not None and not isolated and scope == "process" and self._dev0 is not None:
                used -= self._dev0  # several sessions share this process: report this model's growth
                scope = "process, growth during this model's session and first run"
            mem.device_mb, mem.device_scope = _mb(used), scope
        return mem

    def close(self) -> None:
        self._binding = None
        self._values = []
        self.sess = None


@dataclass
class _Arg:
    """What make_inputs/feeds_for read of an onnxruntime NodeArg, in a form that crosses processes."""

    name: str
    shape: list[int | str | None]
    type: str


class _IOInfo:
    def __init__(self, inputs: list[_Arg]) -> None:
        self._inputs = inputs

    def get_inputs(self) -> list[_Arg]:
        return self._inputs


def _worker_main(conn: Any, source: str | bytes, name: str, provider: Provider, cfg: BenchConfig,
                 spinning: bool | None) -> None:
    """Entry point of an isolated worker: owns one :class:`_Runner`, obeys (command, argument) messages."""
    try:
        model = source if isinstance(source, str) else onnx.load_from_string(source)
        runner = _Runner(model, name, provider, cfg, spinning)
        inputs = [_Arg(i.name, list(i.shape), i.type) for i in runner.sess.get_inputs()]
        conn.send(("ok", (runner.session_s, inputs)))
    except BaseException as e:  # noqa: BLE001 - every failure goes back to the parent
        conn.send(("error", _portable(e)))
        return
    while True:
        cmd, arg = conn.recv()
        if cmd == "close":
            conn.send(("ok", None))
            return
        try:
            result = {"bind": runner.bind, "run": lambda _: runner.run_once(),
                      "memory": lambda _: runner.memory(isolated=True)}[cmd](arg)
        except BaseException as e:  # noqa: BLE001
            conn.send(("error", _portable(e)))
            continue
        conn.send(("ok", result))


def _portable(e: BaseException) -> BaseException:
    if isinstance(e, OnnxConvError):
        return type(e)(str(e))
    import traceback

    return RuntimeError("".join(traceback.format_exception(e)).strip())


class _WorkerRunner:
    """The same interface as :class:`_Runner`, the session living in a spawned process (``isolate``)."""

    def __init__(self, source: str | onnx.ModelProto, name: str, provider: Provider, cfg: BenchConfig,
                 spinning: bool | None) -> None:
        import multiprocessing as mp

        ctx = mp.get_context("spawn")  # never fork a process that has onnxruntime threads
        self.name = name
        self._conn, child = ctx.Pipe()
        payload = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
        self._proc = ctx.Process(target=_worker_main, args=(child, payload, name, provider, cfg, spinning),
                                 daemon=True)
        self._proc.start()
        child.close()
        self.session_s, inputs = self._reply()
        self._io = _IOInfo(inputs)

    def _reply(self) -> Any:
        try:
            status, value = self._conn.recv()
        except EOFError:
            raise OnnxConvError(f"the worker process for {self.name} died (out of memory?)") from None
        if status == "error":
            raise value
        return value

    def _call(self, cmd: str, arg: Any = None) -> Any:
        self._conn.send((cmd, arg))
        return self._reply()

    def io(self) -> Any:
        return self._io

    def bind(self, feeds: Mapping[str, np.ndarray]) -> tuple[float, dict[str, np.ndarray]]:
        return self._call("bind", dict(feeds))  # type: ignore[no-any-return]

    def run_once(self) -> float:
        return self._call("run")  # type: ignore[no-any-return]

    def memory(self, isolated: bool = True) -> Memory:
        return self._call("memory")  # type: ignore[no-any-return]

    def close(self) -> None:
        if self._proc.is_alive():
            try:
                self._call("close")
            except (OSError, EOFError, OnnxConvError):
                pass
            self._proc.join(timeout=5)
            if self._proc.is_alive():
                self._proc.kill()
        self._conn.close()


# --------------------------------------------------------------------------------------------------------------
# Benchmark


def _check_source(src: str | os.PathLike[str] | onnx.ModelProto) -> str | onnx.ModelProto:
    """Fail early, in one line, on a path that is not a loadable ONNX file (weights are not read)."""
    if isinstance(src, onnx.ModelProto):
        return src
    from .model_io import load_model

    load_model(src)  # raises ModelLoadError with the reason; the parsed graph is dropped at once
    return str(src)


def _labels(models: Sequence[str | os.PathLike[str] | onnx.ModelProto], names: Sequence[str] | None) -> list[str]:
    if names is not None:
        if len(names) != len(models):
            raise OptionError("give one name per model")
        base = list(names)
    else:
        base = [str(m) if not isinstance(m, onnx.ModelProto) else (m.graph.name or f"model{i}")
                for i, m in enumerate(models)]
    seen: dict[str, int] = {}
    out = []
    for b in base:  # the same file twice is a fair noise check: keep the rows apart
        seen[b] = seen.get(b, 0) + 1
        out.append(b if seen[b] == 1 else f"{b}#{seen[b]}")
    return out


def _draw_inputs(io: Any, cfg: BenchConfig) -> tuple[dict[str, np.ndarray], str]:
    if cfg.inputs:
        return load_inputs(cfg.inputs, io), f"from {cfg.inputs}"
    return make_inputs(io, cfg.input_shapes, cfg.batch, cfg.seed), f"random (normal floats, seed {cfg.seed})"


def _timed_rounds(runners: Sequence[_Runner | _WorkerRunner], cfg: BenchConfig,
                  progress: ProgressFn | None) -> tuple[list[list[float]], float]:
    """Time rounds of one run per model, alternating the order; (times per model, seconds spent)."""
    times: list[list[float]] = [[] for _ in runners]
    order = list(range(len(runners)))
    duration = None if cfg.iters is not None else (cfg.duration or DEFAULT_DURATION)
    start = time.perf_counter()
    rounds = 0
    while True:
        for i in (order if rounds % 2 == 0 else order[::-1]):
            times[i].append(runners[i].run_once())
        rounds += 1
        elapsed = time.perf_counter() - start
        if duration is None:
            done = rounds >= (cfg.iters or 1)
            if progress:
                progress("timing", rounds, cfg.iters or 1)
        else:
            done = elapsed >= duration and rounds >= MIN_ROUNDS
            if progress:
                progress("timing", min(elapsed, duration), duration)
        if done:
            return times, elapsed


def _auto_spinning(cfg: BenchConfig, n_models: int) -> bool | None:
    if cfg.spinning is not None:
        return cfg.spinning
    return False if n_models > 1 and cfg.threads != 1 else None


def _bench_provider(sources: Sequence[str | onnx.ModelProto], names: Sequence[str], provider: Provider,
                    cfg: BenchConfig, progress: ProgressFn | None) -> tuple[ProviderRun, dict[str, np.ndarray], str]:
    spinning = _auto_spinning(cfg, len(sources))
    runners: list[_Runner | _WorkerRunner] = []
    try:
        for src, name in zip(sources, names):
            if progress:
                progress(f"session {name}", len(runners), len(sources))
            cls = _WorkerRunner if cfg.isolate else _Runner
            runners.append(cls(src, name, provider, cfg, spinning))
        feeds, source_text = _draw_inputs(runners[0].io(), cfg)
        firsts, outputs = zip(*(r.bind(feeds) for r in runners))
        for k in range(cfg.warmup):
            if progress:
                progress("warm-up", k, cfg.warmup)
            for r in runners:
                r.run_once()
        times, elapsed = _timed_rounds(runners, cfg, progress)
        memories = [r.memory(isolated=cfg.isolate) for r in runners]
        session_s = [r.session_s for r in runners]
    finally:
        for r in runners:
            r.close()
    batch = _batch_of(feeds)
    models = []
    for i, name in enumerate(names):
        models.append(ModelResult(
            name=name, session_s=session_s[i], first_run_s=firsts[i], timing=timing_stats(times[i], batch),
            memory=memories[i], speedup=speedup_stats(times[0], times[i]) if i else None,
            agreement=compare_outputs(outputs[0], outputs[i]) if i else [],
        ))
    run = ProviderRun(provider=provider.name, execution_providers=list(provider.chain), rounds=len(times[0]),
                      timed_s=elapsed, spinning=spinning, models=models)
    return run, feeds, source_text


def _batch_of(feeds: Mapping[str, np.ndarray]) -> int:
    first = next(iter(feeds.values()), None)
    return int(first.shape[0]) if first is not None and first.ndim > 0 and first.shape[0] > 0 else 1


def bench(models: Sequence[str | os.PathLike[str] | onnx.ModelProto], config: BenchConfig | None = None, *,
          names: Sequence[str] | None = None, progress: ProgressFn | None = None) -> BenchReport:
    """Time ``models`` on every provider of ``config`` and compare each with the first one.

    Args:
        models: paths or ModelProtos; the first is the reference for speed-up and output agreement.
        config: options (defaults: CPU, 5 warm-up runs, 5 s of interleaved rounds).
        names: what to call the models in the report (default: their paths).
        progress: called between runs with (phase, done, total), e.g. to drive a progress bar.

    Raises:
        ProviderError: a provider is not available (before anything is loaded).
        OnnxConvError: a model does not load or run, inputs do not fit, outputs differ in shape.
    """
    import onnxruntime as ort

    cfg = config or BenchConfig()
    cfg.validate()
    if not models:
        raise OptionError("give at least one model")
    providers = [resolve_provider(p) for p in dict.fromkeys(cfg.providers)]
    labels = _labels(models, names)
    sources = [_check_source(m) for m in models]
    runs: list[ProviderRun] = []
    feeds: dict[str, np.ndarray] = {}
    source_text = ""
    for prov in providers:
        run, feeds, source_text = _bench_provider(sources, labels, prov, cfg, progress)
        runs.append(run)
    notes = []
    if cfg.profile:
        for prov, run in zip(providers, runs):
            for src, result in zip(sources, run.models):
                if progress:
                    progress(f"profile {result.name}", 0, 1)
                result.profile = profile_model(src, result.name, prov, cfg, feeds)
    if any(r.spinning is False for r in runs) and cfg.spinning is None:
        notes.append("intra-op thread spinning turned off: several sessions take turns on the same cores")
    return BenchReport(
        runs=runs, inputs={k: list(v.shape) for k, v in feeds.items()}, input_source=source_text,
        batch=_batch_of(feeds), config=asdict(cfg), onnxruntime=ort.__version__,
        process_peak_rss_mb=_mb(peak_rss_bytes()), notes=notes,
    )


# --------------------------------------------------------------------------------------------------------------
# Profile: onnxruntime's per-node times joined with the counted MACs

#: onnxruntime kernels that carry a counted layer's MACs (fused forms keep the arithmetic of the conv/matmul).
_MAC_KERNELS = {"Conv", "FusedConv", "NhwcConv", "NhwcFusedConv", "QLinearConv", "ConvInteger", "ConvTranspose",
                "Gemm", "FusedGemm", "MatMul", "FusedMatMul", "MatMulInteger", "QLinearMatMul"}


def parse_profile(events: Sequence[Mapping[str, Any]], runs: int) -> tuple[dict[str, dict[str, Any]], int]:
    """Mean and median time per run of every node over the last ``runs`` runs of an onnxruntime profile.

    Returns (node name -> {"us": mean, "p50_us": median, "op_type", "provider"}, number of runs used). Node
    events are ``<node>_kernel_time`` with ``dur`` in microseconds; runs are the ``model_run`` session events,
    and a node that runs several times in one run (inside a loop) counts once per run with the sum.
    """
    windows = sorted((e["ts"], e["ts"] + e["dur"]) for e in events
                     if e.get("cat") == "Session" and e.get("name") == "model_run")
    windows = windows[-runs:] if runs > 0 else windows
    if not windows:
        return {}, 0
    starts = [w[0] for w in windows]
    per_run: dict[str, np.ndarray] = {}
    meta: dict[str, tuple[str, str]] = {}
    for e in events:
        if e.get("cat") != "Node" or not str(e.get("name", "")).endswith("_kernel_time"):
            continue
        k = bisect.bisect_right(starts, e["ts"]) - 1
        if k < 0 or e["ts"] > windows[k][1]:
            continue  # a warm-up run, or outside every run
        name = e["name"][: -len("_kernel_time")]
        args = e.get("args", {})
        meta.setdefault(name, (str(args.get("op_name", "")), str(args.get("provider", ""))))
        per_run.setdefault(name, np.zeros(len(windows)))[k] += float(e["dur"])
    nodes = {name: {"us": float(t.mean()), "p50_us": float(np.median(t)), "op_type": meta[name][0],
                    "provider": meta[name][1]} for name, t in per_run.items()}
    return nodes, len(windows)


def _layer_finder(model: onnx.ModelProto, rows: Sequence[LayerStats]) -> Callable[[str, str], LayerStats | None]:
    """A function (onnxruntime node name, kernel op) -> the counted row it computes, or None."""
    from .graph import node_label

    by_ort_name: dict[str, onnx.NodeProto] = {}
    producer: dict[str, onnx.NodeProto] = {}
    for i, node in enumerate(model.graph.node):
        by_ort_name[node.name or f"{node.op_type}_{i}"] = node  # onnxruntime's name for an unnamed node
        for out in node.output:
            producer[out] = node
    rows_by_label = {r.name: r for r in rows if not r.path}

    def source(ort_name: str) -> onnx.NodeProto | None:
        node = by_ort_name.get(ort_name)
        if node is None and ort_name.endswith("_nchwc"):
            node = producer.get(ort_name[: -len("_nchwc")])  # NCHWc names a conv after the tensor it writes
        # Fusions append "/<FusionName>/" to the node they start from ("MatMul_3/MatmulTransposeFusion/"); names
        # from PyTorch exports hold slashes themselves, so strip one segment at a time and look again.
        stem = ort_name.rstrip("/")
        while node is None and "/" in stem:
            stem = stem.rsplit("/", 1)[0]
            node = by_ort_name.get(stem)
        return node

    def find(ort_name: str, kernel: str) -> LayerStats | None:
        node = source(ort_name)
        if node is None:
            return None
        row = rows_by_label.get(node_label(node))
        if row is not None or kernel not in _MAC_KERNELS:
            return row
        # A conv kernel named after a Relu/Clip/Add fused into it: walk back to the conv (a few steps at most).
        frontier, seen = [node], set()
        for _ in range(3):
            nxt = []
            for n in frontier:
                for inp in n.input:
                    p = producer.get(inp)
                    if p is None or id(p) in seen:
                        continue
                    seen.add(id(p))
                    r = rows_by_label.get(node_label(p))
                    if r is not None:
                        return r
                    nxt.append(p)
            frontier = nxt
        return None

    return find


def join_profile(nodes: Mapping[str, Mapping[str, Any]], runs: int, model: onnx.ModelProto | None,
                 rows: Sequence[LayerStats]) -> Profile:
    """Join per-node times with counted layers (``rows`` from :func:`onnxconv.stats.analyze`)."""
    total = sum(n["us"] for n in nodes.values())
    find = _layer_finder(model, rows) if model is not None else (lambda _n, _k: None)
    claimed: set[int] = set()
    out = []
    for name, n in sorted(nodes.items(), key=lambda kv: -kv[1]["us"]):
        row = find(name, n["op_type"])
        if row is not None and id(row) in claimed:
            row = None  # two kernels for one layer: give the MACs once
        nt = NodeTime(node=name, op_type=n["op_type"], provider=n["provider"], mean_us=n["us"],
                      p50_us=n.get("p50_us", n["us"]), share=n["us"] / total if total > 0 else 0.0)
        if row is not None:
            claimed.add(id(row))
            nt.layer, nt.macs = row.name, row.macs
            if row.macs is not None and n["us"] > 0:
                nt.macs_per_s = row.macs / (n["us"] * 1e-6)
        out.append(nt)
    counted = [r for r in rows if r.macs is not None]
    return Profile(
        runs=runs, total_us=total, nodes=out, layer_macs=sum(r.macs or 0 for r in counted),
        joined_macs=sum(n.macs or 0 for n in out), joined_us=sum(n.mean_us for n in out if n.macs is not None),
        unjoined=[r.qualified_name for r in rows if id(r) not in claimed],
        uncounted=[n.layer for n in out if n.layer is not None and n.macs is None],
    )


def profile_model(source: str | onnx.ModelProto, name: str, provider: Provider, cfg: BenchConfig,
                  feeds: Mapping[str, np.ndarray]) -> Profile:
    """Profile one model in a fresh session (see the module docstring) and join the node times with its MACs."""
    with tempfile.TemporaryDirectory(prefix="onnxconv-profile-") as tmp:
        runner = _Runner(source, name, provider, cfg, spinning=None, profile_prefix=os.path.join(tmp, "ort"))
        try:
            runner.bind(feeds)
            for _ in range(cfg.warmup + cfg.profile_runs):
                runner.run_once()
            path = runner.sess.end_profiling()
            with open(path) as f:
                events = json.load(f)
        finally:
            runner.close()
    nodes, runs = parse_profile(events, cfg.profile_runs)
    notes: list[str] = []
    model: onnx.ModelProto | None = None
    rows: list[LayerStats] = []
    try:
        from .model_io import load_model
        from .stats import analyze

        model = source if isinstance(source, onnx.ModelProto) else load_model(source)
        shapes = {k: list(v.shape) for k, v in feeds_for(_graph_inputs(model), feeds).items()}
        rows = analyze(model, name=name, input_shapes=shapes, all_ops=True).layers
    except OnnxConvError as e:
        notes.append(f"MACs unknown, node times only: {e}")
    prof = join_profile(nodes, runs, model, rows)
    prof.notes = notes
    if prof.uncounted:
        prof.notes.append(f"{len(prof.uncounted)} profiled layer(s) have unknown MACs (shape inference could not "
                          f"work out an input shape; see onnxconv stats): " + _first_names(prof.uncounted))
    if prof.unjoined:
        hint = " (renamed or fused by onnxruntime; --opt-level basic keeps names)" if cfg.opt_level != "disable" else ""
        prof.notes.append(f"{len(prof.unjoined)} counted layer(s) not found among the profiled nodes{hint}: "
                          + _first_names(prof.unjoined))
    return prof


def _first_names(names: Sequence[str], n: int = 8) -> str:
    return ", ".join(names[:n]) + (f" and {len(names) - n} more" if len(names) > n else "")


def _graph_inputs(model: onnx.ModelProto) -> _IOInfo:
    """The graph inputs of ``model`` (initializers excluded) in the form :func:`feeds_for` reads."""
    inits = {t.name for t in model.graph.initializer}
    return _IOInfo([_Arg(vi.name, [], "") for vi in model.graph.input if vi.name not in inits])


# --------------------------------------------------------------------------------------------------------------
# Thresholds


def validate_thresholds(fail_if_slower: float | None = None, max_error: float | None = None) -> None:
    """Reject threshold values that cannot mean anything (before any timing is spent)."""
    if fail_if_slower is not None and not fail_if_slower > 0:
        raise OptionError(f"--fail-if-slower must be positive, got {fail_if_slower}")
    if max_error is not None and not max_error >= 0:
        raise OptionError(f"--max-error must be 0 or more, got {max_error}")


def check_thresholds(report: BenchReport, fail_if_slower: float | None = None,
                     max_error: float | None = None) -> list[str]:
    """One line per broken threshold (empty: all passed).

    ``fail_if_slower R``: a model fails when its median speed-up against the first model is below ``1/R``, i.e.
    when its run takes more than R times as long (R = 1.05 tolerates 5 % slower; R = 0.8 demands 1.25x faster).
    ``max_error E``: a model fails when the relative error of any output exceeds E (NaN fails too).
    """
    validate_thresholds(fail_if_slower, max_error)
    failures = []
    for run in report.runs:
        ref = run.models[0].name
        for m in run.models[1:]:
            if fail_if_slower is not None and m.speedup is not None and m.speedup.median < 1 / fail_if_slower:
                failures.append(f"{m.name} [{run.provider}]: speed-up {m.speedup.median:.3f}x vs {ref} is below "
                                f"1/{fail_if_slower:g} = {1 / fail_if_slower:.3f}x")
            if max_error is not None:
                for a in m.agreement:
                    if not a.rel_error <= max_error:
                        failures.append(f"{m.name} [{run.provider}]: output '{a.output}' relative error "
                                        f"{a.rel_error:.3g} exceeds {max_error:g}")
    return failures


# --------------------------------------------------------------------------------------------------------------
# Rendering


def _ms(seconds: float) -> str:
    v = seconds * 1e3
    return f"{v:.1f}" if v >= 100 else f"{v:.2f}" if v >= 10 else f"{v:.3f}" if v >= 1 else f"{v:.4f}"


def _grid(headers: Sequence[str], body: Sequence[Sequence[str]], left: int = 1) -> list[str]:
    """:func:`onnxconv.tables.grid` (which escapes the model labels, output and node names) with the first
    ``left`` columns left-aligned and the rest, figures, right-aligned."""
    from .tables import grid

    return grid(headers, body, right=range(left, len(headers)))


def _opt(v: float | None, fmt: str) -> str:
    return "-" if v is None else format(v, fmt)


def _memory_cell(m: Memory) -> str:
    cell = _opt(m.rss_added_mb, ".1f")
    if m.rss_peak_mb is not None:
        cell += f" (peak {m.rss_peak_mb:.0f})"
    return cell


def _render_run(report: BenchReport, run: ProviderRun) -> list[str]:
    cfg = report.config
    threads = cfg.get("threads") or "default"
    lines = [
        f"provider {run.provider} ({', '.join(run.execution_providers)}), onnxruntime {report.onnxruntime}, "
        f"threads {threads}, opt level {cfg.get('opt_level')}, batch {report.batch}",
        f"{cfg.get('warmup')} warm-up runs excluded; {run.rounds} rounds timed interleaved (A B, B A, ...) "
        f"in {run.timed_s:.2f} s",
    ]
    headers = ["model", "session ms", "1st run ms", "mean ms", "p50", "p90", "p99", "min", "stdev", "items/s",
               "RSS +MiB", "speed-up (IQR)"]
    gpu = any(m.memory.device_mb is not None for m in run.models)
    if gpu:
        headers.insert(-1, "GPU MiB")
    body = []
    for m in run.models:
        t = m.timing
        su = "1.000x (reference)" if m.speedup is None else \
            f"{m.speedup.median:.3f}x ({m.speedup.p25:.2f}-{m.speedup.p75:.2f})"
        row = [m.name, _ms(m.session_s), _ms(m.first_run_s), _ms(t.mean_s), _ms(t.p50_s), _ms(t.p90_s),
               _ms(t.p99_s), _ms(t.min_s), _ms(t.stdev_s), f"{t.throughput:.1f}", _memory_cell(m.memory), su]
        if gpu:
            row.insert(-1, _opt(m.memory.device_mb, ".0f"))
        body.append(row)
    lines += _grid(headers, body)
    agreement = [(m.name, a) for m in run.models[1:] for a in m.agreement]
    if agreement:
        lines += ["", f"output agreement with {run.models[0].name} (same inputs):"]
        lines += _grid(["model", "output", "max abs err", "rel err", "cosine", "top-1"], [
            [n, a.output, f"{a.max_abs:.3g}", f"{a.rel_error:.3g}", f"{a.cosine:.6f}",
             "-" if a.top1 is None else f"{100 * a.top1:.1f}%"] for n, a in agreement
        ], left=2)
    for m in run.models:
        if m.profile is not None:
            lines += ["", *_render_profile(m.name, run.provider, m.profile)]
    return lines


def _render_profile(name: str, provider: str, p: Profile, top: int = 15) -> list[str]:
    lines = [f"profile of {name} [{provider}], mean of {p.runs} runs (onnxruntime profiler; MACs from onnxconv stats):"]
    body = []
    for n in p.nodes[:top]:
        layer = "" if n.layer is None or n.layer == n.node else n.layer
        body.append([n.node, n.op_type, f"{n.mean_us:.1f}", f"{n.p50_us:.1f}", f"{100 * n.share:.1f}%",
                     "-" if n.macs is None else f"{n.macs:,}",
                     "-" if n.macs_per_s is None else f"{n.macs_per_s / 1e9:.2f}", layer])
    headers = ["node", "op", "mean us", "p50 us", "share", "MACs", "GMAC/s", "layer"]
    lines += _grid(headers, body, left=2)
    if len(p.nodes) > top:
        lines.append(f"... {len(p.nodes) - top} more nodes (--format json lists all)")
    rate = p.joined_macs / (p.joined_us * 1e-6) / 1e9 if p.joined_us > 0 else 0.0
    share = p.joined_us / p.total_us if p.total_us > 0 else 0.0
    lines.append(f"nodes with MACs: {p.joined_macs:,} of {p.layer_macs:,} counted MACs in {p.joined_us:.1f} us "
                 f"({100 * share:.1f}% of node time, {rate:.2f} GMAC/s); all nodes {p.total_us:.1f} us per run")
    lines += [f"note: {n}" for n in p.notes]
    return lines


def _json_safe(value: Any) -> Any:
    """NaN/inf (an output full of NaN, a zero-time run) become null: strict JSON readers (jq, browsers) reject them."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_safe(v) for v in value]
    return value


def render(report: BenchReport, fmt: str = "table") -> str:
    """The report as a readable table or as JSON (seconds and raw values; see :meth:`BenchReport.to_dict`)."""
    if fmt == "json":
        return json.dumps(_json_safe(report.to_dict()), indent=2, allow_nan=False)
    shapes = ", ".join(f"{k} {'x'.join(map(str, v))}" for k, v in report.inputs.items())
    lines = [f"inputs: {shapes}, {report.input_source}"]
    for run in report.runs:
        lines += ["", *_render_run(report, run)]
    lines.append("")
    lines.append("speed-up: median over rounds of t(first model) / t(model), > 1 is faster")
    isolated = report.config.get("isolate")
    lines.append("RSS +MiB: resident memory added by the session and its first run"
                 + ("; peak: the worker process's peak RSS" if isolated else
                    " (later models may reuse memory freed by earlier ones: --isolate gives each its own process)")
                 + (f"; process peak RSS {report.process_peak_rss_mb:.0f} MiB" if report.process_peak_rss_mb else ""))
    lines += [f"note: {n}" for n in report.notes]
    # Every line quotes names from the models and paths (inputs, labels, notes): one escape here covers them all.
    from .text import printable

    return "\n".join(printable(line) for line in lines)

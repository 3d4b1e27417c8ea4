"""Runners: one model's session with its inputs bound, in this process or in a worker process.

A runner times one run at a time through IO binding on the provider's device (see :mod:`onnxconv.bench.timing`
for how the clock is read); :class:`Runner` and :class:`WorkerRunner` share that interface.

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
"""

from __future__ import annotations

import ctypes
import multiprocessing as mp
import os
import sys
import time
import traceback
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper

from ..compare import feeds_for, ort_message, session
from ..errors import OnnxConvError
from ..providers import Provider, ProviderError
from .config import BenchConfig, Memory

__all__ = ["Runner", "WorkerRunner", "IOInfo", "InputArg", "session_providers", "current_rss_bytes",
           "peak_rss_bytes", "device_memory_bytes", "mib"]

_MB = 1024.0 * 1024.0


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
        import resource  # POSIX only: imported where its absence (Windows) is handled
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return int(peak) if sys.platform == "darwin" else int(peak) * 1024  # macOS reports bytes, Linux KiB


def device_memory_bytes(device_id: int = 0) -> tuple[int | None, str]:
    """GPU memory in use: (bytes, "process") from NVML for this pid, else (bytes, "device-wide"), else (None, "")."""
    try:
        import pynvml  # optional (NVML bindings, no dependency of onnxconv): absent on most machines

        pynvml.nvmlInit()
        handle = pynvml.nvmlDeviceGetHandleByIndex(device_id)
        for p in pynvml.nvmlDeviceGetComputeRunningProcesses(handle):
            if p.pid == os.getpid() and p.usedGpuMemory is not None:
                return int(p.usedGpuMemory), "process"
    except Exception:  # noqa: BLE001 - NVML absent, no driver, or pid namespaces hide us: try the runtime
        pass
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


def mib(n: int | None) -> float | None:
    """Bytes as MiB (the unit of :class:`~onnxconv.bench.config.Memory`); None stays None."""
    return None if n is None else n / _MB


# --------------------------------------------------------------------------------------------------------------
# Runners: one session with its inputs bound, here or in a worker process


_PRIMED: set[tuple[tuple[str, ...], int]] = set()
_GPU_EPS = ("CUDAExecutionProvider", "TensorrtExecutionProvider")


def session_providers(provider: Provider, device_id: int) -> list[str | tuple[str, dict[str, Any]]]:
    """The provider chain with ``device_id`` given to the GPU providers (IO binding must use the same device)."""
    return [(ep, {"device_id": device_id}) if ep in _GPU_EPS else ep for ep in provider.chain]


def _prime(provider: Provider, device_id: int) -> None:
    """Pay onnxruntime's once-per-process costs (environment, thread-pool code, CUDA context) on a one-node model.

    Without this the first model's session time and RSS growth would carry them, and look worse than the rest.
    """
    if (provider.chain, device_id) in _PRIMED:
        return
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "prime",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 10  # onnx >= 1.23 would write 14, newer than some onnxruntime builds load
    sess = session(model, providers=session_providers(provider, device_id))
    sess.run(None, {"x": np.zeros((1, 8), np.float32)})
    _PRIMED.add((provider.chain, device_id))


class Runner:
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
        self.sess = session(source, providers=session_providers(provider, cfg.device_id), threads=cfg.threads,
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
        import onnxruntime as ort  # lazy: ~150 ms to import, which commands that run no model skip

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
            raise OnnxConvError(f"onnxruntime failed to run {self.name}: {ort_message(e)}") from e
        if self._on_gpu:
            binding.synchronize_outputs()
        return time.perf_counter() - t0

    def memory(self, isolated: bool = False) -> Memory:
        added = None
        if self._rss0 is not None and self._rss_session is not None:
            added = self._rss_session - self._rss0 + (self._rss_first_added or 0)
        mem = Memory(rss_added_mb=mib(added))
        if isolated:
            mem.rss_peak_mb, mem.rss_base_mb = mib(peak_rss_bytes()), mib(self._rss0)
        if self._on_gpu:
            used, scope = device_memory_bytes(self.device_id)
            if used is not None and not isolated and scope == "process" and self._dev0 is not None:
                used -= self._dev0  # several sessions share this process: report this model's growth
                scope = "process, growth during this model's session and first run"
            mem.device_mb, mem.device_scope = mib(used), scope
        return mem

    def close(self) -> None:
        self._binding = None
        self._values = []
        self.sess = None


@dataclass
class InputArg:
    """What make_inputs/feeds_for read of an onnxruntime NodeArg, in a form that crosses processes."""

    name: str
    shape: list[int | str | None]
    type: str


class IOInfo:
    def __init__(self, inputs: list[InputArg]) -> None:
        self._inputs = inputs

    def get_inputs(self) -> list[InputArg]:
        return self._inputs


def _worker_main(conn: Any, source: str | bytes, name: str, provider: Provider, cfg: BenchConfig,
                 spinning: bool | None) -> None:
    """Entry point of an isolated worker: owns one :class:`Runner`, obeys (command, argument) messages."""
    try:
        model = source if isinstance(source, str) else onnx.load_from_string(source)
        runner = Runner(model, name, provider, cfg, spinning)
        inputs = [InputArg(i.name, list(i.shape), i.type) for i in runner.sess.get_inputs()]
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
    return RuntimeError("".join(traceback.format_exception(e)).strip())


class WorkerRunner:
    """The same interface as :class:`Runner`, the session living in a spawned process (``isolate``)."""

    def __init__(self, source: str | onnx.ModelProto, name: str, provider: Provider, cfg: BenchConfig,
                 spinning: bool | None) -> None:
        ctx = mp.get_context("spawn")  # never fork a process that has onnxruntime threads
        self.name = name
        self._conn, child = ctx.Pipe()
        payload = source.SerializeToString() if isinstance(source, onnx.ModelProto) else str(source)
        self._proc = ctx.Process(target=_worker_main, args=(child, payload, name, provider, cfg, spinning),
                                 daemon=True)
        self._proc.start()
        child.close()
        self.session_s, inputs = self._reply()
        self._io = IOInfo(inputs)

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
        return self._call("bind", dict(feeds))

    def run_once(self) -> float:
        return self._call("run")

    def memory(self, isolated: bool = True) -> Memory:
        return self._call("memory")

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

"""How the planner times models: a seam with two implementations.

A rewrite's worth depends on the kernels of the machine it ships to (int8 vs fp32 flips the decision, and so do
threads), so the planner never times anything itself: it hands models to a :class:`Timer`.

* :class:`OrtTimer` (the default) times in this process with :func:`onnxconv.bench.bench`: interleaved rounds,
  the fastest run of the first model as its absolute time and every other model placed against it by its
  median per-round speed-up (on a shared machine drift slows all models of a round alike).
* :class:`CommandTimer` (``--latency-command CMD``) times on a board: every model is written to a file and
  ``CMD`` runs through ``/bin/sh`` with ``{model}`` standing for that file's path (and ``{inputs}``, when ``CMD``
  holds it, for an .npz of the inputs): the paths are ``sh``'s positional parameters (:func:`substitute`), one
  argument each, so paths with spaces or shell characters work and inject nothing. Its output is read within
  bounds (:data:`MAX_ANSWER_BYTES`) and its process group is killed when it is done. ``CMD`` prints one JSON object with ``median_ms`` (what
  ``onnxconv bench MODEL --format timer`` prints). The models of one comparison are run in turn for
  :attr:`CommandTimer.rounds` rounds, the order reversed every other round; a model's time is its fastest
  median and the speed-ups are medians of per-round ratios, as in process. Whole models get the static input
  shapes of the inputs they are timed on, so the board needs no shape options.

Every figure is seconds. Both implementations time the options of one layer together (:meth:`Timer.layer`:
``KEEP`` first, the reference of the others) and a rewrite against its original (:meth:`Timer.pair`).
"""

from __future__ import annotations

import json
import math
import os
import selectors
import signal
import subprocess
import tempfile
import time
from collections.abc import Mapping, Sequence
from typing import Protocol

import numpy as np
import onnx

from ..bench import BenchConfig, SpeedUp, bench, speedup_stats
from ..compare import write_npz
from ..errors import OptionError, TimingError
from ..model_io import fix_input_shapes
from ..text import printable
from .choose import KEEP

__all__ = ["Timer", "OrtTimer", "CommandTimer", "check_latency_command", "substitute", "parse_latency",
           "COMMAND_ROUNDS",
           "MAX_ANSWER_BYTES", "MAX_TIMEOUT_S"]

#: Option key -> model: the options of one layer, :data:`~.choose.KEEP` first.
OptionModels = Mapping[tuple[str, int], onnx.ModelProto]
#: Rounds of a :class:`CommandTimer` comparison (each command run is already a median over the board's runs).
COMMAND_ROUNDS = 3
#: The most of a failing command's stderr (and of the command) an error line quotes.
_QUOTED = 200
#: The most a timing command may print: its answer is one small JSON object (a banner before it is fine).
MAX_ANSWER_BYTES = 16 << 20
#: How much of a command's stderr is kept (its last lines are quoted on failure).
_STDERR_KEPT = 1 << 16
#: The longest ``--latency-timeout``: the OS's wait takes milliseconds in a C int (about 24.8 days).
MAX_TIMEOUT_S = 1e6


class Timer(Protocol):
    """Times models for the planner (see the module docstring)."""

    #: Intra-op threads of the timed runs (None: the timer's default); part of a cached layer time's key.
    threads: int | None

    @property
    def key(self) -> str:
        """What a cached layer time depends on besides the layer: the provider, or the command."""
        ...

    def layer(self, models: OptionModels, label: str) -> dict[tuple[str, int], float]:
        """Seconds per option of one layer (static input shape, random inputs), ``KEEP`` first and the
        reference; ``label`` names the layer in messages."""
        ...

    def pair(self, original: onnx.ModelProto, rewritten: onnx.ModelProto | None,
             feeds: Mapping[str, np.ndarray]) -> tuple[float, float | None]:
        """(seconds of ``original``, median speed-up of ``rewritten`` over it; None without one) on ``feeds``."""
        ...


class OrtTimer:
    """Timing in this process with onnxruntime on ``provider`` with ``threads`` (see the module docstring)."""

    def __init__(self, provider: str = "cpu", threads: int | None = None, layer_iters: int = 20,
                 model_iters: int = 20) -> None:
        self.provider, self.threads = provider, threads
        self.layer_iters, self.model_iters = layer_iters, model_iters

    @property
    def key(self) -> str:
        return self.provider

    def layer(self, models: OptionModels, label: str) -> dict[tuple[str, int], float]:
        keys = _keep_first(models)
        cfg = BenchConfig(providers=(self.provider,), iters=self.layer_iters, warmup=3, threads=self.threads)
        report = bench([models[k] for k in keys], cfg, names=[f"{label}:{kind}{v}" for kind, v in keys])
        results = report.runs[0].models
        # A shared machine slows runs at random: the fastest run is the steadiest absolute figure, and each
        # option is placed against it by its median per-round ratio to keep (interleaved, so drift cancels).
        keep_s = results[0].timing.min_s
        out = {KEEP: keep_s}
        for k, res in zip(keys[1:], results[1:]):
            ratio = res.speedup.median if res.speedup is not None else keep_s / res.timing.min_s
            out[k] = keep_s / ratio
        return out

    def pair(self, original: onnx.ModelProto, rewritten: onnx.ModelProto | None,
             feeds: Mapping[str, np.ndarray]) -> tuple[float, float | None]:
        with tempfile.TemporaryDirectory() as tmp:
            path = os.path.join(tmp, "inputs.npz")
            write_npz(path, feeds)  # not np.savez(**feeds): an input may be named "file" or "allow_pickle"
            cfg = BenchConfig(providers=(self.provider,), iters=self.model_iters, warmup=3, threads=self.threads,
                              inputs=path)
            models = [original] if rewritten is None else [original, rewritten]
            report = bench(models, cfg, names=["original", "rewritten"][: len(models)])
        run = report.runs[0]
        speed = run.models[1].speedup.median if rewritten is not None and run.models[1].speedup else None
        return run.models[0].timing.min_s, speed  # the fastest run, as for the layers


def check_latency_command(command: str) -> str:
    """``command`` if it can time a model: it names ``{model}``, and no placeholder sits inside single quotes.

    Raises:
        OptionError: no ``{model}``, or ``{model}`` / ``{inputs}`` inside '...' (see :func:`substitute`).
    """
    if "{model}" not in command:
        raise OptionError("--latency-command: it must name {model}, the model file to time (e.g. "
                          "\"onnxconv bench {model} --format timer\")")
    substitute(command)
    return command


def substitute(command: str) -> str:
    """``command`` with ``{model}`` and ``{inputs}`` as sh's positional parameters 1 and 2: ``"$1"`` where the
    placeholder stands bare, ``${1}`` inside double quotes (already quoted: one word either way). The paths are
    passed as the parameters' values, which sh never parses again, so nothing in a path (a quote, ``$(...)``,
    a ``{inputs}`` in TMPDIR's name) can act.

    The quoting context is followed as sh reads it: backslash escapes, '...' and "..." (a ``$(...)`` inside
    double quotes is not followed into: a placeholder there counts as double-quoted, where ``${1}`` is right).

    Raises:
        OptionError: a placeholder inside single quotes, where no parameter is expanded (the command would get
            the text ``{model}``; write it bare, or in double quotes).
    """
    out: list[str] = []
    quote = ""  # "", "'" or '"': the quotes the scan is inside
    i = 0
    while i < len(command):
        c = command[i]
        name = next((n for n in ("model", "inputs") if command.startswith("{" + n + "}", i)), None)
        if name is not None:
            if quote == "'":
                raise OptionError(f"--latency-command: {{{name}}} is inside '...', where sh expands nothing: write "
                                  f"it bare or in double quotes (onnxconv quotes the path)")
            param = "1" if name == "model" else "2"
            out.append(f'"${param}"' if not quote else "${" + param + "}")
            i += len(name) + 2
            continue
        if c == "\\" and quote != "'" and i + 1 < len(command):
            out.append(command[i:i + 2])
            i += 2
            continue
        if c in "'\"" and (not quote or quote == c):
            quote = "" if quote else c
        out.append(c)
        i += 1
    return "".join(out)


def parse_latency(stdout: str, command: str) -> float:
    """Seconds from a command's output: one JSON object with a finite ``median_ms`` above 0 (the whole output,
    else its last non-empty line, so a login banner before it does no harm).

    Raises:
        TimingError: no such object, one line naming what was printed instead.
    """
    lines = [ln for ln in stdout.splitlines() if ln.strip()]
    for text in (stdout, lines[-1] if lines else ""):
        try:
            data = json.loads(text)
        except (ValueError, RecursionError):  # RecursionError: nested deeper than Python's recursion limit
            continue
        if isinstance(data, dict):
            value = data.get("median_ms")
            try:  # an integer beyond float's range overflows; a denormal divided by 1000 is 0 s
                seconds = float(value) / 1000.0 if isinstance(value, (int, float)) and not isinstance(value, bool) \
                    else math.nan
            except OverflowError:
                seconds = math.inf
            if math.isfinite(seconds) and seconds > 0:
                return seconds
            raise TimingError(f"--latency-command {_shown(command)}: printed an object without a positive "
                              f"median_ms (median_ms: {printable(repr(value))[:_QUOTED]})")
    shown = printable(lines[-1])[:_QUOTED] if lines else "nothing"
    raise TimingError(f"--latency-command {_shown(command)}: printed no JSON object with median_ms (last line: "
                      f"{shown})")


class CommandTimer:
    """Timing by an external command, typically on a board over ssh (see the module docstring)."""

    def __init__(self, command: str, timeout: float = 600.0, rounds: int = COMMAND_ROUNDS) -> None:
        self.command = check_latency_command(command)
        self.timeout, self.rounds = timeout, max(1, rounds)
        self.threads: int | None = None  # the board's command decides

    @property
    def key(self) -> str:
        return f"command:{self.command}"

    def layer(self, models: OptionModels, label: str) -> dict[tuple[str, int], float]:
        keys = _keep_first(models)
        x = next(iter(models[KEEP].graph.input))
        shape = tuple(d.dim_value for d in x.type.tensor_type.shape.dim)
        dtype = onnx.helper.tensor_dtype_to_np_dtype(x.type.tensor_type.elem_type)
        feeds = {x.name: np.random.default_rng(0).standard_normal(shape).astype(dtype)}
        seconds, ratios = self._compare([models[k] for k in keys], feeds)
        return {KEEP: seconds, **{k: seconds / r for k, r in zip(keys[1:], ratios)}}

    def pair(self, original: onnx.ModelProto, rewritten: onnx.ModelProto | None,
             feeds: Mapping[str, np.ndarray]) -> tuple[float, float | None]:
        models = [original] if rewritten is None else [original, rewritten]
        seconds, ratios = self._compare(models, feeds)
        return seconds, (ratios[0] if ratios else None)

    def speedup(self, original: onnx.ModelProto, rewritten: onnx.ModelProto,
                feeds: Mapping[str, np.ndarray]) -> SpeedUp:
        """``rewritten``'s speed-up over ``original`` as ``bench`` gives it: percentiles of the per-round ratios
        (``quantize --latency-command``: int8 over fp32 on the board)."""
        base, times = self._times([original, rewritten], feeds)
        return speedup_stats(base, times)

    def _compare(self, models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray],
                 ) -> tuple[float, list[float]]:
        """(fastest time of ``models[0]``, median per-round speed-up of every other model over it)."""
        base, *others = self._times(models, feeds)
        ratios = [float(np.median([a / b for a, b in zip(base, t)])) for t in others]
        return min(base), ratios

    def once(self, model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> float:
        """Seconds of one run on ``model``: a check that the command works, before long work that ends timed."""
        return self._times([model], feeds, rounds=1)[0][0]

    def _times(self, models: Sequence[onnx.ModelProto], feeds: Mapping[str, np.ndarray],
               rounds: int | None = None) -> list[list[float]]:
        """Seconds of every model in every round (default :attr:`rounds`; the order reversed every other one)."""
        with tempfile.TemporaryDirectory(prefix="onnxconv-timer-") as tmp:
            inputs = os.path.join(tmp, "inputs.npz")
            if "{inputs}" in self.command:
                write_npz(inputs, feeds)
            paths = []
            for i, m in enumerate(models):
                paths.append(os.path.join(tmp, f"model-{i}.onnx"))
                onnx.save_model(_static(m, feeds), paths[-1])  # a scratch file in a private folder, not an output
            times: list[list[float]] = [[] for _ in models]
            for r in range(self.rounds if rounds is None else rounds):
                order = list(range(len(models)))
                for i in (order if r % 2 == 0 else order[::-1]):  # A B, B A: drift falls on both alike
                    times[i].append(self._run(paths[i], inputs))
        return times

    def _run(self, model_path: str, inputs_path: str) -> float:
        """One run of the command on one model: its ``median_ms`` in seconds."""
        # The paths travel as sh's positional parameters, never as command text (see substitute).
        cmd = substitute(self.command)
        shown = _shown(self.command)
        # Its own session, so that a timeout or Ctrl-C ends the whole pipeline it starts (ssh, scp), not only sh.
        try:
            proc = subprocess.Popen(["/bin/sh", "-c", cmd, "onnxconv-latency", model_path, inputs_path],
                                    stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    start_new_session=True)
        except OSError as e:  # e.g. a command line longer than one argument may be (E2BIG)
            raise TimingError(f"--latency-command {shown}: cannot start /bin/sh: "
                              f"{printable(e.strerror or str(e))}") from None
        try:
            out, err = _read_bounded(proc, self.timeout, shown)
        finally:
            # Whatever happened (an answer, a timeout, Ctrl-C): nothing the command started outlives its run, not
            # even a background child holding no pipe (sh may have exited already).
            _kill_group(proc)
        if proc.returncode != 0:
            last = [ln for ln in err.decode("utf-8", "replace").splitlines() if ln.strip()]
            why = f": {printable(last[-1])[:_QUOTED]}" if last else ""
            raise TimingError(f"--latency-command {shown}: exited with status {proc.returncode}{why}")
        return parse_latency(out.decode("utf-8", "replace"), self.command)


def _read_bounded(proc: subprocess.Popen[bytes], timeout: float, shown: str) -> tuple[bytes, bytes]:
    """(stdout, the end of stderr) of ``proc`` once it has exited, read as they come: a command that prints
    without end is stopped at :data:`MAX_ANSWER_BYTES` instead of filling memory until the timeout.

    Raises:
        TimingError: no exit within ``timeout`` seconds, or too much printed.
    """
    assert proc.stdout is not None and proc.stderr is not None
    deadline = time.monotonic() + timeout
    out, err = bytearray(), bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ, out)
        sel.register(proc.stderr, selectors.EVENT_READ, err)
        while sel.get_map():
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimingError(f"--latency-command {shown}: no answer within {timeout:g} s (--latency-timeout)")
            for key, _ in sel.select(left):
                chunk = os.read(key.fd, 1 << 16)
                if not chunk:
                    sel.unregister(key.fileobj)
                    continue
                key.data.extend(chunk)
                if key.data is err:
                    del err[:-_STDERR_KEPT]  # only its last lines are quoted
                elif len(out) > MAX_ANSWER_BYTES:
                    raise TimingError(f"--latency-command {shown}: printed more than {MAX_ANSWER_BYTES >> 20} MiB "
                                      "(one JSON object with median_ms is expected)")
    while not _exited(proc):  # both pipes closed; sh may still be running
        if time.monotonic() >= deadline:
            raise TimingError(f"--latency-command {shown}: no answer within {timeout:g} s (--latency-timeout)")
        time.sleep(0.005)
    return bytes(out), bytes(err)


def _exited(proc: subprocess.Popen[bytes]) -> bool:
    """Whether ``proc`` has exited, without reaping it where the OS allows (Linux): until it is reaped its id,
    which is also its process group's, cannot go to another process, so :func:`_kill_group` cannot hit one."""
    if hasattr(os, "waitid"):
        return os.waitid(os.P_PID, proc.pid, os.WEXITED | os.WNOHANG | os.WNOWAIT) is not None
    return proc.poll() is not None


def _shown(command: str) -> str:
    """The command as error lines quote it: escaped, and cut short when long."""
    text = printable(command)
    return text if len(text) <= _QUOTED else text[:_QUOTED] + "..."


def _kill_group(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL to the command's process group (it was started in a session of its own), then reap sh."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    proc.wait()


def _keep_first(models: OptionModels) -> list[tuple[str, int]]:
    if KEEP not in models:
        raise ValueError("a layer's options must include keep, the reference of the others")
    return [KEEP, *(k for k in models if k != KEEP)]


def _static(model: onnx.ModelProto, feeds: Mapping[str, np.ndarray]) -> onnx.ModelProto:
    """``model`` with the shapes of ``feeds`` written into its graph inputs (a copy; already static: as is)."""
    shapes = {k: list(v.shape) for k, v in feeds.items()
              if any(not d.HasField("dim_value") for vi in model.graph.input if vi.name == k
                     for d in vi.type.tensor_type.shape.dim)}
    if not shapes:
        return model
    out = onnx.ModelProto()
    out.CopyFrom(model)
    fix_input_shapes(out, shapes, None)
    return out

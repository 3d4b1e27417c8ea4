"""Golden outputs: prove that a refactor changes no output of ``onnxconv`` (issue 11).

``capture`` runs a fixed, deterministic list of CLI cases (``stats`` in every format on every sample and real
model; ``separate`` in separable mode with each rank policy and each ``--form``, shuffle mode, ``--report``,
``--verify``, ``--calibration`` with and without ``--no-kernel-refit``, and planned ``--target-speedup`` runs)
against the ``onnxconv`` package of the checkout it is run from, and writes ``DIR/manifest.json``: per case the
exit status, the sha256 of what the command printed, the sha256 of every file it wrote and, for a model, of
its serialized graph. Every output stays in ``DIR/cases/<case>/`` (``stdout.txt`` included) so that a mismatch
can be diffed. ``compare`` reads two captures and prints each case ``same`` or ``DIFFERENT`` with where it
differs (first differing stdout line, first differing JSON key path, first differing node / initializer /
model field); exit status 1 when any case differs or is missing on one side (unless that side was captured
with ``--quick``/``--only``: then it is listed as not compared), 2 on bad input.

Use it around a refactor, from the checkout root (the package is imported from the current directory, through
its public CLI ``onnxconv.cli.main`` with click's CliRunner, never its private functions, except the latency
seam below)::

    git checkout BASE && python tools/golden.py capture /tmp/golden/base      # 197 cases, ~90 s CPU
    git checkout REFACTOR && python tools/golden.py capture /tmp/golden/new
    python tools/golden.py compare /tmp/golden/base /tmp/golden/new              # exit 0: nothing changed

(``cp tools/golden.py /tmp/`` first if the base commit does not have it, and run ``python /tmp/golden.py``
with the checkout as the current directory.) Capture twice on one commit and compare to check determinism.
Measured at f318295: ~90 s CPU, 5.4 min wall on the 2-core box at load 16; ``--quick`` saves ~65 s CPU.
A baseline of f318295 may already be in /work/golden/base (same library versions needed: compare warns).

Why the outputs are reproducible:

* Every path the CLI sees is relative and the same in every capture: the cases run with the capture folder as
  the current directory, where ``models`` and ``realmodels`` are symlinks to the checkout's (removed at the end)
  and outputs go to ``cases/<case>/``. So ``model``/``output`` in reports and ``wrote ...`` lines do not depend
  on where the checkout or the capture lives.
* Calibration inputs are generated per model from its input specs with a seed derived from the model's name
  (a few samples, symbolic dims set small); their array contents are hashed under ``inputs`` and compared.
* ``--verify`` uses the CLI's own seeded random inputs.
* ``--target-speedup`` measures latencies, which no two runs agree on. Inside this tool only, the planner's
  two timing functions (per-layer option latencies, ``_measure``; whole-model timing, ``_bench_pair``) are
  replaced in-process by a deterministic model: seconds = conv MACs / 1e9 (a layer's rank-r option costs
  ``r (k + C_out/g) / (C_out/g k)`` of its MACs, a G-group option ``1/G``; a model's time is its total conv MACs
  from ``onnxconv.analyze``). The functions are looked up in a few modules (``onnxconv.plan`` today, a
  ``planning`` package later) and replaced in every ``onnxconv`` module holding them; capture prints one line
  saying which it used, and planned cases are recorded as failing (so compare flags them) if none is found.
* Volatile stdout parts removed before hashing: none. No case prints a timing line once the planner's
  timings are replaced (the plan note's "measured" figure then comes from the MAC model); a capture-twice
  check on one commit gives all cases the same. ``VOLATILE`` lists patterns should one ever be needed.

Limits: the planned cases reach into the planner's private seam (``_measure``/``_bench_pair`` and its
candidates' ``name``/``options``/``macs``/``weight``/``attrs``); a refactor that renames them makes those cases
fail with ``[golden] uncaught ...`` (reported, never silently passing): update ``SEAM_*``/:func:`_layer_seconds`
and capture both sides with the updated tool. Outputs are compared byte for byte with the same onnx,
onnxruntime and numpy versions; other versions may legitimately change floats.

``--quick`` drops the slow real-model calibration cases. ``--only REGEX`` runs the matching cases only, and
``--list`` prints the case names.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import importlib
import json
import math
import os
import re
import shutil
import sys
import tempfile
import time
import zlib
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

#: Format of manifest.json (compare refuses a manifest of another format).
MANIFEST_FORMAT = "onnxconv-golden/1"

#: Regexes of stdout lines removed before hashing because they are truly volatile (none are, see above).
VOLATILE: tuple[str, ...] = ()

#: Sample models with a reasonably small run time for the full separate matrix.
SAMPLE_GLOB = "models/*.onnx"
#: Real models (fetched by tools/realmodels.py into the ignored realmodels/) and what they are used for.
REAL_DIR = "realmodels"
#: The realistic one: full separate matrix except calibration with the kernel refit (minutes on ddddocr_det).
REAL_SEPARATE = "ddddocr_det.onnx"
#: A small real model with symbolic dims, for the kernel refit on a trained model (at a small input shape).
REAL_SMALL = "ppocr_cls.onnx"
REAL_SMALL_SHAPE = (1, 3, 48, 64)
#: Input shapes for ``stats`` on real models with symbolic dims (each also gets one case without, an error).
REAL_SHAPES = {"ddddocr_common": "input1=1x1x64x256", "ddddocr_common_old": "input1=1x1x64x256",
               "ppocr_cls": "x=1x3x48x192", "ppocr_det": "x=1x3x320x320", "ppocr_rec": "x=1x3x48x320"}
#: Samples per calibration file (sample models; real models: 2, their layers are large); symbolic dims other
#: than the batch get SYMBOLIC_DIM. With 4 samples the mixed plan on tiny_cnn uses both a rank and a G.
CALIB_SAMPLES = 4
CALIB_SAMPLES_REAL = 2
SYMBOLIC_DIM = 32
#: The tiny model on which the planner runs with the MAC latency model.
PLAN_MODEL = "models/tiny_cnn.onnx"

#: Where the planner's timing functions may live (this commit; after a move into a package).
SEAM_MODULES = ("onnxconv.plan", "onnxconv.planning.latency", "onnxconv.planning.measure",
                "onnxconv.planning.timing", "onnxconv.planning.plan", "onnxconv.planning.core",
                "onnxconv.planning")
#: (per-layer timing, whole-model timing) names: the public ones of ``onnxconv.planning.latency`` first, then the
#: private ones of the old ``onnxconv.plan`` (so the base commit captures too).
SEAM_NAMES = (("measure_latencies", "bench_pair"), ("_measure", "_bench_pair"))


class GoldenError(Exception):
    """Bad input to the tool: reported as one ``Error: ...`` line, exit status 2."""


# ----------------------------------------------------------------------------------------------------------------
# Cases


@dataclass
class Case:
    """One CLI run: ``args`` with ``{out}`` standing for the case's output folder (relative to the capture)."""

    name: str
    args: list[str]
    planned: bool = False
    calib: str | None = None  # model path whose calibration file the case needs
    calib_shape: tuple[int, ...] | None = None


def _stem(path: str) -> str:
    return Path(path).stem


def cases(root: Path, quick: bool) -> tuple[list[Case], list[str]]:
    """The fixed case list for the checkout at ``root`` and notes (absent real models)."""
    out: list[Case] = []
    notes: list[str] = []
    samples = sorted(p.relative_to(root).as_posix() for p in root.glob(SAMPLE_GLOB))
    real_dir = root / REAL_DIR
    reals = sorted(f"{REAL_DIR}/{p.name}" for p in real_dir.glob("*.onnx")) if real_dir.is_dir() else []
    if not reals:
        notes.append(f"skipped: real-model cases ({REAL_DIR}/ absent or empty; fetch with python tools/realmodels.py)")

    for m in samples + reals:
        s = _stem(m)
        shape = ["--input-shape", REAL_SHAPES[s]] if m in reals and s in REAL_SHAPES else []
        if shape:
            out.append(Case(f"stats-noshape-{s}", ["stats", m]))
        for fmt in ("table", "json", "csv", "markdown"):
            args = ["stats", m, *shape] + ([] if fmt == "table" else ["--format", fmt])
            out.append(Case(f"stats-{fmt}-{s}", args))
        out.append(Case(f"stats-json-allops-sortmacs-{s}", ["stats", m, *shape, "--format", "json", "--all-ops",
                                                            "--sort", "macs", "--top", "3", "--groups", "2"]))

    def separate_matrix(m: str, calib: bool, kernel_refit: bool, real: bool = False) -> None:
        s = _stem(m)
        o = ["-o", "{out}/out.onnx"]
        r = ["--report", "{out}/report.json"]
        sep = ["separate", m, *o]
        out.append(Case(f"sep-rank2-plain-{s}", [*sep, "--rank", "2"]))
        for form in ("sum", "concat", "multiplier", "tiled"):
            out.append(Case(f"sep-rank2-{form}-{s}", [*sep, "--rank", "2", "--form", form, *r]))
        out.append(Case(f"sep-energy0.9-{s}", [*sep, "--energy", "0.9", *r]))
        out.append(Case(f"sep-exact-{s}", [*sep, "--exact", *r]))
        out.append(Case(f"sep-budget0.5-{s}", [*sep, "--budget", "0.5", *r]))
        out.append(Case(f"sep-budget0.75-{s}", [*sep, "--budget", "0.75", *r]))
        out.append(Case(f"sep-maxerror0.3-{s}", [*sep, "--max-error", "0.3", *r]))
        out.append(Case(f"sep-exact-verify-{s}", [*sep, "--exact", "--verify", *r]))
        out.append(Case(f"sep-rank2-verify-{s}", [*sep, "--rank", "2", "--verify", *r]))
        if not real:  # on a real model the shuffle pass takes ~15 s CPU a run: only the verified run below
            out.append(Case(f"shuf-g2-{s}", [*sep, "--mode", "shuffle", "--groups", "2", *r]))
            out.append(Case(f"shuf-g2-mixshuffle-{s}", [*sep, "--mode", "shuffle", "--groups", "2", "--mixing",
                                                        "shuffle", *r]))
        out.append(Case(f"shuf-g2-verify-{s}", [*sep, "--mode", "shuffle", "--groups", "2", "--verify", *r]))
        if calib:
            cal = ["--calibration", f"calib/{s}.npz"]
            if kernel_refit:
                out.append(Case(f"cal-rank2-{s}", [*sep, "--rank", "2", *cal, *r], calib=m))
                out.append(Case(f"cal-shuf-g2-{s}", [*sep, "--mode", "shuffle", "--groups", "2", *cal, *r], calib=m))
            out.append(Case(f"cal-rank2-nokr-{s}", [*sep, "--rank", "2", *cal, "--no-kernel-refit", *r], calib=m))

    for m in samples:
        separate_matrix(m, calib=True, kernel_refit=True)
    if f"{REAL_DIR}/{REAL_SEPARATE}" in reals:
        separate_matrix(f"{REAL_DIR}/{REAL_SEPARATE}", calib=not quick, kernel_refit=False, real=True)
        if quick:
            notes.append(f"skipped (--quick): calibration cases on {REAL_DIR}/{REAL_SEPARATE}")
    small = f"{REAL_DIR}/{REAL_SMALL}"
    if small in reals:
        s = _stem(small)
        dims = "x".join(map(str, REAL_SMALL_SHAPE))
        base = ["separate", small, "-o", "{out}/out.onnx", "--input-shape", f"x={dims}",
                "--report", "{out}/report.json"]
        out.append(Case(f"sep-rank2-verify-{s}", [*base, "--rank", "2", "--verify"]))
        if quick:
            notes.append(f"skipped (--quick): calibration case on {small}")
        else:
            out.append(Case(f"cal-rank2-{s}", [*base, "--rank", "2", "--calibration", f"calib/{s}.npz"],
                            calib=small, calib_shape=REAL_SMALL_SHAPE))

    if PLAN_MODEL in samples:
        s = _stem(PLAN_MODEL)
        base = ["separate", PLAN_MODEL, "-o", "{out}/out.onnx", "--calibration", f"calib/{s}.npz",
                "--report", "{out}/report.json"]
        for mode, target in (("separable", "1.5"), ("shuffle", "1.3"), ("mixed", "1.8")):
            out.append(Case(f"plan-{mode}-{target}-{s}", [*base, "--mode", mode, "--target-speedup", target],
                            planned=True, calib=PLAN_MODEL))

    # Bad input: the one-line errors and exit statuses are behaviour too.
    out.append(Case("err-stats-missing", ["stats", "models/no_such_model.onnx"]))
    if samples:
        m = samples[0]
        out.append(Case("err-shuffle-no-groups", ["separate", m, "-o", "{out}/out.onnx", "--mode", "shuffle"]))
        out.append(Case("err-two-policies", ["separate", m, "-o", "{out}/out.onnx", "--rank", "2", "--exact"]))
        out.append(Case("err-no-policy", ["separate", m, "-o", "{out}/out.onnx"]))
        out.append(Case("err-calibration-missing", ["separate", m, "-o", "{out}/out.onnx", "--rank", "2",
                                                    "--calibration", "calib/none.npz"]))
    return out, notes


# ----------------------------------------------------------------------------------------------------------------
# Calibration inputs


def _np_dtype(elem: int) -> np.dtype:
    return np.dtype(onnx.helper.tensor_dtype_to_np_dtype(elem))


def make_calibration(model_path: Path, dest: Path, shape: Sequence[int] | None = None) -> dict[str, str]:
    """Write a seeded calibration ``.npz`` for the model's graph inputs; returns input name -> sha256 of the
    array (dtype, shape and bytes; the .npz file itself holds zip timestamps, so it is not hashed).

    Each array is ``CALIB_SAMPLES`` (``CALIB_SAMPLES_REAL`` under realmodels/) samples (times a fixed batch) of
    standard normal values; symbolic dims take ``SYMBOLIC_DIM``, or the given ``shape`` (one input). The seed is
    the CRC32 of the model's file name, so every capture draws the same values.
    """
    m = onnx.load(str(model_path), load_external_data=False)
    inits = {t.name for t in m.graph.initializer}
    rng = np.random.default_rng(zlib.crc32(model_path.name.encode()))
    arrays: dict[str, Any] = {}  # Any: savez's allow_pickle: bool could be a key of **arrays
    for vi in m.graph.input:
        if vi.name in inits:
            continue
        tt = vi.type.tensor_type
        if shape is not None:
            dims = list(shape)
        else:
            dims = [d.dim_value if d.HasField("dim_value") and d.dim_value > 0 else SYMBOLIC_DIM
                    for d in tt.shape.dim]
        batch = dims[0] if dims and shape is None and tt.shape.dim[0].HasField("dim_value") else 1
        samples = CALIB_SAMPLES_REAL if model_path.parent.name == REAL_DIR else CALIB_SAMPLES
        dims = [samples * max(1, batch), *dims[1:]]
        arrays[vi.name] = rng.standard_normal(dims).astype(_np_dtype(tt.elem_type))
    dest.parent.mkdir(parents=True, exist_ok=True)
    np.savez(dest, **arrays)
    return {k: _array_sha(a) for k, a in sorted(arrays.items())}


def _array_sha(a: np.ndarray) -> str:
    h = hashlib.sha256(f"{a.dtype.str}{list(a.shape)}".encode())
    h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


# ----------------------------------------------------------------------------------------------------------------
# The deterministic latency model (planned cases only)


def _layer_seconds(cand: Any, option: tuple[str, int]) -> float:
    """Seconds of one option of a planner candidate under the MAC model (see the module docstring)."""
    macs = float(cand.macs or 0)
    kind, value = option
    if kind == "rank":
        w = cand.weight.shape
        g = int(cand.attrs.get("group", 1) or 1)
        k, ng = math.prod(w[2:]), w[0] // g
        macs *= value * (k + ng) / (ng * k)
    elif kind == "groups":
        macs /= value
    return macs * 1e-9


def _fake_measure(cands: Sequence[Any], *args: Any, **kwargs: Any) -> dict[str, dict[tuple[str, int], float]]:
    """Replacement of the planner's per-layer timing: option -> seconds, keep first."""
    return {c.name: {o: _layer_seconds(c, o) for o in [("keep", 0), *c.options]} for c in cands}


def _model_seconds(model: onnx.ModelProto) -> float:
    import onnxconv

    report = onnxconv.analyze(model)
    return float(report.totals["macs"] or 0) * 1e-9


def _fake_bench_pair(original: onnx.ModelProto, rewritten: onnx.ModelProto | None, *args: Any,
                     **kwargs: Any) -> tuple[float, float | None]:
    """Replacement of the planner's whole-model timing: (original seconds, speed-up of ``rewritten``)."""
    t0 = _model_seconds(original)
    if rewritten is None:
        return t0, None
    t1 = _model_seconds(rewritten)
    return t0, (t0 / t1 if t1 > 0 else None)


class GoldenTimer:
    """The MAC latency model as an ``onnxconv.planning.Timer`` (the planner's timing seam since issue 19): the
    same figures as :func:`_fake_measure` / :func:`_fake_bench_pair`, so captures through either seam agree."""

    key = "cpu"
    threads = None

    def layer(self, models: Any, label: str) -> dict[tuple[str, int], float]:
        keep = models[("keep", 0)]
        conv = next(n for n in keep.graph.node if n.op_type == "Conv")
        weight = next(t for t in keep.graph.initializer if t.name == conv.input[1])
        group = next((a.i for a in conv.attribute if a.name == "group"), 1)
        import onnxconv

        # The candidates' MACs are the pass's, at batch 1; the layer model runs the calibration chunk's batch.
        batch = max(1, keep.graph.input[0].type.tensor_type.shape.dim[0].dim_value)
        macs = int(onnxconv.analyze(keep).totals["macs"] or 0) // batch
        cand = _LayerShape(macs, tuple(weight.dims), {"group": group})
        return {o: _layer_seconds(cand, o) for o in models}

    def pair(self, original: onnx.ModelProto, rewritten: onnx.ModelProto | None,
             feeds: Any) -> tuple[float, float | None]:
        return _fake_bench_pair(original, rewritten)


@dataclass
class _LayerShape:
    """What :func:`_layer_seconds` reads of a candidate: its MACs, weight shape and attributes."""

    macs: int
    shape: tuple[int, ...]
    attrs: dict[str, Any]

    @property
    def weight(self) -> Any:
        return np.empty(self.shape, np.float32)


@contextlib.contextmanager
def latency_seam() -> Iterator[str]:
    """Replace the planner's timing in every loaded ``onnxconv`` module that holds it; yields one line saying
    what was replaced (or that nothing was, then the planned cases fail and compare flags them).

    The timer seam (``make_timer`` of ``onnxconv.planning.planner``, issue 19) is used where it exists;
    otherwise the timing functions of older commits (:data:`SEAM_NAMES`)."""
    try:
        planner_mod = importlib.import_module("onnxconv.planning.planner")
    except ImportError:
        planner_mod = None
    make = getattr(planner_mod, "make_timer", None)
    if callable(make):
        timer = GoldenTimer()
        patched_timer = []
        for name, mod in sorted(sys.modules.items()):
            if mod is not None and (name == "onnxconv" or name.startswith("onnxconv.")) \
                    and getattr(mod, "make_timer", None) is make:
                setattr(mod, "make_timer", lambda options: timer)
                patched_timer.append(mod)
        try:
            yield ("latency seam: onnxconv.planning.planner.make_timer replaced by the MAC model's timer (in "
                   f"{', '.join(sorted(m.__name__ for m in patched_timer))})")
        finally:
            for mod in patched_timer:
                setattr(mod, "make_timer", make)
        return
    with _function_seam() as line:
        yield line


@contextlib.contextmanager
def _function_seam() -> Iterator[str]:
    """The seam of commits before the timer: the two timing functions replaced by name."""
    found: dict[str, Any] = {}
    where = ""
    fakes: dict[str, Any] = {}
    for mod_name in SEAM_MODULES:
        try:
            mod = importlib.import_module(mod_name)
        except ImportError:
            continue
        for layer_name, model_name in SEAM_NAMES:
            layer, whole = getattr(mod, layer_name, None), getattr(mod, model_name, None)
            if callable(layer) and callable(whole):
                found = {layer_name: layer, model_name: whole}
                fakes = {layer_name: _fake_measure, model_name: _fake_bench_pair}
                where = mod_name
                break
        if found:
            break
    if not found:
        names = " or ".join(f"{a}/{b}" for a, b in SEAM_NAMES)
        yield (f"latency seam: NOT FOUND ({names} in none of {', '.join(SEAM_MODULES)}); "
               "planned cases are recorded as failing")
        return
    patched: list[tuple[Any, str, Any]] = []
    for name, mod in sorted(sys.modules.items()):
        if mod is None or not (name == "onnxconv" or name.startswith("onnxconv.")):
            continue
        for attr, orig in found.items():
            if getattr(mod, attr, None) is orig:
                setattr(mod, attr, fakes[attr])
                patched.append((mod, attr, orig))
    mods = sorted({m.__name__ for m, _, _ in patched})
    try:
        layer_name, model_name = found
        yield (f"latency seam: {where}.{layer_name} + {where}.{model_name} replaced by the MAC model "
               f"(in {', '.join(mods)})")
    finally:
        for mod, attr, orig in patched:
            setattr(mod, attr, orig)


# ----------------------------------------------------------------------------------------------------------------
# Capture


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def graph_sha(path: Path) -> str | None:
    """sha256 of the model's graph alone (what a producer/version header change leaves equal)."""
    try:
        m = onnx.load(str(path), load_external_data=False)
    except Exception:  # noqa: BLE001 - an unreadable model is recorded as such
        return None
    return _sha(m.graph.SerializeToString(deterministic=True))


def _normalise(text: str) -> str:
    if not VOLATILE:
        return text
    pats = [re.compile(p) for p in VOLATILE]
    return "".join(line for line in text.splitlines(keepends=True) if not any(p.search(line) for p in pats))


def run_case(case: Case, runner: Any, main: Any) -> tuple[int, str]:
    """(exit status, printed text) of one case; an uncaught exception becomes one line (no traceback paths)."""
    args = [a.replace("{out}", f"cases/{case.name}") for a in case.args]
    result = runner.invoke(main, args, catch_exceptions=True)
    text = result.output
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        e = result.exception
        text += f"[golden] uncaught {type(e).__name__}: {e}\n"
    return result.exit_code, text


def _only(regex: str) -> re.Pattern[str]:
    try:
        return re.compile(regex)
    except re.error as e:
        raise GoldenError(f"--only {regex!r}: not a regular expression ({e})") from None


def capture(dest: Path, quick: bool, only: str | None, root: Path, log: Callable[[str], None] = print) -> int:
    """Run the cases against the package at ``root`` and write ``dest`` (manifest + outputs) atomically."""
    if dest.exists():
        raise GoldenError(f"{dest}: already exists; remove it or choose another folder")
    if not dest.parent.is_dir():
        raise GoldenError(f"{dest.parent}: no such folder")
    if not (root / "onnxconv" / "__init__.py").is_file():
        raise GoldenError(f"{root}: not an onnxconv checkout (run from the checkout root)")
    pattern = _only(only) if only is not None else None
    if str(root) not in sys.path:
        sys.path.insert(0, str(root))
    loaded = sys.modules.get("onnxconv")
    if loaded is not None and Path(loaded.__file__ or "").resolve().parent != (root / "onnxconv").resolve():
        # Another copy was imported first (an installed package): import the checkout's instead.
        for name in [n for n in sys.modules if n == "onnxconv" or n.startswith("onnxconv.")]:
            del sys.modules[name]
    from click.testing import CliRunner

    import onnxconv
    from onnxconv.cli import main

    pkg = Path(onnxconv.__file__).resolve().parent
    if pkg != (root / "onnxconv").resolve():
        raise GoldenError(f"imported onnxconv from {pkg}, not from {root}: check sys.path / installed package")
    todo, notes = cases(root, quick)
    if pattern is not None:
        todo = [c for c in todo if pattern.search(c.name)]
    for n in notes:
        log(n)
    log(f"onnxconv from {pkg}; {len(todo)} cases")

    tmp = Path(tempfile.mkdtemp(prefix=f".{dest.name}.", dir=dest.parent))
    cwd = os.getcwd()
    start = time.monotonic()
    try:
        for link in ("models", REAL_DIR):
            if (root / link).exists():
                (tmp / link).symlink_to((root / link).resolve(), target_is_directory=True)
        os.chdir(tmp)
        inputs: dict[str, dict[str, str]] = {}
        for c in todo:
            if c.calib and f"calib/{_stem(c.calib)}.npz" not in inputs:
                rel = f"calib/{_stem(c.calib)}.npz"
                inputs[rel] = make_calibration(tmp / c.calib, tmp / rel, c.calib_shape)
        runner = CliRunner()
        manifest_cases: dict[str, Any] = {}
        seam_line = None
        for i, c in enumerate(todo, 1):
            case_dir = tmp / "cases" / c.name
            case_dir.mkdir(parents=True)
            t0 = time.monotonic()
            if c.planned:
                with latency_seam() as line:
                    if seam_line is None:
                        seam_line = line
                        log(line)
                    code, text = run_case(c, runner, main)
            else:
                code, text = run_case(c, runner, main)
            (case_dir / "stdout.txt").write_text(text)
            files = {p.relative_to(case_dir).as_posix(): _sha(p.read_bytes())
                     for p in sorted(case_dir.rglob("*")) if p.is_file() and p.name != "stdout.txt"}
            graphs = {f: graph_sha(case_dir / f) for f in files if f.endswith(".onnx")}
            manifest_cases[c.name] = {"args": c.args, "exit_code": code,
                                      "stdout_sha256": _sha(_normalise(text).encode()),
                                      "files": files, "graphs": graphs}
            log(f"[{i}/{len(todo)}] {c.name}: exit {code}, {len(files)} file(s), {time.monotonic() - t0:.1f}s")
        wall = time.monotonic() - start
        manifest = {
            "format": MANIFEST_FORMAT,
            "meta": {"root": str(root), "package": str(pkg), "quick": quick, "only": only,
                     "seam": seam_line, "notes": notes, "wall_s": round(wall, 1),
                     "volatile_stdout_patterns": list(VOLATILE), "versions": _versions()},
            "inputs": inputs,
            "cases": manifest_cases,
        }
        (tmp / "manifest.json").write_text(json.dumps(manifest, indent=1, sort_keys=True) + "\n")
        for link in ("models", REAL_DIR):
            if (tmp / link).is_symlink():
                (tmp / link).unlink()
        os.chdir(cwd)
        os.replace(tmp, dest)
    except BaseException:
        os.chdir(cwd)
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    log(f"captured {len(todo)} cases into {dest} in {wall:.0f}s")
    return 0


def _versions() -> dict[str, str]:
    import importlib.metadata as md

    out = {"python": sys.version.split()[0]}
    for pkg in ("onnx", "onnxruntime", "numpy", "click", "onnx-graphsurgeon"):
        try:
            out[pkg] = md.version(pkg)
        except md.PackageNotFoundError:
            out[pkg] = "absent"
    return out


# ----------------------------------------------------------------------------------------------------------------
# Compare


def _load_manifest(d: Path) -> dict[str, Any]:
    p = d / "manifest.json"
    try:
        data = json.loads(p.read_text())
    except OSError as e:
        raise GoldenError(f"{p}: cannot read ({e.strerror})") from None
    except ValueError as e:
        raise GoldenError(f"{p}: not JSON ({e})") from None
    if not isinstance(data, dict) or data.get("format") != MANIFEST_FORMAT or not isinstance(data.get("cases"), dict):
        raise GoldenError(f"{p}: not a golden manifest of format {MANIFEST_FORMAT}")
    # Names become paths under the capture folder: a manifest naming anything else is refused, not followed.
    for name, case in data["cases"].items():
        if not _SAFE_NAME.fullmatch(name) or not isinstance(case, dict):
            raise GoldenError(f"{p}: bad case entry {name[:80]!r}")
        for f in case.get("files") or {}:
            if not isinstance(f, str) or not all(_SAFE_NAME.fullmatch(part) for part in f.split("/")):
                raise GoldenError(f"{p}: case {name}: bad file name {str(f)[:80]!r}")
    return data


_SAFE_NAME = re.compile(r"(?!\.\.?$)[A-Za-z0-9_.+=-]{1,200}")


def _short(v: Any, n: int = 80) -> str:
    s = json.dumps(v, sort_keys=True) if not isinstance(v, str) else repr(v)
    return s if len(s) <= n else s[: n - 3] + "..."


def json_diff(a: Any, b: Any, path: str = "$") -> str | None:
    """The first differing key path of two JSON values with both values, or None when equal."""
    if type(a) is not type(b):
        return f"{path}: {_short(a)} vs {_short(b)}"
    if isinstance(a, dict):
        for k in list(a) + [k for k in b if k not in a]:
            if k not in b:
                return f"{path}.{k}: only in A"
            if k not in a:
                return f"{path}.{k}: only in B"
            d = json_diff(a[k], b[k], f"{path}.{k}")
            if d:
                return d
        if list(a) != list(b):
            return f"{path}: same keys in another order"
        return None
    if isinstance(a, list):
        for i, (x, y) in enumerate(zip(a, b)):
            d = json_diff(x, y, f"{path}[{i}]")
            if d:
                return d
        return f"{path}: length {len(a)} vs {len(b)}" if len(a) != len(b) else None
    return None if a == b else f"{path}: {_short(a)} vs {_short(b)}"


def _text_diff(a: str, b: str) -> str:
    la, lb = a.splitlines(), b.splitlines()
    for i, (x, y) in enumerate(zip(la, lb), 1):
        if x != y:
            return f"line {i}: {x[:100]!r} vs {y[:100]!r}"
    if len(la) != len(lb):
        return f"{len(la)} vs {len(lb)} lines"
    return "same lines, different line endings or whitespace at the end"


def model_diff(pa: Path, pb: Path) -> str:
    """Where two ONNX files differ: a header field, a node, an initializer, an input/output/value_info."""
    try:
        a, b = (onnx.load(str(p), load_external_data=False) for p in (pa, pb))
    except Exception as e:  # noqa: BLE001 - any parse failure is a finding, not a crash
        return f"cannot parse ({type(e).__name__})"
    for f in ("ir_version", "producer_name", "producer_version", "domain", "model_version", "doc_string"):
        if getattr(a, f) != getattr(b, f):
            return f"model.{f}: {_short(getattr(a, f))} vs {_short(getattr(b, f))}"
    for f in ("opset_import", "metadata_props", "functions"):
        if [x.SerializeToString(deterministic=True) for x in getattr(a, f)] != \
                [x.SerializeToString(deterministic=True) for x in getattr(b, f)]:
            return f"model.{f} differs"
    ga, gb = a.graph, b.graph
    for i, (x, y) in enumerate(zip(ga.node, gb.node)):
        if x.SerializeToString(deterministic=True) != y.SerializeToString(deterministic=True):
            what = [f for f in ("op_type", "name", "input", "output", "domain") if getattr(x, f) != getattr(y, f)]
            attrs = [at.name for at in x.attribute if at not in y.attribute] or [at.name for at in y.attribute]
            return (f"node {i} ({x.op_type} '{x.name}' vs {y.op_type} '{y.name}'): "
                    + (", ".join(what) if what else f"attributes {attrs}") + " differ")
    if len(ga.node) != len(gb.node):
        return f"{len(ga.node)} vs {len(gb.node)} nodes"
    ia = {t.name: t for t in ga.initializer}
    ib = {t.name: t for t in gb.initializer}
    for name in list(ia) + [n for n in ib if n not in ia]:
        if name not in ib:
            return f"initializer '{name}' only in A"
        if name not in ia:
            return f"initializer '{name}' only in B"
        ta, tb = ia[name], ib[name]  # not x, y: those are the NodeProtos of the loop above
        if ta.SerializeToString(deterministic=True) != tb.SerializeToString(deterministic=True):
            if list(ta.dims) != list(tb.dims) or ta.data_type != tb.data_type:
                return (f"initializer '{name}': dims/type {list(ta.dims)}/{ta.data_type} "
                        f"vs {list(tb.dims)}/{tb.data_type}")
            try:
                xa, ya = onnx.numpy_helper.to_array(ta), onnx.numpy_helper.to_array(tb)
                diff = float(np.max(np.abs(xa.astype(np.float64) - ya.astype(np.float64)))) if xa.size else 0.0
                return f"initializer '{name}': values differ (max abs difference {diff:.3g})"
            except Exception:  # noqa: BLE001
                return f"initializer '{name}': contents differ"
    if list(ia) != list(ib):
        return "initializers in another order"
    for f in ("input", "output", "value_info", "sparse_initializer", "quantization_annotation"):
        if [x.SerializeToString(deterministic=True) for x in getattr(ga, f)] != \
                [x.SerializeToString(deterministic=True) for x in getattr(gb, f)]:
            return f"graph.{f} differs"
    if ga.name != gb.name or ga.doc_string != gb.doc_string:
        return "graph name or doc_string differs"
    return "same parsed content, different bytes (serialisation)"


def _file_diff(pa: Path, pb: Path) -> str:
    if not pa.is_file() or not pb.is_file():
        return "file missing from the capture folder (cannot say where)"
    if pa.suffix == ".onnx":
        return model_diff(pa, pb)
    if pa.suffix == ".json":
        try:
            d = json_diff(json.loads(pa.read_text()), json.loads(pb.read_text()))
        except ValueError:
            d = None
        if d:
            return d
    try:
        return _text_diff(pa.read_text(), pb.read_text())
    except UnicodeDecodeError:
        return "binary contents differ"


def case_diffs(name: str, ca: Mapping[str, Any], cb: Mapping[str, Any], da: Path, db: Path) -> list[str]:
    """What differs in one case between captures ``da`` and ``db`` (empty: the same)."""
    out: list[str] = []
    if ca.get("args") != cb.get("args"):
        out.append(f"args differ (the tool's case lists differ): {ca.get('args')} vs {cb.get('args')}")
    if ca.get("exit_code") != cb.get("exit_code"):
        out.append(f"exit status {ca.get('exit_code')} vs {cb.get('exit_code')}")
    case_a, case_b = da / "cases" / name, db / "cases" / name
    if ca.get("stdout_sha256") != cb.get("stdout_sha256"):
        out.append("stdout " + _file_diff(case_a / "stdout.txt", case_b / "stdout.txt"))
    fa, fb = ca.get("files") or {}, cb.get("files") or {}
    for f in sorted(set(fa) | set(fb)):
        if f not in fb:
            out.append(f"{f}: only in A")
        elif f not in fa:
            out.append(f"{f}: only in B")
        elif fa[f] != fb[f]:
            ga, gb = (ca.get("graphs") or {}).get(f), (cb.get("graphs") or {}).get(f)
            extra = " (graph identical: header only)" if ga is not None and ga == gb else ""
            out.append(f"{f}{extra}: {_file_diff(case_a / f, case_b / f)}")
    return out


def compare(da: Path, db: Path, log: Callable[[str], None] = print) -> int:
    """Print each case same / DIFFERENT; 1 when any differs or is missing on one side, else 0."""
    ma, mb = _load_manifest(da), _load_manifest(db)
    va, vb = ma.get("meta", {}).get("versions"), mb.get("meta", {}).get("versions")
    if va != vb:
        log(f"warning: captured with different library versions ({va} vs {vb}): differences may not be the code's")
    # A case (or calibration file) one side did not make because that capture was restricted (--quick, --only)
    # is not compared; one missing from an unrestricted capture is a difference (the case list or models changed).
    restricted = {side: bool(m.get("meta", {}).get("quick") or m.get("meta", {}).get("only"))
                  for side, m in (("A", ma), ("B", mb))}
    ia, ib = ma.get("inputs") or {}, mb.get("inputs") or {}
    bad_inputs = 0
    for key in list(ia) + [k for k in ib if k not in ia]:
        missing = "B" if key not in ib else "A" if key not in ia else None
        d = json_diff(ia.get(key), ib.get(key), key) if missing is None else f"{key}: only in {'AB'[missing == 'A']}"
        if d and not (missing is not None and restricted[missing]):
            bad_inputs += 1
            log(f"DIFFERENT calibration input {d}")
    bad = 0
    names = list(ma["cases"]) + [n for n in mb["cases"] if n not in ma["cases"]]
    skipped = 0
    for n in names:
        missing = "B" if n not in mb["cases"] else "A" if n not in ma["cases"] else None
        if missing is not None:
            if restricted[missing]:
                log(f"not compared {n}: only in {'A' if missing == 'B' else 'B'} ({missing} was captured with "
                    "--quick or --only)")
                skipped += 1
            else:
                log(f"DIFFERENT {n}: only in {'A' if missing == 'B' else 'B'}")
                bad += 1
            continue
        diffs = case_diffs(n, ma["cases"][n], mb["cases"][n], da, db)
        if diffs:
            bad += 1
            log(f"DIFFERENT {n}: " + "; ".join(diffs))
        else:
            log(f"same {n}")
    compared = len(names) - skipped
    tail = f" ({skipped} not compared)" if skipped else ""
    log((f"{compared} cases: {compared - bad} same, {bad} different" if bad else f"{compared} cases: all same") + tail
        + (f"; {bad_inputs} calibration input(s) differ" if bad_inputs else ""))
    return 1 if bad or bad_inputs else 0


# ----------------------------------------------------------------------------------------------------------------
# Command line


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="golden.py", description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    cap = sub.add_parser("capture", help="run the cases and write DIR (manifest.json + outputs)")
    cap.add_argument("dir", type=Path)
    cap.add_argument("--quick", action="store_true", help="drop the slow real-model calibration cases")
    cap.add_argument("--only", default=None, metavar="REGEX", help="run only the cases whose name matches")
    cap.add_argument("--list", action="store_true", help="print the case names and exit")
    cmp_ = sub.add_parser("compare", help="compare two captures; exit 1 if any case differs")
    cmp_.add_argument("a", type=Path)
    cmp_.add_argument("b", type=Path)
    ns = ap.parse_args(argv)
    try:
        if ns.cmd == "capture":
            root = Path.cwd()
            if ns.list:
                for c in cases(root, ns.quick)[0]:
                    if ns.only is None or _only(ns.only).search(c.name):
                        print(c.name)
                return 0
            return capture(ns.dir.absolute(), ns.quick, ns.only, root)
        return compare(ns.a, ns.b)
    except GoldenError as e:
        print(f"Error: {e}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())

"""Fuzz the whole ``onnxconv`` CLI: corrupt models, hostile names, misused options and output paths, signals.

Every case is derived from ``(seed, index)`` alone (``random.Random(f"{seed}:{index}")``), so one line
``--seed S --case I`` reproduces it. A case is a set of input files (a model made by mutating a small valid
model or a long conv chain: byte-level corruption and truncation, or protobuf-level changes of dims, attributes,
dtypes, raw data, names, initializers, external-data locations, cycles), an argv for ``stats`` / ``separate`` /
``bench`` drawn from the real option set with valid and invalid values, and an output-path variant (missing
folder, a file in place of the folder, read-only folder, 300-character name, report onto the input or onto -o,
symlinks, a device node, /proc). It runs in a fresh temporary folder, in process through click's CliRunner
(``catch_exceptions=False``: any exception other than SystemExit is a traceback) or as ``python -m onnxconv``.

The classes of issue 17 each have a generator: outputs naming the data a run reads (``clash-*``: -o, --report or
--plot onto the --calibration file, a file in the --calibration folder, or --inputs); hostile calibration data
(``calib-*``: a zip member that is not .npy data, a .npy header declaring huge dims over a few bytes, a truncated
archive, a bad CRC, inf values, a FIFO in a calibration folder); a non-UTF-8 attribute name with --mode shuffle;
a string-typed conv weight and an IR-3 model (every initializer also a graph input) in every way ``separate``
runs (``strweight-MODE``, ``ir3-MODE``, :data:`SEPARATE_MODES`); --threads 1024 (refused under the run's
address-space limit, and signalled in the signal mode); long chains (:data:`CHAIN_DEPTHS`, with a time limit
proportional to the depth). An IR-3 case that fails cleanly is run again on the model it was made from: an
error there is fine, success there makes it a wrong refusal.

Two more classes are drawn in the normal mix (:data:`LATER_CLASSES`: 8 % and 5 % of the cases, decided by a
stream of their own, so that every other case is still what its (seed, index) made before) and alone with
``--only``:

- ``quantize``: two cases in five calm (a valid model, right calibration data, valid options, maybe hostile names
  or the user's --metric file raising, returning NaN, a string, 10**400 or a broken ``support``), the others a
  model of the generators separate's cases use (chains at most 50 deep) with hostile calibration data (:func:`_npz`,
  :func:`_calib_folder`), -o / --report variants (separate's, and :data:`QUANTIZE_CLASHES`: onto each other, the
  input, the calibration file or a file of its folder, refused before any work), --max-output-error and
  --min-metric negative, NaN, inf or unreachable, unknown --metric specs and missing metric files;
- ``latency``: ``separate --target-speedup 1.2 --calibration`` timed by ``--latency-command`` (:data:`LATENCY_GROUPS`):
  a fake board (:data:`BOARD`, a script in the case folder, or ``python -S -c``) that must plan and write the model;
  commands that exit non-zero with hostile stderr, print garbage, NaN, Infinity, a string, a huge or deeply nested
  JSON or nothing, outlive a --latency-timeout of 0.3 s (sleeps, pipelines, a trap, an endless output), {model}
  quoted or missing, hostile --latency-timeout values, a command too long to start: each refused in one
  ``Error: --latency-...`` line. The board script's folder, TMPDIR (where the timer writes the models it times) and
  the case folder are often named with shell syntax (:data:`HOSTILE_FOLDERS`): a ``touch PWNEDn`` in a name that
  ran (the file appears) is unsafe output.

Their runs set TMPDIR to a folder of the case (anything left there is a leftover), must write none of their
outputs when they fail (:attr:`Case.strict_outputs`), may leave no process of a command behind
(:attr:`Case.markers`), and may expect an outcome (:attr:`Case.expect`): a run that must succeed and is refused is
a wrong refusal, a run that must be refused and succeeds, or is refused for another reason, an unexpected outcome.

Each run is classified:

- success: exit 0 (or 3 from bench with only ``FAIL:`` lines: a threshold failed, as documented);
- clean error: non-zero exit and stderr exactly one ``Error: ...`` line, or click's usage form
  ``Usage: ...\\nTry '... -h' for help.\\n\\nError: ...``; the message free of control characters;
- traceback: an uncaught exception (in process) or ``Traceback`` on stderr;
- unclean error: any other non-zero exit (several lines, control characters, an empty stderr, killed);
- timeout (the run's --timeout, or the case's own limit: a FIFO, a long chain);

and, independently, flagged when an input file changed (sha256 of every file there before, symlinks and device
nodes included, except the declared outputs), when it left files behind (a new file that is not the complete
declared output or report, any ``*.tmp``), or when its stdout carries terminal control sequences or CSV cells
that a spreadsheet runs as formulas.

The signal mode starts ``separate`` on a model that takes about a second (or ``bench`` / ``separate
--calibration`` with ``--threads 1024`` on one core, signalled once their thread pool starts), sends SIGINT or SIGTERM at a
random time, and expects exit status 130 / 143 (or death by that signal, or a clean error, or success when it
came too late) within :data:`STOP_WITHIN` seconds, no traceback, no temporary file left and the input unchanged.

Examples::

    python tools/fuzz.py --cases 2000 --seed 1                  # in process, all commands
    python tools/fuzz.py --cases 200 --mode subprocess --only separate
    python tools/fuzz.py --cases 100 --only latency                # separate --latency-command alone
    python tools/fuzz.py --signals 50 --cases 0
    python tools/fuzz.py --seed 1 --case 417 --keep /tmp/repro  # one case again, its files kept
"""

from __future__ import annotations

import argparse
import csv
import hashlib
import io
import json
import os
import random
import re
import resource
import shlex
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
import traceback
import zipfile
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MODELS = REPO / "models"
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

import numpy as np  # noqa: E402
import onnx  # noqa: E402
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

#: Base models: small enough that a case costs a fraction of a second in process.
BASE_MODELS = ("tiny_cnn.onnx", "tiny_conv1d.onnx", "messy_export.onnx", "tiny_resnet.onnx", "tiny_conv3d.onnx")

#: Names that a terminal, a shell, a spreadsheet or a file system would treat as more than text.
HOSTILE_NAMES = (
    "a\nb", "x\r\nError: fake", "\x1b[2J\x1b[Hcleared", "\x1b]8;;http://evil.example/\x07link\x1b]8;;\x07",
    "\x1b]0;title\x07", "=HYPERLINK(\"http://evil.example\",\"x\")", "+cmd|' /C calc'!A0", "@SUM(1+1)",
    "-2+3", "../../etc/passwd", "/abs/name", "a\x00b", "\u202eevil", "\x07bell", "tab\tname", "",
    "n" * 5000, "名前", "a,b;c\"d'e", "%s%n{0}", "\x9b31mC1csi",
)

#: Byte strings that are not valid UTF-8, the same length as :data:`_PLACEHOLDER` (patched in after
#: serialising: protobuf refuses to hold them in a string field).
_PLACEHOLDER = b"FUZZ_PLACEHOLDER_NAME"
_BAD_UTF8 = (b"\xff\xfe" + b"x" * 19, b"ab\xc3(" + b"y" * 17, b"\xed\xa0\x80" + b"z" * 18)

BIG = (10**12, 2**62, 2**63 - 1, -(2**62))

SUMMARY_KEYS = ("cases", "successes", "clean errors", "tracebacks", "unclean errors", "timeouts",
                "inputs changed", "leftovers", "unsafe output", "wrong refusals", "unexpected outcomes")


# ----------------------------------------------------------------------------------------------------------------
# cases


@dataclass
class Case:
    """One run: files to create under the case folder, the argv, and what the run may write."""

    seed: int
    index: int
    command: str
    args: list[str]
    files: dict[str, bytes] = field(default_factory=dict)  # relative path -> content (inputs unless in `others`)
    others: set[str] = field(default_factory=set)  # files created that are not inputs (an existing -o)
    links: dict[str, str] = field(default_factory=dict)  # relative link path -> target (relative or absolute)
    devices: list[str] = field(default_factory=list)  # character devices like /dev/null, made in the case folder
    dirs: list[str] = field(default_factory=list)
    readonly: list[str] = field(default_factory=list)  # folders made read-only (effective only for non-root)
    outputs: list[str] = field(default_factory=list)  # declared outputs (relative), allowed to appear/change
    tags: list[str] = field(default_factory=list)  # what was done, for the report
    fifos: list[str] = field(default_factory=list)  # named pipes (a reader of one waits for a writer forever)
    subprocess_only: bool = False  # needs limits set in a child process (a file-size limit)
    fsize_limit: int | None = None
    timeout: float | None = None  # seconds allowed, when lower than the run's --timeout (a FIFO, a long chain)
    model: str = ""  # the input model's relative path
    twin: bytes | None = None  # a model the same run must not refuse where it accepts ``model`` (an IR-3 case's source)
    cost: float = 1.0  # relative run time, for covering_cases (a long chain costs many ordinary cases)
    cls: str = ""  # the generator class (:data:`CLASSES`): the command, or ``latency`` (separate --latency-command)
    env: dict[str, str] = field(default_factory=dict)  # environment of the run ({D} for the case folder): TMPDIR
    folder: str = "case"  # the case folder's name (spaces and shell syntax in it reach every path of the run)
    #: "" any clean outcome; "success" the run must succeed (a refusal is a wrong refusal); else a regex the last
    #: stderr line of a refusal must match (a success, or another refusal, is an unexpected outcome)
    expect: str = ""
    strict_outputs: bool = False  # a run that fails writes none of the declared outputs (quantize, the planner)
    markers: list[str] = field(default_factory=list)  # command-line text no process may still run after the case

    def argv(self, root: Path) -> list[str]:
        return [_substitute(a, root) for a in self.args]

    def repro(self) -> str:
        where = "".join(f" {k}={_quote(v)}" for k, v in self.env.items())
        where += f" (case folder {_quote(self.folder)})" if self.folder != "case" else ""
        # A later class's case is the same alone (--only) as in the mix: the line says --only, right in both.
        only = f" --only {self.cls}" if self.cls in LATER_CLASSES else ""
        return f"--seed {self.seed} --case {self.index}{only}  [{', '.join(self.tags)}] {where} onnxconv " \
            f"{self.command} " + " ".join(_quote(a) for a in self.args)


def _substitute(text: str, root: Path) -> str:
    """An argument as run: ``{Q:rel}`` is the shell-quoted path of ``rel`` in the case folder (a command line's own
    script, quoted as its author would), ``{PY}`` this Python, shell-quoted, and ``{D}`` the case folder."""
    text = re.sub(r"\{Q:([^}]*)\}", lambda m: shlex.quote(str(root / m.group(1))), text)
    return text.replace("{PY}", shlex.quote(sys.executable)).replace("{D}", str(root))


def _quote(a: str) -> str:
    """Shell-like text of one argument: repr() when it holds odd characters, long runs as <c*N>."""
    r = a if re.fullmatch(r"[\w./{}=:,+-]+", a) else repr(a)
    return re.sub(r"(.)\1{19,}", lambda m: f"<{m.group(1)}*{len(m.group(0))}>", r)


_BASE_CACHE: dict[str, onnx.ModelProto] = {}

#: Depths of the long conv chains (``tools/archs.py``'s ``chain``) drawn as base models, and their weights: every
#: command must answer in time proportional to the depth (issue 17), so a case gets a time limit that grows with it.
CHAIN_DEPTHS = (50, 300, 1000, 3000)
_CHAIN_WEIGHTS = (8, 4, 2, 1)


def chain_time_limit(depth: int) -> float:
    """Seconds a command may take on a chain of ``depth`` convs: 20 s plus 25 ms a conv, about three times what
    the slowest command (``separate --mode shuffle``, in process) takes per conv on 2 shared cores."""
    return 20.0 + 0.025 * depth


def _base(name: str) -> onnx.ModelProto:
    if name not in _BASE_CACHE:
        if name.startswith("chain"):
            from tools.archs import conv_chain  # the tools package: REPO is on sys.path

            _BASE_CACHE[name] = conv_chain(depth=int(name.removeprefix("chain").removesuffix(".onnx")))
        else:
            _BASE_CACHE[name] = onnx.load(str(MODELS / name))
    m = onnx.ModelProto()
    m.CopyFrom(_BASE_CACHE[name])
    return m


def _graph_inputs(m: onnx.ModelProto) -> list[onnx.ValueInfoProto]:
    inits = {i.name for i in m.graph.initializer}
    return [i for i in m.graph.input if i.name not in inits]


def _input_dims(vi: onnx.ValueInfoProto) -> list[int]:
    return [d.dim_value if d.dim_value > 0 else 1 for d in vi.type.tensor_type.shape.dim]


def _convs(m: onnx.ModelProto) -> list[onnx.NodeProto]:
    return [n for n in m.graph.node if n.op_type in ("Conv", "ConvTranspose")]


def _weight_inits(m: onnx.ModelProto) -> list[onnx.TensorProto]:
    return [t for t in m.graph.initializer if len(t.dims) >= 3] or list(m.graph.initializer)


def _set_attr(node: onnx.NodeProto, name: str, value: Any) -> None:
    for i, a in enumerate(node.attribute):
        if a.name == name:
            del node.attribute[i]
            break
    node.attribute.append(helper.make_attribute(name, value))


def _rename_everywhere(m: onnx.ModelProto, old: str, new: str) -> None:
    g = m.graph
    for n in g.node:
        for i, x in enumerate(n.input):
            if x == old:
                n.input[i] = new
        for i, x in enumerate(n.output):
            if x == old:
                n.output[i] = new
    for coll in (g.input, g.output, g.value_info, g.initializer):
        for v in coll:
            if v.name == old:
                v.name = new


# Protobuf-level mutations: each changes the model in place and returns a tag (or None when it did not apply).
def _mut_dims(m: onnx.ModelProto, rng: random.Random) -> str:
    t = rng.choice(_weight_inits(m))
    i = rng.randrange(len(t.dims)) if t.dims else 0
    v = rng.choice((0, -1, 1, 7, 10**12, 2**62))
    if t.dims:
        t.dims[i] = v
    else:
        t.dims.append(v)
    return f"init-dim={v}"


def _mut_input_dim(m: onnx.ModelProto, rng: random.Random) -> str:
    vi = rng.choice(_graph_inputs(m) or list(m.graph.input))
    dims = vi.type.tensor_type.shape.dim
    if not dims:
        return "input-dim-none"
    d = rng.choice(dims)
    choice = rng.choice(("zero", "neg", "huge", "param", "hostile-param", "clear"))
    if choice == "zero":
        d.dim_value = 0
    elif choice == "neg":
        d.dim_value = -3
    elif choice == "huge":
        d.dim_value = 10**12
    elif choice == "param":
        d.dim_param = "N"
    elif choice == "hostile-param":
        d.dim_param = rng.choice(HOSTILE_NAMES) or "x"
    else:
        d.Clear()
    return f"input-dim-{choice}"


def _mut_attr(m: onnx.ModelProto, rng: random.Random) -> str:
    convs = _convs(m) or list(m.graph.node)
    n = rng.choice(convs)
    name = rng.choice(("kernel_shape", "strides", "pads", "dilations", "group", "auto_pad", "output_padding"))
    rank = 2
    for a in n.attribute:
        if a.name == "kernel_shape":
            rank = len(a.ints) or 2
    kind = rng.choice(("zero", "neg", "huge", "len", "type", "ok"))
    if name == "group":
        v: Any = {"zero": 0, "neg": -1, "huge": 2**62, "len": 3, "type": "two", "ok": 1}[kind]
    elif name == "auto_pad":
        v = {"zero": "", "neg": "BOGUS", "huge": "SAME_UPPER", "len": "VALID", "type": [1, 2], "ok": "NOTSET"}[kind]
    else:
        n_el = 2 * rank if name in ("pads",) else rank
        base = {"zero": 0, "neg": -1, "huge": rng.choice(BIG), "len": 1, "type": 1, "ok": 1}[kind]
        v = [base] * (n_el + (1 if kind == "len" else 0))
        if kind == "type":
            v = "3x3"
    _set_attr(n, name, v)
    return f"attr-{name}-{kind}"


def _mut_dtype(m: onnx.ModelProto, rng: random.Random) -> str:
    t = rng.choice(_weight_inits(m))
    choice = rng.choice(("string", "undefined", "999", "fp16", "int64", "double", "bool"))
    code = {"string": TensorProto.STRING, "undefined": TensorProto.UNDEFINED, "999": 999,
            "fp16": TensorProto.FLOAT16, "int64": TensorProto.INT64, "double": TensorProto.DOUBLE,
            "bool": TensorProto.BOOL}[choice]
    t.data_type = code
    if choice == "string" and rng.random() < 0.5:
        t.ClearField("raw_data")
        n = int(np.prod([max(d, 0) for d in t.dims])) if t.dims else 1
        t.string_data.extend([b"w"] * min(n, 10000))
    return f"dtype-{choice}"


def _mut_raw(m: onnx.ModelProto, rng: random.Random) -> str:
    t = rng.choice(_weight_inits(m))
    choice = rng.choice(("truncate", "extend", "empty", "nan", "inf", "huge-values", "float_data"))
    arr = numpy_helper.to_array(t) if t.data_type == TensorProto.FLOAT else None
    if choice == "truncate":
        t.raw_data = t.raw_data[: len(t.raw_data) // 2 - 1]
    elif choice == "extend":
        t.raw_data = t.raw_data + b"\0" * 12
    elif choice == "empty":
        t.raw_data = b""
    elif arr is not None:
        a = arr.copy()
        flat = a.reshape(-1)
        if choice == "nan":
            flat[rng.randrange(flat.size)] = np.nan
        elif choice == "inf":
            flat[: max(1, flat.size // 2)] = np.inf
        elif choice == "huge-values":
            flat[:] = 3e38
        else:  # the same values as float_data instead of raw_data
            t.ClearField("raw_data")
            t.float_data.extend(flat.tolist()[: max(0, flat.size - 1)])
            return "raw-float_data-short"
        t.CopyFrom(numpy_helper.from_array(a, t.name))
    return f"raw-{choice}"


def _mut_names(m: onnx.ModelProto, rng: random.Random) -> str:
    name = rng.choice(HOSTILE_NAMES)
    what = rng.choice(("node", "tensor", "input", "graph", "dim", "doc", "metadata"))
    g = m.graph
    if what == "node":  # mostly a conv: its name is a row of every report
        rng.choice(_convs(m) if rng.random() < 0.8 and _convs(m) else list(g.node)).name = name
    elif what == "tensor":
        convs = _convs(m)
        if convs:
            _rename_everywhere(m, convs[0].output[0], name)
    elif what == "input":
        ins = _graph_inputs(m)
        if ins:
            _rename_everywhere(m, ins[0].name, name)
    elif what == "graph":
        g.name = name
    elif what == "dim":
        for vi in _graph_inputs(m)[:1]:
            for d in vi.type.tensor_type.shape.dim[:1]:
                d.dim_param = name or "b"
    elif what == "doc":
        g.doc_string = name
    else:
        m.metadata_props.add(key=name, value=name)
    return f"name-{what}"


def _mut_collide(m: onnx.ModelProto, rng: random.Random) -> str:
    g = m.graph
    choice = rng.choice(("dup-init", "del-init", "del-node", "del-output", "two-producers", "init-is-input"))
    if choice == "dup-init" and g.initializer:
        t = rng.choice(list(g.initializer))
        g.initializer.append(t)
    elif choice == "del-init" and g.initializer:
        del g.initializer[rng.randrange(len(g.initializer))]
    elif choice == "del-node" and g.node:
        del g.node[rng.randrange(len(g.node))]
    elif choice == "del-output":
        del g.output[:]
    elif choice == "two-producers" and len(g.node) > 2:
        g.node[1].output[0] = g.node[0].output[0]
    elif choice == "init-is-input" and g.initializer:
        ins = _graph_inputs(m)
        if ins:
            g.initializer[0].name = ins[0].name
    return f"graph-{choice}"


def _mut_cycle(m: onnx.ModelProto, rng: random.Random) -> str:
    g = m.graph
    nodes = list(g.node)
    if not nodes:
        return "cycle-none"
    if rng.random() < 0.3:
        n = rng.choice(nodes)
        n.input[0] = n.output[0]
        return "cycle-self"
    convs = _convs(m) or nodes
    first, last = convs[0], nodes[-1]
    first.input[0] = last.output[0]
    return "cycle"


def _mut_opset(m: onnx.ModelProto, rng: random.Random) -> str:
    choice = rng.choice(("none", "old", "future", "domain", "ir0", "ir99", "custom-op"))
    if choice == "none":
        del m.opset_import[:]
    elif choice == "old":
        m.opset_import[0].version = 1
    elif choice == "future":
        m.opset_import[0].version = 999
    elif choice == "domain":
        rng.choice(list(m.graph.node)).domain = "evil.domain"
    elif choice == "ir0":
        m.ir_version = 0
    elif choice == "ir99":
        m.ir_version = 99
    else:
        rng.choice(_convs(m) or list(m.graph.node)).op_type = rng.choice(("NoSuchOp", "Conv", "ConvInteger", ""))
    return f"opset-{choice}"


def _mut_optype(m: onnx.ModelProto, rng: random.Random) -> str:
    convs = _convs(m)
    if not convs:
        return "optype-none"
    n = rng.choice(convs)
    n.op_type = rng.choice(("ConvTranspose", "Conv", "QLinearConv", "ConvInteger"))
    if rng.random() < 0.5:
        del n.input[1:]
    return f"optype-{n.op_type}"


PROTO_MUTATIONS: tuple[Callable[[onnx.ModelProto, random.Random], str], ...] = (
    _mut_dims, _mut_input_dim, _mut_attr, _mut_dtype, _mut_raw, _mut_names, _mut_collide, _mut_cycle,
    _mut_opset, _mut_optype,
)


def _ir3(m: onnx.ModelProto, rng: random.Random) -> str:
    """An IR-3 model as old exporters wrote them: every initializer is also a graph input (a default that a caller
    may override), opset 9 or the base's."""
    m.ir_version = 3
    if rng.random() < 0.5:
        del m.opset_import[:]
        m.opset_import.append(helper.make_opsetid("", 9))
    declared = {i.name for i in m.graph.input}
    for t in m.graph.initializer:
        if t.name not in declared:
            m.graph.input.append(helper.make_tensor_value_info(t.name, t.data_type, list(t.dims)))
    return "ir3"


def _string_weight(m: onnx.ModelProto, rng: random.Random) -> str:
    """A conv weight of element type STRING, with string data or with its float bytes left as raw data."""
    convs = [n for n in _convs(m) if len(n.input) > 1]
    inits = {t.name: t for t in m.graph.initializer}
    weights = [inits[n.input[1]] for n in convs if n.input[1] in inits]
    if not weights:
        return "skip:no-conv-weight"
    t = rng.choice(weights)
    t.data_type = TensorProto.STRING
    if rng.random() < 0.5:
        t.ClearField("raw_data")
        t.string_data.extend([b"w"] * int(np.prod(t.dims)))
    return "strweight"


def _external(m: onnx.ModelProto, rng: random.Random, files: dict[str, bytes], links: dict[str, str]) -> str:
    """Move weights to external data; the location is fine, missing, or points out of the model's folder."""
    inits = [t for t in m.graph.initializer if t.raw_data]
    if not inits:
        return "external-none"
    choice = rng.choice(("ok", "ok", "missing", "parent", "absolute", "symlink-out", "offset", "length", "nul",
                         "folder"))
    blob = b""
    chosen = rng.sample(inits, k=min(len(inits), rng.randint(1, 3)))
    location = "weights.bin"
    for t in chosen:
        data = t.raw_data
        offset = len(blob)
        blob += data
        t.ClearField("raw_data")
        t.data_location = TensorProto.EXTERNAL
        length = len(data)
        if choice == "offset":
            offset = 10**9
        elif choice == "length":
            length = 2**62
        if choice == "parent":
            location = "../outside.bin"
        elif choice == "absolute":
            location = "/etc/hostname"
        elif choice == "symlink-out":
            location = "link.bin"
        elif choice == "nul":
            location = "weights.bin\0evil"
        elif choice == "folder":
            location = "."
        for k, v in (("location", location), ("offset", str(offset)), ("length", str(length))):
            t.external_data.add(key=k, value=v)
    if choice not in ("missing", "folder"):
        files["in/weights.bin"] = blob
    if choice == "parent":
        files["outside.bin"] = blob  # exists, but outside the model's folder
    if choice == "symlink-out":
        files["outside.bin"] = blob
        links["in/link.bin"] = "../outside.bin"
    return f"external-{choice}"


def _serialize_with_bad_utf8(m: onnx.ModelProto, rng: random.Random) -> tuple[bytes, str]:
    """Serialise with one name replaced by bytes that are not UTF-8 (same length, so lengths stay valid)."""
    convs = _convs(m) or list(m.graph.node)
    where = rng.random()
    tag = "name-bad-utf8"
    if where < 0.35:
        convs[0].name = _PLACEHOLDER.decode()
    elif where < 0.7:
        _rename_everywhere(m, convs[0].output[0], _PLACEHOLDER.decode())
    else:  # an attribute's name: the shuffle pass copies a conv's attributes into the grouped conv it builds
        node = rng.choice(convs)
        _set_attr(node, _PLACEHOLDER.decode(), rng.choice((1, [1, 1], "x")))
        tag = "name-bad-utf8-attr"
    data = m.SerializeToString()
    return data.replace(_PLACEHOLDER, rng.choice(_BAD_UTF8)), tag


def _byte_corrupt(data: bytes, rng: random.Random) -> tuple[bytes, str]:
    choice = rng.choice(("flip", "truncate", "insert", "zero-run", "empty", "random", "prefix", "json"))
    b = bytearray(data)
    if choice == "flip":
        for _ in range(rng.randint(1, 20)):
            i = rng.randrange(len(b))
            b[i] = rng.randrange(256)
    elif choice == "truncate":
        b = b[: rng.randrange(len(b))]
    elif choice == "insert":
        i = rng.randrange(len(b))
        b[i:i] = bytes(rng.randrange(256) for _ in range(rng.randint(1, 64)))
    elif choice == "zero-run":
        i = rng.randrange(len(b))
        b[i: i + rng.randint(1, 4096)] = b"\0" * min(4096, len(b) - i)
    elif choice == "empty":
        b = bytearray()
    elif choice == "random":
        b = bytearray(rng.randbytes(rng.randint(1, 4096)))
    elif choice == "prefix":
        b = bytearray(b"\x08\x0a\x12") + b
    else:
        b = bytearray(b'{"not": "onnx"}')
    return bytes(b), f"bytes-{choice}"


def _model_case(rng: random.Random, case: Case, max_depth: int | None = None) -> tuple[onnx.ModelProto | None, str]:
    """Write the input model (and its side files) into ``case.files``; return the valid base it came from. A long
    chain is at most ``max_depth`` convs deep when given (the shallowest of :data:`CHAIN_DEPTHS` instead)."""
    if rng.random() < 0.05:  # a long chain: time must grow with the depth, not faster
        depth = rng.choices(CHAIN_DEPTHS, weights=_CHAIN_WEIGHTS)[0]
        if max_depth is not None and depth > max_depth:
            depth = CHAIN_DEPTHS[0]
        name = f"chain{depth}.onnx"
        case.timeout = chain_time_limit(depth)
        case.cost = 1 + depth / 50
    else:
        name = rng.choice(BASE_MODELS)
    m = _base(name)
    case.tags.append(f"chain-{depth}" if name.startswith("chain") else name.removesuffix(".onnx"))
    r = rng.random()
    ref = onnx.ModelProto()
    ref.CopyFrom(m)
    if r < 0.22:  # the valid model: the options are what is being fuzzed
        data = m.SerializeToString()
        case.tags.append("valid")
    elif r < 0.40:
        data, tag = _byte_corrupt(m.SerializeToString(), rng)
        case.tags.append(tag)
    elif r < 0.47:
        data, tag = _serialize_with_bad_utf8(m, rng)
        case.tags.append(tag)
    elif r < 0.55:
        case.tags.append(_external(m, rng, case.files, case.links))
        data = m.SerializeToString()
    elif r < 0.62:  # hostile names alone, on a model that otherwise works: what reaches the printed output
        case.tags.append(_mut_names(m, rng))
        data = m.SerializeToString()
    elif r < 0.68:  # otherwise valid: ref keeps its inputs (the real ones are those without an initializer)
        case.twin = m.SerializeToString()
        case.tags.append(_ir3(m, rng))
        data = m.SerializeToString()
    elif r < 0.74:
        case.tags.append(_string_weight(m, rng))
        data = m.SerializeToString()
    else:
        for _ in range(rng.choice((1, 1, 1, 2, 3))):
            try:
                case.tags.append(rng.choice(PROTO_MUTATIONS)(m, rng))
            except (IndexError, ValueError, TypeError) as e:  # a mutation that does not fit this model
                case.tags.append(f"skip:{type(e).__name__}")
        data = m.SerializeToString()
    special = rng.random()
    model_rel = "in/model.onnx"
    if special < 0.03:
        case.tags.append("model-missing")
        return ref, "in/missing.onnx"
    if special < 0.05:
        case.dirs.append("in/adir.onnx")
        case.tags.append("model-is-folder")
        return ref, "in/adir.onnx"
    if special < 0.08:
        model_rel = "in/" + rng.choice(("a b.onnx", "-x.onnx", "名前.onnx", "m\nn.onnx", "x" * 200 + ".onnx",
                                        "\x1b[31mred.onnx"))
        case.tags.append("model-odd-name")
    case.files[model_rel] = data
    if special > 0.97:
        case.links["in/linked.onnx"] = Path(model_rel).name
        case.tags.append("model-symlink")
        return ref, "in/linked.onnx"
    return ref, model_rel


def _pick(rng: random.Random, valid: Sequence[Any], invalid: Sequence[Any], p_invalid: float = 0.3) -> str:
    return str(rng.choice(invalid if rng.random() < p_invalid else valid))


def _shape_value(rng: random.Random, ref: onnx.ModelProto | None) -> str:
    ins = _graph_inputs(ref) if ref is not None else []
    if ins and rng.random() < 0.6:
        vi = rng.choice(ins)
        dims = _input_dims(vi)
        choice = rng.choice(("ok", "ok", "zero", "neg", "huge", "rank", "junk", "empty"))
        if choice == "zero":
            dims[0] = 0
        elif choice == "neg":
            dims[-1] = -4
        elif choice == "huge":
            dims[rng.randrange(len(dims))] = rng.choice((10**12, 2**62, 10**6))
        elif choice == "rank":
            dims = dims + [2]
        text = "x".join(str(d) for d in dims)
        if choice == "junk":
            text = rng.choice(("1xax3", "1x3x", "x", "1,3,64,64", "1x3x64x64x", "１x3"))
        elif choice == "empty":
            text = ""
        return f"{vi.name}={text}"
    return rng.choice(("bogus=1x3x64x64", "=1x3", "input", "input=", "=", "input=1x3x64x64=2",
                       rng.choice(HOSTILE_NAMES) + "=1x2"))


def _stats_args(rng: random.Random, ref: onnx.ModelProto | None) -> list[str]:
    a: list[str] = []
    if rng.random() < 0.3:
        a += ["--input-shape", _shape_value(rng, ref)]
    if rng.random() < 0.3:
        a += ["--batch", _pick(rng, (1, 2, 8), (0, -1, 10**12, 2**62, "x", 2**64))]
    if rng.random() < 0.5:
        a += ["--format", _pick(rng, ("table", "json", "csv", "markdown"), ("xml", ""))]
    if rng.random() < 0.3:
        a += ["--sort", _pick(rng, ("order", "macs", "params", "flops"), ("bogus",))]
    if rng.random() < 0.2:
        a += ["--top", _pick(rng, (1, 3, 100), (0, -1, "x"))]
    if rng.random() < 0.2:
        a += ["--groups", _pick(rng, (1, 2, 3, 4), (0, -2, 10**12))]
    if rng.random() < 0.2:
        a.append("--all-ops")
    return a


def _npz_arrays(ref: onnx.ModelProto | None, samples: int) -> dict[str, np.ndarray]:
    """One standard-normal float32 array per real input of ``ref``, ``samples`` on the first axis."""
    arrays: dict[str, np.ndarray] = {}
    for vi in (_graph_inputs(ref) if ref is not None else []):
        dims = _input_dims(vi)
        if samples > 1:
            dims = [samples] + dims[1:]
        arrays[vi.name] = np.random.default_rng(0).standard_normal(dims).astype(np.float32)
    return arrays


def _npz_bytes(arrays: dict[str, Any]) -> bytes:
    buf = io.BytesIO()
    np.savez(buf, **arrays)
    return buf.getvalue()


def _zip_bytes(members: Sequence[tuple[str, bytes]]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w") as z:
        for name, data in members:
            z.writestr(name, data)
    return buf.getvalue()


def _npy_header_only(shape: Sequence[int], payload: bytes) -> bytes:
    """A .npy file whose header declares ``shape`` (float32) over ``payload``: a few bytes for 2^40 elements."""
    buf = io.BytesIO()
    np.lib.format.write_array_header_1_0(buf, {"descr": "<f4", "fortran_order": False, "shape": tuple(shape)})
    return buf.getvalue() + payload


def _npz(rng: random.Random, ref: onnx.ModelProto | None, samples: int) -> tuple[bytes, str]:
    """An .npz of model inputs: right, wrong shape or dtype, wrong name, pickled objects, or not an npz; or one
    that is hostile to its reader: a member that is not .npy data, a header declaring huge dims over a few bytes,
    a truncated archive, a bad CRC, inf values."""
    choice = rng.choice(("ok", "ok", "shape", "dtype", "name", "pickle", "corrupt", "empty", "nan", "inf",
                         "member-not-npy", "member-txt", "huge-header", "truncated", "bad-crc"))
    arrays: dict[str, Any] = _npz_arrays(ref, samples)
    first = next(iter(arrays), "input")
    if choice == "corrupt":
        return b"PK\x03\x04garbage", "npz-corrupt"
    if choice == "member-not-npy":  # named like an array, holding text
        return _zip_bytes([(f"{first}.npy", b"not an array\n" * 4)]), "npz-member-not-npy"
    if choice == "member-txt":  # the arrays, and a member that is no array at all
        return _zip_bytes([(f"{k}.npy", _npy(v)) for k, v in arrays.items()] + [("README.txt", b"notes")]), \
            "npz-member-txt"
    if choice == "huge-header":
        dims = list(arrays[first].shape) if arrays else [1, 3, 64, 64]
        dims[0] = rng.choice((2**40, 10**12, 2**31))
        return _zip_bytes([(f"{first}.npy", _npy_header_only(dims, b"\0" * 16))]), "npz-huge-header"
    if choice in ("truncated", "bad-crc"):
        data = bytearray(_npz_bytes(arrays or {"input": np.zeros((1, 3, 8, 8), np.float32)}))
        if choice == "truncated":
            return bytes(data[: rng.randrange(len(data) // 4, len(data) - 1)]), "npz-truncated"
        at = data.index(b"\x93NUMPY") + 128 + 4  # inside the first member's array bytes, past its header
        data[at] ^= 0xFF
        return bytes(data), "npz-bad-crc"
    if choice == "empty":
        arrays = {}
    elif arrays:
        k = first
        if choice == "shape":
            arrays[k] = arrays[k][..., :3]
        elif choice == "dtype":
            arrays[k] = arrays[k].astype(np.int64)
        elif choice == "name":
            arrays["bogus"] = arrays.pop(k)
        elif choice == "pickle":
            arrays[k] = np.array([{"a": 1}, None], dtype=object)
        elif choice == "nan":
            arrays[k][...] = np.nan
        elif choice == "inf":
            flat = arrays[k].reshape(-1)
            flat[rng.randrange(flat.size)] = rng.choice((np.inf, -np.inf))
    return _npz_bytes(arrays), f"npz-{choice}"


def _npy(a: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _output_variant(rng: random.Random, case: Case, model_rel: str) -> tuple[str, str | None]:
    """-o and --report targets (as argv text with {D} for the case folder) and their setup."""
    choice = rng.choices(
        ("plain", "existing", "missing-folder", "file-as-folder", "readonly", "long", "is-input", "symlink-input",
         "dangling", "device", "proc", "is-folder", "relative", "odd-name", "report-is-input", "report-is-output",
         "report-missing-folder", "report-device", "fsize"),
        weights=(30, 4, 3, 3, 2, 3, 3, 3, 2, 3, 2, 2, 2, 3, 3, 3, 2, 2, 2))[0]
    case.tags.append(f"out-{choice}")
    case.dirs.append("out")
    out, report = "out/result.onnx", None
    if rng.random() < 0.3 or choice.startswith("report-"):
        report = "out/report.json"
    if choice == "existing":
        case.files["out/result.onnx"] = b"old"
        case.others.add("out/result.onnx")
    elif choice == "missing-folder":
        out = "out/no/such/result.onnx"
    elif choice == "file-as-folder":
        case.files["out/afile"] = b"x"
        out = "out/afile/result.onnx"
    elif choice == "readonly":
        if os.geteuid() == 0:  # root writes into a chmod 555 folder; /sys refuses even root (EACCES)
            out = "/sys/onnxconv-fuzz-result.onnx"
        else:
            case.dirs.append("out/ro")
            case.readonly.append("out/ro")
            out = "out/ro/result.onnx"
    elif choice == "long":
        out = "out/" + "L" * rng.choice((250, 255, 300)) + ".onnx"
    elif choice == "is-input":
        out = model_rel
    elif choice == "symlink-input":
        case.links["out/link.onnx"] = "../" + model_rel
        out = "out/link.onnx"
    elif choice == "dangling":
        case.links["out/dangling.onnx"] = "nowhere/x.onnx"
        out = "out/dangling.onnx"
    elif choice == "device":
        case.devices.append("out/null")
        out = "out/null"
    elif choice == "proc":
        out = rng.choice(("/proc/fuzz_no_such/result.onnx", "/proc/version"))
    elif choice == "is-folder":
        out = "out"
    elif choice == "relative":
        out = "result.onnx"  # the run's working folder is the case folder
    elif choice == "odd-name":
        out = "out/" + rng.choice(("-r.onnx", "a\nb.onnx", "\x1b[31m.onnx", " .onnx", "x.onnx.tmp", ".hidden"))
    elif choice == "report-is-input":
        report = model_rel
    elif choice == "report-is-output":
        report = out
    elif choice == "report-missing-folder":
        report = "out/nope/report.json"
    elif choice == "report-device":
        case.devices.append("out/rnull")
        report = "out/rnull"
    elif choice == "fsize":
        case.fsize_limit = rng.choice((1000, 20000))
        case.subprocess_only = True
    for p in (out, report):
        if p is not None and not p.startswith("/") and p not in case.devices:
            case.outputs.append(p)
    return (out if out.startswith("/") or choice == "relative" else "{D}/" + out,
            None if report is None else "{D}/" + report)


def _separate_args(rng: random.Random, case: Case, ref: onnx.ModelProto | None, model_rel: str) -> list[str]:
    out, report = _output_variant(rng, case, model_rel)
    a = ["-o", out]
    if report is not None:
        a += ["--report", report]
    mode = _pick(rng, ("separable", "separable", "shuffle"), ("mixed", "bogus"), 0.15)
    if mode != "separable" or rng.random() < 0.2:
        a += ["--mode", mode]
    if mode == "shuffle" or rng.random() < 0.05:
        a += ["--groups", _pick(rng, (2, 4), (0, 1, 3, -2, 10**6, 2**62))]
        if rng.random() < 0.2:
            a += ["--mixing", _pick(rng, ("energy", "shuffle"), ("x",))]
        if rng.random() < 0.2:
            a += ["--min-energy", _pick(rng, (0, 0.5, 1), (-1, 1.5, "nan"))]
    if mode == "separable" or rng.random() < 0.05:
        for _ in range(1 if rng.random() < 0.9 else 2):
            opt = rng.choice(("--rank", "--energy", "--exact", "--max-error", "--budget"))
            if opt == "--exact":
                a.append(opt)
            elif opt == "--rank":
                a += [opt, _pick(rng, (1, 2, 4), (0, -1, 10**9, 2**62, "1.5"))]
            elif opt == "--energy":
                a += [opt, _pick(rng, (0.5, 0.9, 0.99, 1), (0, -0.1, 1.5, "nan", "inf", "-inf"))]
            elif opt == "--max-error":
                a += [opt, _pick(rng, (0.05, 0.3, 1), (0, -1, "nan", "inf", 2))]
            else:
                a += [opt, _pick(rng, (0.5, 0.8, 1), (0, -1, "nan", "inf", 1e-9, 10))]
        if rng.random() < 0.2:
            a += ["--form", _pick(rng, ("sum", "concat", "multiplier", "tiled"), ("bogus",))]
    if rng.random() < 0.15:
        a += [rng.choice(("--include", "--exclude")),
              rng.choice(("conv", ".*", "[", "(", "(a+)+$", "\\", "^$", "(?P<x", rng.choice(HOSTILE_NAMES)))]
    if rng.random() < 0.1:
        a.append("--force")
    if rng.random() < 0.1:
        a += ["--min-channels", _pick(rng, (1, 4, 64), (0, -1, 2**62))]
    if rng.random() < 0.15:
        a += ["--input-shape", _shape_value(rng, ref)]
    if rng.random() < 0.1:
        a += ["--batch", _pick(rng, (1, 2), (0, -1, 10**12, 2**62))]
    if rng.random() < 0.25:
        a.append("--verify")
    if rng.random() < 0.08:
        data, tag = _npz(rng, ref, 1)
        case.files["in/inputs.npz"] = data
        case.tags.append(tag)
        a += ["--inputs", "{D}/in/inputs.npz"]
    if rng.random() < 0.1:
        a += ["--calibration", _calibration(rng, case, ref)]
        if rng.random() < 0.3:
            a.append("--no-kernel-refit")
        if rng.random() < 0.2:
            a += ["--provider", _pick(rng, ("cpu",), ("cuda", "bogus", "tensorrt"), 0.6)]
        if rng.random() < 0.1:
            a += ["--threads", _pick(rng, (1, 2, 1024), (0, 1025))]
            if a[-1] == "1024":
                case.tags.append("threads-1024")
        if rng.random() < 0.1:
            a += ["--target-speedup", _pick(rng, (1.2,), (0, -1, "nan", "inf", 1e9), 0.7)]
    elif rng.random() < 0.03:
        a.append("--no-kernel-refit")
    if rng.random() < 0.03:
        a += ["--target-speedup", "2"]
    if rng.random() < 0.05 and "out-is-input" not in case.tags and "out-symlink-input" not in case.tags:
        a.append("--overwrite")
    rng.shuffle(pairs := _pairs(a))
    return [x for p in pairs for x in p]


def _safe_file_name(name: str) -> bool:
    return bool(name) and "/" not in name and "\0" not in name and name not in (".", "..") and len(name) < 200


def _calib_folder(rng: random.Random, case: Case, ref: onnx.ModelProto | None, samples: int) -> str | None:
    """A --calibration folder ``in/calib`` of NAME.npy files, one in three with a FIFO among them (named as one
    of the inputs' files, or an extra one); None where an input's name cannot be a file name."""
    arrays = _npz_arrays(ref, samples)
    if not arrays or not all(_safe_file_name(k + ".npy") for k in arrays):
        return None
    fifo = None
    if rng.random() < 0.35:
        fifo = rng.choice((next(iter(arrays)) + ".npy", "extra.npy"))
        case.fifos.append(f"in/calib/{fifo}")
        case.tags.append("calib-fifo")
        case.timeout = 5.0  # a reader that opens the FIFO waits for a writer forever
    for k, v in arrays.items():
        if f"{k}.npy" != fifo:
            case.files[f"in/calib/{k}.npy"] = _npy(v)
    return "{D}/in/calib"


def _calibration(rng: random.Random, case: Case, ref: onnx.ModelProto | None) -> str:
    """--calibration's value: an .npz (right or hostile, :func:`_npz`), a folder of NAME.npy files (maybe with a
    FIFO), the folder holding the model (no .npy in it), or a missing file."""
    kind = rng.choice(("npz", "npz", "npz", "folder", "model-folder", "missing"))
    if kind == "folder":
        folder = _calib_folder(rng, case, ref, rng.choice((1, 4)))
        if folder is not None:
            case.tags.append("calib-folder")
            return folder
        kind = "npz"
    data, tag = _npz(rng, ref, rng.choice((1, 4)))
    case.files["in/calib.npz"] = data
    case.tags.append("calib-" + tag)
    return {"npz": "{D}/in/calib.npz", "model-folder": "{D}/in", "missing": "{D}/in/none.npz"}[kind]


#: What the outputs of a data-clash case (:func:`_clash_args`) name: the --calibration file, a file in the
#: --calibration folder, or the --inputs file.
CLASH_TARGETS = ("calibration", "calibration-folder", "inputs")
CLASH_OPTIONS = ("-o", "--report", "--plot")


def _clash_args(rng: random.Random, case: Case, ref: onnx.ModelProto | None) -> list[str]:
    """separate with -o, --report or --plot naming the data the run reads (an input file: it must never change)."""
    target, opt = rng.choice(CLASH_TARGETS), rng.choice(CLASH_OPTIONS)
    case.tags.append(f"clash-{opt.lstrip('-')}-{target}")
    case.dirs.append("out")
    samples = 8  # enough to hold some out, so that --verify and the planner read them too
    cal = "{D}/in/calib.npz"
    if target == "calibration-folder":
        folder = _calib_folder(rng, case, ref, samples)
        if folder is None:  # no input name that can be a file name: the .npz instead
            case.tags[-1] = f"clash-{opt.lstrip('-')}-calibration"
            target = "calibration"
        else:
            cal = folder
            clash = folder + "/" + next(iter(_npz_arrays(ref, 1))) + ".npy"
    if target != "calibration-folder":
        case.files["in/calib.npz"] = _npz_bytes(_npz_arrays(ref, samples))
    if target == "calibration":
        clash = cal
    elif target == "inputs":
        case.files["in/inputs.npz"] = _npz_bytes(_npz_arrays(ref, 1))
        clash = "{D}/in/inputs.npz"
    a = ["-o", clash if opt == "-o" else "{D}/out/result.onnx", "--calibration", cal]
    if opt != "-o":
        case.outputs.append("out/result.onnx")
    if opt == "--report" or rng.random() < 0.3:
        a += ["--report", clash if opt == "--report" else "{D}/out/report.json"]
        if opt != "--report":
            case.outputs.append("out/report.json")
    if opt == "--plot":  # the planner draws it
        a += ["--plot", clash, "--target-speedup", rng.choice(("1.2", "1.05"))]
    else:
        a += rng.choice((["--rank", "1"], ["--mode", "shuffle", "--groups", "2"]))
    if target == "inputs":
        a += ["--inputs", "{D}/in/inputs.npz"]
    elif rng.random() < 0.5:
        a.append("--verify")
    return a


#: The ways ``separate`` runs a model, each drawn for the model classes that every one of them must survive
#: (an IR-3 model, a string-typed conv weight): :func:`_mode_args`.
SEPARATE_MODES = ("rank", "exact", "budget", "shuffle", "refit", "shuffle-refit", "plan", "mixed-plan")


def _mode_args(rng: random.Random, case: Case, ref: onnx.ModelProto | None, mode: str) -> list[str]:
    """A plain, valid ``separate`` argv for ``mode`` (:data:`SEPARATE_MODES`): the model is what is fuzzed."""
    case.dirs.append("out")
    case.outputs.append("out/result.onnx")
    a = ["-o", "{D}/out/result.onnx"]
    if rng.random() < 0.5:
        a += ["--report", "{D}/out/report.json"]
        case.outputs.append("out/report.json")
    a += {"rank": ["--rank", rng.choice(("1", "2"))], "exact": ["--exact"], "budget": ["--budget", "0.5"],
          "shuffle": ["--mode", "shuffle", "--groups", "2"], "refit": ["--rank", "1"],
          "shuffle-refit": ["--mode", "shuffle", "--groups", "2"], "plan": ["--target-speedup", "1.2"],
          "mixed-plan": ["--mode", "mixed", "--target-speedup", "1.2"]}[mode]
    if mode in ("refit", "shuffle-refit", "plan", "mixed-plan"):
        case.files["in/calib.npz"] = _npz_bytes(_npz_arrays(ref, 8))
        a += ["--calibration", "{D}/in/calib.npz"]
    if rng.random() < 0.3:
        a.append("--verify")
    return a


def _pairs(a: list[str]) -> list[list[str]]:
    """Split an argv into option groups (an option and its value), so their order can be shuffled."""
    out: list[list[str]] = []
    for x in a:
        if x.startswith("-") and (not out or not _is_neg_number(x)):
            out.append([x])
        else:
            out[-1].append(x)
    return out


def _is_neg_number(x: str) -> bool:
    try:
        float(x)
        return True
    except ValueError:
        return False


def _bench_args(rng: random.Random, case: Case, ref: onnx.ModelProto | None, subprocess_mode: bool) -> list[str]:
    a: list[str] = []
    # Always bounded: without --iters the default is 5 s of timed rounds per provider.
    a += ["--iters", _pick(rng, (1, 2), (0, -1, "x"), 0.15)]
    a += ["--warmup", _pick(rng, (0, 1), (-1, "x"), 0.15)]
    if rng.random() < 0.15:
        a += ["--duration", _pick(rng, (0.01, 0.05), (0, -1, "nan", "inf"))]
    if rng.random() < 0.2:
        big = (10**12, 2**40) + ((100000,) if subprocess_mode else ())
        # 1024 (the most allowed) under the run's address-space limit: refused in one line, never a hang.
        a += ["--threads", _pick(rng, (1, 2, 1024), (0, -1, 1025) + big)]
        if a[-1] == "1024":
            case.tags.append("threads-1024")
    if rng.random() < 0.15:
        a += ["-p", _pick(rng, ("cpu",), ("cuda", "tensorrt", "bogus", "CPU", ""), 0.6)]
    if rng.random() < 0.15:
        a += ["--opt-level", _pick(rng, ("all", "basic", "extended", "disable"), ("x",))]
    if rng.random() < 0.15:
        a += ["--batch", _pick(rng, (1, 2), (0, -1, 10**6, 10**12, 2**62))]
    if rng.random() < 0.2:
        a += ["--input-shape", _shape_value(rng, ref)]
    if rng.random() < 0.1:
        data, tag = _npz(rng, ref, 1)
        case.files["in/inputs.npz"] = data
        case.tags.append(tag)
        a += ["--inputs", "{D}/in/inputs.npz"]
    if rng.random() < 0.1:
        a += ["--seed", _pick(rng, (0, 1), (-1, 2**64, "x"))]
    if rng.random() < 0.1:
        a.append("--profile")
    if rng.random() < 0.1:
        a += ["--device-id", _pick(rng, (0,), (-1, 99, 2**62))]
    if rng.random() < 0.1:
        a += ["--spinning", _pick(rng, ("auto", "on", "off"), ("x",))]
    if rng.random() < 0.03:
        a.append("--isolate")
    if rng.random() < 0.2:
        a += ["--format", _pick(rng, ("table", "json", "csv", "markdown"), ("x",))]
    if rng.random() < 0.1:
        a += ["--progress", _pick(rng, ("auto", "on", "off"), ("x",))]
    if rng.random() < 0.1:
        a += ["--fail-if-slower", _pick(rng, (1.0, 100), (0, -1, "nan", "inf"))]
    if rng.random() < 0.1:
        a += ["--max-error", _pick(rng, (1e-3,), (0, -1, "nan", "inf"))]
    pairs = _pairs(a)
    rng.shuffle(pairs)
    return [x for p in pairs for x in p]


# ----------------------------------------------------------------------------------------------------------------
# quantize


#: What -o and --report of a quantize clash case (:func:`_quantize_clash`) name: each other (or the model's
#: external data file beside -o), the input model, the --calibration file, a file in the --calibration folder.
QUANTIZE_CLASHES = ("report-is-output", "report-is-output-data", "report-is-input", "report-is-calibration",
                    "report-in-calibration-folder", "o-is-input", "o-is-calibration", "o-in-calibration-folder")

#: --metric FILE.py:fn files (``in/metric.py``): a working metric, and the ways the user's own code goes wrong.
METRIC_FILES: dict[str, bytes] = {
    "ok": b"def fn(reference, candidate):\n    return 1.0\n",
    "raises": b"def fn(reference, candidate):\n    raise ValueError('metric broke\\x1b[2J\\nsecond line')\n",
    "nan": b"def fn(reference, candidate):\n    return float('nan')\n",
    "string": b"def fn(reference, candidate):\n    return 'high'\n",
    "huge-int": b"def fn(reference, candidate):\n    return 10 ** 400\n",
    "array": b"import numpy as np\n\ndef fn(reference, candidate):\n    return np.array([1.0, 2.0])\n",
    "syntax": b"def fn(:\n",
    "import-error": b"import no_such_module_of_the_onnxconv_fuzzer\n",
    "no-function": b"x = 1\n",
    "not-callable": b"fn = 3\n",
    "bad-support": b"def fn(reference, candidate):\n    return 1.0\n\nfn.support = lambda reference: 'many'\n",
    "bad-utf8": b"def fn(reference, candidate):\n    return 1.0  # \xff\xfe\n",
    "binary": bytes(range(256)),
}


def _quantize_clash(rng: random.Random, case: Case, ref: onnx.ModelProto | None, model_rel: str) -> list[str]:
    """-o and --report naming each other or the data the run reads (:data:`QUANTIZE_CLASHES`): refused before any
    work, in one line naming the option, with every other option valid."""
    target = rng.choice(QUANTIZE_CLASHES)
    case.dirs.append("out")
    out, report = "{D}/out/result.onnx", "{D}/out/report.json"
    cal = "{D}/in/calib.npz"
    if target.endswith("calibration-folder"):
        folder = _calib_folder(rng, case, ref, 8)
        if folder is None:  # no input name that can be a file name: the .npz instead
            target = target.replace("-in-calibration-folder", "-is-calibration")
        else:
            cal = folder
            clash = folder + "/" + next(iter(_npz_arrays(ref, 1))) + ".npy"
    if not target.endswith("calibration-folder"):
        case.files["in/calib.npz"] = _npz_bytes(_npz_arrays(ref, 8))
        clash = {"report-is-output": out, "report-is-output-data": out + ".data", "report-is-input": "{D}/" + model_rel,
                 "o-is-input": "{D}/" + model_rel}.get(target, cal)
    case.tags.append(f"qclash-{target}")
    if target.startswith("o-"):
        out = clash
    else:
        report = clash
    for p in (out, report):
        if p not in ("{D}/" + model_rel, cal, clash):
            case.outputs.append(p.removeprefix("{D}/"))
    # The clash is checked before the model is read: the refusal names the option whatever the model is.
    case.expect = r"^Error: (-o|--report) " if model_rel in case.files else ""
    return ["-o", out, "--report", report, "--calibration", cal]


def _metric_spec(rng: random.Random, case: Case, ref: onnx.ModelProto | None, hostile: bool,
                 files_only: bool = False) -> str:
    """--metric's value: a built-in (with settings), FILE.py:fn (working or broken, :data:`METRIC_FILES`; only
    those where hostile and ``files_only``), a module's function, or a spec that names nothing."""
    outs = [o.name for o in ref.graph.output] if ref is not None else []
    if hostile and files_only:
        choice = "file"
    elif not hostile:
        choice = rng.choice(("top1", "boxes", "boxes-settings", "top1-output", "file-ok"))
    else:
        choice = rng.choice(("unknown", "empty", "colon", "no-func", "bad-func", "bad-setting", "nan-setting",
                             "neg-setting", "missing-file", "folder", "not-python", "no-module", "module-func",
                             "hostile-output", "file"))
    case.tags.append(f"qmetric-{choice}")
    if choice.startswith("file"):
        kind = "ok" if choice == "file-ok" else rng.choice(sorted(METRIC_FILES))
        case.tags[-1] = f"qmetric-file-{kind}"
        name = rng.choice(("metric.py", "my metric;x.py", "m$(touch PWNED20).py"))
        case.files[f"in/{name}"] = METRIC_FILES[kind]
        return f"{{D}}/in/{name}:fn"
    return {"top1": "top1", "boxes": "boxes", "boxes-settings": "boxes:conf=0.3,iou=0.5",
            "top1-output": f"top1:output={outs[0] if outs else 'output'}", "unknown": "nosuch", "empty": "",
            "colon": ":", "no-func": "x.py:", "bad-func": "pkg.mod:1fn", "bad-setting": "top1:bogus=1",
            "nan-setting": "boxes:conf=nan", "neg-setting": "boxes:iou=-1", "missing-file": "{D}/in/nope.py:fn",
            "folder": "{D}/in:fn", "not-python": "{D}/in/calib.npz:fn", "no-module": "no_such_pkg_of_the_fuzzer:fn",
            "module-func": rng.choice(("os:getcwd", "json:loads", "math:nan")),
            "hostile-output": "top1:output=" + rng.choice(HOSTILE_NAMES)}[choice]


def _quantize_case(rng: random.Random, case: Case) -> list[str]:
    """A quantize case: two in five calm (a valid model, maybe with hostile names, right calibration data and
    valid options: the whole quantization runs, measures, times and writes), the others with a model of
    :func:`_model_case` (mostly hostile) and :func:`_quantize_args`' outputs, data and options."""
    if rng.random() < 0.4:
        name = rng.choice(BASE_MODELS)
        ref = _base(name)
        case.tags += [name.removesuffix(".onnx"), "valid", "qcalm"]
        m = onnx.ModelProto()
        m.CopyFrom(ref)
        if rng.random() < 0.3:  # names reach the printed report: they must come out escaped
            case.tags.append(_mut_names(m, rng))
        case.model = "in/model.onnx"
        case.files[case.model] = m.SerializeToString()
        return ["{D}/" + case.model] + _quantize_args(rng, case, m, case.model, calm=True)
    ref2, model_rel = _model_case(rng, case, max_depth=50)
    case.model = model_rel
    return ["{D}/" + model_rel] + _quantize_args(rng, case, ref2, model_rel)


def _quantize_args(rng: random.Random, case: Case, ref: onnx.ModelProto | None, model_rel: str,
                   calm: bool = False) -> list[str]:
    """quantize's argv: -o / --report variants (those of separate, or :func:`_quantize_clash`), --calibration
    (right or hostile, :func:`_calibration`), and its options with valid and invalid values (only valid ones when
    ``calm`` or for a clash). Its temporary files (onnxruntime's quantizer, the timing) go to TMPDIR, a folder of
    the case: leftovers there are seen."""
    case.env["TMPDIR"] = "{D}/tmp"
    case.dirs.append("tmp")
    case.strict_outputs = True  # the model and --report are written together, or neither
    if calm:
        case.dirs.append("out")
        a = ["-o", "{D}/out/result.onnx", "--calibration", "{D}/in/calib.npz"]
        case.outputs.append("out/result.onnx")
        if rng.random() < 0.5:
            a += ["--report", "{D}/out/report.json"]
            case.outputs.append("out/report.json")
        arrays = _npz_arrays(ref, rng.choice((1, 8, 16)))
        if rng.random() < 0.2 and arrays and all(_safe_file_name(k + ".npy") for k in arrays):
            case.files.update({f"in/calib/{k}.npy": _npy(v) for k, v in arrays.items()})  # a folder, no FIFO
            a[3] = "{D}/in/calib"
            case.tags.append("calib-folder")
        else:
            case.files["in/calib.npz"] = _npz_bytes(arrays)
        p = 0.0
    elif rng.random() < 0.25:
        a = _quantize_clash(rng, case, ref, model_rel)
        p = 0.0  # every other option valid: the clash is what is refused
    else:
        out, report = _output_variant(rng, case, model_rel)
        a = ["-o", out] + (["--report", report] if report is not None else [])
        if rng.random() < 0.97:
            a += ["--calibration", _calibration(rng, case, ref)]
        else:
            case.tags.append("qcalibration-none")
        p = 0.3
    # Always bounded: the default is 5 s of timing. inf once was accepted and never ended: it must be refused.
    duration = _pick(rng, ("0.05",), (0, -1, "nan", "x", "1e-300", "inf", "0.05"), p * 0.3)
    if calm and rng.random() < 0.03:  # where the timing is reached
        duration = "inf"
    if duration == "inf":
        case.timeout = 10.0
        case.tags.append("qduration-inf")
    a += ["--duration", duration]
    if rng.random() < 0.4:
        value = _pick(rng, (0.05, 0.5, 1, 1e300), (0, -1, "nan", "inf", "-inf", "x", 1e-300, 1e-12), p * 1.5)
        case.tags.append("qerror-" + ("valid" if value in ("0.05", "0.5", "1", "1e+300") else value))
        a += ["--max-output-error", value]
    if rng.random() < 0.35:  # calm: the user's metric file misbehaving, where it gets to run
        a += ["--metric", _metric_spec(rng, case, ref, rng.random() < (0.4 if calm else p * 1.5), calm)]
    if rng.random() < 0.15 and (p or "--metric" in a):
        value = _pick(rng, (0.5, 0.9, 1.0), ("nan", "inf", "-inf", 2, "x"), p * 1.5)
        case.tags.append("qminmetric-" + ("valid" if value in ("0.5", "0.9", "1.0") else value))
        a += ["--min-metric", value]
    if rng.random() < (0.1 if p else 0.03):
        outs = [o.name for o in ref.graph.output] if ref is not None else ["output"]
        good = [f"{outs[0]}=1", f"{outs[0]}=-1"]
        a += ["--channel-axis", _pick(rng, good, ("x", "=1", f"{outs[0]}=99", f"{outs[0]}=-99", "nosuch=1",
                                                  f"{outs[0]}=a", rng.choice(HOSTILE_NAMES) + "=1"), p * 2)]
    if rng.random() < 0.15:
        a += ["--activation-type", _pick(rng, ("uint8", "int8"), ("int4", ""), p)]
    if rng.random() < 0.15:
        a += ["--weight-type", _pick(rng, ("int8", "uint8"), ("fp8", ""), p)]
    if rng.random() < 0.1:
        a += ["--threads", _pick(rng, (1, 2, 1024), (0, 1025, -1), p)]
        if a[-1] == "1024":
            case.tags.append("threads-1024")
    if rng.random() < 0.1:
        a += ["--seed", _pick(rng, (0, 3), (-1, 2**64, "x"), p)]
    if rng.random() < 0.1 and p:  # (a valid value is a rare draw: not in calm or clash cases)
        a += ["--input-shape", _shape_value(rng, ref)]
    if rng.random() < 0.08:
        a += ["--batch", _pick(rng, (1, 2), (0, -1, 10**12, 2**62), p)]
    if rng.random() < 0.05:
        a += ["--progress", _pick(rng, ("auto", "on", "off"), ("x",), p)]
    pairs = _pairs(a)
    rng.shuffle(pairs)
    return [x for pair in pairs for x in pair]


# ----------------------------------------------------------------------------------------------------------------
# separate --latency-command


#: Models the planner reaches --target-speedup 1.2 on with the fake board (it answers by file size): tiny, so
#: that a planned run takes a few seconds (the chosen plan is timed end to end through the command too).
LATENCY_MODELS = ("tiny_cnn.onnx", "tiny_conv1d.onnx", "tiny_conv3d.onnx")

#: The fake board, run as ``{PY} -S board.py WHAT [ARG...] {model} [{inputs}]``: ``ok`` answers 1 ms per kB of
#: the model file after checking that every path it got names a file (a path split by the shell, or one with
#: quotes left in it, does not; ``--model=PATH`` is read as PATH) and prints a login banner first; the others
#: fail as a board or a network can: an exit status with hostile stderr, output that is not the answer, an
#: endless or deeply nested one.
BOARD = r'''import json, os, sys, time
what, rest = sys.argv[1], sys.argv[2:]
files = [a.removeprefix("--model=") for a in rest if not a.startswith("--arg=")]
args = [a.removeprefix("--arg=") for a in rest if a.startswith("--arg=")]
out, err = sys.stdout.buffer, sys.stderr.buffer
if not files or not all(os.path.isfile(f) for f in files):
    err.write(("board: not a model file: %r\n" % (files,)).encode())
    sys.exit(2)
answer = json.dumps({"median_ms": os.path.getsize(files[0]) / 1000.0, "runs": 5}).encode()
STDERR = {"ctrl": b"\x1b[2J\x1b[Hboard \x07failed\r\x1b]0;title\x07", "long": b"e" * 100000,
          "bad-utf8": b"\xff\xfe\xed\xa0\x80 failed \xc3(", "nul": b"a\x00b", "c1": b"\x9b31mred\xc2\x9b",
          "bidi": "\u202eliated".encode(), "lines": b"first\nError: second\n\n  \n", "none": b"",
          "newlines": b"\n\n\n", "fake-error": b"Error: everything is fine\nexit 0"}
if what == "ok":
    out.write(b"Welcome to the board \x1b[1m\xff\n" + answer + b"\n")
elif what == "huge-ok":  # a 5 MB object with the answer in it
    out.write(json.dumps({"median_ms": os.path.getsize(files[0]) / 1000.0, "log": "x" * 5000000}).encode())
elif what == "value":  # a number other than a usual time, as the answer
    out.write(b'{"median_ms": ' + args[0].encode() + b"}\n")
elif what == "rm-scratch":  # the board removes the folder the model came in, then answers
    import shutil
    shutil.rmtree(os.path.dirname(files[0]), ignore_errors=True)
    out.write(answer + b"\n")
elif what == "exit":
    err.write(STDERR[args[0]])
    sys.exit(int(args[1]))
elif what == "traceback":
    raise ValueError("board broke")
elif what == "kill":
    import signal
    os.kill(os.getpid(), signal.SIGKILL)
elif what == "print":
    out.write(args[0].encode("utf-8", "surrogateescape").decode("unicode_escape").encode("latin-1"))
elif what == "stderr-answer":
    err.write(answer + b"\n")
elif what == "deep":  # valid JSON nested deeper than Python's recursion limit
    out.write(b"[" * 100000 + b"]" * 100000 + b"\n")
elif what == "deep-object":
    out.write(b'{"median_ms": ' * 50000 + b"1" + b"}" * 50000 + b"\n")
elif what == "garbage-mb":
    out.write(b"\x00\xff garbage " * 500000)
elif what == "flood":
    while True:
        out.write(b"y" * 65536)
'''

#: What the fake board prints for ``print`` (with ``\\n`` and ``\\xNN`` escapes): none of it an answer.
BOARD_PRINTS = {
    "hello": "hello board", "nothing": "", "blank": "\\n\\n  \\n", "nan": '{"median_ms": NaN}',
    "inf": '{"median_ms": Infinity}', "-inf": '{"median_ms": -Infinity}', "neg": '{"median_ms": -1}',
    "zero": '{"median_ms": 0}', "string": '{"median_ms": "3.2"}', "bool": '{"median_ms": true}',
    "null": '{"median_ms": null}', "list": '[{"median_ms": 1}]', "nested": '{"median_ms": {"v": 1}}',
    "bigint": '{"median_ms": 1' + "0" * 400 + "}", "1e400": '{"median_ms": 1e400}', "mean": '{"mean_ms": 3}',
    "two-objects": '{"median_ms": 1}{"median_ms": 2}', "then-garbage": '{"median_ms": 1}\\ntrailing words',
    "unquoted": "{median_ms: 3}", "bad-utf8": '\\xff\\xfe{"median_ms": \\xc3(}', "ctrl": "\\x1b[2J\\x1b[H\\x07\\r",
}

#: Commands that never answer, each stopped at --latency-timeout (0.3 s) with its whole process group; ``SLEEP``
#: is a number of seconds (20-30) no other process runs with, looked for among the processes once the run ended.
TIMEOUT_COMMANDS = {
    "sleep": "sleep SLEEP # {model}", "pipeline": "sleep SLEEP | cat # {model}",
    "subshell": "(sleep SLEEP; echo) | cat # {model}", "trap": "trap '' TERM INT HUP; sleep SLEEP # {model}",
    "python": "{PY} -S -c 'import time; time.sleep(SLEEP)' {model}", "wait": "sleep SLEEP & wait # {model}",
    "holds-stdout": "sleep SLEEP & echo '{\"median_ms\": 1}' # {model}",  # answered, but stdout stays open
    "flood": "{PY} -S {BOARD} flood {model}",  # endless output: memory grows until the timeout
}

#: Folder names (of TMPDIR, where the timer writes the models it times, or of the case) with spaces, quotes and
#: shell syntax: each ``touch PWNEDn`` in them runs if a path reaches the shell unquoted (looked for afterwards).
HOSTILE_FOLDERS = (
    "a b", "x; touch PWNED1", "$(touch PWNED2)", "`touch PWNED3`", "q'; touch PWNED4; '", 'dq"$(touch PWNED5)"',
    "nl\ntouch PWNED6", "-rf", "*", "|touch PWNED8", "&& touch PWNED9 &&", "~", "${IFS}touch${IFS}PWNED10",
    "名前 é", "\\$(touch PWNED11)", "{inputs} $(touch PWNED7)",
)

#: The groups of --latency-command cases, and how often each is drawn.
LATENCY_GROUPS = {"board": 25, "exit": 14, "print": 20, "timeout": 12, "quoting": 8, "no-model": 5,
                  "no-planner": 4, "timeout-value": 8, "huge-command": 3}
_SLEEP_MARK = "SLEEP"


def _latency_command(rng: random.Random, case: Case, group: str) -> tuple[str, str, str]:
    """(CMD, --latency-timeout, the variant) of ``group``; sets what the run must end as."""
    board = "{PY} -S {BOARD}"
    refused = r"^Error: --latency-command\b"
    timeout = "30"
    if group == "board":
        variant = rng.choice(("script", "script", "c", "inputs", "model-arg", "redirect", "chain", "huge-ok",
                              "value-tiny", "value-huge", "rm-scratch", "big-timeout"))
        case.expect = "success"
        case.cost = 4.0  # the planner times every layer option and plan: a few seconds
        cmd = {"script": f"{board} ok {{model}}", "c": "{PY} -S -c " + shlex.quote(
                   "import json, os, sys; print(json.dumps({'median_ms': os.path.getsize(sys.argv[1]) / 1000}))")
               + " {model}",
               "inputs": f"{board} ok {{model}} {{inputs}}", "model-arg": f"{board} ok --model={{model}}",
               "redirect": f"exec {board} ok {{model}} 2>/dev/null </dev/null",
               "chain": f"cat {{model}} >/dev/null && {board} ok {{model}} | cat",
               "huge-ok": f"{board} huge-ok {{model}}", "value-tiny": f"{board} value --arg=5e-324 {{model}}",
               "value-huge": f"{board} value --arg=1e300 {{model}}", "rm-scratch": f"{board} rm-scratch {{model}}",
               "big-timeout": f"{board} ok {{model}}"}[variant]
        if variant in ("value-tiny", "value-huge", "rm-scratch"):
            case.expect = ""  # a plan of such timings, or a refusal: either, cleanly
        if variant == "big-timeout":
            timeout = rng.choice(("1e5", "1e6"))  # 1e6: the largest allowed (planning.timer.MAX_TIMEOUT_S)
        return cmd, timeout, variant
    case.expect = refused
    if group == "exit":
        variant = rng.choice(("ctrl", "long", "bad-utf8", "nul", "c1", "bidi", "lines", "none", "newlines",
                              "fake-error", "traceback", "kill", "not-found", "sh-exit"))
        code = rng.choice((1, 2, 3, 126, 127, 255))
        cmd = {"traceback": f"{board} traceback {{model}}", "kill": f"{board} kill {{model}}",
               "not-found": "no-such-board-of-the-fuzzer {model}",
               "sh-exit": f"echo oops >&2; exit {code} # {{model}}"}.get(variant,
                                                                       f"{board} exit --arg={variant} --arg={code} {{model}}")
        return cmd, timeout, variant
    if group == "print":
        variant = rng.choice(sorted(BOARD_PRINTS) + ["stderr-answer", "deep", "deep-object", "garbage-mb"])
        if variant in BOARD_PRINTS:
            return f"{board} print --arg={shlex.quote(BOARD_PRINTS[variant])} {{model}}", timeout, variant
        return f"{board} {variant} {{model}}", timeout, variant
    if group == "timeout":
        variant = rng.choice(sorted(TIMEOUT_COMMANDS))
        mark = f"2{rng.randrange(10)}.{rng.randrange(10**6):06d}"
        case.markers.append(mark)
        case.timeout = 15.0  # stopped at 0.3 s: the run ends in a second or two, well within this
        if variant == "holds-stdout":
            case.expect = ""  # the answer came; a refusal for the open stdout is as right
        timeout = "0.3" if variant == "flood" else rng.choice(("0.3", "0.3", "0.5"))  # flood: ~1 GB by 0.3 s
        return TIMEOUT_COMMANDS[variant].replace(_SLEEP_MARK, mark).replace("{BOARD}", "{Q:in/board.py}"), \
            timeout, variant
    if group == "quoting":
        variant = rng.choice(("single", "double", "inputs-single", "embedded-double", "nul"))
        cmd = {"single": f"{board} ok '{{model}}'", "double": f'{board} ok "{{model}}"',
               "inputs-single": f"{board} ok {{model}} '{{inputs}}'",
               "embedded-double": f'{board} ok "--model={{model}}"', "nul": f"{board} ok \0 {{model}}"}[variant]
        if variant == "nul":
            case.expect = r"NUL|^Error: --latency-command\b"
        elif variant in ("double", "embedded-double"):  # "${1}" inside the user's double quotes: one word, inert
            case.expect = "success"
            case.cost = 4.0
        return cmd, timeout, variant
    if group == "no-model":
        variant = rng.choice(("none", "empty", "upper", "spaced", "open", "model-word"))
        return {"none": f"{board} ok /dev/null", "empty": "", "upper": f"{board} ok {{MODEL}}",
                "spaced": f"{board} ok {{ model }}", "open": f"{board} ok {{model", "model-word": "echo model"}[variant], \
            timeout, variant
    if group == "no-planner":
        case.expect = r"^Error: --latency-(command|timeout)\b"
        return f"{board} ok {{model}}", timeout, rng.choice(("rank", "timeout-alone"))
    if group == "timeout-value":
        variant = rng.choice(("0", "-1", "nan", "inf", "-inf", "x", "1e-9", "3e6", "1e300"))
        case.expect = r"--latency-(timeout|command)"
        return f"{board} ok {{model}}", variant, variant
    n = 200000  # over what one argument of a process may be (128 KiB): sh cannot be started with it
    case.expect = refused
    return "echo " + "x" * n + " {model}", timeout, "huge-command"


def _latency_args(rng: random.Random, case: Case) -> list[str]:
    """A planner run (``--target-speedup 1.2 --calibration``; a quarter of them ``quantize`` instead) timed by
    ``--latency-command`` (one of
    :data:`LATENCY_GROUPS`), on a valid tiny model: a fake board (:data:`BOARD`, in the case folder) must plan
    and write the model; every other command is refused in one ``Error: --latency-command ...`` line, writing
    nothing, with the model files the timer writes under TMPDIR (a folder of the case, its name often hostile:
    :data:`HOSTILE_FOLDERS`) removed and no process of the command left running."""
    name = rng.choice(LATENCY_MODELS)
    ref = _base(name)
    case.tags.append(name.removesuffix(".onnx"))
    case.model = "in/model.onnx"
    case.files["in/model.onnx"] = ref.SerializeToString()
    case.files["in/calib.npz"] = _npz_bytes(_npz_arrays(ref, 8))
    case.files["in/board.py"] = BOARD.encode()
    case.timeout = 60.0
    group = rng.choices(list(LATENCY_GROUPS), weights=list(LATENCY_GROUPS.values()))[0]
    cmd, timeout, variant = _latency_command(rng, case, group)
    case.tags.append(f"latency-{group}-{variant}")
    board = "{Q:in/board.py}"
    if rng.random() < 0.3:  # the board script in a folder whose name is shell syntax: the user quotes it
        folder = rng.choice([f for f in HOSTILE_FOLDERS if "{" not in f])
        case.files[f"in/{folder}/board.py"] = BOARD.encode()
        board = f"{{Q:in/{folder}/board.py}}"
        case.tags.append("latency-path-board")
    cmd = cmd.replace("{BOARD}", board)
    tmpdir = "tmp"
    if rng.random() < 0.4:
        tmpdir = "tmp/" + rng.choice(HOSTILE_FOLDERS)
        case.tags.append("latency-path-tmpdir")
    case.dirs.append(tmpdir)
    case.env["TMPDIR"] = "{D}/" + tmpdir
    if rng.random() < 0.15:
        case.folder = rng.choice([f for f in HOSTILE_FOLDERS if "{" not in f and "~" not in f and f != "*"])
        case.tags.append("latency-path-folder")
    case.strict_outputs = True
    case.dirs.append("out")
    case.outputs.append("out/result.onnx")
    a = ["{D}/in/model.onnx", "-o", "{D}/out/result.onnx"]
    if rng.random() < 0.4:
        a += ["--report", "{D}/out/report.json"]
        case.outputs.append("out/report.json")
    if variant == "rank":
        a += ["--rank", "1", "--latency-command", cmd]
    elif variant == "timeout-alone":
        a += ["--calibration", "{D}/in/calib.npz", "--target-speedup", "1.2", "--latency-timeout", "5"]
    else:
        a += ["--calibration", "{D}/in/calib.npz", "--target-speedup", "1.2", "--latency-command", cmd,
              "--latency-timeout", timeout]
    if rng.random() < 0.2 and group != "board":
        a.append("--verify")
    if variant not in ("rank", "timeout-alone") and rng.random() < 0.25:
        # quantize times int8 against fp32 through the same command (one check run first, then 5 rounds); its
        # criterion is made loose so that a working board ends in a written model.
        case.command = "quantize"
        case.tags.append("latency-via-quantize")
        i = a.index("--target-speedup")
        a[i:i + 2] = ["--max-output-error", "1", "--duration", "0.05"]
        if "--verify" in a:
            a.remove("--verify")
    return a


#: separate's options that run the model many times (dropped on chains of 300 convs and more).
_SLOW_OPTIONS = ("--calibration", "--target-speedup", "--max-output-error", "--plot", "--no-kernel-refit",
                 "--provider", "--threads", "--precision")


#: The generator classes, each selectable alone (``--only``): the three commands' own, ``quantize``, and
#: ``latency`` (separate's planner timed through ``--latency-command``).
CLASSES = ("stats", "separate", "bench", "quantize", "latency")

#: Shares of the normal mix drawn for the later classes. They come from a stream of their own, so every other
#: case is still what the same (seed, index) made before they were added.
LATER_CLASSES = {"quantize": 0.08, "latency": 0.05}


def case_class(seed: int, index: int, only: str | None = None) -> str:
    """The generator class (:data:`CLASSES`) of case ``index`` of ``seed``: ``only``, else one of
    :data:`LATER_CLASSES` at its share, else a command drawn from the case's own stream by :func:`make_case`
    (returned as "")."""
    if only:
        return only
    r = random.Random(f"class:{seed}:{index}").random()
    for cls, share in LATER_CLASSES.items():
        if r < share:
            return cls
        r -= share
    return ""


def make_case(seed: int, index: int, only: str | None = None, subprocess_mode: bool = False) -> Case:
    """Case ``index`` of the run with ``seed``: a pure function of its arguments."""
    rng = random.Random(f"{seed}:{index}")
    cls = case_class(seed, index, only)
    if cls == "latency":
        case = Case(seed, index, "separate", [], cls=cls)
        case.args = _latency_args(rng, case)
        return _as_run(case, subprocess_mode)
    if cls == "quantize":
        case = Case(seed, index, "quantize", [], cls=cls)
        case.args = _quantize_case(rng, case)
        return _as_run(case, subprocess_mode)
    command = cls or rng.choices(("stats", "separate", "bench"), weights=(40, 45, 15))[0]
    case = Case(seed, index, command, [], cls=command)
    ref, model_rel = _model_case(rng, case)
    case.model = model_rel
    model_arg = "{D}/" + model_rel
    if rng.random() < 0.03:  # CLI misuse: unknown options, missing or extra arguments
        misuse = rng.choice(([], ["--no-such-option"], [model_arg, model_arg, model_arg], ["--", "-x"],
                             [model_arg, "--format"], [model_arg, "--help"], ["-h"]))
        case.args = misuse
        case.tags.append("misuse")
        return case
    depth = next((int(t.removeprefix("chain-")) for t in case.tags if t.startswith("chain-")), 0)
    if command == "stats":
        case.args = [model_arg] + _stats_args(rng, ref)
    elif command == "separate" and ({"ir3", "strweight", "name-bad-utf8-attr"} & set(case.tags)):
        # A model every mode must survive: each mode is a family of its own (the tag names it). A bad attribute
        # name is the shuffle pass's problem: it copies attributes into the grouped convs it builds.
        cls = next(t for t in ("ir3", "strweight", "name-bad-utf8-attr") if t in case.tags)
        mode = "shuffle" if cls == "name-bad-utf8-attr" else rng.choice(SEPARATE_MODES)
        case.tags.append(f"{cls}-{mode}")
        case.args = [model_arg] + _mode_args(rng, case, ref, mode)
    elif command == "separate" and rng.random() < 0.1 and depth < 300:
        # (Not on a deep chain, whose run drops --calibration below, and with it the data the outputs clash with.)
        case.args = [model_arg] + _clash_args(rng, case, ref)
    elif command == "separate":
        case.args = [model_arg] + _separate_args(rng, case, ref, model_rel)
    else:
        models = [model_arg]
        if rng.random() < 0.4:
            models.append(rng.choice((model_arg, "{D}/" + model_rel, "{D}/in/none.onnx")))
        case.args = models + _bench_args(rng, case, ref, subprocess_mode)
        if rng.random() < 0.05:
            case.args.insert(0, "--")  # options after "--" become model paths
    if depth >= 300 and command == "separate":
        # The refit and the planner run the model and time its layers: seconds a layer, more than a fuzz case's
        # budget on hundreds of layers. The chain cases are about the graph work every command does.
        kept = [p for p in _pairs(case.args[1:]) if p[0] not in _SLOW_OPTIONS]
        case.args = case.args[:1] + [x for p in kept for x in p]
    return _as_run(case, subprocess_mode)


#: The longest argument a case run as a process gets (Linux refuses one over 128 KiB: MAX_ARG_STRLEN).
_MAX_ARG = 100000


def _as_run(case: Case, subprocess_mode: bool) -> Case:
    if subprocess_mode or case.subprocess_only:
        # A process's argv is C strings: no shell or pipeline can pass a NUL byte (Popen refuses to), so a case
        # run as a process gets its arguments as far as a real caller could give them, up to the first NUL, and
        # at most _MAX_ARG characters.
        case.args = [a.split("\0", 1)[0][:_MAX_ARG] for a in case.args]
    return case


# ----------------------------------------------------------------------------------------------------------------
# running


@dataclass
class Outcome:
    """What one run did."""

    case: Case
    status: str  # success | clean error | traceback | unclean error | timeout
    signature: str  # the failure class: exception and innermost onnxconv frame, or the first stderr words
    exit_code: int | None
    stdout: str
    stderr: str
    changed: list[str]
    leftovers: list[str]
    unsafe: list[str]  # terminal control sequences / spreadsheet formulas in the output
    seconds: float
    refused: str = ""  # the error of a run whose twin model (Case.twin) the same run accepts, or that must succeed
    unexpected: str = ""  # a run that ended otherwise than its case expects (Case.expect): accepted, or refused
    #                       for another reason


def _setup(case: Case, root: Path) -> None:
    for d in case.dirs:
        (root / d).mkdir(parents=True, exist_ok=True)
    for rel, data in case.files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    for rel, target in case.links.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(target, p)
    for rel in case.devices:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        try:  # a /dev/null twin inside the case folder: the real one is never handed to the CLI
            os.mknod(p, stat.S_IFCHR | 0o666, os.makedev(1, 3))
        except (PermissionError, OSError):
            os.mkfifo(p)
    for rel in case.fifos:
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        os.mkfifo(p)
    for rel in case.readonly:
        os.chmod(root / rel, 0o555)


def snapshot(root: Path) -> dict[str, str]:
    """Every path under ``root`` -> a fingerprint (sha256 of a file, a link's target, a device's numbers)."""
    out: dict[str, str] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            rel = str(p.relative_to(root))
            try:
                st = os.lstat(p)
            except OSError:
                continue
            if stat.S_ISLNK(st.st_mode):
                out[rel] = "link:" + os.readlink(p)
            elif stat.S_ISREG(st.st_mode):
                h = hashlib.sha256()
                with open(p, "rb") as f:
                    for chunk in iter(lambda: f.read(1 << 20), b""):
                        h.update(chunk)
                out[rel] = "file:" + h.hexdigest()
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = "dir"
            else:
                out[rel] = f"special:{st.st_mode:o}:{st.st_rdev}"
    return out


def _complete(path: Path) -> bool:
    """A declared output is complete when it parses: an ONNX model, or the JSON report."""
    try:
        data = path.read_bytes()
    except OSError:
        return False
    if path.suffix == ".json":
        try:
            json.loads(data)
            return True
        except ValueError:
            return False
    try:
        m = onnx.ModelProto()
        m.ParseFromString(data)
        return len(m.graph.node) > 0
    except Exception:  # noqa: BLE001 - any parse failure means incomplete
        return False


def _check_files(case: Case, root: Path, before: dict[str, str], after: dict[str, str]) -> tuple[list[str], list[str]]:
    inputs = set(case.files) - case.others
    declared = set(case.outputs) - inputs  # -o or --report naming an input never makes changing it right
    changed = [p for p, fp in before.items() if p not in declared and after.get(p) != fp]
    leftovers = []
    for p in sorted(set(after) - set(before)):
        if after[p] == "dir":
            leftovers.append(p + "/")
            continue
        companion = any(p == d + ".data" for d in declared)  # external weights beside the written model
        # A declared output is judged by its content, whatever its name (-o x.onnx.tmp is a name a user may
        # choose); the writers' own temporary files are never declared, so they stay leftovers.
        if (p in declared or companion) and after[p].startswith("file:"):
            if companion or _complete(root / p):
                continue
            leftovers.append(p + " (incomplete)")  # e.g. the report renamed over the model it names
            continue
        leftovers.append(p)
    for p in declared:  # a declared output that existed (an old -o) and was replaced by something incomplete
        if p in before and after.get(p, before[p]) != before[p] and after[p].startswith("file:") \
                and not _complete(root / p):
            leftovers.append(p + " (incomplete)")
    return changed, leftovers


_CTRL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f\x80-\x9f]")
_USAGE = re.compile(r"Usage: [^\n]*\n(?:[^\n]*\n)*?Try '[^\n]*' for help\.\n\nError: [^\n]+")


def classify_stderr(exit_code: int, stderr: str) -> tuple[str, str]:
    """(status, signature) from a finished run's exit code and stderr. Phase lines (``... phase``, what
    ``--progress on`` prints off a terminal, as asked) are not part of the error."""
    err = "\n".join(line for line in stderr.rstrip("\n").split("\n") if not line.startswith("... "))
    if "Traceback (most recent call last)" in stderr:
        return "traceback", _tb_signature_text(stderr)
    if exit_code == 0:
        return "success", ""
    if exit_code == 3 and err and all(line.startswith("FAIL: ") for line in err.split("\n")):
        return "success", ""  # a --fail-if-slower / --max-error threshold failed: documented, exit 3
    one_line = err.startswith("Error: ") and "\n" not in err
    usage = _USAGE.fullmatch(err) is not None
    if (one_line or usage) and not _CTRL.search(err.replace("\n", "")):
        return "clean error", ""
    if one_line or usage:
        return "unclean error", "control characters in the error message"
    first = err.strip().split("\n")[0][:70] if err.strip() else f"(empty stderr, exit {exit_code})"
    lines = err.count("\n") + 1 if err else 0
    return "unclean error", f"{lines}-line stderr: {re.sub(r'[0-9]+', 'N', first)}"


def _tb_signature_text(stderr: str) -> str:
    frames = re.findall(r'File "([^"]*)", line (\d+), in (\S+)', stderr)
    ours = [f for f in frames if "/onnxconv/" in f[0]]
    where = ours[-1] if ours else (frames[-1] if frames else ("?", "?", "?"))
    lines = [ln for ln in stderr.strip().split("\n") if ln and not ln.startswith(" ")]
    last = lines[-1] if lines else "?"
    exc = last.split(":")[0].split(".")[-1]  # onnx_graphsurgeon.util.exception.X and X are one class
    return f"{exc} at {_short(where[0])}:{where[2]}"


def _short(path: str) -> str:
    i = path.rfind("/onnxconv/")
    return path[i + 1:] if i >= 0 else Path(path).name


def _tb_signature(e: BaseException) -> str:
    frames = traceback.extract_tb(e.__traceback__)
    ours = [f for f in frames if "/onnxconv/" in f.filename]
    f = ours[-1] if ours else (frames[-1] if frames else None)
    where = f"{_short(f.filename)}:{f.name}" if f else "?"
    return f"{type(e).__name__} at {where}"


def _unsafe(case: Case, stdout: str) -> list[str]:
    found = []
    if "\x1b" in stdout or "\x9b" in stdout or "\x07" in stdout:
        found.append("terminal control sequence on stdout")
    if "--format" in case.args and "csv" in case.args[case.args.index("--format") + 1:][:1]:
        try:
            rows = list(csv.reader(io.StringIO(stdout)))
        except csv.Error:
            rows = []
        if any(cell[:1] in ("=", "+", "@") or (cell[:1] == "-" and not _is_neg_number(cell))
               for row in rows for cell in row if cell):
            found.append("CSV cell starting with a formula character")
    return found


class _CaseTimeout(BaseException):
    """Raised by SIGALRM in process: a BaseException so that no ``except Exception`` swallows it."""


def _on_alarm(signum: int, frame: Any) -> None:
    raise _CaseTimeout()


def run_inprocess(case: Case, root: Path, timeout: float) -> tuple[str, str, int | None, str, str]:
    """(status, signature, exit code, stdout, stderr) of ``case`` through click's CliRunner."""
    from click.testing import CliRunner

    from onnxconv.cli import main

    runner = CliRunner()
    old = signal.signal(signal.SIGALRM, _on_alarm)
    cwd = os.getcwd()
    os.chdir(root)
    env = {k: _substitute(v, root) for k, v in case.env.items()}
    old_tempdir = tempfile.tempdir
    if "TMPDIR" in env:
        tempfile.tempdir = None  # read TMPDIR again (the runner sets it for the run)
    signal.setitimer(signal.ITIMER_REAL, timeout)
    try:
        result = runner.invoke(main, [case.command] + case.argv(root), catch_exceptions=False, env=env)
    except _CaseTimeout:
        return "timeout", "timeout", None, "", ""
    except BaseException as e:  # noqa: BLE001 - every escaping exception is a finding, KeyboardInterrupt too
        return "traceback", _tb_signature(e), None, "", "".join(traceback.format_exception(e))
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
        tempfile.tempdir = old_tempdir
        os.chdir(cwd)
    stdout, stderr = result.stdout, result.stderr
    status, sig = classify_stderr(result.exit_code, stderr)
    return status, sig, result.exit_code, stdout, stderr


def _child_env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env.setdefault("OMP_NUM_THREADS", "1")
    return env


def _limits(mem_bytes: int | None, fsize: int | None) -> Callable[[], None]:
    def apply() -> None:
        if mem_bytes:
            resource.setrlimit(resource.RLIMIT_AS, (mem_bytes, mem_bytes))
        if fsize:
            signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes fail with EFBIG instead of killing
            resource.setrlimit(resource.RLIMIT_FSIZE, (fsize, fsize))
    return apply


def run_subprocess(case: Case, root: Path, timeout: float, mem_bytes: int | None
                   ) -> tuple[str, str, int | None, str, str]:
    try:
        env = {**_child_env(), **{k: _substitute(v, root) for k, v in case.env.items()}}
        p = subprocess.run([sys.executable, "-m", "onnxconv", case.command] + case.argv(root), cwd=root,
                           env=env, capture_output=True, timeout=timeout,
                           preexec_fn=_limits(mem_bytes, case.fsize_limit))
    except subprocess.TimeoutExpired:
        return "timeout", "timeout", None, "", ""
    stdout = p.stdout.decode("utf-8", "replace")
    stderr = p.stderr.decode("utf-8", "replace")
    if p.returncode < 0:
        return "unclean error", f"killed by signal {-p.returncode}", p.returncode, stdout, stderr
    status, sig = classify_stderr(p.returncode, stderr)
    return status, sig, p.returncode, stdout, stderr


#: A refusal decided by measured timings (the planner's target or budget), which two runs may decide apart.
_MEASURED_REFUSAL = re.compile(r"--target-speedup [0-9.e+-]+:|--max-output-error [0-9.e+-]+:|--min-metric|"
                               r"no measured plan|the fastest plan measures|out of reach")


def run_case(case: Case, mode: str, timeout: float = 120.0, keep: Path | None = None,
             mem_bytes: int | None = None) -> Outcome:
    """Run ``case`` in a fresh folder and check it; the folder is removed unless it failed and ``keep``."""
    tmp = Path(tempfile.mkdtemp(prefix="onnxconv-fuzz-"))
    root = tmp / case.folder
    root.mkdir()
    try:
        _setup(case, root)
        before = snapshot(root)
        t0 = time.perf_counter()
        limit = min(timeout, case.timeout) if case.timeout else timeout
        if mode == "subprocess" or case.subprocess_only:
            status, sig, code, out, err = run_subprocess(case, root, limit, mem_bytes)
        else:
            status, sig, code, out, err = run_inprocess(case, root, limit)
        seconds = time.perf_counter() - t0
        if status == "unclean error" and code is not None and code >= 0:  # a signature without the temp folder
            sig = classify_stderr(code, err.replace(str(root), "{D}"))[1]
        for rel in case.readonly:
            if (root / rel).exists():
                os.chmod(root / rel, 0o755)
        after = snapshot(root)
        changed, leftovers = _check_files(case, root, before, after)
        unsafe = _unsafe(case, out)
        # A command that a path smuggled into a shell ran (touch PWNEDn, :data:`HOSTILE_FOLDERS`): unsafe, and
        # not also a leftover.
        pwned = [p for p in after if p not in before and re.fullmatch(r"PWNED\d*", Path(p).name)]
        if pwned:
            unsafe.append("a shell command in a path ran: " + ", ".join(sorted(pwned)))
            leftovers = [x for x in leftovers if x.split(" ")[0] not in pwned]
        if case.strict_outputs and status != "success":
            inputs = set(case.files) - case.others
            leftovers += [f"{p} (written by a failed run)" for p in case.outputs
                          if p not in inputs and after.get(p) != before.get(p)]
        leftovers += [f"process running {m}" for m in _still_running(case.markers)]
        if "TMPDIR" in case.env:  # onnxruntime's telemetry (1DS) keeps its session file there: not the run's
            leftovers = [x for x in leftovers if x != case.env["TMPDIR"].removeprefix("{D}/") + "/.ses"]
        outcome = Outcome(case, status, sig, code, out, err, changed, leftovers, unsafe, seconds)
        if case.expect and status in ("success", "clean error"):
            last = err.strip().split("\n")[-1].replace(str(root), "{D}")
            if case.expect == "success" and status != "success":
                outcome.refused = last[:100]
            elif case.expect != "success" and status == "success":
                outcome.unexpected = f"succeeded, expected a refusal matching {case.expect}"
            elif case.expect != "success" and not re.search(case.expect, last):
                outcome.unexpected = f"refused otherwise than {case.expect}: {last[:80]}"
        if (case.twin is not None and status == "clean error" and case.model in case.files
                and not _MEASURED_REFUSAL.search(err)):
            # The model was valid before a change that keeps it valid (IR-3's initializers as graph inputs): an
            # error its twin does not get is a wrong refusal. Not a planner refusal, which rests on timings: the
            # same plan measures a little faster or slower from one run to the next, on any model.
            twin = replace(case, files={**case.files, case.model: case.twin}, twin=None)
            if run_case(twin, mode, timeout, None, mem_bytes).status == "success":
                outcome.refused = err.strip().split("\n")[-1].replace(str(root), "{D}")[:100]
        if keep is not None and _failed(outcome):
            dest = keep / f"seed{case.seed}-case{case.index}"
            shutil.rmtree(dest, ignore_errors=True)
            shutil.copytree(root, dest / "after", symlinks=True)
            dest.mkdir(parents=True, exist_ok=True)
            for rel, data in case.files.items():  # the inputs as they were, for a rerun by hand
                (dest / "inputs" / rel).parent.mkdir(parents=True, exist_ok=True)
                (dest / "inputs" / rel).write_bytes(data)
            (dest / "repro.txt").write_text(case.repro() + "\n\n" + err)
        return outcome
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _failed(o: Outcome) -> bool:
    return o.status in ("traceback", "unclean error", "timeout") or bool(o.changed or o.leftovers or o.unsafe
                                                                          or o.refused or o.unexpected)


def _still_running(markers: Sequence[str], grace: float = 1.0) -> list[str]:
    """The markers some process still has on its command line (Linux: /proc; elsewhere none), once ``grace``
    seconds have let killed ones go; each such process is killed (the fuzzer started it)."""
    if not markers or not Path("/proc").is_dir():
        return []
    found: dict[str, list[int]] = {}
    end = time.monotonic() + grace
    while True:
        found.clear()
        for d in Path("/proc").iterdir():
            if not d.name.isdigit() or int(d.name) == os.getpid():
                continue
            try:
                cmdline = (d / "cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            for m in markers:
                if m in cmdline:
                    found.setdefault(m, []).append(int(d.name))
        if not found or time.monotonic() > end:
            break
        time.sleep(0.1)
    for pids in found.values():
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except OSError:
                pass
    return sorted(found)


# ----------------------------------------------------------------------------------------------------------------
# the signal mode


def _slow_model(path: Path) -> None:
    """Six 3x3 convs at 96 channels on 48x48: ``separate --energy 0.9 --verify`` takes about a second."""
    rng = np.random.default_rng(0)
    c, hw = 96, 48
    nodes, inits = [], []
    x = "input"
    for i in range(6):
        w = rng.standard_normal((c, 3 if i == 0 else c, 3, 3)).astype(np.float32) * 0.05
        inits.append(numpy_helper.from_array(w, f"w{i}"))
        nodes.append(helper.make_node("Conv", [x, f"w{i}"], [f"c{i}"], name=f"conv{i}", pads=[1, 1, 1, 1]))
        nodes.append(helper.make_node("Relu", [f"c{i}"], [f"r{i}"], name=f"relu{i}"))
        x = f"r{i}"
    g = helper.make_graph(nodes, "slow", [helper.make_tensor_value_info("input", TensorProto.FLOAT, [1, 3, hw, hw])],
                          [helper.make_tensor_value_info(x, TensorProto.FLOAT, [1, c, hw, hw])], inits)
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 10
    onnx.save(m, str(path))


#: What a signal case runs (after ``onnxconv``; {D} is the case folder): the plain rewrite, or one of the commands
#: that take ``--threads`` with 1024 intra-op threads, far more than the cores (issue 17: 1024 spinning threads on 2
#: cores starved the main thread, and Ctrl-C waited for onnxruntime for tens of seconds).
SIGNAL_COMMANDS = {
    "separate": ["separate", "{D}/in/slow.onnx", "-o", "{D}/out/result.onnx", "--energy", "0.9", "--verify",
                 "--report", "{D}/out/report.json"],
    "threads-bench": ["bench", "{D}/in/chain.onnx", "--threads", "1024", "--iters", "30", "--warmup", "2"],
    "threads-separate": ["separate", "{D}/in/chain.onnx", "-o", "{D}/out/result.onnx", "--rank", "1",
                         "--calibration", "{D}/in/calib.npz", "--no-kernel-refit", "--threads", "1024",
                         "--report", "{D}/out/report.json"],
}
#: The model of the 1024-thread commands: a 300-conv chain, whose session initialisation (the starved phase before
#: the fix) takes long enough for the signal to land in it.
SIGNAL_CHAIN = 300

#: Seconds a run may take to exit once signalled ("within seconds"); 0.1-1.1 s measured here, on 2 shared cores.
STOP_WITHIN = 10.0


@dataclass
class SignalOutcome:
    index: int
    signum: int
    delay: float
    returncode: int | None
    status: str
    signature: str
    changed: list[str]
    leftovers: list[str]
    stderr: str
    kind: str = "separate"
    stop_s: float | None = None  # seconds from the signal to the exit (None: not signalled, or not exited)

    def repro(self, seed: int) -> str:
        what = (f"{signal.Signals(self.signum).name} after {self.delay:.2f} s" if self.signum else
                f"two concurrent writers (the second with --rank 2, {self.delay / 4:.2f} s later)")
        argv = " ".join(a.replace("{D}/in/", "").replace("{D}/", "") for a in SIGNAL_COMMANDS[self.kind])
        argv = argv.replace("chain.onnx", f"chain{SIGNAL_CHAIN}.onnx (python tools/archs.py chain --depth "
                                          f"{SIGNAL_CHAIN}, one core)")
        return f"--seed {seed} --signal-case {self.index}  {what}: onnxconv {argv}"


def signal_plan(seed: int, index: int, duration: float) -> tuple[int, float, str]:
    """(signal number, 0 for two concurrent writers; delay in seconds; what runs, a key of
    :data:`SIGNAL_COMMANDS`) of signal case ``index``."""
    rng = random.Random(f"signal:{seed}:{index}")
    signum = rng.choice((signal.SIGINT, signal.SIGTERM, signal.SIGINT, signal.SIGTERM, 0))
    delay = rng.uniform(0.05, duration)
    kind = "separate" if signum == 0 else rng.choice(("separate", "separate", "threads-bench", "threads-separate"))
    return signum, delay, kind


def _no_address_space_limit() -> None:
    """The signal cases' commands are known ones, not fuzzed sizes: they run without the address-space limit this
    process may have set for itself (under it, 1024 threads are refused before the signal could matter)."""
    resource.setrlimit(resource.RLIMIT_AS, (resource.getrlimit(resource.RLIMIT_AS)[1],) * 2)


def _one_core_no_address_space_limit() -> None:
    """As :func:`_no_address_space_limit`, on one core: 1024 threads outnumber the cores of any machine the same
    way (spinning threads made the old code take 30-106 s to stop there, 6-9 s on 2 cores)."""
    _no_address_space_limit()
    if hasattr(os, "sched_setaffinity"):
        os.sched_setaffinity(0, {min(os.sched_getaffinity(0))})


def _wait_for_threads(proc: subprocess.Popen[bytes], count: int, timeout: float) -> None:
    """Return once ``proc`` runs ``count`` threads or more (Linux: /proc; elsewhere at once), or has ended."""
    status = Path(f"/proc/{proc.pid}/status")
    end = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < end and status.exists():
        try:
            line = next(x for x in status.read_text().splitlines() if x.startswith("Threads:"))
        except (OSError, StopIteration):
            return
        if int(line.split()[1]) >= count:
            return
        time.sleep(0.01)


def run_signal_case(seed: int, index: int, duration: float, timeout: float = 120.0) -> SignalOutcome:
    """Start the case's command (:data:`SIGNAL_COMMANDS`) on the slow model and interrupt it after a random delay
    within ``duration`` (the 1024-thread commands: within a quarter of it once the process has started its
    thread pool); it must exit within :data:`STOP_WITHIN` seconds of the signal.

    One case in five instead starts two writers of the same -o and --report at once (signal number 0): both
    must finish (or fail cleanly) and leave one complete model and report, and no temporary file.
    """
    signum, delay, kind = signal_plan(seed, index, duration)
    tmp = Path(tempfile.mkdtemp(prefix="onnxconv-fuzz-sig-"))
    try:
        (tmp / "in").mkdir()
        (tmp / "out").mkdir()
        _slow_model(tmp / "in" / "slow.onnx")
        if kind.startswith("threads-"):
            (tmp / "in" / "chain.onnx").write_bytes(_base(f"chain{SIGNAL_CHAIN}.onnx").SerializeToString())
            calib = np.random.default_rng(0).standard_normal((8, 3, 8, 8)).astype(np.float32)
            (tmp / "in" / "calib.npz").write_bytes(_npz_bytes({"input": calib}))
        before = snapshot(tmp)
        argv = [sys.executable, "-m", "onnxconv"] + [a.replace("{D}", str(tmp)) for a in SIGNAL_COMMANDS[kind]]
        procs = [subprocess.Popen(argv, cwd=tmp, env=_child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                  preexec_fn=_one_core_no_address_space_limit if kind.startswith("threads-")
                                  else _no_address_space_limit)]
        signalled_at = None
        if signum == 0:
            time.sleep(delay / 4)
            argv2 = argv[:7] + ["--rank", "2"] + argv[9:]  # --energy 0.9 -> --rank 2: a different result
            procs.append(subprocess.Popen(argv2, cwd=tmp, env=_child_env(), stdout=subprocess.PIPE,
                                          stderr=subprocess.PIPE, preexec_fn=_no_address_space_limit))
        else:
            if kind.startswith("threads-"):  # land while the 1024 threads exist: after imports and loading
                _wait_for_threads(procs[0], 64, timeout)
                delay /= 4
            time.sleep(delay)
            if procs[0].poll() is None:
                procs[0].send_signal(signum)
                signalled_at = time.perf_counter()
        results: list[tuple[int | None, str]] = []
        stop_s = None
        for p in procs:
            try:
                _, err_b = p.communicate(timeout=timeout)
                results.append((p.returncode, err_b.decode("utf-8", "replace")))
                if signalled_at is not None and p is procs[0]:
                    stop_s = time.perf_counter() - signalled_at
            except subprocess.TimeoutExpired:
                p.kill()
                _, err_b = p.communicate()
                results.append((None, err_b.decode("utf-8", "replace")))
        after = snapshot(tmp)
        case = Case(seed, index, "separate", [], outputs=["out/result.onnx", "out/report.json"])
        changed, leftovers = _check_files(case, tmp, before, after)
        status, sig = "success", ""
        for rc, err in results:
            if rc is None:
                status, sig = "timeout", "timeout"
            elif "Traceback (most recent call last)" in err:
                status, sig = "traceback", _tb_signature_text(err)
            elif stop_s is not None and stop_s > STOP_WITHIN:
                status, sig = "slow", f"{kind}: exited {stop_s:.0f} s after {signal.Signals(signum).name}"
            elif signum and rc in (128 + signum, -signum):
                status, sig = "interrupted", ""
            elif rc != 0:
                st, sg = classify_stderr(rc, err)
                status, sig = (st, sg) if st != "clean error" else ("clean error", "")
            if status not in ("success", "interrupted", "clean error"):
                break
        if signum == 0 and status == "success" and not (tmp / "out" / "result.onnx").is_file():
            status, sig = "unclean error", "concurrent writers: both succeeded, no output"
        return SignalOutcome(index, int(signum), delay, results[0][0], status, sig, changed, leftovers,
                             "\n".join(err for _, err in results), kind, stop_s)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def signal_duration() -> float:
    """Seconds one uninterrupted run of the signal mode's command takes here (signals land within it)."""
    tmp = Path(tempfile.mkdtemp(prefix="onnxconv-fuzz-sig-"))
    try:
        _slow_model(tmp / "slow.onnx")
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "onnxconv", "separate", str(tmp / "slow.onnx"), "-o",
                        str(tmp / "r.onnx"), "--energy", "0.9", "--verify"], env=_child_env(),
                       capture_output=True, timeout=300, check=False)
        return time.perf_counter() - t0
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# ----------------------------------------------------------------------------------------------------------------
# a run


#: The classes of issue 17 by the generator families that draw them (:func:`families`), for the counts per class.
ISSUE17_CLASSES = {
    "a: -o/--report/--plot onto the data read": ("clash-",),
    "b: hostile calibration data": ("calib-npz-member-", "calib-npz-huge-header", "calib-npz-truncated",
                                    "calib-npz-bad-crc", "calib-npz-inf", "calib-fifo"),
    "c: non-UTF-8 attribute name, --mode shuffle": ("name-bad-utf8-attr-shuffle",),
    "d: string-typed conv weight, every mode": ("strweight-",),
    "e: IR-3 model, every mode": ("ir3-",),
    "f: --threads 1024": ("threads-1024",),
    "g: long conv chains": ("chain",),
}


def issue17_classes(case: Case) -> list[str]:
    """The :data:`ISSUE17_CLASSES` that ``case`` belongs to, its generator class (:data:`CLASSES`), and for a
    quantize or --latency-command case its groups within it (``latency timeout``, ``quantize qclash``:
    :func:`later_class_groups`)."""
    fams = families(case)
    return [name for name, prefixes in ISSUE17_CLASSES.items() if any(f.startswith(prefixes) for f in fams)] + \
        ([case.cls] if case.cls and case.cls not in LATER_CLASSES else []) + later_class_groups(case)


def later_class_groups(case: Case) -> list[str]:
    """``quantize`` / ``latency`` and the groups of their tags (``latency-board-script`` -> ``latency board``;
    quantize's option tags ``qmetric-...``, hostile models, hostile calibration data) for the counts per class."""
    if case.cls not in LATER_CLASSES:
        return []
    out = [case.cls]
    for tag in case.tags:
        if case.cls == "latency" and tag.startswith("latency-"):
            out.append("latency " + max((g for g in (*LATENCY_GROUPS, "path", "via") if tag.startswith(f"latency-{g}-")),
                                        key=len))
        elif case.cls == "quantize" and re.match(r"q[a-z]+(-|$)", tag):
            out.append("quantize " + tag.split("-")[0])
    if case.cls == "quantize":
        out.append("quantize " + ("valid model" if "valid" in case.tags else "hostile model"))
        if any(t.startswith("calib-") and t not in ("calib-npz-ok", "calib-folder") for t in case.tags):
            out.append("quantize hostile calibration")
    return list(dict.fromkeys(out))  # a case counts once in a group


@dataclass
class Summary:
    counts: Counter[str] = field(default_factory=Counter)
    examples: dict[str, dict[str, str]] = field(default_factory=lambda: defaultdict(dict))  # class -> sig -> repro
    per_class: Counter[str] = field(default_factory=Counter)
    #: issue 17 class (or signal command) -> "cases" and the count of each kind of failure among them
    by_issue_class: dict[str, Counter[str]] = field(default_factory=lambda: defaultdict(Counter))

    def add(self, o: Outcome) -> None:
        c = self.counts
        c["cases"] += 1
        for cls in issue17_classes(o.case):
            k = self.by_issue_class[cls]
            k["cases"] += 1
            k[o.status] += 1
            for what, flagged in (("inputs changed", o.changed), ("leftovers", o.leftovers),
                                  ("unsafe output", o.unsafe), ("wrong refusals", o.refused),
                                  ("unexpected outcomes", o.unexpected)):
                k[what] += bool(flagged)
        key = {"success": "successes", "clean error": "clean errors", "traceback": "tracebacks",
               "unclean error": "unclean errors", "timeout": "timeouts"}[o.status]
        c[key] += 1
        if o.status in ("traceback", "unclean error", "timeout"):
            self._example(key, o.signature, o.case.repro())
        if o.changed:
            c["inputs changed"] += 1
            self._example("inputs changed", ",".join(o.changed)[:80], o.case.repro())
        if o.leftovers:
            c["leftovers"] += 1
            self._example("leftovers", _leftover_kind(o.leftovers), o.case.repro())
        if o.unsafe:
            c["unsafe output"] += 1
            self._example("unsafe output", ",".join(o.unsafe), o.case.repro())
        if o.refused:
            c["wrong refusals"] += 1
            self._example("wrong refusals", o.refused, o.case.repro())
        if o.unexpected:
            c["unexpected outcomes"] += 1
            self._example("unexpected outcomes", re.sub(r"[0-9]+", "N", o.unexpected)[:100], o.case.repro())

    def add_signal(self, o: SignalOutcome, seed: int) -> None:
        c = self.counts
        c["signal cases"] += 1
        c[f"signal {o.status}"] += 1
        k = self.by_issue_class[f"signals: {o.kind}"]
        k["cases"] += 1
        k[o.status] += 1
        k["inputs changed"] += bool(o.changed)
        k["leftovers"] += bool(o.leftovers)
        if o.status in ("traceback", "unclean error", "timeout", "slow"):
            self._example(f"signal {o.status}", o.signature, o.repro(seed))
        if o.changed:
            c["signal inputs changed"] += 1
            self._example("signal inputs changed", ",".join(o.changed), o.repro(seed))
        if o.leftovers:
            c["signal leftovers"] += 1
            self._example("signal leftovers", _leftover_kind(o.leftovers), o.repro(seed))

    def _example(self, cls: str, sig: str, repro: str) -> None:
        self.per_class[f"{cls}: {sig}"] += 1
        self.examples[cls].setdefault(sig, repro)

    def failures(self) -> int:
        c = self.counts
        return sum(c[k] for k in ("tracebacks", "inputs changed", "leftovers", "wrong refusals",
                                  "unexpected outcomes", "signal tracebacks",
                                  "signal inputs changed", "signal leftovers", "signal slow"))

    def render(self, per_class: int = 3) -> str:
        lines = ["counts:"]
        for k in SUMMARY_KEYS:
            lines.append(f"  {k}: {self.counts[k]}")
        for k in sorted(k for k in self.counts if k.startswith("signal")):
            lines.append(f"  {k}: {self.counts[k]}")
        if self.by_issue_class:
            lines.append("by class (issue 17's, the generator classes, quantize and latency by group):")
            for cls in sorted(self.by_issue_class):
                tally = self.by_issue_class[cls]
                rest = ", ".join(f"{n} {w}" for w, n in sorted(tally.items()) if w != "cases" and n)
                lines.append(f"  {cls}: {tally['cases']} cases ({rest})")
        for cls, sigs in self.examples.items():
            lines.append(f"{cls}: {len(sigs)} distinct")
            for sig, repro in list(sigs.items())[: per_class if per_class else None]:
                lines.append(f"  [{self.per_class[f'{cls}: {sig}']}x] {sig}")
                lines.append(f"      {repro}")
        return "\n".join(lines)


def _leftover_kind(paths: Iterable[str]) -> str:
    kinds = sorted({"process" if p.startswith("process running ") else "written by a failed run"
                    if p.endswith("(written by a failed run)") else "*.tmp" if p.endswith(".tmp") else
                    ("incomplete" if "incomplete" in p else re.sub(r"[^/]+$", "FILE", p.split(" ")[0]))
                    for p in paths})
    return ",".join(kinds)


def _worker(args: tuple[int, int, str | None, str, float, str | None, int | None]) -> Outcome:
    seed, index, only, mode, timeout, keep, mem = args
    case = make_case(seed, index, only, mode == "subprocess")
    return run_case(case, mode, timeout, Path(keep) if keep else None, mem)


#: Tag prefixes whose every variant counts as a family of its own in :func:`families` (each output-path
#: variant, model-path variant, external-data location, name placement and weight dtype found its own bugs);
#: other tags count by their prefix (``attr-pads-huge`` is family ``attr``).
_FINE_FAMILIES = ("out", "model", "external", "name", "dtype", "clash", "ir3", "strweight", "calib", "threads",
                  "qclash")


def families(case: Case) -> set[str]:
    """The generator families ``case`` draws from: its command, its base model, and one per tag as
    :data:`_FINE_FAMILIES` groups them (``skip:...``, a mutation that did not fit, draws nothing)."""
    out = {"command:" + case.command}
    for tag in case.tags:
        prefix = tag.split("-", 1)[0]
        if not tag.startswith("skip:"):
            out.add(tag if prefix in _FINE_FAMILIES else prefix)
    return out


def covering_cases(seed: int, pool: int, only: str | None = None, times: int = 2,
                   skip: Callable[[Case], bool] | None = None) -> list[int]:
    """Indices among the first ``pool`` cases of ``seed`` that together draw every family (:func:`families`)
    those ``pool`` cases draw, each at least ``times`` times where the pool has that many: greedy set cover
    (the case adding the most still-needed draws, the lowest index on a tie), so a bounded run still reaches
    every generator, twice, in about 60 cases for a pool of 600. Cases that need a child process (a file-size
    limit: seconds each, most of a bounded run's time) count half, a case that costs more (a long chain) counts
    by its :attr:`Case.cost`, and a family that only child-process cases draw is needed once. Cases ``skip`` holds
    for are left out of the pool (a finding reported and not fixed yet)."""
    cases = {i: make_case(seed, i, only) for i in range(pool)}
    cases = {i: c for i, c in cases.items() if skip is None or not skip(c)}
    drawn = {i: families(c) for i, c in cases.items()}
    need: Counter[str] = Counter()
    cheap: set[str] = set()
    for i, fams in drawn.items():
        need.update(fams)
        if not cases[i].subprocess_only:
            cheap |= fams
    need = Counter({f: min(n, times if f in cheap else 1) for f, n in need.items()})
    chosen: list[int] = []

    def gain(i: int) -> tuple[float, int]:
        g = sum(1 for f in drawn[i] if need[f] > 0) / cases[i].cost
        return (g / 2 if cases[i].subprocess_only else g, -i)

    while +need:
        best = max(drawn, key=gain)
        chosen.append(best)
        need.subtract(drawn.pop(best))
    return sorted(chosen)


def fuzz(cases: int, seed: int = 0, *, mode: str = "inprocess", only: str | None = None, jobs: int = 1,
         timeout: float = 120.0, keep: Path | None = None, first: int = 0, mem_bytes: int | None = None,
         progress: Callable[[Outcome], None] | None = None, indices: Sequence[int] | None = None) -> Summary:
    """Run cases ``first .. first+cases-1`` of ``seed`` (or exactly ``indices``, e.g. from
    :func:`covering_cases`) and return their counts and reproducers."""
    summary = Summary()
    jobs_args = [(seed, i, only, mode, timeout, str(keep) if keep else None, mem_bytes)
                 for i in (indices if indices is not None else range(first, first + cases))]
    if jobs <= 1:
        results: Iterable[Outcome] = map(_worker, jobs_args)
    else:
        import multiprocessing as mp

        pool = mp.get_context("spawn").Pool(jobs)
        results = pool.imap_unordered(_worker, jobs_args, chunksize=4)
    for o in results:
        summary.add(o)
        if progress:
            progress(o)
    if jobs > 1:
        pool.close()
        pool.join()
    return summary


def signals(n: int, seed: int = 0, *, duration: float | None = None, first: int = 0,
            summary: Summary | None = None, indices: Sequence[int] | None = None) -> Summary:
    """``n`` signal cases from ``first`` (or exactly ``indices``); ``duration`` (measured when not given) bounds
    the delay before the signal."""
    summary = summary or Summary()
    d = duration if duration is not None else signal_duration()
    for i in (indices if indices is not None else range(first, first + n)):
        summary.add_signal(run_signal_case(seed, i, d), seed)
    return summary


def _main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--cases", type=int, default=500, help="number of generated cases (default 500)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--case", type=int, default=None, help="run only this case index (prints its output)")
    ap.add_argument("--first", type=int, default=0, help="index of the first case")
    ap.add_argument("--jobs", type=int, default=1, help="worker processes (default 1)")
    ap.add_argument("--mode", choices=("inprocess", "subprocess"), default="inprocess")
    ap.add_argument("--only", choices=CLASSES, default=None,
                    help="one generator class (latency: separate --latency-command)")
    ap.add_argument("--timeout", type=float, default=120.0, help="seconds per case")
    ap.add_argument("--keep", type=Path, default=None, help="copy failing cases' files into this folder")
    ap.add_argument("--cover", type=int, default=None, metavar="POOL",
                    help="run only the cases among the first POOL that cover every generator family "
                         "(what tests/test_fuzz.py runs)")
    ap.add_argument("--signals", type=int, default=0, help="also run this many signal cases (subprocess)")
    ap.add_argument("--signal-case", type=int, default=None, help="run only this signal case")
    ap.add_argument("--mem-gb", type=float, default=4.0,
                    help="address-space limit of subprocess runs, and of this process in process (0: none)")
    ap.add_argument("--show", type=int, default=3, help="reproducers shown per failure class (0: all)")
    ns = ap.parse_args(argv)
    mem = int(ns.mem_gb * 2**30) if ns.mem_gb > 0 else None
    if ns.mode == "inprocess" and mem:
        # Huge declared dims and --batch must fail as MemoryError, not take the machine's memory.
        resource.setrlimit(resource.RLIMIT_AS, (mem, resource.getrlimit(resource.RLIMIT_AS)[1]))
    if ns.keep:
        ns.keep.mkdir(parents=True, exist_ok=True)
    if ns.signal_case is not None:
        so = run_signal_case(ns.seed, ns.signal_case, signal_duration())
        print(so.repro(ns.seed))
        stop = f", exited {so.stop_s:.1f} s after the signal" if so.stop_s is not None else ""
        print(f"returncode {so.returncode}, {so.status} {so.signature}{stop}; changed {so.changed}; "
              f"leftovers {so.leftovers}")
        print(so.stderr)
        return 0
    if ns.case is not None:
        case = make_case(ns.seed, ns.case, ns.only, ns.mode == "subprocess")
        o = run_case(case, ns.mode, ns.timeout, ns.keep, mem)
        print(case.repro())
        print(f"status {o.status} {o.signature} (exit {o.exit_code}, {o.seconds:.2f} s); changed {o.changed}; "
              f"leftovers {o.leftovers}; unsafe {o.unsafe}"
              + (f"; wrong refusal {o.refused!r}" if o.refused else "")
              + (f"; unexpected: {o.unexpected}" if o.unexpected else ""))
        print("--- stdout\n" + o.stdout + "--- stderr\n" + o.stderr)
        return 0
    t0 = time.perf_counter()
    done = [0]

    def progress(o: Outcome) -> None:
        done[0] += 1
        if done[0] % 100 == 0:
            print(f"... {done[0]} cases, {time.perf_counter() - t0:.0f} s", file=sys.stderr, flush=True)

    indices = covering_cases(ns.seed, ns.cover, ns.only) if ns.cover else None
    summary = fuzz(ns.cases, ns.seed, mode=ns.mode, only=ns.only, jobs=ns.jobs, timeout=ns.timeout, keep=ns.keep,
                   first=ns.first, mem_bytes=mem, progress=progress,
                   indices=indices) if ns.cases or indices else Summary()
    if ns.signals:
        signals(ns.signals, ns.seed, summary=summary)
    print(f"seed {ns.seed}, mode {ns.mode}, {time.perf_counter() - t0:.0f} s")
    print(summary.render(ns.show))
    return 1 if summary.failures() else 0


if __name__ == "__main__":
    sys.exit(_main())

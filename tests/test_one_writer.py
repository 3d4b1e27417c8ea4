"""One atomic writer: every file onnxconv writes goes through :mod:`onnxconv.model_io`.

:class:`~onnxconv.model_io.StagedFiles` (and :func:`~onnxconv.model_io.write_file`, :func:`~onnxconv.model_io.save_model`
on top of it) writes under a temporary name beside the destination and renames, gives the file plain permissions,
removes the temporary file on any error and holds SIGINT/SIGTERM during the renames. A second copy of that
mechanism drifts (the latency cache's once left its temporary file behind on an error and wrote 0600 files), so
the source is checked with ``ast``: no other module makes temporary files beside a destination, renames files
into place or opens a file for writing. Scratch files inside a ``tempfile.TemporaryDirectory`` (onnxruntime's
profiles, quantization's intermediate models, an .npz of inputs for a timing run) are not outputs and stay
allowed.
"""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest

from onnxconv.errors import OnnxConvError
from onnxconv.planning import LatencyCache

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "onnxconv"
#: The writer, the only module allowed the calls below.
WRITER = PACKAGE / "model_io.py"
#: module -> functions of it that make or move files into place.
FORBIDDEN = {"tempfile": {"mkstemp", "mkdtemp", "NamedTemporaryFile"}, "os": {"replace", "rename", "renames"},
             "shutil": {"move"}}
#: Methods that write a whole file (``pathlib.Path``) or move one (``Path.rename``) whatever the object.
FORBIDDEN_METHODS = {"write_bytes", "write_text", "rename"}


def _writes(path: Path) -> list[str]:
    """What in ``path``'s source writes or moves a file by itself: ``line: call``."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    # Names bound by ``from os import replace`` and the like, and by ``import os as x``.
    imported: dict[str, str] = {}
    modules: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in FORBIDDEN:
            for alias in node.names:
                if alias.name in FORBIDDEN[node.module]:
                    imported[alias.asname or alias.name] = f"{node.module}.{alias.name}"
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in FORBIDDEN:
                    modules[alias.asname or alias.name] = alias.name
    found = []
    for node in ast.walk(tree):
        if not isinstance(node, ast.Call):
            continue
        f = node.func
        if isinstance(f, ast.Attribute):
            owner = modules.get(f.value.id) if isinstance(f.value, ast.Name) else None
            if (owner is not None and f.attr in FORBIDDEN[owner]) or f.attr in FORBIDDEN_METHODS:
                found.append(f"{node.lineno}: {ast.unparse(f)}()")
        elif isinstance(f, ast.Name):
            if f.id in imported:
                found.append(f"{node.lineno}: {imported[f.id]}()")
            elif f.id == "open":
                mode = node.args[1] if len(node.args) > 1 else next(
                    (k.value for k in node.keywords if k.arg == "mode"), None)
                if mode is not None and (not isinstance(mode, ast.Constant) or set(str(mode.value)) & set("wax+")):
                    found.append(f"{node.lineno}: open(..., {ast.unparse(mode)})")
    return found


def test_only_the_writer_makes_or_moves_files() -> None:
    bad = [f"{p.relative_to(ROOT)}:{w}" for p in sorted(PACKAGE.rglob("*.py")) if p != WRITER for w in _writes(p)]
    assert not bad, ("write outputs through onnxconv.model_io (StagedFiles, write_file, save_model), "
                     "not by hand:\n" + "\n".join(bad))


def test_the_check_sees_each_kind_of_write(tmp_path: Path) -> None:
    """The check itself: each way of writing by hand is found (a check that finds nothing proves nothing)."""
    src = tmp_path / "m.py"
    src.write_text("import os\nimport tempfile as t\nfrom shutil import move\n"
                   "t.mkstemp()\nos.replace('a', 'b')\nmove('a', 'b')\nopen('x', 'w')\nopen('x', mode='ab')\n"
                   "open('x')\np.write_text('x')\n")
    assert [w.split(":")[0] for w in _writes(src)] == ["4", "5", "6", "7", "8", "10"]


def test_the_latency_cache_round_trips_through_the_writer(tmp_path: Path) -> None:
    path = tmp_path / "lat.json"
    cache = LatencyCache(path)
    cache.put("b", 2.0)
    cache.put("a", 1.5)
    cache.save()
    assert path.read_bytes() == json.dumps({"a": 1.5, "b": 2.0}, indent=1, sort_keys=True).encode()
    assert LatencyCache(path).times == {"a": 1.5, "b": 2.0}
    assert [p.name for p in tmp_path.iterdir()] == ["lat.json"]  # no temporary file beside it


def test_a_latency_cache_that_cannot_be_written_is_one_line_and_leaves_nothing(tmp_path: Path) -> None:
    (tmp_path / "file").write_text("not a folder")
    cache = LatencyCache(tmp_path / "file" / "lat.json")
    cache.put("a", 1.0)
    with pytest.raises(OnnxConvError, match=r"^latency cache .*lat\.json: cannot write \(.*\); nothing was written$"):
        cache.save()
    assert [p.name for p in tmp_path.iterdir()] == ["file"]

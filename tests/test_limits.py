"""Size limits of issue 19 ("one obvious place"), checked on the source so that they stay met.

* No module is over :data:`MAX_LINES` lines: a longer one holds more than one concern (the house style names
  1,500-line modules as what to avoid); split it along a real seam (``model_checks`` off ``model_io``,
  ``folding`` off ``shapes``).
* No public library function takes more than :data:`MAX_PARAMETERS` parameters (the house style avoids
  "17-keyword-argument entry points"): group the knobs in a small dataclass instead, as
  :class:`onnxconv.calibration.FitOptions` does for the refit. Parsed with ``ast``; click callbacks
  (``onnxconv/cli/``) take one parameter per option by click's design and are left out, and so are private
  functions and methods of private classes.

Each limit has a list of known exceptions being reworked elsewhere; an entry that meets the limit fails its
second test, so the lists only shrink.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "onnxconv"
MAX_LINES = 600
#: Modules (paths below the repository root) over the line limit, with the reason.
KNOWN_LONG: dict[str, str] = {}
MAX_PARAMETERS = 10
#: Functions over the parameter limit, with the reason.
KNOWN: dict[str, str] = {}


def _count(args: ast.arguments) -> int:
    n = len(args.posonlyargs) + len(args.args) + len(args.kwonlyargs)
    n += (args.vararg is not None) + (args.kwarg is not None)
    first = (args.posonlyargs + args.args)[:1]
    return n - (1 if first and first[0].arg in ("self", "cls") else 0)


def _public_functions() -> Iterator[tuple[str, int]]:
    """(dotted name, parameter count) of every public function and public method of a public class."""
    for path in sorted(PACKAGE.rglob("*.py")):
        if "cli" in path.relative_to(PACKAGE).parts:
            continue
        module = ".".join(path.relative_to(ROOT).with_suffix("").parts).removesuffix(".__init__")
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in tree.body:
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
                yield f"{module}.{node.name}", _count(node.args)
            elif isinstance(node, ast.ClassDef) and not node.name.startswith("_"):
                for item in node.body:
                    if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and (
                            not item.name.startswith("_") or item.name == "__init__"):
                        yield f"{module}.{node.name}.{item.name}", _count(item.args)


def test_no_public_function_takes_more_than_ten_parameters() -> None:
    over = [f"{name}: {n} parameters" for name, n in _public_functions() if n > MAX_PARAMETERS and name not in KNOWN]
    assert not over, "group the options into a dataclass:\n" + "\n".join(over)


def test_every_known_exception_is_still_over_the_limit() -> None:
    counts = dict(_public_functions())
    stale = [name for name in KNOWN if counts.get(name, 0) <= MAX_PARAMETERS]
    assert not stale, f"no longer over {MAX_PARAMETERS} parameters (or gone): remove from KNOWN: {stale}"


def _lines() -> dict[str, int]:
    return {str(p.relative_to(ROOT)): len(p.read_text(encoding="utf-8").splitlines())
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_no_module_is_over_six_hundred_lines() -> None:
    over = [f"{name}: {n} lines" for name, n in _lines().items() if n > MAX_LINES and name not in KNOWN_LONG]
    assert not over, "split along a real seam:\n" + "\n".join(over)


def test_every_known_long_module_is_still_over_the_limit() -> None:
    lines = _lines()
    stale = [name for name in KNOWN_LONG if lines.get(name, 0) <= MAX_LINES]
    assert not stale, f"no longer over {MAX_LINES} lines (or gone): remove from KNOWN_LONG: {stale}"

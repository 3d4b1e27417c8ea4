"""The import direction docs/architecture.md states ("Layers"), checked on the source so the two cannot drift.

Every module of onnxconv is parsed with ``ast`` (nothing is imported). The checks:

* **Layer order.** The layer table of docs/architecture.md lists every module, top layer first. A module imports
  modules of its own layer or of layers below it, never above (module-level, function-level and
  ``TYPE_CHECKING`` imports alike), except the exceptions that section lists with their reasons.
* **The library never imports click** (nor rich, the progress bar): only ``cli/`` and ``__main__`` do.
* **No import cycles** between modules: not among module-level imports, and not once function-level imports are
  added (a lazy import must not be what keeps a cycle from failing at import time).
* **Lazy imports are for start-up time** (or an optional dependency): every import inside a function names a
  module of the "Lazy imports" table of docs/architecture.md, and says why in a comment at the import.
* **No ``_private`` names across modules**: neither imported (``from .x import _y``) nor read off an imported
  module (``x._y``).
* **``onnxconv stats`` starts light**: what its command module loads at import time holds no rewrite, planning,
  calibration or timing code, and imports none of onnxruntime, onnx-graphsurgeon, rich or matplotlib.
"""

from __future__ import annotations

import ast
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "onnxconv"
DOC = ROOT / "docs" / "architecture.md"

#: Modules only the command line may import.
CLI_ONLY = ("click", "rich")
#: The entry points: above every layer (``onnxconv/__init__.py`` is the public facade, ``__main__`` starts the CLI).
ENTRY = ("onnxconv", "onnxconv.__main__")


@dataclass(frozen=True)
class Import:
    importer: str
    target: str  # a module of onnxconv, or a third-party / standard module
    names: tuple[str, ...]
    line: int
    lazy: bool  # inside a function
    typing_only: bool  # under ``if TYPE_CHECKING:``


def module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


SOURCES = {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def resolve(importer: str, node: ast.ImportFrom) -> str:
    """The absolute module a ``from ... import`` names (relative imports resolved against ``importer``)."""
    if not node.level:
        return node.module or ""
    package = importer if SOURCES[importer].name == "__init__.py" else importer.rpartition(".")[0]
    base = package.split(".")[: len(package.split(".")) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports_of(name: str) -> Iterator[Import]:
    """Every import statement of module ``name``; ``from pkg import sub`` counts as an import of ``pkg.sub``."""
    tree = ast.parse(SOURCES[name].read_text(encoding="utf-8"))

    def walk(node: ast.AST, lazy: bool, typing_only: bool) -> Iterator[Import]:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Import):
                for alias in child.names:
                    yield Import(name, alias.name, (), child.lineno, lazy, typing_only)
            elif isinstance(child, ast.ImportFrom):
                target = resolve(name, child)
                plain = [a.name for a in child.names if f"{target}.{a.name}" not in SOURCES]
                for alias in child.names:
                    if f"{target}.{alias.name}" in SOURCES:
                        yield Import(name, f"{target}.{alias.name}", (), child.lineno, lazy, typing_only)
                if plain:
                    yield Import(name, target, tuple(plain), child.lineno, lazy, typing_only)
            else:
                in_function = isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                guarded = isinstance(child, ast.If) and "TYPE_CHECKING" in ast.unparse(child.test)
                yield from walk(child, lazy or in_function, typing_only or guarded)

    yield from walk(tree, False, False)


IMPORTS = [imp for name in SOURCES for imp in imports_of(name)]


def internal(target: str) -> bool:
    return target == "onnxconv" or target.startswith("onnxconv.")


# -- what docs/architecture.md states ----------------------------------------------------------------------------

def doc_section(title: str) -> str:
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"^## {re.escape(title)}\n(.*?)(?=^## |\Z)", text, re.M | re.S)
    assert match, f"docs/architecture.md has no section '## {title}'"
    return match.group(1)


def doc_layers() -> list[list[str]]:
    """The layer table of "## Layers" (a fenced block, top layer first): each line starts with its units,
    ``name.py`` for a module and ``name/`` for a package, then says what they are."""
    block = re.search(r"```\n(.*?)```", doc_section("Layers"), re.S)
    assert block, "the Layers section has no fenced layer table"
    layers = []
    for line in block.group(1).splitlines():
        units = re.match(r"((?:[a-z_]+(?:\.py|/)\s+)+)", line + " ")
        assert units, f"a layer line starts with its modules: {line!r}"
        layers.append([u.rstrip("/").removesuffix(".py") for u in units.group(1).split()])
    return layers


def doc_table(title: str) -> list[list[str]]:
    """Rows (cells) of the Markdown table in section ``title``, header and rule left out."""
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in doc_section(title).splitlines() if line.startswith("|")]
    return rows[2:]


def backticked(cell: str) -> list[str]:
    return re.findall(r"`([^`]+)`", cell)


LAYERS = doc_layers()
#: Lazily imported module -> why (docs/architecture.md, "Lazy imports").
LAZY = {name: row[-1] for row in doc_table("Lazy imports") for name in backticked(row[0])}
#: (importer, imported) pairs allowed against the layer order, with their reasons ("Exceptions").
EXCEPTIONS = {(backticked(row[0])[0], backticked(row[1])[0]): row[-1] for row in doc_table("Exceptions")
              if backticked(row[0])}


def unit(module: str) -> str:
    """The layer-table name of a module: its first component below onnxconv (``analysis`` for
    ``onnxconv.analysis.rows``, ``stats`` for ``onnxconv.stats``)."""
    return module.split(".")[1]


def layer_of(module: str) -> int:
    """Index of the module's layer, 0 at the top; the entry points sit above every layer (-1)."""
    if module in ENTRY:
        return -1
    for i, units in enumerate(LAYERS):
        if unit(module) in units:
            return i
    raise AssertionError(f"{module} is in no layer of docs/architecture.md")


def excepted(importer: str, target: str) -> bool:
    return any(importer.startswith(a) and target.startswith(b) for a, b in EXCEPTIONS)


# -- the checks --------------------------------------------------------------------------------------------------

def test_the_layer_table_lists_every_module_once() -> None:
    listed = [u for units in LAYERS for u in units]
    assert len(listed) == len(set(listed)), "a module is in two layers"
    actual = {unit(m) for m in SOURCES if m not in ENTRY}
    assert set(listed) == actual, (f"missing from the layer table: {sorted(actual - set(listed))}; "
                                   f"listed but absent: {sorted(set(listed) - actual)}")


def test_no_module_imports_a_layer_above_its_own() -> None:
    upward = [f"{i.importer}:{i.line} imports {i.target} (layer {layer_of(i.target)} above {layer_of(i.importer)})"
              for i in IMPORTS if internal(i.target) and i.importer != i.target
              and layer_of(i.target) < layer_of(i.importer) and not excepted(i.importer, i.target)]
    assert not upward, "\n".join(upward)


def test_every_stated_exception_is_still_needed() -> None:
    used = {(a, b) for a, b in EXCEPTIONS
            if any(i.importer.startswith(a) and i.target.startswith(b) and layer_of(i.target) < layer_of(i.importer)
                   for i in IMPORTS if internal(i.target))}
    assert used == set(EXCEPTIONS), f"exceptions no import needs any more: {sorted(set(EXCEPTIONS) - used)}"


def test_the_library_never_imports_the_cli_toolkits() -> None:
    found = [f"{i.importer}:{i.line} imports {i.target}" for i in IMPORTS
             if i.target.split(".")[0] in CLI_ONLY and not (i.importer.startswith("onnxconv.cli") or i.importer in ENTRY)]
    assert not found, "\n".join(found)


def graph(lazy: bool) -> dict[str, set[str]]:
    edges: dict[str, set[str]] = {m: set() for m in SOURCES}
    for i in IMPORTS:
        if internal(i.target) and not i.typing_only and (lazy or not i.lazy) and i.target != i.importer:
            edges[i.importer].add(i.target)
    return edges


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        for w in sorted(edges[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return found


def test_no_import_cycles_between_modules() -> None:
    found = cycles(graph(lazy=False))
    assert not found, "modules that import each other, directly or not:\n" + "\n".join(", ".join(c) for c in found)


def test_no_lazy_import_hides_a_cycle() -> None:
    top = graph(lazy=False)
    hidden = cycles(graph(lazy=True))
    detail = [f"{i.importer}:{i.line} imports {i.target} inside a function" for i in IMPORTS
              if i.lazy and internal(i.target) and any(i.importer in c and i.target in c for c in hidden)
              and i.target not in top[i.importer]]
    assert not hidden, "cycles closed by function-level imports:\n" + "\n".join(detail)


def lines_of(module: str) -> list[str]:
    return SOURCES[module].read_text(encoding="utf-8").splitlines()


IMPORT_LINE = re.compile(r"\s*(from \S+ )?import ")


def has_reason(lines: list[str], line: int) -> bool:
    """A comment on the import, on another line of its run of import lines, or on the line just above the run."""
    first = last = line - 1
    while first > 0 and IMPORT_LINE.match(lines[first - 1]):
        first -= 1
    while last + 1 < len(lines) and IMPORT_LINE.match(lines[last + 1]):
        last += 1
    return any("#" in text for text in lines[max(first - 1, 0):last + 1])


def test_lazy_imports_are_the_stated_ones_with_their_reason() -> None:
    bad = []
    used = set()
    for i in IMPORTS:
        if not i.lazy or i.typing_only:
            continue
        allowed = [m for m in LAZY if i.target == m or i.target.startswith(m + ".")]
        if not allowed:
            bad.append(f"{i.importer}:{i.line} imports {i.target} inside a function: move it to the top, or add it "
                       "to the 'Lazy imports' table of docs/architecture.md with what it saves")
        elif not has_reason(lines_of(i.importer), i.line):
            bad.append(f"{i.importer}:{i.line} imports {i.target} lazily without a comment saying why")
        used.update(allowed)
    assert not bad, "\n".join(bad)
    assert used == set(LAZY), f"the Lazy imports table lists modules nothing imports lazily: {sorted(set(LAZY) - used)}"


@pytest.mark.parametrize("module", sorted(SOURCES))
def test_no_private_names_cross_modules(module: str) -> None:
    imports = [i for i in imports_of(module) if internal(i.target) and i.target != module]
    found = [f"line {i.line}: imports {name} from {i.target}" for i in imports for name in i.names
             if name.startswith("_") and not name.startswith("__")]
    # Names bound to other onnxconv modules (``from .. import compare``, ``import onnxconv.x as y``).
    tree = ast.parse(SOURCES[module].read_text(encoding="utf-8"))
    aliases = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            for alias in node.names:
                target = (resolve(module, node) + "." + alias.name if isinstance(node, ast.ImportFrom)
                          else alias.name)
                if target in SOURCES and target != module:
                    aliases.add(alias.asname or alias.name.split(".")[0])
    found += [f"line {n.lineno}: reads {n.value.id}.{n.attr}" for n in ast.walk(tree)
              if isinstance(n, ast.Attribute) and isinstance(n.value, ast.Name) and n.value.id in aliases
              and n.attr.startswith("_") and not n.attr.startswith("__")]
    assert not found, "\n".join(found)


def loaded_by(module: str) -> set[str]:
    """Every onnxconv module importing ``module`` loads at import time: module-level imports (TYPE_CHECKING ones
    left out) and the parent packages Python runs first, followed transitively."""
    edges = graph(lazy=False)
    seen: set[str] = set()
    todo = [module]
    while todo:
        m = todo.pop()
        if m in seen:
            continue
        seen.add(m)
        parts = m.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))] + sorted(edges.get(m, ()))
    return seen


def test_the_stats_command_loads_no_rewrite_planning_or_timing_code() -> None:
    """docs/architecture.md, "Lazy imports": ``onnxconv stats`` starts without passes/ (onnx-graphsurgeon),
    planning/ or bench/, and without onnxruntime, rich or matplotlib (imported by no module it loads)."""
    loaded = loaded_by("onnxconv.cli.stats_cmd")
    assert not {m for m in loaded - set(ENTRY) if unit(m) in ("passes", "planning", "bench", "calibration", "requests")}
    heavy = [f"{i.importer}:{i.line} imports {i.target}" for i in IMPORTS
             if i.importer in loaded and not i.lazy and not i.typing_only
             and i.target.split(".")[0] in ("onnxruntime", "onnx_graphsurgeon", "rich", "matplotlib")]
    assert not heavy, "\n".join(heavy)

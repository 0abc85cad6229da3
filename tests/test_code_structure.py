"""The package's shape: short modules, private names kept private, a shallow import graph.

The import graph is read with ``ast`` from every ``import`` / ``from ... import`` statement of each module under
``src/metaft`` (module-level and inside functions alike, since a lazy import is still a dependency). Its depth
is the number of modules on the longest chain of imports (``cli.study -> study -> ... -> errors`` counts every
module on it); the graph must have no cycle.
"""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "src" / "metaft"
MAX_LINES = 400
MAX_DEPTH = 7


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
        out[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return out


MODULES = _modules()


def _imports(module: str) -> list[tuple[str, str | None, int]]:
    """(imported module, imported name or None, line) for every intra-package import of ``module``."""
    path = MODULES[module]
    package = module.split(".") if path.name == "__init__.py" else module.split(".")[:-1]
    found = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found += [(a.name, None, node.lineno) for a in node.names if a.name in MODULES]
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            target = ".".join(base + ([node.module] if node.module else []))
            for alias in node.names:
                if f"{target}.{alias.name}" in MODULES:  # from . import module
                    found.append((f"{target}.{alias.name}", None, node.lineno))
                elif target in MODULES:
                    found.append((target, alias.name, node.lineno))
    return [(target, name, line) for target, name, line in found if target != module]


GRAPH = {m: sorted({t for t, _, _ in _imports(m)}) for m in MODULES}


def longest_chain() -> list[str]:
    """The longest import chain (a list of modules, importer first); AssertionError on a cycle."""

    @cache
    def chain(module: str, visiting: frozenset[str] = frozenset()) -> tuple[str, ...]:
        assert module not in visiting, f"import cycle through {module}"
        below = [chain(t, visiting | {module}) for t in GRAPH[module]]
        return (module, *max(below, key=len, default=()))

    return list(max((chain(m) for m in MODULES), key=len))


def test_the_graph_is_read():
    # guards the reader itself: a parser that found no imports would pass every check below
    assert "metaft.errors" in GRAPH["metaft.fileio"]
    assert "metaft.stages" in GRAPH["metaft.study"]  # a function-level import
    assert "metaft.cli.preprocess" in GRAPH["metaft.cli.train"]  # a relative import inside the cli package


def test_modules_are_short():
    long = {m: n for m, p in MODULES.items() if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


PENDING: set = set()


def test_no_private_name_is_imported_across_modules():
    found = {(m, target, name) for m in MODULES for target, name, _ in _imports(m)
             if name and name.startswith("_") and not name.startswith("__")}
    assert not found - PENDING, f"make these public or move them: {sorted(found - PENDING)}"
    assert not PENDING - found, f"no longer imported, drop them from PENDING: {sorted(PENDING - found)}"


def test_import_graph_is_shallow():
    chain = longest_chain()
    assert not GRAPH[chain[-1]]  # the chain ends at a module that imports nothing of the package
    assert len(chain) <= MAX_DEPTH, f"{len(chain)} levels: {' -> '.join(chain)}"

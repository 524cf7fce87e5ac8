"""The package structure reads as the architecture (DESIGN §2): no import cycle between drift_engine's parts,
maintenance works on L1 without the engine façade, and no source file grows past ~600 lines.

The graph is built from the source with ``ast`` (every ``import`` statement, also inside functions and
``TYPE_CHECKING`` blocks): a node is a top-level part of ``drift_engine`` — a subpackage (``engine``, ``l1``,
``maintenance``, ``index``, ``storage``, ``wal``, ``memtable``, ``server``) or a top-level module (``api``,
``config``, ...), with ``drift_engine`` itself for the package's ``__init__``.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGE = ROOT / "drift_engine"
MAX_LINES = 600
GENERATED = ("drift_engine/server/drift_pb2.py", "drift_engine/server/drift_pb2_grpc.py")
ALLOWED_CYCLES: set[frozenset[str]] = set()  # none: every part is layered


def _modules() -> Iterator[tuple[Path, str]]:
    """(file, dotted module name) of every module of drift_engine."""
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = path.relative_to(ROOT).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        yield path, ".".join(parts)


def _node(dotted: str) -> str | None:
    """The part of drift_engine a dotted name belongs to (None outside drift_engine)."""
    parts = dotted.split(".")
    if parts[0] != "drift_engine":
        return None
    return parts[1] if len(parts) > 1 else "drift_engine"


def _is_part(name: str) -> bool:
    return (PACKAGE / f"{name}.py").is_file() or (PACKAGE / name / "__init__.py").is_file()


def _imported(path: Path, module: str) -> Iterator[str]:
    """Dotted names of the drift_engine modules (or parts) ``module`` imports."""
    is_package = path.name == "__init__.py"
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[: len(base) - (node.level - 1)]
                target = ".".join([*base, node.module] if node.module else base)
            else:
                target = node.module or ""
            if target == "drift_engine":  # ``from drift_engine import x``: x is a part, or a name of __init__
                for alias in node.names:
                    yield f"drift_engine.{alias.name}" if _is_part(alias.name) else "drift_engine"
            else:
                yield target


def import_graph() -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for path, module in _modules():
        src = _node(module)
        assert src is not None
        edges = graph.setdefault(src, set())
        for target in _imported(path, module):
            dst = _node(target)
            if dst is not None and dst != src:
                edges.add(dst)
    return graph


def _reachable(graph: dict[str, set[str]], start: str) -> set[str]:
    seen: set[str] = set()
    todo = list(graph.get(start, ()))
    while todo:
        node = todo.pop()
        if node not in seen:
            seen.add(node)
            todo.extend(graph.get(node, ()))
    return seen


def cycles(graph: dict[str, set[str]]) -> list[frozenset[str]]:
    """The strongly connected components with more than one node (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[frozenset[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = set()
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.add(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(frozenset(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph()


def test_the_graph_sees_the_known_layers(graph: dict[str, set[str]]) -> None:
    """A parser that found no imports would pass every other test: check edges that must be there."""
    for part in ("engine", "l1", "maintenance", "index", "storage", "wal", "memtable", "server", "api"):
        assert part in graph, f"no module of {part!r} found"
    assert {"l1", "wal", "memtable"} <= graph["engine"]
    assert {"l1", "index"} <= graph["maintenance"]
    assert {"engine", "maintenance"} <= graph["api"]
    assert {"index", "storage"} <= graph["l1"]


def test_no_import_cycle_between_parts(graph: dict[str, set[str]]) -> None:
    found = [c for c in cycles(graph) if c not in ALLOWED_CYCLES]
    detail = {", ".join(sorted(c)): {v: sorted(graph[v] & c) for v in sorted(c)} for c in found}
    assert not found, f"import cycles between parts of drift_engine: {detail}"


def test_maintenance_and_engine_never_import_each_other(graph: dict[str, set[str]]) -> None:
    assert "engine" not in _reachable(graph, "maintenance"), "maintenance reaches the engine façade"
    assert "maintenance" not in _reachable(graph, "engine"), "the engine reaches maintenance (api.py wires it)"
    assert not {"engine", "maintenance", "api"} & _reachable(graph, "l1"), "l1 must stand below both"


def test_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [frozenset("abc")]
    assert cycles({"a": {"b"}, "b": set()}) == []


def _sources() -> Iterator[Path]:
    for package in ("drift_engine", "drift_fdw"):
        for path in sorted((ROOT / package).rglob("*.py")):
            if path.relative_to(ROOT).as_posix() not in GENERATED:
                yield path


def test_no_source_file_over_600_lines() -> None:
    sizes = {p.relative_to(ROOT).as_posix(): len(p.read_text(encoding="utf-8").splitlines()) for p in _sources()}
    assert len(sizes) > 50, "the source tree was not found"
    over = {name: n for name, n in sizes.items() if n > MAX_LINES}
    assert not over, f"files over {MAX_LINES} lines (split them by concern): {over}"


def test_the_client_side_imports_no_engine_and_no_numba() -> None:
    """What a PostgreSQL backend imports (the FDW, the clients, the fast path's client) stays thin."""
    import subprocess
    import sys

    heavy = ("numba", "hnswlib", "lmdb", "drift_engine.l1", "drift_engine.index", "drift_engine.memtable",
             "drift_engine.engine.collection", "drift_engine.server.core")  # fmt: skip
    code = (
        "import sys, drift_fdw.fdw, drift_fdw.sqlapi, drift_engine.server.client, drift_engine.server.directclient\n"
        f"heavy = sorted(m for m in sys.modules if m.startswith({heavy!r}))\n"
        "print(heavy)\n"
        "sys.exit(1 if heavy else 0)\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"the client side imports {proc.stdout.strip()} {proc.stderr[-500:]}"

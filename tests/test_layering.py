"""The module layering of docs/architecture.md, read from the sources with `ast` (imports inside
functions included): no import cycles among als_det's modules, and none of the layers that only
read results (`report/`, `detection/`) reaching into the trainer's `engine/`."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "als_det"


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


MODULES = {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _resolve(name: str) -> str | None:
    """The als_det module an imported name lives in: the longest prefix that is a module."""
    parts = name.split(".")
    for n in range(len(parts), 0, -1):
        candidate = ".".join(parts[:n])
        if candidate in MODULES:
            return candidate
    return None


def imports_of(module: str) -> set[str]:
    """Every als_det module `module` imports, at its top or inside a function."""
    path = MODULES[module]
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [f"{base}.{a.name}" for a in node.names]  # a submodule, or a name in base
        else:
            continue
        found |= {m for m in map(_resolve, names) if m is not None and m != module}
    return found


GRAPH = {m: imports_of(m) for m in MODULES}


def _cycles() -> list[list[str]]:
    """Every strongly connected component of more than one module (Tarjan), as a cycle's members."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(GRAPH[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(GRAPH):
        if v not in index:
            visit(v)
    return out


def test_the_import_reader_sees_lazy_and_package_imports():
    assert "als_det.report.sweep" in GRAPH["als_det.experiment.sweep"]  # inside a function
    assert "als_det.detection.config" in GRAPH["als_det.detection"]
    assert "als_det.config" in GRAPH["als_det.engine.resume"]


def test_no_import_cycles():
    assert _cycles() == []


def test_report_and_detection_do_not_import_the_engine():
    offenders = {
        m: sorted(i for i in GRAPH[m] if i.startswith("als_det.engine"))
        for m in GRAPH
        if m.startswith(("als_det.report", "als_det.detection"))
    }
    assert {m: i for m, i in offenders.items() if i} == {}

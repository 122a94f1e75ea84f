"""The jaxr1 package has no import cycle, counting imports inside functions too: a function-level import
only hides a cycle until someone moves it to the top of the file."""
from __future__ import annotations

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[1]
PACKAGE = ROOT / "jaxr1"


def module_name(path: pathlib.Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: pathlib.Path, modules: set[str]) -> set[str]:
    """The jaxr1 modules (or package __init__s) `path` names in any import statement, at any depth.
    `from a.b import c` is an edge to a.b.c when that is a module, else to a.b (c is a name in it)."""
    me = module_name(path)
    package = me if path.name == "__init__.py" else me.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name in modules)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:   # relative: from the module's package, one level up per extra dot
                anchor = package.rsplit(".", node.level - 1)[0] if node.level > 1 else package
                base = f"{anchor}.{base}" if base else anchor
            for a in node.names:
                if f"{base}.{a.name}" in modules:
                    out.add(f"{base}.{a.name}")
                elif base in modules:
                    out.add(base)
    out.discard(me)
    return out


def import_graph() -> dict[str, set[str]]:
    files = sorted(PACKAGE.rglob("*.py"))
    modules = {module_name(p) for p in files}
    return {module_name(p): imported_modules(p, modules) for p in files}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state, stack = {}, []

    def visit(node):
        state[node] = "open"
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == "open":
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        stack.pop()
        state[node] = "done"
        return None

    for node in sorted(graph):
        if node not in state:
            found = visit(node)
            if found:
                return found
    return None


def all_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Cycles found by removing one edge of each found cycle in turn (enough to list every offending loop)."""
    graph = {k: set(v) for k, v in graph.items()}
    cycles = []
    while (cycle := find_cycle(graph)) is not None:
        cycles.append(cycle)
        graph[cycle[-2]].discard(cycle[-1])
    return cycles


def test_graph_sees_function_level_imports():
    graph = import_graph()
    assert "jaxr1.models" in graph and graph["jaxr1.train"], "the jaxr1 import graph came out empty"


def test_no_import_cycle():
    cycles = all_cycles(import_graph())
    assert not cycles, "import cycles in jaxr1 (function-level imports counted):\n" + "\n".join(
        " -> ".join(c) for c in cycles)


def test_only_models_reaches_into_a_family():
    """Code outside jaxr1/models/ reaches a model family only through the seam (jaxr1.models and its shared
    modules), never a family folder: the next families plug in without touching the trainer."""
    families = {f"jaxr1.models.{p.name}" for p in (PACKAGE / "models").iterdir() if (p / "__init__.py").exists()}
    offenders = {m: sorted(d for d in deps if any(d == f or d.startswith(f + ".") for f in families))
                 for m, deps in import_graph().items() if not m.startswith("jaxr1.models")}
    offenders = {m: d for m, d in offenders.items() if d}
    assert not offenders, f"modules outside jaxr1/models/ importing a family folder: {offenders}"

"""The package's import graph: no cycles, and no import against the layering that
docs/ARCHITECTURE.md draws (a module imports only its own component and those below it).

Function-level imports count like top-level ones: hiding an import in a function does not make
an upward dependency acceptable.
"""

from __future__ import annotations

import ast
from collections import defaultdict
from pathlib import Path

PACKAGE_DIR = Path(__file__).resolve().parent.parent / "keras_maskrcnn"
# Bottom to top. A module of component i may import components 0..i; the CLI and the package's
# __init__ may import anything.
LAYERS = (
    ("config", "extras", "atomic", "quiet", "backend"),
    ("ops",),
    ("layers",),
    ("backbones",),
    ("heads",),
    ("parts",),
    ("steps",),
    ("model",),
    ("builder",),
    ("saving",),
    ("transform", "tiling"),
    ("data", "evaluation", "visualize"),
    ("runtime", "solver"),
    ("finetune", "precision", "targets_debug"),
    ("inference",),
    ("files",),
    ("demo",),
    ("training",),
    ("convert",),
    ("export",),
    ("cli", "__init__"),
)


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE_DIR.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph() -> dict[str, set[str]]:
    """module -> the package modules it imports (anywhere in the file)."""
    modules = {module_name(p): p for p in PACKAGE_DIR.rglob("*.py")}
    graph: dict[str, set[str]] = defaultdict(set)
    for name, path in modules.items():
        for node in ast.walk(ast.parse(path.read_text())):
            targets = []
            if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                    and node.module.startswith("keras_maskrcnn"):
                targets = [f"{node.module}.{alias.name}" for alias in node.names]
            elif isinstance(node, ast.Import):
                targets = [a.name for a in node.names if a.name.startswith("keras_maskrcnn")]
            for target in targets:
                while target not in modules and "." in target:
                    target = target.rsplit(".", 1)[0]
                if target != name and target in modules:
                    graph[name].add(target)
    for name in modules:
        graph.setdefault(name, set())
    return graph


def component(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "__init__"


def rank(module: str) -> int:
    name = component(module)
    for i, names in enumerate(LAYERS):
        if name in names:
            return i
    raise AssertionError(f"{module}: component {name!r} is not placed in LAYERS "
                         "(tests/test_layering.py and docs/ARCHITECTURE.md)")


def find_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    cycles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            members = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                members.append(w)
                if w == v:
                    break
            if len(members) > 1:
                cycles.append(sorted(members))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return cycles


def test_no_import_cycles():
    assert find_cycles(import_graph()) == []


def test_no_upward_imports():
    upward = sorted(f"{a} -> {b}" for a, targets in import_graph().items() for b in targets
                    if rank(b) > rank(a))
    assert upward == []


def test_parts_and_layers_never_read_a_config():
    """Only the builder turns a config into arguments: below it, nothing imports the config."""
    readers = sorted(a for a, targets in import_graph().items() if "keras_maskrcnn.config" in targets
                     and rank(a) < rank("keras_maskrcnn.model"))
    assert readers == []


def test_the_checker_sees_a_cycle_and_an_upward_import():
    graph = {"keras_maskrcnn.ops.a": {"keras_maskrcnn.model"}, "keras_maskrcnn.model": {"keras_maskrcnn.ops.a"}}
    assert find_cycles(graph) == [["keras_maskrcnn.model", "keras_maskrcnn.ops.a"]]
    assert rank("keras_maskrcnn.model") > rank("keras_maskrcnn.ops.a")

"""The package's shape: stages as folders, imports only down the flow, small modules, no history in the code.

The flow, lowest first: the base modules at ``textstream/`` top, then
``data``, ``model``, ``generation``, ``training``, then ``export`` and
``serve``, then ``cli``. A module may import its own folder, and any
folder below its own; never one above (not even inside a function).
"""
from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "textstream"
BASE = {"errors", "fsutil", "temporaries", "progress", "settings", "config", "sizing", "_tf", "claims"}
STAGES = {"data": 2, "model": 3, "generation": 4, "training": 5, "export": 6, "serve": 6, "cli": 7}
MAX_LINES = 400


def modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        name = ".".join(path.relative_to(PACKAGE.parent).with_suffix("").parts)
        out[name.removesuffix(".__init__")] = path
    return out


def rank(module: str) -> int:
    """Where ``module`` sits in the flow (higher imports lower)."""
    parts = module.split(".")
    if len(parts) == 1:
        return 9  # the package itself: its lazy names reach everything
    if parts[1] in STAGES:
        return STAGES[parts[1]]
    if parts[1] == "__main__":
        return 8
    assert parts[1] in BASE, f"{module}: a top-level module that is not a base module"
    return 1 if parts[1] == "config" else 0


def imports(path: Path, known: dict[str, Path]) -> list[tuple[str, list[str], int]]:
    """``(module, names, line)`` for every ``from textstream... import`` in ``path``, at any depth."""
    out = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and (node.module or "").startswith("textstream"):
            out.append((node.module, [a.name for a in node.names], node.lineno))
        elif isinstance(node, ast.Import):
            for a in node.names:
                if a.name.startswith("textstream"):
                    out.append((a.name, [], node.lineno))
    return out


def edges() -> dict[str, set[str]]:
    known = modules()
    graph: dict[str, set[str]] = {}
    for name, path in known.items():
        for module, names, _ in imports(path, known):
            targets = {module} | {f"{module}.{n}" for n in names if f"{module}.{n}" in known}
            graph.setdefault(name, set()).update(t for t in targets if t not in (name, "textstream"))
    return graph


def test_at_most_twelve_modules_at_the_top_and_each_folder_says_what_it_owns():
    top = sorted(p.stem for p in PACKAGE.glob("*.py"))
    assert len(top) <= 12, top
    for folder in (p for p in PACKAGE.iterdir() if p.is_dir() and p.name != "__pycache__"):
        init = folder / "__init__.py"
        assert init.is_file(), folder
        assert ast.get_docstring(ast.parse(init.read_text(encoding="utf-8"))), f"{init}: no docstring"


def test_imports_run_down_the_flow_only():
    upward = [f"{a} -> {b}" for a, targets in edges().items() for b in targets
              if rank(b) > rank(a) and a.split(".")[:2] != b.split(".")[:2]]
    assert upward == []


def test_no_import_circles():
    graph, state, cycles = edges(), {}, []

    def visit(node, stack):
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                cycles.append(" -> ".join(stack[stack.index(nxt):] + [nxt]))
            elif not state.get(nxt):
                visit(nxt, stack)
        stack.pop()
        state[node] = 2

    for node in sorted(graph):
        if not state.get(node):
            visit(node, [])
    assert cycles == []


def test_no_private_name_is_imported_across_modules():
    known = modules()
    private = [f"{path.relative_to(PACKAGE.parent)}:{line}: {module}.{n}"
               for name, path in known.items() for module, names, line in imports(path, known)
               for n in names if n.startswith("_") and n != "__version__" and module != "textstream._tf"]
    assert private == []


@pytest.mark.parametrize("path", sorted(PACKAGE.rglob("*.py")), ids=lambda p: str(p.relative_to(PACKAGE)))
def test_modules_are_small_and_carry_no_dated_history(path):
    text = path.read_text(encoding="utf-8")
    assert text.count("\n") <= MAX_LINES, f"{path}: {text.count(chr(10))} lines"
    assert not re.search(r"\b20\d\d-\d\d-\d\d\b", text), f"{path}: a date"

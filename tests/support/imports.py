"""The import graph of the project's code, read from the source (every import, at the top of a module or inside a
function), for the tests that keep the layers apart."""

from __future__ import annotations

import ast
from functools import cache
from pathlib import Path

from tests.support.paths import REPO

PROJECT = ("tasks", "flows", "infra", "bench")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def is_module(name: str) -> bool:
    path = REPO.joinpath(*name.split("."))
    return path.with_suffix(".py").is_file() or (path / "__init__.py").is_file()


@cache
def graph(roots: tuple[str, ...] = PROJECT) -> dict[str, frozenset[str]]:
    """module -> the project modules it imports. ``from pkg import name`` counts as importing the submodule
    ``pkg.name`` when there is one, else ``pkg`` itself."""
    out: dict[str, frozenset[str]] = {}
    for root in roots:
        for path in sorted((REPO / root).rglob("*.py")):
            imported: set[str] = set()
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
                if isinstance(node, ast.Import):
                    imported |= {a.name for a in node.names if a.name.split(".")[0] in PROJECT}
                elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                        and node.module.split(".")[0] in PROJECT:
                    for alias in node.names:
                        sub = f"{node.module}.{alias.name}"
                        imported.add(sub if is_module(sub) else node.module)
            out[module_name(path)] = frozenset(imported)
    return out


def reachable(start: str) -> set[str]:
    """Every project module that importing ``start`` can import, itself included."""
    seen, todo = set(), [start]
    while todo:
        name = todo.pop()
        if name not in seen:
            seen.add(name)
            todo.extend(graph().get(name, ()))
    return seen


def cycles() -> list[list[str]]:
    """The import cycles among project modules (each as a path that comes back to its start)."""
    found, state, stack = [], {}, []

    def visit(name: str) -> None:
        state[name] = "open"
        stack.append(name)
        for nxt in sorted(graph().get(name, ())):
            if state.get(nxt) == "open":
                found.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt)
        stack.pop()
        state[name] = "done"

    for name in sorted(graph()):
        if name not in state:
            visit(name)
    return found

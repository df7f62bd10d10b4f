"""The house's structure: no import circle, no layer importing a higher one, methods never see the Trainer, and
every module small enough to read (imports are read from the source, function-level imports included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "mkdlab"
MAX_LINES = 420

#: each module's layer; a module may import only from its own layer or lower ones. Folders stand for every module
#: in them; the most specific entry wins.
LAYERS: dict[str, int] = {
    "typed": 0, "storage": 0, "profiles": 0, "cuda_graphs": 0,
    "config": 1, "models": 1, "data": 1, "losses": 1, "viz": 1, "cam": 1,
    "methods": 2,
    "engine": 3,
    "teachers": 4, "evaluation": 4,
    "experiment": 5, "reuse": 5,
    "studies": 6, "lesson": 6, "listing": 6, "demo": 6, "bench": 6, "export": 6, "distributed": 6,
    "cli": 7, "__main__": 7, "__init__": 7,
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports_of(path: Path) -> set[str]:
    """Every ``mkdlab`` module ``path`` imports (at module level or inside functions)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names if alias.name.startswith("mkdlab"))
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("mkdlab"):
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    known = modules()
    return {name for name in found if name in known}


def layer(module: str) -> int:
    parts = module.split(".")[1:] or ["__init__"]
    for depth in range(len(parts), 0, -1):
        key = ".".join(parts[:depth])
        if key in LAYERS:
            return LAYERS[key]
    raise AssertionError(f"{module} has no layer in LAYERS: add it")


def graph() -> dict[str, set[str]]:
    """Import edges between modules, packages' faces (``__init__``) left out as targets: importing a name through
    a package's face is importing the module that defines it."""
    known = modules()
    faces = {name for name, path in known.items() if path.name == "__init__.py"}
    return {name: {m for m in imports_of(path) if m not in faces and m != name} for name, path in known.items()}


def test_no_import_circle():
    edges = graph()
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> None:
        state[node] = 1
        stack.append(node)
        for target in sorted(edges.get(node, ())):
            if state.get(target) == 1:
                cycle = stack[stack.index(target):] + [target]
                pytest.fail("import circle: " + " -> ".join(cycle))
            if target not in state:
                visit(target)
        stack.pop()
        state[node] = 2

    for node in sorted(edges):
        if node not in state:
            visit(node)


def test_no_module_imports_a_higher_layer():
    upward = [f"{source} (layer {layer(source)}) imports {target} (layer {layer(target)})"
              for source, targets in graph().items() for target in sorted(targets)
              if layer(target) > layer(source) and not source.endswith("__init__")]
    assert not upward, "\n".join(upward)


def test_methods_never_import_the_engine():
    offenders = [(name, target) for name, targets in graph().items() if name.startswith("mkdlab.methods")
                 for target in targets if target.startswith("mkdlab.engine")]
    assert not offenders


@pytest.mark.parametrize("name", sorted(modules()))
def test_modules_are_small_enough_to_read(name):
    lines = len(modules()[name].read_text(encoding="utf-8").splitlines())
    assert lines <= MAX_LINES, f"{name} has {lines} lines (at most {MAX_LINES}): split it by job"

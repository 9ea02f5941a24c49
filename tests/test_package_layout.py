"""The package reads like the course: subpackages with a public API, no import cycles,
no private names borrowed across modules, and small modules."""

from __future__ import annotations

import ast
import importlib
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "medseg_helpers"
SUBPACKAGES = sorted(p.parent.name for p in PACKAGE.glob("*/__init__.py"))
MAX_LINES = 400


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, ast.Module]:
    return {_module_name(p): ast.parse(p.read_text(encoding="utf-8"))
            for p in sorted(PACKAGE.rglob("*.py"))}


def _is_type_checking(node: ast.If) -> bool:
    return isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING"


def _top_level_imports(tree: ast.Module) -> list[tuple[str, list[str]]]:
    """``(module, names)`` of the imports that run when the module is imported."""
    found = []
    for node in tree.body:
        if isinstance(node, ast.If) and _is_type_checking(node):
            continue
        for child in [node] + (node.body if isinstance(node, (ast.If, ast.Try)) else []):
            if isinstance(child, ast.ImportFrom) and child.module:
                found.append((child.module, [a.name for a in child.names]))
            elif isinstance(child, ast.Import):
                found.extend((a.name, []) for a in child.names)
    return found


def _import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {name: set() for name in modules}
    for name, tree in modules.items():
        for target, names in _top_level_imports(tree):
            if not target.startswith("medseg_helpers"):
                continue
            for imported in names:  # `from pkg import module` imports a module
                if f"{target}.{imported}" in modules:
                    graph[name].add(f"{target}.{imported}")
            if target in modules:
                graph[name].add(target)
    return graph


def _cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return stack[stack.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (found := visit(node)):
            return found
    return None


def test_cycle_finder_finds_a_hand_made_cycle():
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycles_between_modules():
    assert _cycle(_import_graph()) is None


def test_no_private_name_is_imported_from_another_module():
    offenders = []
    for path in sorted(PACKAGE.rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            module = node.module if isinstance(node, ast.ImportFrom) else None
            if module and module.startswith("medseg_helpers"):
                offenders += [f"{_module_name(path)}: {node.module}.{a.name}"
                              for a in node.names if a.name.startswith("_")]
    assert offenders == []


def test_modules_stay_small_or_say_why():
    long = [f"{_module_name(p)} ({n} lines)" for p in sorted(PACKAGE.rglob("*.py"))
            if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES
            and "Longer than" not in p.read_text(encoding="utf-8")[:2000]]
    assert long == []


@pytest.mark.parametrize("subpackage", SUBPACKAGES)
def test_subpackage_exposes_its_public_api(subpackage):
    package = importlib.import_module(f"medseg_helpers.{subpackage}")
    assert package.__doc__ and len(package.__doc__.split()) >= 12
    for name in package.__all__:
        assert getattr(package, name) is not None, f"{subpackage}.{name}"
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        package.not_a_name  # noqa: B018


def test_the_course_stages_are_subpackages():
    expected = {"course", "data", "deploy", "explain", "metrics", "networks", "training",
                "transforms", "tuning", "viz"}
    assert expected <= set(SUBPACKAGES)

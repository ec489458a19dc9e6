"""The package's import graph: no cycles, no tool module importing the CLI or typer, remote code self-contained."""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "hf_ropeid"
REMOTE_CODE = {
    "hf_ropeid.rope_id", "hf_ropeid.configuration_rope_id", "hf_ropeid.modeling_rope_id", "hf_ropeid.rotary_window"
}


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports(path: Path) -> set[str]:
    """Every module this file imports, anywhere in it (function-level imports included)."""
    package = module_name(path) if path.name == "__init__.py" else module_name(path).rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            found.add(target)
            found.update(f"{target}.{alias.name}" for alias in node.names)  # `from . import retrieval`
    return found


def graph() -> dict[str, set[str]]:
    modules = {module_name(p): p for p in PACKAGE.rglob("*.py")}
    return {name: {m for m in imports(path) if m in modules and m != name} for name, path in modules.items()}


def test_the_import_graph_has_no_cycle():
    edges = graph()
    # A package's __init__ re-exporting its own submodules is not a dependency of those submodules.
    edges = {m: {t for t in targets if not (m.startswith(t + ".") and t in edges)} for m, targets in edges.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(module: str) -> None:
        state[module] = 1
        stack.append(module)
        for target in edges[module]:
            if state.get(target) == 1:
                raise AssertionError("import cycle: " + " -> ".join(stack[stack.index(target):] + [target]))
            if target not in state:
                visit(target)
        stack.pop()
        state[module] = 2

    for module in edges:
        if module not in state:
            visit(module)


def test_only_the_cli_imports_typer_and_nothing_imports_the_cli():
    for path in PACKAGE.rglob("*.py"):
        name = module_name(path)
        if name.startswith("hf_ropeid.cli"):
            continue
        found = imports(path)
        assert not any(m == "typer" or m.startswith("typer.") for m in found), name
        assert not any(m.startswith("hf_ropeid.cli") for m in found), name


def test_remote_code_imports_only_remote_code_from_the_package():
    edges = graph()
    for module in REMOTE_CODE:
        assert edges[module] <= REMOTE_CODE, (module, edges[module] - REMOTE_CODE)


def test_tools_do_not_import_upward():
    edges = graph()
    # (importer, imported) pairs that would run against the layering in ARCHITECTURE.md
    forbidden = [("hf_ropeid.evaluation", "hf_ropeid.training"), ("hf_ropeid.evaluation", "hf_ropeid.merge"),
                 ("hf_ropeid.evaluation", "hf_ropeid.data"), ("hf_ropeid.merge", "hf_ropeid.training"),
                 ("hf_ropeid.hub", "hf_ropeid.merge"), ("hf_ropeid.training", "hf_ropeid.merge"),
                 ("hf_ropeid.conversion", "hf_ropeid.training"), ("hf_ropeid.conversion", "hf_ropeid.evaluation"),
                 ("hf_ropeid.model_card", "hf_ropeid.merge"), ("hf_ropeid.documents", "hf_ropeid.data")]
    for module, targets in edges.items():
        for importer, imported in forbidden:
            if module.startswith(importer):
                assert not any(t.startswith(imported) for t in targets), (module, targets)

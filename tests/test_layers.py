"""No import loops between the files or the packages of mlchaos_steps.

Every import counts, including those inside functions and under ``TYPE_CHECKING``: a loop that only
closes at run time is still a loop for a reader. Pure: reads the source, imports nothing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import mlchaos_steps

ROOT = Path(mlchaos_steps.__file__).parent
PACKAGE = "mlchaos_steps"


def module_names() -> dict[str, Path]:
    found = {}
    for path in ROOT.rglob("*.py"):
        parts = (PACKAGE, *path.relative_to(ROOT).with_suffix("").parts)
        found[".".join(parts[:-1] if parts[-1] == "__init__" else parts)] = path
    return found


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that ``name`` imports (``from pkg import mod`` counts as ``pkg.mod``)."""
    here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(here[: len(here) - node.level + 1] + ([node.module] if node.module else []))
            found.update(f"{base}.{a.name}" if f"{base}.{a.name}" in known else base for a in node.names)
    return {m for m in found if m in known and m != name}


def module_graph() -> dict[str, set[str]]:
    modules = module_names()
    return {name: imports_of(name, path, set(modules)) for name, path in modules.items()}


def package_of(module: str) -> str:
    """``mlchaos_steps.engine.phases`` -> ``engine``; a module of the package root is its own unit."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else "(root)"


def package_graph(modules: dict[str, set[str]]) -> dict[str, set[str]]:
    graph: dict[str, set[str]] = {}
    for module, deps in modules.items():
        if module == PACKAGE:
            continue
        for dep in deps:
            if dep != PACKAGE and package_of(dep) != package_of(module):
                graph.setdefault(package_of(module), set()).add(package_of(dep))
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Every strongly connected component of more than one node (Tarjan), as sorted lists."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for nxt in graph.get(node, ()):
            if nxt not in index:
                visit(nxt)
                low[node] = min(low[node], low[nxt])
            elif nxt in stack:
                low[node] = min(low[node], index[nxt])
        if low[node] == index[node]:
            component = stack[stack.index(node):]
            del stack[stack.index(node):]
            if len(component) > 1:
                found.append(sorted(component))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return found


def test_the_walker_finds_a_loop_when_there_is_one() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_the_walker_sees_imports_inside_functions(tmp_path: Path) -> None:
    source = tmp_path / "m.py"
    source.write_text("def f():\n    from mlchaos_steps.engine import phases\n    import mlchaos_steps.gate.verdicts\n")
    known = {"mlchaos_steps.engine", "mlchaos_steps.engine.phases", "mlchaos_steps.gate.verdicts"}
    assert imports_of("mlchaos_steps.x.m", source, known) == {"mlchaos_steps.engine.phases",
                                                              "mlchaos_steps.gate.verdicts"}


def test_no_import_loop_between_modules() -> None:
    assert cycles(module_graph()) == []


def test_no_import_loop_between_packages() -> None:
    assert cycles(package_graph(module_graph())) == []


@pytest.mark.parametrize("package", ["core", "ledgers", "targets"])
def test_lower_layers_do_not_reach_up(package: str) -> None:
    """The shared vocabulary, the ledgers and the targets import neither stages, engine, gate nor front doors."""
    upper = {"stages", "engine", "gate", "api", "airflow", "cli", "demo", "examples", "ctk", "verification"}
    graph = package_graph(module_graph())
    assert graph.get(package, set()) & upper == set()


def test_the_engine_does_not_import_the_gate() -> None:
    """MLflow reporting is an observer the engine is handed, not a module it reaches into."""
    assert "gate" not in package_graph(module_graph()).get("engine", set())


# The order of the README's Layout: each package or root module imports only those before it.
LAYERS = ["errors", "config", "redaction", "core", "targets", "ledgers", "telemetry", "verification", "gate", "stages",
          "engine", "api", "argo", "hera", "asgi", "rollouts", "examples", "airflow", "ctk", "demo", "cli"]


def test_every_import_goes_down_the_layers() -> None:
    graph = package_graph(module_graph())
    assert set(graph) <= set(LAYERS), f"place {sorted(set(graph) - set(LAYERS))} in LAYERS and the README"
    upward = sorted((a, b) for a, deps in graph.items() for b in deps if LAYERS.index(b) > LAYERS.index(a))
    assert upward == []

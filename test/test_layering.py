"""The package layers (docs/interfaces.md "Layers"), checked on the source with `ast`: imports point
down only and never in a circle.

    mu0_app/                                   application: launcher, graph config, replay, demo, CLI
    */nodes/                                   thin rclpy shells
    mu0_perception/, mu0_policy/, mu0_sim/     the work (no rclpy outside nodes/)
    mu0_ros/                                   the ROS adapter: convert, qos, diagnostics, bag I/O
    mu0_core/                                  pure core: camera, frames, traces, bspline, metrics

Every import counts, also the ones inside functions (a lazy import is still a dependency).
"""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
PACKAGES = ("mu0_core", "mu0_ros", "mu0_perception", "mu0_policy", "mu0_sim", "mu0_app")
ROS_ALLOWED = ("mu0_ros", "mu0_app")          # besides any */nodes/ package


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _collect():
    modules = {}
    for pkg in PACKAGES:
        for path in sorted((REPO / pkg).rglob("*.py")):
            if "__pycache__" not in path.parts:
                modules[_module_name(path)] = path
    return modules


MODULES = _collect()


def _imports(name: str, path: Path) -> list[tuple[str, int]]:
    """(imported module, line) for every import in the file; `from pkg import mod` -> pkg.mod."""
    tree = ast.parse(path.read_text(), filename=str(path))
    is_pkg = path.name == "__init__.py"
    out = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            out += [(alias.name, node.lineno) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = name.split(".") if is_pkg else name.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                out.append((sub if sub in MODULES else target, node.lineno))
    return out


GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _ours(target: str) -> bool:
    return target.split(".")[0] in PACKAGES


def _top(name: str) -> str:
    return name.split(".")[0]


def _is_node(name: str) -> bool:
    return "nodes" in name.split(".")[1:]


def _violations(rule) -> list[str]:
    return [f"{MODULES[m].relative_to(REPO)}:{line}: {m} imports {t}"
            for m, targets in sorted(GRAPH.items()) for t, line in targets if rule(m, t)]


def test_the_packages_are_found():
    for pkg in PACKAGES:
        assert pkg in MODULES, f"{pkg}/__init__.py missing"
    assert len(MODULES) > 40


def test_core_imports_nothing_of_ours_outside_core():
    assert _violations(lambda m, t: _top(m) == "mu0_core" and _ours(t) and _top(t) != "mu0_core") == []


def test_ros_adapter_imports_only_core():
    assert _violations(lambda m, t: _top(m) == "mu0_ros" and _ours(t) and _top(t) not in ("mu0_ros", "mu0_core")) == []


def test_nothing_below_the_app_imports_the_app():
    assert _violations(lambda m, t: _top(m) != "mu0_app" and _top(t) == "mu0_app") == []


@pytest.mark.parametrize("pkg", ["mu0_perception", "mu0_policy", "mu0_sim"])
def test_work_packages_never_import_the_app(pkg):
    assert _violations(lambda m, t: _top(m) == pkg and _top(t) == "mu0_app") == []


@pytest.mark.parametrize("pkg", ["mu0_perception", "mu0_sim"])
def test_perception_and_sim_never_import_the_policy(pkg):
    assert _violations(lambda m, t: _top(m) == pkg and _top(t) == "mu0_policy") == []


def test_rclpy_only_in_nodes_the_ros_adapter_and_the_app():
    assert _violations(lambda m, t: _top(t) == "rclpy" and _top(m) not in ROS_ALLOWED and not _is_node(m)) == []


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one member (or a self-loop), Tarjan."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph.get(v, ()):
                out.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles_among_our_modules():
    graph = {m: {t for t, _ in targets if t in MODULES and t != m} for m, targets in GRAPH.items()}
    assert _cycles(graph) == []


def test_no_import_cycles_among_our_packages():
    """Package level (nodes/ counted as its own layer above its package): imports point one way."""
    def unit(name):
        return f"{_top(name)}.nodes" if _is_node(name) else _top(name)

    graph = {}
    for m, targets in GRAPH.items():
        for t, _ in targets:
            if _ours(t) and unit(t) != unit(m):
                graph.setdefault(unit(m), set()).add(unit(t))
    assert _cycles(graph) == []


def test_the_cycle_finder_finds_cycles():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []

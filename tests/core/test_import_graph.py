"""``kftune.core``'s edges: no import cycle among its modules, nothing imported from outside stdlib,
numpy, hyperopt and ``kftune.core`` itself (DESIGN.md: core is pure logic, arrows point inward), and the
names the rest of the repository imports from ``kftune.core.spec`` still there (it is a package now).

Both read the source with :mod:`ast`, so they count every import statement: at module level, inside
functions, under ``if TYPE_CHECKING``. ``import a.b.c`` (and ``from a.b import c``) runs the ``__init__`` of
each package on the way (``a``, ``a.b``) that is not yet running, so the graph has an edge to those too.
"""

from __future__ import annotations

import ast
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PACKAGE_ROOT = REPO / "components"
CORE = PACKAGE_ROOT / "kftune" / "core"
#: What core may import besides stdlib and itself (DESIGN.md: "Imports only stdlib, numpy, hyperopt").
THIRD_PARTY_ALLOWED = frozenset({"numpy", "hyperopt"})


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE_ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def core_modules() -> dict[str, Path]:
    """``{dotted name: file}`` of every module under components/kftune/core (packages by their ``__init__``)."""
    return {module_name(p): p for p in sorted(CORE.rglob("*.py"))}


def imported_names(path: Path, name: str) -> list[tuple[int, str]]:
    """``(line, dotted name)`` of every module an import statement in ``path`` names, relative imports
    resolved; for ``from X import y`` both ``X`` and ``X.y`` (the caller keeps ``X.y`` when it is a module)."""
    is_package = path.name == "__init__.py"
    out: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
        if isinstance(node, ast.Import):
            out += [(node.lineno, alias.name) for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = name.split(".") if is_package else name.split(".")[:-1]
                anchor = anchor[: len(anchor) - (node.level - 1)]
                base = ".".join(anchor + ([base] if base else []))
            out.append((node.lineno, base))
            out += [(node.lineno, f"{base}.{alias.name}") for alias in node.names if alias.name != "*"]
    return out


def running_packages(name: str, is_package: bool) -> set[str]:
    """The packages whose ``__init__`` has started when module ``name`` runs: its ancestors (and itself,
    for a package)."""
    parts = name.split(".")
    out = {".".join(parts[:i]) for i in range(1, len(parts))}
    return out | {name} if is_package else out


def import_graph() -> dict[str, dict[str, int]]:
    """``{module: {imported core module: line}}`` over every import statement of every core module."""
    modules = core_modules()
    graph: dict[str, dict[str, int]] = {}
    for name, path in modules.items():
        edges: dict[str, int] = {}
        running = running_packages(name, path.name == "__init__.py")
        for line, target in imported_names(path, name):
            if target not in modules:
                continue  # a name imported from a module (kept as that module's entry), or not core
            parts = target.split(".")
            for i in range(1, len(parts) + 1):  # the packages on the way, then the module itself
                step = ".".join(parts[:i])
                if step in modules and step not in running and step != name:
                    edges.setdefault(step, line)
        graph[name] = edges
    return graph


def find_cycle(graph: dict[str, dict[str, int]]) -> list[str] | None:
    """One cycle of ``graph`` as ``[a, b, ..., a]``, or ``None`` when it has none (iterative DFS)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for root in sorted(graph):
        if state.get(root):
            continue
        path, stack = [root], [iter(sorted(graph[root]))]
        state[root] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(graph.get(nxt, {}))))
    return None


def describe(cycle: list[str], graph: dict[str, dict[str, int]]) -> str:
    modules = core_modules()
    return "\n".join(f"  {a} -> {b}  ({modules[a].relative_to(PACKAGE_ROOT)}:{graph[a][b]})"
                     for a, b in zip(cycle, cycle[1:]))


def test_the_graph_sees_imports_inside_functions_and_packages_on_the_way() -> None:
    graph = import_graph()
    # module level, a submodule named by `from package import module`
    assert "kftune.core.limits" in graph["kftune.core.lr_range"]
    # inside a function (katib_export imports the grid sampler where it needs it)
    assert "kftune.core.samplers.grid" in graph["kftune.core.katib_export"]
    # importing a submodule runs its package's __init__ first, unless that package is already running
    assert "kftune.core.samplers" in graph["kftune.core.katib_export"]
    assert "kftune.core.samplers" not in graph["kftune.core.samplers.random"]
    assert find_cycle({"a": {"b": 1}, "b": {"c": 1}, "c": {"a": 1}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b": 1}, "b": {}, "c": {"a": 1, "b": 1}}) is None


def test_core_has_no_import_cycle() -> None:
    graph = import_graph()
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle in kftune.core:\n" + describe(cycle, graph)


def test_core_imports_only_stdlib_numpy_hyperopt_and_itself() -> None:
    """No kftune.io/nlp/steps/serving/pipelines, no torch, kfp, minio... (DESIGN.md's layout)."""
    offenders = []
    for name, path in core_modules().items():
        for line, target in imported_names(path, name):
            top = target.split(".")[0]
            if top == "kftune":
                ok = target in ("kftune", "kftune.core") or target.startswith("kftune.core.")
            else:
                ok = top in sys.stdlib_module_names or top in THIRD_PARTY_ALLOWED or top == "__future__"
            if not ok:
                offenders.append(f"{path.relative_to(PACKAGE_ROOT)}:{line} {target}")
    assert offenders == [], "kftune.core imports outside stdlib, numpy, hyperopt and kftune.core:\n" + \
        "\n".join(offenders)


def test_every_name_imported_from_kftune_core_spec_is_there() -> None:
    """The spec's split into a package kept ``from kftune.core.spec import X`` working for every ``X`` used."""
    import kftune.core.spec

    wanted: dict[str, str] = {}
    for folder in ("components", "pipelines", "tests", "benchmarks"):
        for path in sorted((REPO / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
                if isinstance(node, ast.ImportFrom) and node.module == "kftune.core.spec" and not node.level:
                    for alias in node.names:
                        wanted.setdefault(alias.name, f"{path.relative_to(REPO)}:{node.lineno}")
    assert {"TuningJob", "parse_spec", "job_to_dict"} <= set(wanted)
    missing = {name: where for name, where in wanted.items() if not hasattr(kftune.core.spec, name)}
    assert missing == {}
    assert set(kftune.core.spec.__all__) >= set(wanted)

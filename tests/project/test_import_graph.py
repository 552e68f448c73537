"""The package's own import graph: model/config/checkpoint-io code never imports pipeline code, and
module-level imports form no cycle.

Why: the modeling files are remote code copied next to the weights; a model that imports its
pipeline drags the pipeline into every bundle, and an import cycle makes the import order decide
whether a name exists yet. The graph is built from the source (ast), not by importing: module-
and function-level imports both count for the pipeline rule; module-level ones for cycles.
"""

from __future__ import annotations

import ast
import importlib.util
import pkgutil
from pathlib import Path
from typing import Optional

import pytest

PACKAGE = "adpretrain_hf"
MODELING = f"{PACKAGE}.modeling"
PIPELINE_PREFIX = "pipeline_"

# module name -> (source file, is a package)
Modules = dict[str, tuple[Path, bool]]
# module name -> [(imported module, imported at module level)]
Graph = dict[str, list[tuple[str, bool]]]


# -- discovery ------------------------------------------------------------------------------
def _walk(name: str, folder: Path, modules: Modules) -> None:
    """Add the package ``name`` in ``folder`` and everything below it (files only, no import)."""
    modules[name] = (folder / "__init__.py", True)
    for info in pkgutil.iter_modules([str(folder)]):
        child = f"{name}.{info.name}"
        if info.ispkg:
            _walk(child, folder / info.name, modules)
        else:
            modules[child] = (folder / f"{info.name}.py", False)


def installed_modules(package: str = PACKAGE) -> Modules:
    """Every module of the installed ``package``, including sub-packages mapped to other folders
    (``package_dir``: ``adpretrain_hf.modeling`` is ``modeling/``), found by following imports."""
    spec = importlib.util.find_spec(package)
    modules: Modules = {}
    _walk(package, Path(spec.origin).parent, modules)
    while True:
        graph = import_graph(modules, extra_candidates=True)
        missing = {
            t for edges in graph.values() for t, _ in edges
            if t.startswith(f"{package}.") and t not in modules and modules.get(t.rsplit(".", 1)[0], (None, False))[1]
        }
        added = False
        for name in sorted(missing):
            found = importlib.util.find_spec(name)
            if found is None or found.origin is None or not found.origin.endswith(".py"):
                continue
            if found.submodule_search_locations:
                _walk(name, Path(found.origin).parent, modules)
            else:
                modules[name] = (Path(found.origin), False)
            added = True
        if not added:
            return modules


# -- the graph ------------------------------------------------------------------------------
def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST) -> list[tuple[ast.AST, bool]]:
    """Import nodes (and ``importlib.import_module("...")`` calls) with "runs at module level"."""
    found: list[tuple[ast.AST, bool]] = []

    def visit(node: ast.AST, module_level: bool) -> None:
        for child in ast.iter_child_nodes(node):
            level = module_level
            if isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                level = False
            elif isinstance(child, ast.If) and _is_type_checking(child):
                level = False
            if isinstance(child, (ast.Import, ast.ImportFrom)):
                found.append((child, level))
            elif isinstance(child, ast.Call) and _is_import_module_call(child):
                found.append((child, False))  # dynamic: counts for the pipeline rule only
            visit(child, level)

    visit(tree, True)
    return found


def _is_import_module_call(node: ast.Call) -> bool:
    func = node.func
    name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
    return name == "import_module" and bool(node.args) and isinstance(node.args[0], ast.Constant) and isinstance(node.args[0].value, str)


def _targets(node: ast.AST, module: str, is_package: bool) -> list[str]:
    """Candidate module names an import node refers to (``from X import y``: ``X.y`` and ``X``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    if isinstance(node, ast.Call):
        return [node.args[0].value]
    assert isinstance(node, ast.ImportFrom)
    if node.level:
        parts = module.split(".") if is_package else module.split(".")[:-1]
        parts = parts[: len(parts) - (node.level - 1)]
        base = ".".join(parts + ([node.module] if node.module else []))
    else:
        base = node.module or ""
    return [f"{base}.{alias.name}" for alias in node.names] + [base]


def import_graph(modules: Modules, extra_candidates: bool = False) -> Graph:
    """Edges to modules of ``modules`` (with ``extra_candidates``: to any candidate name, so that
    discovery can find mapped sub-packages). ``from X import y`` is an edge to ``X.y`` when that
    is a module, else to ``X``."""
    graph: Graph = {}
    for name, (path, is_package) in modules.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        edges: list[tuple[str, bool]] = []
        for node, module_level in _imports(tree):
            candidates = _targets(node, name, is_package)
            if isinstance(node, ast.ImportFrom) and not extra_candidates:
                base = candidates[-1]
                candidates = [c if c in modules else base for c in candidates[:-1]]
            edges += [(target, module_level) for target in candidates if extra_candidates or target in modules]
        graph[name] = [(t, level) for t, level in edges if t != name]
    return graph


def pipeline_imports_from_model_code(graph: Graph, modeling: str = MODELING) -> list[str]:
    """``"importer -> pipeline module"`` for modeling files other than ``pipeline_*`` that import one."""
    def is_pipeline(name: str) -> bool:
        return name.startswith(f"{modeling}.") and name.rsplit(".", 1)[-1].startswith(PIPELINE_PREFIX)

    return sorted(
        f"{source} -> {target}"
        for source, edges in graph.items()
        if source.startswith(f"{modeling}.") and not is_pipeline(source)
        for target, _ in edges
        if is_pipeline(target)
    )


def find_cycle(graph: Graph) -> Optional[list[str]]:
    """One cycle among module-level edges (``[a, b, ..., a]``), or None."""
    edges = {name: sorted({t for t, level in targets if level and t in graph}) for name, targets in graph.items()}
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> Optional[list[str]]:
        state[node] = 1
        path.append(node)
        for target in edges[node]:
            if state.get(target) == 1:
                return path[path.index(target):] + [target]
            if target not in state:
                cycle = visit(target)
                if cycle:
                    return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(edges):
        if start not in state:
            cycle = visit(start)
            if cycle:
                return cycle
    return None


# -- the package ----------------------------------------------------------------------------
@pytest.fixture(scope="module")
def package_graph() -> tuple[Modules, Graph]:
    modules = installed_modules()
    return modules, import_graph(modules)


def test_discovery_reaches_the_mapped_subpackages(package_graph):
    modules, _ = package_graph
    expected = [f"{MODELING}.modeling_adpretrain", f"{MODELING}.pipeline_anomaly_features", f"{PACKAGE}.training.pretrain",
                f"{PACKAGE}.detectors.patchcore", f"{PACKAGE}.registration"]
    assert [name for name in expected if name not in modules] == []
    assert all(path.is_file() for path, _ in modules.values())


def test_model_config_and_checkpoint_io_code_never_import_pipeline_code(package_graph):
    _, graph = package_graph
    assert pipeline_imports_from_model_code(graph) == []


def test_no_cycle_among_module_level_imports(package_graph):
    _, graph = package_graph
    assert find_cycle(graph) is None


# -- the checker itself, on a package with known faults --------------------------------------
def _write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text, encoding="utf-8")


def test_checker_finds_a_pipeline_import_and_a_cycle(tmp_path):
    _write(tmp_path / "fake", {
        "__init__.py": "",
        "a.py": "from . import b\n",
        "b.py": "from .c import thing\n",
        "c.py": "import fake.a\nthing = 1\n",
        "modeling/__init__.py": "from .configuration_x import X\n",
        "modeling/configuration_x.py": "X = 1\n",
        "modeling/modeling_x.py": "def save():\n    from .pipeline_x import P\n",
        "modeling/checkpoint_io_x.py": "import importlib\ndef f():\n    importlib.import_module('fake.modeling.pipeline_y')\n",
        "modeling/pipeline_x.py": "from .configuration_x import X\nP = X\n",
        "modeling/pipeline_y.py": "from .pipeline_x import P\n",
        "d.py": "def later():\n    from . import a\n",
    })
    modules: Modules = {}
    _walk("fake", tmp_path / "fake", modules)
    graph = import_graph(modules)
    assert pipeline_imports_from_model_code(graph, modeling="fake.modeling") == [
        "fake.modeling.checkpoint_io_x -> fake.modeling.pipeline_y", "fake.modeling.modeling_x -> fake.modeling.pipeline_x",
    ]
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1] and set(cycle) == {"fake.a", "fake.b", "fake.c"}
    # a function-level import closes no cycle; removing the module-level edge c -> a leaves none
    (tmp_path / "fake" / "c.py").write_text("def f():\n    import fake.a\nthing = 1\n", encoding="utf-8")
    assert find_cycle(import_graph(modules)) is None

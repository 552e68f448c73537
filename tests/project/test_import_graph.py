"""The package's own import graph: model/config/checkpoint-io code never imports pipeline code,
imports form no cycle (function-level ones included), and only the detectors score features.

Why: the modeling files are remote code copied next to the weights; a model that imports its
pipeline drags the pipeline into every bundle, and an import cycle (even a lazy one) makes the
import order decide whether a name exists yet and ties two rooms into one. Scoring lives in one
place (issue 21): ``adpretrain_hf.detectors`` and the modeling scoring modules; the detector
folder's model only builds its module from the registry, with no branch on the method's name.
The graph is built from the source (ast), not by importing.
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


def find_cycle(graph: Graph, module_level_only: bool = False) -> Optional[list[str]]:
    """One cycle (``[a, b, ..., a]``) among all edges, or among module-level ones only; None if none."""
    edges = {name: sorted({t for t, level in targets if (level or not module_level_only) and t in graph})
             for name, targets in graph.items()}
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


def test_no_cycle_among_imports_function_level_ones_included(package_graph):
    _, graph = package_graph
    assert find_cycle(graph) is None


# -- one home for scoring ------------------------------------------------------------------------
SCORING_MODULES = {f"{MODELING}.scoring_adpretrain", f"{MODELING}.detectors_adpretrain", f"{MODELING}.release_scoring_adpretrain"}
SCORING_HOMES = (f"{PACKAGE}.detectors", *SCORING_MODULES, f"{MODELING}.detector_module_adpretrain")
LAYOUT_HELPERS = {"largest_grid", "largest_of", "resize_to_grid", "layer_widths", "embedding_width"}  # grid arithmetic
# protocol steps on finished maps (not scoring): the release PaDiM's min-max over the whole test set
PROTOCOL_STEPS = {"global_min_max_normalise"}
PRIVATE_SCORING = ("_score_grids", "_image_scores")  # the old private scoring hooks, called from outside


def scoring_imports_outside_the_detectors(modules: Modules) -> list[str]:
    """``"importer imports name from scoring module"`` for imports of scoring functions (not layout
    helpers, not ``*Module`` classes a registry import names) by modules outside the scoring homes,
    and any use of the old private scoring hooks outside them."""
    found = []
    for name, (path, is_package) in modules.items():
        if name.startswith(SCORING_HOMES) or name in SCORING_HOMES:
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node, _ in _imports(tree):
            if isinstance(node, ast.ImportFrom):
                base = _targets(node, name, is_package)[-1]
                if base in SCORING_MODULES:
                    found += [f"{name} imports {a.name} from {base}" for a in node.names
                              if a.name not in LAYOUT_HELPERS | PROTOCOL_STEPS and not a.name.endswith("Module")]
                found += [f"{name} imports {base}.{a.name}" for a in node.names if f"{base}.{a.name}" in SCORING_MODULES]
            elif isinstance(node, ast.Import):
                found += [f"{name} imports {a.name}" for a in node.names if a.name in SCORING_MODULES]
        found += [f"{name} uses {n.attr}" for n in ast.walk(tree) if isinstance(n, ast.Attribute) and n.attr in PRIVATE_SCORING]
    return sorted(found)


def method_name_branches(path: Path, methods: list[str]) -> list[str]:
    """String constants equal to a method name in ``path`` (a branch or table keyed by method), by line."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return [f"line {n.lineno}: {n.value!r}" for n in ast.walk(tree) if isinstance(n, ast.Constant) and n.value in methods]


def test_only_the_detectors_score_features(package_graph):
    modules, _ = package_graph
    assert scoring_imports_outside_the_detectors(modules) == []


def test_the_detector_folder_model_has_no_method_name_branches(package_graph):
    from adpretrain_hf.detectors import METHODS

    modules, _ = package_graph
    path, _ = modules[f"{MODELING}.modeling_detector_adpretrain"]
    assert method_name_branches(path, list(METHODS)) == []
    assert "import_module" not in path.read_text(encoding="utf-8")  # no importlib back into the package


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
    # a function-level import closes a cycle too (a lazy import is still a circle) ...
    (tmp_path / "fake" / "c.py").write_text("def f():\n    import fake.a\nthing = 1\n", encoding="utf-8")
    assert set(find_cycle(import_graph(modules))) == {"fake.a", "fake.b", "fake.c"}
    assert find_cycle(import_graph(modules), module_level_only=True) is None
    # ... and without the edge c -> a there is none
    (tmp_path / "fake" / "c.py").write_text("thing = 1\n", encoding="utf-8")
    assert find_cycle(import_graph(modules)) is None


def test_checker_finds_scoring_outside_the_detectors_and_method_branches(tmp_path):
    _write(tmp_path / "adpretrain_hf", {
        "__init__.py": "",
        "deployment.py": "from .modeling.scoring_adpretrain import mahalanobis_distances, largest_grid\n",
        "evaluation.py": "def f(d):\n    return d._score_grids([])\n",
        "detectors/__init__.py": "from ..modeling.scoring_adpretrain import aggregate_patch_features\n",
        "modeling/__init__.py": "",
        "modeling/scoring_adpretrain.py": "",
        "modeling/backbones_adpretrain.py": "from .scoring_adpretrain import largest_of\n",
        "modeling/modeling_detector_adpretrain.py": "from .detectors_adpretrain import FeatureNormModule\n"
                                                    "def score(m):\n    if m == 'padim':\n        return 1\n",
    })
    modules: Modules = {}
    _walk("adpretrain_hf", tmp_path / "adpretrain_hf", modules)
    assert scoring_imports_outside_the_detectors(modules) == [
        "adpretrain_hf.deployment imports mahalanobis_distances from adpretrain_hf.modeling.scoring_adpretrain",
        "adpretrain_hf.evaluation uses _score_grids",
    ]
    path = tmp_path / "adpretrain_hf" / "modeling" / "modeling_detector_adpretrain.py"
    assert method_name_branches(path, ["padim", "patchcore"]) == ["line 3: 'padim'"]

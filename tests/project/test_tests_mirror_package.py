"""tests/ mirrors the package: a reader finds the tests of a file by its name (issue 14).

The rule: ``adpretrain_hf/<folder>/<module>.py`` is tested in ``tests/<folder>/test_<module>.py``
(``modeling/`` and ``training/``, installed as ``adpretrain_hf.modeling`` / ``.training``, the
same way; a top-level module in ``tests/test_<module>.py``). A module tested somewhere else is
listed in ``COVERED_ELSEWHERE`` with its test module and why; a module with no tests of its own
in ``UNTESTED_BY_DESIGN`` with why. Conversely every ``test_<name>.py`` names an existing module
(or is a ``COVERED_ELSEWHERE`` target), so renaming a module cannot leave stale test names.
``tests/project/`` holds the cross-cutting tests and ``tests/release_parity/`` the release-parity
suites (issue 19); both are exempt from the name rule.

Only the file system is read (no imports): the check is about names and paths.
"""

from __future__ import annotations

from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
TESTS = REPO / "tests"
# Package folder (relative to the repo) -> its test folder (relative to tests/).
SOURCE_ROOTS = {"adpretrain_hf": "", "modeling": "modeling", "training": "training"}
CROSS_CUTTING = "project"  # tests/project/: rules and suites spanning several modules
# tests/release_parity/: the package's release mode against the released code's outputs (issue 19);
# tests/fixtures/: data only. Both are cross-cutting: exempt from the name rule like tests/project/.
CROSS_CUTTING_SUITES = (CROSS_CUTTING, "release_parity", "fixtures")
SCRIPT_FOLDERS = ("benchmarks",)  # tests/benchmarks/test_x.py tests benchmarks/x.py (not every script has one)

_REEXPORTS = "re-exports only: every test imports through it"
_DETECTOR_CONTRACT = "a detector's scoring module: every registered detector passes the shared contract suite"
_EVALUATE_SCRIPT = "an `evaluate` module script: loaded offline and compared with the plain function"

# module (path under its package, no .py) -> (test module, why it is there)
COVERED_ELSEWHERE: dict[str, tuple[str, str]] = {
    "release_checkpoint_file": (
        "tests/release_parity/test_projector.py",
        "reading the release's own checkpoint file is tested on that file (the fixture): allow-list, refusals, bf16, bare",
    ),
    "metrics/names": (
        "tests/project/test_shared_facts.py",
        "a name table: the metric names' one-home test (runner, reports and card use these names)",
    ),
    "metrics/modules/aupro/aupro": ("tests/metrics/test_evaluate_modules.py", _EVALUATE_SCRIPT),
    "modeling/detector_module_adpretrain": ("tests/detectors/test_contract.py", _DETECTOR_CONTRACT),
    "modeling/detectors_adpretrain": ("tests/detectors/test_contract.py", _DETECTOR_CONTRACT),
    "detectors/network_module": ("tests/detectors/test_contract.py", _DETECTOR_CONTRACT),
    "metrics/modules/image_auroc/image_auroc": ("tests/metrics/test_evaluate_modules.py", _EVALUATE_SCRIPT),
    "metrics/modules/pixel_auroc/pixel_auroc": ("tests/metrics/test_evaluate_modules.py", _EVALUATE_SCRIPT),
}

# module -> why it has no tests of its own
UNTESTED_BY_DESIGN: dict[str, str] = {
    "commands/__init__": _REEXPORTS,
    "data/__init__": _REEXPORTS,
    "evaluation/__init__": _REEXPORTS,
    "losses/__init__": _REEXPORTS,
    "metrics/__init__": _REEXPORTS,
    "references/__init__": _REEXPORTS,
    "modeling/__init__": _REEXPORTS,
    "training/__init__": _REEXPORTS,
}


def package_modules(repo: Path = REPO) -> dict[str, Path]:
    """Every package module as ``{"data/augment": tests/data/test_augment.py}`` (the mirrored path)."""
    modules = {}
    for source, test_folder in SOURCE_ROOTS.items():
        for path in sorted((repo / source).rglob("*.py")):
            if "__pycache__" in path.parts:
                continue
            relative = path.relative_to(repo / source).with_suffix("")
            name = "/".join(filter(None, (test_folder, *relative.parts)))
            modules[name] = repo / "tests" / test_folder / relative.parent / f"test_{relative.name}.py"
    return modules


def existing_test_modules(tests: Path = TESTS) -> set[Path]:
    return {p for p in tests.rglob("test_*.py") if "__pycache__" not in p.parts}


def missing_tests(modules: dict[str, Path], files: set[Path], repo: Path = REPO) -> list[str]:
    """Problems, one line each, for modules without their tests (or with stale table entries)."""
    problems = []
    for name, mirrored in modules.items():
        listed = [table for table in ("COVERED_ELSEWHERE", "UNTESTED_BY_DESIGN") if name in globals()[table]]
        if mirrored in files:
            problems += [f"{name}: has {mirrored.relative_to(repo)}, remove it from {t}" for t in listed]
        elif len(listed) != 1:
            problems.append(
                f"{name}: no {mirrored.relative_to(repo)}; write it, or list the module in exactly one of "
                f"COVERED_ELSEWHERE / UNTESTED_BY_DESIGN (found in {listed or 'neither'})"
            )
        elif listed == ["COVERED_ELSEWHERE"] and repo / COVERED_ELSEWHERE[name][0] not in files:
            problems.append(f"{name}: COVERED_ELSEWHERE names {COVERED_ELSEWHERE[name][0]}, which does not exist")
    for table in (COVERED_ELSEWHERE, UNTESTED_BY_DESIGN):
        problems += [f"{name}: listed in a table but no such module (renamed?)" for name in table
                     if name not in modules]
    return problems


def stale_test_names(modules: dict[str, Path], files: set[Path], repo: Path = REPO) -> list[str]:
    """Test modules whose name matches no module, mirrored or listed as a COVERED_ELSEWHERE target."""
    known = set(modules.values()) | {repo / target for target, _ in COVERED_ELSEWHERE.values()}
    problems = []
    for path in sorted(files):
        relative = path.relative_to(repo / "tests")
        folder = relative.parts[0] if len(relative.parts) > 1 else ""
        if folder in CROSS_CUTTING_SUITES:
            continue
        if folder in SCRIPT_FOLDERS:
            script = repo / relative.parent / relative.name.removeprefix("test_")
            if not script.is_file():
                problems.append(f"tests/{relative}: no {script.relative_to(repo)} (renamed? rename the test too)")
        elif path not in known:
            problems.append(
                f"tests/{relative}: names no package module; rename it to test_<module>.py of the module it "
                f"tests, add it as a COVERED_ELSEWHERE target, or move it to tests/{CROSS_CUTTING}/"
            )
    return problems


def test_every_module_has_its_tests_or_a_reason():
    problems = missing_tests(package_modules(), existing_test_modules())
    assert not problems, "\n".join(problems)


def test_every_test_module_names_an_existing_module():
    problems = stale_test_names(package_modules(), existing_test_modules())
    assert not problems, "\n".join(problems)


def test_every_reason_is_written_down():
    for name, (target, reason) in COVERED_ELSEWHERE.items():
        assert target.startswith("tests/") and target.endswith(".py") and reason.strip(), name
    assert all(reason.strip() for reason in UNTESTED_BY_DESIGN.values())


def test_every_test_folder_is_a_package():
    """Without __init__.py, tests/modeling/ would be imported as a top-level `modeling` (the repo has
    one) and two test modules with one basename (test_center.py) would clash."""
    folders = {p.parent for p in existing_test_modules()} | {TESTS}
    missing = sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"add an __init__.py to: {missing}"


def test_walk_finds_the_package_and_the_rule_maps_paths():
    """The walk against a listing made here (a broken walk would make the checks above vacuous)."""
    modules = package_modules()
    expected = {p for p in (REPO / "adpretrain_hf").rglob("*.py") if "__pycache__" not in p.parts}
    expected |= {p for root in ("modeling", "training") for p in (REPO / root).glob("*.py")}
    assert len(modules) == len(expected) > 50
    assert modules["diagnostics"] == TESTS / "test_diagnostics.py"
    assert modules["data/augment"] == TESTS / "data" / "test_augment.py"
    assert modules["modeling/backbones_adpretrain"] == TESTS / "modeling" / "test_backbones_adpretrain.py"
    assert modules["training/loop"] == TESTS / "training" / "test_loop.py"


@pytest.mark.parametrize(
    "deleted",
    sorted(
        str(p.relative_to(REPO)) for p in existing_test_modules()
        if not {*CROSS_CUTTING_SUITES, *SCRIPT_FOLDERS} & set(p.relative_to(TESTS).parts)
    ),
)
def test_deleting_any_test_module_is_caught(deleted):
    """Every mirrored test module or COVERED_ELSEWHERE target is needed by the check above."""
    files = existing_test_modules() - {REPO / deleted}
    assert missing_tests(package_modules(), files), f"deleting {deleted} went unnoticed"


def test_a_renamed_module_is_caught():
    """A module renamed in the package leaves its test module (and any table entry) stale."""
    modules = package_modules()
    renamed = dict(modules)
    renamed["diagnostics_v2"] = renamed.pop("diagnostics").with_name("test_diagnostics_v2.py")
    assert any("test_diagnostics.py" in p for p in stale_test_names(renamed, existing_test_modules()))
    renamed = dict(modules)
    renamed["metrics/names_v2"] = renamed.pop("metrics/names").with_name("test_names_v2.py")
    assert any(p.startswith("metrics/names:") for p in missing_tests(renamed, existing_test_modules()))

"""tests/ mirrors the package: a reader finds the tests of a file by its name (issue 14).

The rule: ``adpretrain_hf/<folder>/<module>.py`` is tested in ``tests/<folder>/test_<module>.py``
(``modeling/`` and ``training/``, installed as ``adpretrain_hf.modeling`` / ``.training``, the
same way; a top-level module in ``tests/test_<module>.py``). A module tested somewhere else is
listed in ``COVERED_ELSEWHERE`` with its test module and why; a module with no tests of its own
in ``UNTESTED_BY_DESIGN`` with why. Conversely every ``test_<name>.py`` names an existing module
(or is a ``COVERED_ELSEWHERE`` target), so renaming a module cannot leave stale test names.
``tests/project/`` holds the cross-cutting tests and is exempt from the name rule.

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
SCRIPT_FOLDERS = ("benchmarks",)  # tests/benchmarks/test_x.py tests benchmarks/x.py (not every script has one)

_REEXPORTS = "re-exports only: every test imports through it"
_EVALUATE_SCRIPT = "an `evaluate` module script: loaded offline and compared with the plain function"

# module (path under its package, no .py) -> (test module, why it is there)
COVERED_ELSEWHERE: dict[str, tuple[str, str]] = {
    "data/mvtec_style": (
        "tests/data/test_layouts.py",
        "each layout is read through load_ad_dataset on a tiny tree",
    ),
    "data/schema": ("tests/data/test_layouts.py", "the row schema (AD_FEATURES) of every loader"),
    "data/synthetic_defects": (
        "tests/data/test_synthetic.py",
        "defects and masks are checked on generated images",
    ),
    "data/synthetic_scenes": (
        "tests/data/test_synthetic.py",
        "scenes and poses are checked on generated images",
    ),
    "detectors/__init__": (
        "tests/detectors/test_training_free.py",
        "the registry and build_detector; default layers in tests/detectors/test_featurenorm.py",
    ),
    "detectors/base": (
        "tests/detectors/test_training_free.py",
        "the Detector interface and iter_image_batches, through every method (tensor, iterable, dict input)",
    ),
    "detectors/cflow": (
        "tests/detectors/test_trained.py",
        "the three trained detectors share one test module",
    ),
    "detectors/glass": (
        "tests/detectors/test_trained.py",
        "the three trained detectors share one test module",
    ),
    "detectors/uniad": (
        "tests/detectors/test_trained.py",
        "the three trained detectors share one test module",
    ),
    "detectors/trained_config": (
        "tests/detectors/test_trained_loop.py",
        "the settings and history are what the shared loop reads and writes",
    ),
    "detectors/trained_state": (
        "tests/detectors/test_trained.py",
        "save/load round trips of every trained detector",
    ),
    "detectors/coreset": (
        "tests/detectors/test_training_free.py",
        "FeatureNorm, PatchCore (with its coreset) and PaDiM against brute force",
    ),
    "detectors/padim": (
        "tests/detectors/test_training_free.py",
        "FeatureNorm, PatchCore (with its coreset) and PaDiM against brute force",
    ),
    "detectors/patchcore": (
        "tests/detectors/test_training_free.py",
        "FeatureNorm, PatchCore (with its coreset) and PaDiM against brute force",
    ),
    "losses/_checks": (
        "tests/losses/test_total.py",
        "the losses' input checks (test_bad_inputs_raise_clear_errors)",
    ),
    "losses/constants": (
        "tests/losses/test_norm.py",
        "the release's 0.9 and 0.99 are written independently in the slow norm transcription",
    ),
    "metrics/_inputs": (
        "tests/metrics/test_auroc.py",
        "input checks, through each metric's bad-input tests (also tests/metrics/test_aupro.py)",
    ),
    "metrics/names": ("tests/project/test_shared_facts.py", "metric names have one home"),
    "metrics/modules/aupro/aupro": ("tests/metrics/test_evaluate_modules.py", _EVALUATE_SCRIPT),
    "metrics/modules/image_auroc/image_auroc": ("tests/metrics/test_evaluate_modules.py", _EVALUATE_SCRIPT),
    "metrics/modules/pixel_auroc/pixel_auroc": ("tests/metrics/test_evaluate_modules.py", _EVALUATE_SCRIPT),
    "references/aligned": (
        "tests/references/test_selection.py",
        "appendix C's pieces are tested together with the selection",
    ),
    "references/feature_net": (
        "tests/references/test_selection.py",
        "appendix C's pieces are tested together with the selection",
    ),
    "references/histograms": (
        "tests/references/test_selection.py",
        "appendix C's pieces are tested together with the selection",
    ),
    "references/kmeans": (
        "tests/references/test_selection.py",
        "appendix C's pieces are tested together with the selection",
    ),
    "modeling/anomaly_map_adpretrain": (
        "tests/modeling/test_modeling_adpretrain.py",
        "the model's anomaly maps against scipy's gaussian_filter",
    ),
    "modeling/content_keys_adpretrain": (
        "tests/project/test_shared_facts.py",
        "the pixel-hash rule, against hashlib",
    ),
    "modeling/dtypes_adpretrain": (
        "tests/project/test_shared_facts.py",
        "every dtype alias parses to a canonical dtype",
    ),
    "modeling/checkpoint_io_adpretrain": (
        "tests/project/test_checkpoint_structure.py",
        "what a checkpoint was saved with is what it loads as",
    ),
    "modeling/image_io_adpretrain": ("tests/project/test_input_checks.py", "16-bit images and mask storages"),
    "modeling/configuration_detector_adpretrain": (
        "tests/modeling/test_modeling_detector_adpretrain.py",
        "detector config round trips with its model",
    ),
    "modeling/matching_adpretrain": (
        "tests/modeling/test_residual_adpretrain.py",
        "residual matching against brute force",
    ),
    "modeling/presets_adpretrain": (
        "tests/modeling/test_configuration_adpretrain.py",
        "presets build configs",
    ),
    "modeling/scoring_adpretrain": (
        "tests/detectors/test_training_free.py",
        "aggregate_patch_features against loops; the rest through PatchCore/PaDiM against brute force",
    ),
    "modeling/tasks_adpretrain": (
        "tests/modeling/test_pipeline_anomaly_detection.py",
        "the task is served from a saved folder, also as remote code without the package",
    ),
    "training/arguments": ("tests/training/test_pretrain.py", "arguments merge YAML, flags and overrides"),
    "training/checkpointing": (
        "tests/project/test_training_reliability.py",
        "exact resume after a real kill, pickle-free and atomic",
    ),
    "training/data_pipeline": (
        "tests/training/test_pretrain.py",
        "drawn references share class and view and exclude themselves",
    ),
    "training/feature_cache": (
        "tests/training/test_pretrain.py",
        "the reference cache returns the backbone's tokens",
    ),
    "training/seeding": ("tests/project/test_training_reliability.py", "reproducible runs"),
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
        if folder == CROSS_CUTTING:
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
    one) and two test modules with one basename (test_feature_cache.py) would clash."""
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
        if not {CROSS_CUTTING, *SCRIPT_FOLDERS} & set(p.relative_to(TESTS).parts)
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
    renamed["detectors/cflow_ad"] = renamed.pop("detectors/cflow").with_name("test_cflow_ad.py")
    assert any(p.startswith("detectors/cflow:") for p in missing_tests(renamed, existing_test_modules()))

"""Real-IAD's official JSON splits are read when present (else the seeded split), and recorded."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from adpretrain_hf.data import REALIAD_SPLIT_ATTRIBUTE, generate_dataset, load_realiad, realiad_eval_split

CATEGORY = "bottle"


@pytest.fixture
def tree(tmp_path):
    """``<base>/realiad_256/<class>/...`` images: 4 OK and 3 NG samples, 2 views."""
    base = tmp_path / "base"
    generate_dataset(base / "realiad_256", layout="realiad", categories=[CATEGORY], num_normal=4, num_anomalous=3,
                     image_size=32, seed=0, num_views=2, progress=False)
    return base


def _relative_images(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*.jpg"))


def _write_split(folder: Path, train: list[str], test: list[str]) -> None:
    """A ``<class>.json`` in the official format (paths relative to the image root)."""
    def entry(path: str) -> dict:
        anomalous = "/NG/" in path
        return {"category": CATEGORY, "anomaly_class": "AK" if anomalous else "OK", "image_path": path,
                "mask_path": path.replace(".jpg", ".png") if anomalous else None}

    folder.mkdir(parents=True, exist_ok=True)
    content = {"meta": {"prefix": "", "normal_class": "OK", "pre_transform": None},
               "train": [entry(p) for p in train], "test": [entry(p) for p in test]}
    (folder / f"{CATEGORY}.json").write_text(json.dumps(content))


def _relative_rows(dataset, root: Path) -> list[str]:
    from datasets import Image as ImageFeature

    paths = dataset.cast_column("image", ImageFeature(decode=False))["image"]
    return sorted(Path(v["path"]).resolve().relative_to(root.resolve()).as_posix() for v in paths)


def test_nested_official_split_is_used_and_recorded(tree):
    base = tree
    root = base / "realiad_256"
    images = _relative_images(root)
    ok = [p for p in images if "/OK/" in p]
    ng = [p for p in images if "/NG/" in p]
    train, test = ok[:3], ok[3:6] + ng[:-1]  # one NG image and two OK images listed nowhere
    _write_split(base / "realiad_jsons" / "realiad_jsons", train, test)
    _write_split(base / "realiad_jsons" / "realiad_jsons_sv", ok[:1], ng)  # a second split, by name only
    split = realiad_eval_split(load_realiad(root))
    assert _relative_rows(split["train"], root) == sorted(train)
    assert _relative_rows(split["test"], root) == sorted(test)
    info = getattr(split, REALIAD_SPLIT_ATTRIBUTE)
    assert info["name"] == "realiad_jsons" and Path(info["path"]) == base / "realiad_jsons" / "realiad_jsons"
    assert info["per_category"][CATEGORY] == {"train": len(train), "test": len(test), "listed_not_found": 0}

    single = realiad_eval_split(load_realiad(root), split="realiad_jsons_sv")
    assert _relative_rows(single["train"], root) == ok[:1] and getattr(single, REALIAD_SPLIT_ATTRIBUTE)["name"] == "realiad_jsons_sv"
    seeded = realiad_eval_split(load_realiad(root), split="seeded", seed=1)
    assert getattr(seeded, REALIAD_SPLIT_ATTRIBUTE)["name"] == "seeded"
    assert len(seeded["train"]) + len(seeded["test"]) == len(images)
    with pytest.raises(ValueError, match="realiad_jsons_fuiad_0.1.*not found"):
        realiad_eval_split(load_realiad(root), split="realiad_jsons_fuiad_0.1")

    from adpretrain_hf.evaluation.config import EvaluationConfig
    from adpretrain_hf.evaluation.category_inputs import load_splits

    record = load_splits(EvaluationConfig(data_root=str(root), layout="realiad")).realiad_split
    assert record["split"]["name"] == "realiad_jsons"


def test_class_relative_paths_and_missing_files_are_counted(tree):
    base = tree
    root = base / "realiad_256"
    images = _relative_images(root)
    in_class = [p.split("/", 1)[1] for p in images]  # written relative to the class folder
    ok = [p for p in in_class if p.startswith("OK/")]
    rest = [p for p in in_class if p not in ok[:2]]
    _write_split(root / "realiad_jsons", ok[:2], rest + ["NG/AK/S9999/missing_C1.jpg"])  # inside the root
    split = realiad_eval_split(load_realiad(root))
    assert len(split["train"]) == 2 and len(split["test"]) == len(images) - 2
    assert getattr(split, REALIAD_SPLIT_ATTRIBUTE)["per_category"][CATEGORY]["listed_not_found"] == 1


def test_without_split_files_the_seeded_split_is_used(tree):
    split = realiad_eval_split(load_realiad(tree / "realiad_256"), seed=0)
    info = getattr(split, REALIAD_SPLIT_ATTRIBUTE)
    assert info == {"name": "seeded", "path": None, "fit_fraction": 0.5, "seed": 0}
    assert set(split["train"]["label"]) == {0}

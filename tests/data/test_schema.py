"""The row schema every loader shares: absolute paths, a file-system-independent order, checked names."""

import os

import numpy as np
import pytest
from PIL import Image

from adpretrain_hf.data.schema import (
    AD_FEATURES,
    as_root,
    build_dataset,
    find_with_stem,
    image_files,
    make_row,
    missing_mask_error,
    normalise_categories,
    select_categories,
)


def _png(path, value):
    Image.fromarray(np.full((3, 4), value, np.uint8)).save(path)


def test_rows_are_absolute_and_the_dataset_order_ignores_the_listing(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    for name, value in (("b.png", 1), ("a.png", 2), ("m.png", 255)):
        _png(tmp_path / name, value)
    rows = [make_row("b.png", None, 0, "wood", "good", "train", "wood/b"),
            make_row("a.png", "m.png", True, "wood", "hole", "test", "wood/a", view="C1"),
            make_row("a.png", None, 0, "tile", "good", "train", "tile/a"),
            make_row("a.png", None, 0, "wood", "good", "train", "wood/a-train")]
    assert rows[1]["image"] == os.path.join(tmp_path, "a.png") and rows[1]["label"] == 1
    shuffled = build_dataset(rows[::-1])
    assert shuffled.features == AD_FEATURES and shuffled.to_dict() == build_dataset(rows).to_dict()
    # sorted by (category, split, image), computed here
    expected = sorted(rows, key=lambda r: (r["category"], r["split"], r["image"]))
    assert shuffled["sample_id"] == [r["sample_id"] for r in expected] == ["tile/a", "wood/a", "wood/a-train", "wood/b"]
    assert shuffled[1]["mask"].getpixel((0, 0)) == 255 and shuffled[0]["mask"] is None
    assert shuffled["view"] == ["", "C1", "", ""]


def test_image_files_and_stems(tmp_path):
    for name in ("b.PNG", "a.jpg", "c.txt", "d.tiff"):
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "e.png").mkdir()  # a folder named like an image is not one
    assert [p.name for p in image_files(tmp_path)] == ["a.jpg", "b.PNG", "d.tiff"]
    assert image_files(tmp_path / "missing") == []
    assert find_with_stem(tmp_path, "b").name == "b.PNG"  # upper-case extensions too
    assert find_with_stem(tmp_path, "d", (".png", ".tiff")).name == "d.tiff"
    assert find_with_stem(tmp_path, "c") is None and find_with_stem(tmp_path, "e") is None


def test_categories_are_normalised_and_checked(tmp_path):
    assert normalise_categories(None) is None and normalise_categories("wood") == ["wood"]
    assert normalise_categories(iter(("a", "b"))) == ["a", "b"]
    assert select_categories(["b", "a"], None, tmp_path) == ["a", "b"]
    assert select_categories(["a", "b"], ["b", "a", "b"], tmp_path) == ["b", "a"]  # order kept, repeats dropped
    with pytest.raises(TypeError, match=r"categories must be names \(str\), got \['a', 3\]"):
        normalise_categories(["a", 3])
    with pytest.raises(ValueError, match=r"categories \['c'\] not found under .*; available: \['a', 'b'\]"):
        select_categories(["a", "b"], ["c"], tmp_path)
    with pytest.raises(ValueError, match="no categories found under .*: check the root and the layout"):
        select_categories([], None, tmp_path)


def test_root_and_mask_errors_are_one_line(tmp_path):
    assert as_root(str(tmp_path)) == tmp_path
    with pytest.raises(TypeError, match="root must be a folder path .*got int"):
        as_root(3)
    with pytest.raises(ValueError, match="is not an existing folder: check the path"):
        as_root(tmp_path / "nope")
    message = str(missing_mask_error(tmp_path / "x.png", tmp_path / "gt" / "x_mask.png"))
    assert "x.png" in message and "gt/x_mask.png" in message and "Restore the mask file" in message
    assert "\n" not in message

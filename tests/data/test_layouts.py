"""Layout detection and load_ad_dataset on tiny trees laid out exactly like the real datasets.

Reading each folder layout on its own: tests/data/test_mvtec_style.py.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from adpretrain_hf.data import detect_layout, load_ad_dataset, load_mvtec_style

from .helpers import check_masks, make_btad, make_mvtec, make_mvtec3d, make_visa, write_image


def test_mpdd_is_read_as_mvtec_and_detected(tmp_path):
    truths = make_mvtec(tmp_path)
    assert detect_layout(tmp_path) == "mvtec"
    dd = load_ad_dataset(tmp_path, layout="mpdd")
    check_masks(dd["test"], truths)
    assert list(load_ad_dataset(tmp_path)["test"]["sample_id"]) == list(dd["test"]["sample_id"])


def test_mvtec3d_rgb_rows(tmp_path):
    truths = make_mvtec3d(tmp_path)
    assert detect_layout(tmp_path) == "mvtec3d"
    dd = load_ad_dataset(tmp_path)
    assert len(dd["train"]) == 2  # validation and xyz are not loaded
    assert all("/rgb/" in row["image"].filename for row in dd["train"])
    assert sorted(zip(dd["test"]["defect"], dd["test"]["label"])) == [("crack", 1), ("crack", 1), ("good", 0)]
    check_masks(dd["test"], truths)


def test_btad_mixed_extensions(tmp_path):
    truths = make_btad(tmp_path)
    assert detect_layout(tmp_path) == "btad"
    dd = load_ad_dataset(tmp_path)
    assert len(dd["train"]) == 4 and set(dd["train"]["defect"]) == {"good"}
    assert sorted(zip(dd["test"]["category"], dd["test"]["label"])) == [("01", 0), ("01", 1), ("03", 0), ("03", 1)]
    assert {Path(row["image"].filename).suffix for row in dd["test"]} == {".bmp", ".png"}
    assert {d for d, label in zip(dd["test"]["defect"], dd["test"]["label"]) if label == 1} == {"ko"}
    check_masks(dd["test"], truths)


def test_visa_split_file(tmp_path):
    truths = make_visa(tmp_path)
    assert detect_layout(tmp_path) == "visa"
    dd = load_ad_dataset(tmp_path)
    assert len(dd["train"]) == 4 and set(dd["train"]["label"]) == {0}
    assert sorted(zip(dd["test"]["category"], dd["test"]["label"], dd["test"]["defect"])) == [
        ("candle", 0, "good"), ("candle", 1, "anomaly"), ("pcb1", 0, "good"), ("pcb1", 1, "anomaly")
    ]
    check_masks(dd["test"], truths)  # 0/1-coded masks read as defective where 1
    assert len(load_ad_dataset(tmp_path, categories=["pcb1"])["test"]) == 2


def test_layout_errors(tmp_path):
    (tmp_path / "stuff/images").mkdir(parents=True)
    with pytest.raises(ValueError, match=r"could not recognise.*'mvtec', 'mvtec3d', 'btad', 'visa', 'realiad'"):
        load_ad_dataset(tmp_path)
    with pytest.raises(ValueError, match=r"unknown layout 'kitti'.*'realiad'"):
        load_ad_dataset(tmp_path, layout="kitti")
    with pytest.raises(ValueError, match="unknown dataset"):
        load_mvtec_style(tmp_path, dataset="kitti")
    with pytest.raises(ValueError, match="not an existing folder"):
        load_ad_dataset(tmp_path / "missing")
    with pytest.raises(TypeError, match="root must be a folder path"):
        load_ad_dataset(42)


def test_mixed_layouts_are_reported(tmp_path):
    make_mvtec(tmp_path)
    write_image(tmp_path / "01/train/ok/0000.png", 0)
    with pytest.raises(ValueError, match="different layouts.*'01': 'btad'"):
        detect_layout(tmp_path)

"""Loaders for the downstream benchmarks on tiny trees laid out exactly like the real datasets."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adpretrain_hf.data import AD_FEATURES, detect_layout, load_ad_dataset, load_image_and_mask, load_mvtec_style

SIZE = (24, 18)  # (W, H): not square, so a transposed mask would not fit


def write_image(path: Path, seed: int, size=SIZE) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    rgb = np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)
    Image.fromarray(rgb).save(path)


def write_mask(path: Path, box: tuple[int, int, int, int], on: int = 255, size=SIZE) -> np.ndarray:
    """A mask with ``on`` inside box (x0, y0, x1, y1); returns the boolean truth."""
    path.parent.mkdir(parents=True, exist_ok=True)
    truth = np.zeros((size[1], size[0]), bool)
    x0, y0, x1, y1 = box
    truth[y0:y1, x0:x1] = True
    Image.fromarray(truth.astype(np.uint8) * on, "L").save(path)
    return truth


def make_mvtec(root: Path) -> dict[str, np.ndarray]:
    """MVTec AD layout; returns sample_id -> mask truth for the anomalous images."""
    truths = {}
    for i in range(3):
        write_image(root / f"bottle/train/good/{i:03d}.png", i)
    for i in range(2):
        write_image(root / f"bottle/test/good/{i:03d}.png", 10 + i)
    for i in range(2):
        write_image(root / f"bottle/test/broken_large/{i:03d}.png", 20 + i)
        truths[f"bottle/test/broken_large/{i:03d}"] = write_mask(
            root / f"bottle/ground_truth/broken_large/{i:03d}_mask.png", (2 + i, 3, 9 + i, 8)
        )
    write_image(root / "carpet/train/good/000.png", 30)
    write_image(root / "carpet/train/good/001.png", 31)
    write_image(root / "carpet/test/cut/000.png", 32)
    truths["carpet/test/cut/000"] = write_mask(root / "carpet/ground_truth/cut/000_mask.png", (10, 1, 20, 4))
    (root / "license.txt").write_text("not a category")
    return truths


def check_masks(split, truths: dict[str, np.ndarray]) -> None:
    """Every anomalous row's mask has its image's size and is nonzero exactly where drawn."""
    anomalous = [row for row in split if row["label"] == 1]
    assert sorted(row["sample_id"] for row in anomalous) == sorted(truths)
    for row in anomalous:
        assert row["mask"].size == row["image"].size
        np.testing.assert_array_equal(np.asarray(row["mask"]) > 0, truths[row["sample_id"]])
        _, mask = load_image_and_mask(row)
        np.testing.assert_array_equal(np.asarray(mask) == 255, truths[row["sample_id"]])
    assert all(row["mask"] is None and row["defect"] == "good" for row in split if row["label"] == 0)


def test_mvtec_rows_labels_and_masks(tmp_path):
    truths = make_mvtec(tmp_path)
    dd = load_mvtec_style(tmp_path)
    assert set(dd) == {"train", "test"}
    assert dd["train"].features == AD_FEATURES and dd["test"].features == AD_FEATURES
    train, test = dd["train"], dd["test"]
    assert len(train) == 5 and len(test) == 5
    assert set(train["label"]) == {0} and set(train["split"]) == {"train"} and set(train["view"]) == {""}
    assert sorted(zip(test["category"], test["defect"], test["label"])) == sorted(
        [("bottle", "good", 0)] * 2 + [("bottle", "broken_large", 1)] * 2 + [("carpet", "cut", 1)]
    )
    assert set(test["split"]) == {"test"}
    check_masks(test, truths)
    assert Path(train[0]["image"].filename).is_absolute()


def test_mvtec_categories_filter_and_unknown(tmp_path):
    make_mvtec(tmp_path)
    dd = load_mvtec_style(tmp_path, categories="carpet")
    assert set(dd["train"]["category"]) == {"carpet"} and len(dd["test"]) == 1
    with pytest.raises(ValueError, match=r"\['cable'\] not found.*available: \['bottle', 'carpet'\]"):
        load_mvtec_style(tmp_path, categories=["cable"])


def test_empty_category_is_an_error(tmp_path):
    make_mvtec(tmp_path)
    (tmp_path / "empty/train/good").mkdir(parents=True)
    with pytest.raises(ValueError, match="'empty'.*no images"):
        load_mvtec_style(tmp_path)
    assert len(load_mvtec_style(tmp_path, categories=["bottle"])["train"]) == 3


def test_mpdd_is_read_as_mvtec_and_detected(tmp_path):
    truths = make_mvtec(tmp_path)
    assert detect_layout(tmp_path) == "mvtec"
    dd = load_ad_dataset(tmp_path, layout="mpdd")
    check_masks(dd["test"], truths)
    assert list(load_ad_dataset(tmp_path)["test"]["sample_id"]) == list(dd["test"]["sample_id"])


def make_mvtec3d(root: Path) -> dict[str, np.ndarray]:
    truths = {}
    for i in range(2):
        write_image(root / f"bagel/train/good/rgb/{i:03d}.png", i)
        (root / "bagel/train/good/xyz").mkdir(parents=True, exist_ok=True)
        (root / f"bagel/train/good/xyz/{i:03d}.tiff").write_bytes(b"not an image we read")
    write_image(root / "bagel/validation/good/rgb/000.png", 5)
    write_image(root / "bagel/test/good/rgb/000.png", 6)
    write_mask(root / "bagel/test/good/gt/000.png", (0, 0, 0, 0))  # all-zero gt of a good image
    for i in range(2):
        write_image(root / f"bagel/test/crack/rgb/{i:03d}.png", 7 + i)
        truths[f"bagel/test/crack/rgb/{i:03d}"] = write_mask(root / f"bagel/test/crack/gt/{i:03d}.png", (4, 4, 12, 10))
    return truths


def test_mvtec3d_rgb_rows(tmp_path):
    truths = make_mvtec3d(tmp_path)
    assert detect_layout(tmp_path) == "mvtec3d"
    dd = load_ad_dataset(tmp_path)
    assert len(dd["train"]) == 2  # validation and xyz are not loaded
    assert all("/rgb/" in row["image"].filename for row in dd["train"])
    assert sorted(zip(dd["test"]["defect"], dd["test"]["label"])) == [("crack", 1), ("crack", 1), ("good", 0)]
    check_masks(dd["test"], truths)


def make_btad(root: Path) -> dict[str, np.ndarray]:
    """BTAD: 01 ships .bmp images, 03 .png; masks are .png named by the image stem."""
    truths = {}
    for category, ext in (("01", ".bmp"), ("03", ".png")):
        for i in range(2):
            write_image(root / f"{category}/train/ok/{i:04d}{ext}", i)
        write_image(root / f"{category}/test/ok/0000{ext}", 3)
        write_image(root / f"{category}/test/ko/0000{ext}", 4)
        truths[f"{category}/test/ko/0000"] = write_mask(root / f"{category}/ground_truth/ko/0000.png", (1, 1, 6, 6))
    return truths


def test_btad_mixed_extensions(tmp_path):
    truths = make_btad(tmp_path)
    assert detect_layout(tmp_path) == "btad"
    dd = load_ad_dataset(tmp_path)
    assert len(dd["train"]) == 4 and set(dd["train"]["defect"]) == {"good"}
    assert sorted(zip(dd["test"]["category"], dd["test"]["label"])) == [("01", 0), ("01", 1), ("03", 0), ("03", 1)]
    assert {Path(row["image"].filename).suffix for row in dd["test"]} == {".bmp", ".png"}
    assert {d for d, label in zip(dd["test"]["defect"], dd["test"]["label"]) if label == 1} == {"ko"}
    check_masks(dd["test"], truths)


@pytest.mark.parametrize(
    "make, dataset, mask, message",
    [
        (make_mvtec, "mvtec", "bottle/ground_truth/broken_large/001_mask.png",
         r"broken_large/001\.png.*expected .*ground_truth/broken_large/001_mask\.png"),
        (make_mvtec3d, "mvtec3d", "bagel/test/crack/gt/001.png", r"crack/rgb/001\.png.*expected .*crack/gt/001\.png"),
        (make_btad, "btad", "01/ground_truth/ko/0000.png", r"01/test/ko/0000\.bmp.*expected .*01/ground_truth/ko/0000\.png"),
    ],
)
def test_missing_mask_names_image_and_expected_path(tmp_path, make, dataset, mask, message):
    make(tmp_path)
    (tmp_path / mask).unlink()
    with pytest.raises(ValueError, match=message):
        load_mvtec_style(tmp_path, dataset=dataset)


def make_visa(root: Path, rows_override: list[list[str]] | None = None) -> dict[str, np.ndarray]:
    """VisA: JPG images, 0/1-coded PNG masks, the split in split_csv/1cls.csv."""
    truths, rows = {}, []
    for category in ("candle", "pcb1"):
        for i in range(3):
            rel = f"{category}/Data/Images/Normal/{i:04d}.JPG"
            write_image(root / rel, i)
            rows.append([category, "train" if i < 2 else "test", "normal", rel, ""])
        rel, mask_rel = f"{category}/Data/Images/Anomaly/000.JPG", f"{category}/Data/Masks/Anomaly/000.png"
        write_image(root / rel, 9)
        truths[f"{category}/Data/Images/Anomaly/000"] = write_mask(root / mask_rel, (3, 2, 8, 9), on=1)
        rows.append([category, "test", "anomaly", rel, mask_rel])
    (root / "split_csv").mkdir()
    with open(root / "split_csv/1cls.csv", "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["object", "split", "label", "image", "mask"])
        writer.writerows(rows_override if rows_override is not None else rows)
    return truths


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


@pytest.mark.parametrize(
    "row, message",
    [
        (["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", "candle/Data/Masks/Anomaly/nope.png"],
         r"Anomaly/000\.JPG.*nope\.png"),
        (["candle", "test", "anomaly", "candle/Data/Images/Anomaly/000.JPG", ""], "mask column is empty"),
        (["candle", "val", "normal", "candle/Data/Images/Normal/0000.JPG", ""], "line 2.*split must be train/test"),
        (["candle", "train", "normal", "candle/Data/Images/Normal/9999.JPG", ""], "9999.JPG.*does not exist"),
    ],
)
def test_visa_errors(tmp_path, row, message):
    make_visa(tmp_path, rows_override=[row])
    with pytest.raises(ValueError, match=message):
        load_mvtec_style(tmp_path, dataset="visa")


def test_visa_missing_column_and_file(tmp_path):
    make_visa(tmp_path)
    (tmp_path / "split_csv/1cls.csv").write_text("object,split,image\ncandle,train,x.JPG\n")
    with pytest.raises(ValueError, match=r"lacks columns \['label', 'mask'\]"):
        load_mvtec_style(tmp_path, dataset="visa")
    (tmp_path / "split_csv/1cls.csv").unlink()
    with pytest.raises(ValueError, match="split_csv/1cls.csv"):
        load_mvtec_style(tmp_path, dataset="visa")


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

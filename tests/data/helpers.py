"""Tiny dataset trees laid out exactly like the real benchmarks, shared by the loader tests.

Plain functions, not fixtures: each test builds the tree it needs under its own ``tmp_path``.
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

from adpretrain_hf.data import load_image_and_mask


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

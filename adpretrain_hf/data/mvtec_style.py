"""Downstream benchmarks with a train/test split: MVTec AD, MPDD, MVTec 3D-AD (RGB), BTAD, VisA.

The folder layouts, as the datasets are distributed:

- MVTec AD / MPDD: ``<cat>/train/good/*.png``, ``<cat>/test/<defect|good>/*.png``, masks
  ``<cat>/ground_truth/<defect>/<stem>_mask.png``.
- MVTec 3D-AD (RGB only): ``<cat>/train/good/rgb/NNN.png``, ``<cat>/test/<defect|good>/rgb/NNN.png``,
  masks ``<cat>/test/<defect>/gt/NNN.png``. Good test images ship an all-zero gt; they are
  normal and get ``mask=None``. The ``validation`` folder is not loaded (the standard
  protocol fits on ``train`` only); ``xyz`` point clouds are ignored.
- BTAD: ``<cat>/train/ok/*``, ``<cat>/test/{ok,ko}/*``, masks ``<cat>/ground_truth/ko/<stem>.png``;
  image extensions vary (``.bmp``, ``.png``), masks are looked up by stem with ``.png`` first.
- VisA: the split file ``split_csv/1cls.csv`` shipped with the dataset (columns object, split,
  label, image, mask; paths relative to the root). VisA's split file names no defect type,
  so anomalous rows get ``defect == "anomaly"``.

The three folder layouts differ only in data (:data:`FOLDER_LAYOUTS`), so one reader
serves them.
"""

from __future__ import annotations

import csv
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable

from datasets import DatasetDict

from .schema import (
    GOOD_DEFECT,
    IMAGE_EXTENSIONS,
    LABEL_ANOMALOUS,
    LABEL_NORMAL,
    TEST_SPLIT,
    TRAIN_SPLIT,
    as_root,
    build_dataset,
    category_folders,
    find_with_stem,
    image_files,
    make_row,
    missing_mask_error,
    normalise_categories,
    select_categories,
)

# Mask files are PNG in every dataset; other extensions are a fallback for re-encoded copies.
MASK_EXTENSIONS: tuple[str, ...] = (".png",) + tuple(ext for ext in IMAGE_EXTENSIONS if ext != ".png")


@dataclass(frozen=True)
class FolderLayout:
    """Where one folder-based benchmark keeps its images and masks.

    Attributes:
        normal: name of the normal-image folder under ``train/`` and ``test/``.
        image_subdir: folder between ``<defect>/`` and the images (``"rgb"`` in MVTec 3D-AD).
        mask_template: mask path relative to the category folder, without extension;
            ``{defect}`` and ``{stem}`` are filled in.
    """

    normal: str
    image_subdir: str
    mask_template: str

    def images(self, folder: Path) -> list[Path]:
        return image_files(folder / self.image_subdir if self.image_subdir else folder)

    def expected_mask(self, category_dir: Path, defect: str, stem: str) -> Path:
        return category_dir / (self.mask_template.format(defect=defect, stem=stem) + MASK_EXTENSIONS[0])


FOLDER_LAYOUTS: dict[str, FolderLayout] = {
    "mvtec": FolderLayout(normal="good", image_subdir="", mask_template="ground_truth/{defect}/{stem}_mask"),
    "mvtec3d": FolderLayout(normal="good", image_subdir="rgb", mask_template="test/{defect}/gt/{stem}"),
    "btad": FolderLayout(normal="ok", image_subdir="", mask_template="ground_truth/{defect}/{stem}"),
}
# MPDD is distributed in MVTec AD's layout.
DATASET_ALIASES: dict[str, str] = {"mpdd": "mvtec"}

VISA_SPLIT_FILE = Path("split_csv") / "1cls.csv"
VISA_COLUMNS: tuple[str, ...] = ("object", "split", "label", "image", "mask")
VISA_NORMAL_LABEL = "normal"
VISA_ANOMALY_LABEL = "anomaly"
VISA_DEFECT = "anomaly"  # the split file names no defect type

MVTEC_STYLE_DATASETS: tuple[str, ...] = tuple(FOLDER_LAYOUTS) + tuple(DATASET_ALIASES) + ("visa",)


def _sample_id(root: Path, image: Path) -> str:
    return image.relative_to(root).with_suffix("").as_posix()


def _folder_rows(root: Path, category: str, layout: FolderLayout) -> list[dict[str, object]]:
    """All rows of one category of a folder-based benchmark (train normals, then test)."""
    category_dir = root / category
    rows = [
        make_row(image, None, LABEL_NORMAL, category, GOOD_DEFECT, TRAIN_SPLIT, _sample_id(root, image))
        for image in layout.images(category_dir / "train" / layout.normal)
    ]
    test_dir = category_dir / "test"
    defect_dirs = sorted(p for p in test_dir.iterdir() if p.is_dir()) if test_dir.is_dir() else []
    for defect_dir in defect_dirs:
        defect = defect_dir.name
        for image in layout.images(defect_dir):
            if defect == layout.normal:
                rows.append(
                    make_row(image, None, LABEL_NORMAL, category, GOOD_DEFECT, TEST_SPLIT, _sample_id(root, image))
                )
                continue
            expected = layout.expected_mask(category_dir, defect, image.stem)
            mask = find_with_stem(expected.parent, expected.stem, MASK_EXTENSIONS)
            if mask is None:
                raise missing_mask_error(image, expected)
            rows.append(
                make_row(image, mask, LABEL_ANOMALOUS, category, defect, TEST_SPLIT, _sample_id(root, image))
            )
    if not rows:
        where = f"{category}/train/{layout.normal}/" + (f"{layout.image_subdir}/" if layout.image_subdir else "")
        raise ValueError(
            f"category {category!r} under {str(root)!r} has no images: expected {where}*.png "
            "and test/<defect>/...; check the folder or leave the category out"
        )
    return rows


def _visa_rows(root: Path, requested: list[str] | None) -> list[dict[str, object]]:
    """Rows of VisA from its shipped split file ``split_csv/1cls.csv``."""
    split_file = root / VISA_SPLIT_FILE
    if not split_file.is_file():
        raise ValueError(
            f"VisA split file {str(split_file)!r} not found: VisA's standard split ships as "
            "split_csv/1cls.csv under the dataset root; restore it or pass the right root"
        )
    with open(split_file, newline="", encoding="utf-8") as handle:
        reader = csv.DictReader(handle)
        missing = [name for name in VISA_COLUMNS if name not in (reader.fieldnames or [])]
        if missing:
            raise ValueError(f"{str(split_file)!r} lacks columns {missing}; expected {list(VISA_COLUMNS)}")
        records = list(reader)
    available = sorted({record["object"] for record in records})
    names = set(select_categories(available, requested, root))
    rows = []
    for line, record in enumerate(records, start=2):  # line 1 is the header
        category = record["object"]
        if category not in names:
            continue
        split, label = record["split"].strip(), record["label"].strip()
        if split not in (TRAIN_SPLIT, TEST_SPLIT) or label not in (VISA_NORMAL_LABEL, VISA_ANOMALY_LABEL):
            raise ValueError(
                f"{str(split_file)!r} line {line}: split must be train/test and label normal/anomaly, "
                f"got split={split!r}, label={label!r}"
            )
        image = root / record["image"]
        if not image.is_file():
            raise ValueError(f"{str(split_file)!r} line {line} names image {str(image)!r}, which does not exist")
        sample_id = _sample_id(root, image)
        if label == VISA_NORMAL_LABEL:
            rows.append(make_row(image, None, LABEL_NORMAL, category, GOOD_DEFECT, split, sample_id))
            continue
        mask = root / record["mask"] if record["mask"].strip() else None
        if mask is None or not mask.is_file():
            expected = mask if mask is not None else Path("<mask column is empty>")
            raise missing_mask_error(image, expected)
        rows.append(make_row(image, mask, LABEL_ANOMALOUS, category, VISA_DEFECT, split, sample_id))
    return rows


def load_mvtec_style(
    root: str | os.PathLike, categories: str | Iterable[str] | None = None, dataset: str = "mvtec"
) -> DatasetDict:
    """Load a downstream benchmark as ``DatasetDict({"train": normal images, "test": ...})``.

    Args:
        root: the dataset folder holding the category folders (for VisA, also ``split_csv/``).
        categories: category names to load (default: all found).
        dataset: ``"mvtec"``, ``"mpdd"``, ``"mvtec3d"``, ``"btad"`` or ``"visa"``.

    Returns:
        both splits with :data:`~adpretrain_hf.data.schema.AD_FEATURES`; ``sample_id`` is the
        image path relative to ``root`` without extension.
    """
    if dataset not in MVTEC_STYLE_DATASETS:
        raise ValueError(f"unknown dataset {dataset!r}: choose one of {list(MVTEC_STYLE_DATASETS)}")
    path = as_root(root)
    requested = normalise_categories(categories)
    if dataset == "visa":
        rows = _visa_rows(path, requested)
    else:
        layout = FOLDER_LAYOUTS[DATASET_ALIASES.get(dataset, dataset)]
        names = select_categories(category_folders(path, ("train", "test")), requested, path)
        rows = [row for name in names for row in _folder_rows(path, name, layout)]
    return DatasetDict(
        {split: build_dataset([row for row in rows if row["split"] == split]) for split in (TRAIN_SPLIT, TEST_SPLIT)}
    )

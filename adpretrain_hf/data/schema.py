"""The one row schema every loader returns, and the checks the loaders share.

Every dataset layout (Real-IAD, MVTec AD, MPDD, MVTec 3D-AD, BTAD, VisA) ends up as the
same ``datasets.Dataset`` so that pretraining, reference sampling and evaluation never
need to know where the images came from (see ``docs/ARCHITECTURE.md``, "Data contract").
Rows hold file *paths*; ``datasets.Image()`` decodes them lazily on access.

The features are explicit because inference from the data breaks on a split whose masks
are all ``None``: ``datasets`` then infers a null column, which breaks the schema shared
with the splits that have masks.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable, Sequence

from datasets import Dataset, Features, Image, Value

LABEL_NORMAL = 0
LABEL_ANOMALOUS = 1
GOOD_DEFECT = "good"  # the `defect` value of normal images from normal folders
TRAIN_SPLIT = "train"
TEST_SPLIT = "test"
NO_VIEW = ""  # the `view` value of single-view datasets

# Real-IAD's five camera views, as they appear in file names.
VIEW_NAMES: tuple[str, ...] = ("C1", "C2", "C3", "C4", "C5")

# File types the loaders accept as images (compared in lower case).
IMAGE_EXTENSIONS: tuple[str, ...] = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")

# A mask pixel is defective when it is nonzero (MVTec 0/255, VisA 0/1, Real-IAD's grey JPEG
# edges alike, as anomalib reads them): the rule's one home is modeling/image_io_adpretrain.read_mask.

AD_FEATURES = Features(
    {
        "image": Image(),
        "mask": Image(),
        "label": Value("int64"),
        "category": Value("string"),
        "view": Value("string"),
        "defect": Value("string"),
        "split": Value("string"),
        "sample_id": Value("string"),
    }
)
COLUMNS: tuple[str, ...] = tuple(AD_FEATURES)


def make_row(
    image: Path,
    mask: Path | None,
    label: int,
    category: str,
    defect: str,
    split: str,
    sample_id: str,
    view: str = NO_VIEW,
) -> dict[str, object]:
    """One dataset row; paths are made absolute so the dataset works from any folder."""
    return {
        "image": os.path.abspath(image),
        "mask": None if mask is None else os.path.abspath(mask),
        "label": int(label),
        "category": category,
        "view": view,
        "defect": defect,
        "split": split,
        "sample_id": sample_id,
    }


def build_dataset(rows: Sequence[dict[str, object]]) -> Dataset:
    """Rows (from :func:`make_row`) -> a ``Dataset`` with :data:`AD_FEATURES`, sorted by path.

    Sorting makes the row order independent of the file system's listing order, so row
    indices (used by reference sampling and splits) are reproducible across machines.
    """
    ordered = sorted(rows, key=lambda row: (row["category"], row["split"], row["image"]))
    columns = {name: [row[name] for row in ordered] for name in COLUMNS}
    return Dataset.from_dict(columns, features=AD_FEATURES)


def as_root(root: str | os.PathLike) -> Path:
    """Validate a dataset root folder argument and return it as a ``Path``."""
    if not isinstance(root, (str, os.PathLike)):
        raise TypeError(f"root must be a folder path (str or os.PathLike), got {type(root).__name__}")
    path = Path(root)
    if not path.is_dir():
        raise ValueError(f"dataset root {str(path)!r} is not an existing folder: check the path")
    return path


def normalise_categories(categories: str | Iterable[str] | None) -> list[str] | None:
    """``None`` (all), one name, or several names -> ``None`` or a list of names."""
    if categories is None:
        return None
    if isinstance(categories, str):
        return [categories]
    names = list(categories)
    if not all(isinstance(name, str) for name in names):
        raise TypeError(f"categories must be names (str), got {names!r}")
    return names


def select_categories(available: Sequence[str], requested: list[str] | None, root: Path) -> list[str]:
    """The requested categories, checked against those found under ``root`` (all when ``None``)."""
    if not available:
        raise ValueError(f"no categories found under {str(root)!r}: check the root and the layout")
    if requested is None:
        return sorted(available)
    missing = [name for name in requested if name not in available]
    if missing:
        raise ValueError(
            f"categories {missing} not found under {str(root)!r}; available: {sorted(available)}"
        )
    return list(dict.fromkeys(requested))


def category_folders(root: Path, markers: Sequence[str]) -> list[str]:
    """The category folders under ``root`` (sorted): those holding one of the ``markers`` folders."""
    return sorted(p.name for p in root.iterdir() if p.is_dir() and any((p / marker).is_dir() for marker in markers))


def image_files(folder: Path, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> list[Path]:
    """Image files directly inside ``folder`` (sorted), empty when it does not exist."""
    if not folder.is_dir():
        return []
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in extensions)


def find_with_stem(folder: Path, stem: str, extensions: Sequence[str] = IMAGE_EXTENSIONS) -> Path | None:
    """The first file ``folder/<stem><ext>`` that exists, trying ``extensions`` in order."""
    for ext in extensions:
        for candidate in (folder / f"{stem}{ext}", folder / f"{stem}{ext.upper()}"):
            if candidate.is_file():
                return candidate
    return None


def missing_mask_error(image: Path, expected: Path) -> ValueError:
    """The error for an anomalous image whose ground-truth mask is not where the layout puts it."""
    return ValueError(
        f"anomalous image {str(image)!r} has no mask: expected {str(expected)!r}. "
        "Restore the mask file, or remove the image if it is not annotated"
    )

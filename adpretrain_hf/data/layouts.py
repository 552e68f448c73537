"""Recognise a dataset folder's layout and load it through the matching loader.

``load_ad_dataset(root)`` is the one entry point the CLI and the evaluation runner use:
it always returns a ``DatasetDict``. Benchmarks with a train/test split give both; a
Real-IAD folder gives ``{"train": everything}`` (the pretraining set); pass its ``"train"``
to :func:`~adpretrain_hf.data.realiad.realiad_eval_split` to evaluate detectors on it.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Iterable

from datasets import DatasetDict

from .mvtec_style import DATASET_ALIASES, FOLDER_LAYOUTS, VISA_SPLIT_FILE, load_mvtec_style
from .realiad import NG_FOLDER, OK_FOLDER, load_realiad
from .schema import TRAIN_SPLIT, as_root

AUTO_LAYOUT = "auto"
KNOWN_LAYOUTS: tuple[str, ...] = ("mvtec", "mvtec3d", "btad", "visa", "realiad")


def _category_layout(folder: Path) -> str | None:
    """The layout one category folder looks like, or ``None``; most specific test first."""
    if (folder / OK_FOLDER).is_dir() or (folder / NG_FOLDER).is_dir():
        return "realiad"
    btad = FOLDER_LAYOUTS["btad"].normal
    if (folder / "train" / btad).is_dir() or (folder / "test" / btad).is_dir():
        return "btad"
    rgb = FOLDER_LAYOUTS["mvtec3d"].image_subdir
    if (folder / "train" / "good" / rgb).is_dir() or any((folder / "test").glob(f"*/{rgb}")):
        return "mvtec3d"
    if (folder / "train" / "good").is_dir() or (folder / "test").is_dir():
        return "mvtec"
    return None


def detect_layout(root: str | os.PathLike) -> str:
    """Which of :data:`KNOWN_LAYOUTS` the folder ``root`` is in (MPDD reads as ``"mvtec"``).

    VisA is recognised by its split file; the others by the folders inside each category.
    Raises ``ValueError`` when nothing matches or when categories disagree.
    """
    path = as_root(root)
    if (path / VISA_SPLIT_FILE).is_file():
        return "visa"
    guesses = {p.name: _category_layout(p) for p in sorted(path.iterdir()) if p.is_dir()}
    found = {layout for layout in guesses.values() if layout is not None}
    if len(found) == 1:
        return found.pop()
    if not found:
        raise ValueError(
            f"could not recognise the dataset layout of {str(path)!r}: no category folder holds "
            "OK/NG (Real-IAD), train/ok (BTAD), train/good/rgb (MVTec 3D-AD) or train/good (MVTec AD, MPDD), "
            f"and there is no {VISA_SPLIT_FILE.as_posix()} (VisA). Point root at the folder holding the "
            f"categories, or pass layout= one of {list(KNOWN_LAYOUTS)}"
        )
    per_category = {name: layout for name, layout in guesses.items() if layout is not None}
    raise ValueError(
        f"the categories under {str(path)!r} look like different layouts ({per_category}): "
        f"pass layout= one of {list(KNOWN_LAYOUTS)}, or keep one dataset per folder"
    )


def load_ad_dataset(
    root: str | os.PathLike, layout: str = AUTO_LAYOUT, categories: str | Iterable[str] | None = None
) -> DatasetDict:
    """Load any supported anomaly-detection dataset as a ``DatasetDict``.

    Args:
        root: the folder holding the categories.
        layout: ``"auto"`` (see :func:`detect_layout`) or one of :data:`KNOWN_LAYOUTS`
            (``"mpdd"`` is accepted as ``"mvtec"``).
        categories: names to load (default: all).

    Returns:
        ``{"train", "test"}`` for the benchmarks; ``{"train"}`` only for Real-IAD.
    """
    if not isinstance(layout, str):
        raise TypeError(f"layout must be a string, got {type(layout).__name__}")
    name = DATASET_ALIASES.get(layout, layout)
    if name == AUTO_LAYOUT:
        name = detect_layout(root)
    if name not in KNOWN_LAYOUTS:
        raise ValueError(f"unknown layout {layout!r}: choose {AUTO_LAYOUT!r} or one of {list(KNOWN_LAYOUTS)}")
    if name == "realiad":
        return DatasetDict({TRAIN_SPLIT: load_realiad(root, categories)})
    return load_mvtec_style(root, categories, dataset=name)

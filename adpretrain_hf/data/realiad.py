"""Real-IAD: the pretraining set's layout, and a deterministic evaluation split of it.

Layout (as distributed; a small subset in the same layout serves the tests of real data)::

    <class>/OK/<sample>/<class>_<id>_OK_C1.jpg
    <class>/NG/<defect>/<sample>/<class>_<id>_NG_C1.jpg  (+ <same stem>.png mask beside it)

The full dataset appends a time stamp (``..._C1_20230922093438.jpg``); the view is read
from the ``C1``..``C5`` token wherever it stands in the stem.

Labels follow the release: an image is anomalous iff a mask of the same stem sits beside
it. An NG view without a mask (the defect is not visible from that camera) is therefore
``label == 0``, but keeps its defect folder's name in ``defect`` so that it can be told
apart from a true OK image (``defect == "good"``); reference sampling and the evaluation
split use only the latter as normal data. Masks beside OK images are ignored.
"""

from __future__ import annotations

import os
import re
import zlib
from pathlib import Path
from typing import Iterable

import numpy as np
from datasets import Dataset, DatasetDict, Image

from .realiad_splits import SEEDED_SPLIT, assign_rows, choose_split_folder
from .schema import (
    GOOD_DEFECT,
    LABEL_ANOMALOUS,
    LABEL_NORMAL,
    NO_VIEW,
    TEST_SPLIT,
    TRAIN_SPLIT,
    as_root,
    build_dataset,
    category_folders,
    find_with_stem,
    make_row,
    normalise_categories,
    select_categories,
)

OK_FOLDER = "OK"
NG_FOLDER = "NG"
REALIAD_IMAGE_EXTENSIONS: tuple[str, ...] = (".jpg", ".jpeg")
REALIAD_MASK_EXTENSIONS: tuple[str, ...] = (".png",)
DEFAULT_FIT_FRACTION = 0.5
REALIAD_SPLIT_ATTRIBUTE = "realiad_split"
"""Attribute of ``realiad_eval_split``'s ``DatasetDict`` that says which split was used."""

_VIEW_PATTERN = re.compile(r"(?:^|_)(C[1-5])(?=_|$)")


def parse_view(stem: str) -> str:
    """The camera view ``"C1"``..``"C5"`` named in a Real-IAD file stem, or ``""`` if none."""
    match = _VIEW_PATTERN.search(stem)
    return match.group(1) if match else NO_VIEW


def _walk_images(folder: Path) -> list[Path]:
    """All Real-IAD images below ``folder`` (any depth), sorted."""
    found = []
    for dirpath, _, filenames in os.walk(folder):
        for name in filenames:
            if os.path.splitext(name)[1].lower() in REALIAD_IMAGE_EXTENSIONS:
                found.append(Path(dirpath) / name)
    return sorted(found)


def _category_rows(root: Path, category: str) -> list[dict[str, object]]:
    class_dir = root / category
    rows = []

    def add(image: Path, mask: Path | None, label: int, defect: str) -> None:
        sample = image.parent.relative_to(class_dir).as_posix()
        rows.append(
            make_row(image, mask, label, category, defect, TRAIN_SPLIT, f"{category}/{sample}", parse_view(image.stem))
        )

    for image in _walk_images(class_dir / OK_FOLDER):
        add(image, None, LABEL_NORMAL, GOOD_DEFECT)
    ng_dir = class_dir / NG_FOLDER
    defect_dirs = sorted(p for p in ng_dir.iterdir() if p.is_dir()) if ng_dir.is_dir() else []
    for defect_dir in defect_dirs:
        for image in _walk_images(defect_dir):
            mask = find_with_stem(image.parent, image.stem, REALIAD_MASK_EXTENSIONS)
            add(image, mask, LABEL_NORMAL if mask is None else LABEL_ANOMALOUS, defect_dir.name)
    if not rows:
        raise ValueError(
            f"Real-IAD category {category!r} has no images: expected "
            f"{str(class_dir)}/OK/<sample>/*.jpg or {str(class_dir)}/NG/<defect>/<sample>/*.jpg"
        )
    return rows


def load_realiad(root: str | os.PathLike, categories: str | Iterable[str] | None = None) -> Dataset:
    """Load a Real-IAD folder as one ``Dataset`` (``split == "train"`` for every row).

    Args:
        root: the folder holding the class folders.
        categories: class names to load (default: all found).

    Returns:
        a ``Dataset`` with :data:`~adpretrain_hf.data.schema.AD_FEATURES`; ``sample_id`` is
        ``"<class>/<folder of the sample>"`` (e.g. ``"audiojack/OK/S0001"``), shared by the
        views of one physical sample.
    """
    path = as_root(root)
    names = select_categories(category_folders(path, (OK_FOLDER, NG_FOLDER)), normalise_categories(categories), path)
    rows = [row for name in names for row in _category_rows(path, name)]
    return build_dataset(rows)


def _subset(dataset: Dataset, indices: list[int], split: str) -> Dataset:
    """Rows ``indices`` of ``dataset`` as a new dataset whose ``split`` column reads ``split``.

    Rebuilt from the undecoded rows (paths, or bytes) rather than with ``add_column``,
    which would first rewrite the selected rows' table.
    """
    undecoded = dataset
    for name, feature in dataset.features.items():
        if isinstance(feature, Image):
            undecoded = undecoded.cast_column(name, Image(decode=False))
    columns = undecoded.select(indices).to_dict()
    columns["split"] = [split] * len(indices)
    return Dataset.from_dict(columns, features=dataset.features)


def _fit_count(num_samples: int, fit_fraction: float) -> int:
    """How many of ``num_samples`` OK samples to fit on: the rounded share, leaving >= 1 for testing."""
    if num_samples == 1:
        return 1
    return min(num_samples - 1, max(1, int(np.floor(fit_fraction * num_samples + 0.5))))


def realiad_eval_split(
    dataset: Dataset,
    fit_fraction: float = DEFAULT_FIT_FRACTION,
    seed: int = 0,
    *,
    split: str = "auto",
    image_root: str | os.PathLike | None = None,
) -> DatasetDict:
    """Split a Real-IAD dataset into ``{"train": fit data, "test": evaluation data}``.

    Official split files first: with ``split="auto"`` the benchmark split ``realiad_jsons/``
    (beside or inside the image root, possibly nested in one ``realiad_jsons/`` folder; see
    :mod:`adpretrain_hf.data.realiad_splits`) is used when it has a ``<class>.json`` for every
    loaded class; its ``train`` / ``test`` lists decide the rows (rows it does not list are
    left out). ``split="realiad_jsons_sv"`` (or ``realiad_jsons_fuiad_0.1``, ...) asks for one
    folder by name (an error if missing), ``split="seeded"`` forces the seeded split below.
    ``image_root`` defaults to the folder above the rows' class folders.

    Which split was used is the returned ``DatasetDict``'s ``realiad_split`` attribute
    (:data:`REALIAD_SPLIT_ATTRIBUTE`): ``{"name": "realiad_jsons" | ... | "seeded", "path":
    folder or None, "per_category": counts}``, for ``results.json``.

    Without split files, a seeded split is made here, reproducibly: per category, the OK *samples* (``defect == "good"``, grouped by
    ``sample_id`` so the views of one sample never straddle the split) are shuffled with a
    generator seeded by ``(seed, crc32(category))``, and the first ``round(fit_fraction * n)``
    of them (at least 1, and at most ``n - 1`` so the test side keeps normal images) go to
    ``"train"``. Everything else (the remaining OK samples and all NG images, including NG
    views without a mask) goes to ``"test"``. A category's split does not depend on which
    other categories are loaded. ``split`` is rewritten to ``"train"`` / ``"test"``.
    """
    if not isinstance(dataset, Dataset):
        raise TypeError(f"dataset must be a datasets.Dataset from load_realiad(), got {type(dataset).__name__}")
    missing = [
        name for name in ("category", "defect", "label", "sample_id", "split") if name not in dataset.column_names
    ]
    if missing:
        raise ValueError(f"dataset lacks columns {missing}: load it with load_realiad()")
    if not 0.0 < fit_fraction < 1.0:
        raise ValueError(f"fit_fraction must lie strictly between 0 and 1, got {fit_fraction}")
    if split != SEEDED_SPLIT and len(dataset):
        official = _official_split(dataset, split, image_root)
        if official is not None:
            return official
    result = _seeded_split(dataset, fit_fraction, seed)
    setattr(result, REALIAD_SPLIT_ATTRIBUTE, {"name": SEEDED_SPLIT, "path": None, "fit_fraction": fit_fraction, "seed": seed})
    return result


def _image_paths(dataset: Dataset) -> list[str]:
    """Absolute image path per row, without decoding the images."""
    return [value["path"] for value in dataset.cast_column("image", Image(decode=False))["image"]]


def _infer_image_root(path: str, category: str) -> Path:
    """The folder holding ``<category>/`` above an image path."""
    for parent in Path(os.path.abspath(path)).parents:
        if parent.name == category:
            return parent.parent
    raise ValueError(f"cannot find the class folder {category!r} above {path}: pass image_root=")


def _official_split(dataset: Dataset, split: str, image_root: str | os.PathLike | None) -> DatasetDict | None:
    """The split an official JSON folder describes, or None when ``split="auto"`` finds none usable."""
    paths, categories = _image_paths(dataset), list(dataset["category"])
    root = Path(os.path.abspath(image_root)) if image_root is not None else _infer_image_root(paths[0], categories[0])
    folder = choose_split_folder(root, split)
    if folder is None:
        return None
    missing = sorted(c for c in set(categories) if not (folder / f"{c}.json").is_file())
    if missing:
        if split == "auto":
            return None
        raise ValueError(f"{folder} has no split file for classes {missing}: leave them out or use split='{SEEDED_SPLIT}'")
    assigned, counts = assign_rows(paths, categories, root, folder)
    train_idx = sorted(row for row, key in assigned.items() if key == TRAIN_SPLIT)
    test_idx = sorted(row for row, key in assigned.items() if key == TEST_SPLIT)
    empty = sorted(c for c, n in counts.items() if n[TRAIN_SPLIT] == 0 or n[TEST_SPLIT] == 0)
    if empty:
        raise ValueError(
            f"the official split {folder} matches no train or no test image of classes {empty} under {root}: "
            "check that image_root is the image tree the JSON paths are relative to"
        )
    result = DatasetDict(
        {TRAIN_SPLIT: _subset(dataset, train_idx, TRAIN_SPLIT), TEST_SPLIT: _subset(dataset, test_idx, TEST_SPLIT)}
    )
    setattr(result, REALIAD_SPLIT_ATTRIBUTE, {"name": folder.name, "path": str(folder), "per_category": counts})
    return result


def _seeded_split(dataset: Dataset, fit_fraction: float, seed: int) -> DatasetDict:
    """The seeded 50/50 (``fit_fraction``) split of OK samples described in ``realiad_eval_split``."""
    categories = list(dataset["category"])
    defects = list(dataset["defect"])
    labels = list(dataset["label"])
    sample_ids = list(dataset["sample_id"])

    ok_samples: dict[str, set[str]] = {name: set() for name in categories}
    for category, defect, label, sample in zip(categories, defects, labels, sample_ids):
        if defect == GOOD_DEFECT and label == LABEL_NORMAL:
            ok_samples[category].add(sample)
    fit_samples: set[str] = set()
    for category, samples in sorted(ok_samples.items()):
        if not samples:
            raise ValueError(
                f"category {category!r} has no OK (normal) sample to fit detectors on: "
                "add OK images or leave the category out"
            )
        ordered = sorted(samples)
        rng = np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])
        chosen = rng.permutation(len(ordered))[: _fit_count(len(ordered), fit_fraction)]
        fit_samples.update(ordered[i] for i in chosen)

    is_fit = [sample in fit_samples for sample in sample_ids]
    train_idx = [i for i, fit in enumerate(is_fit) if fit]
    test_idx = [i for i, fit in enumerate(is_fit) if not fit]
    return DatasetDict(
        {
            TRAIN_SPLIT: _subset(dataset, train_idx, TRAIN_SPLIT),
            TEST_SPLIT: _subset(dataset, test_idx, TEST_SPLIT),
        }
    )

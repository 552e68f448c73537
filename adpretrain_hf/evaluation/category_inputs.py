"""Datasets in, preprocessed tensors out: the runner's only contact with files.

Why one place: images and masks must go through the *same* processor geometry (resize,
center crop) or pixel metrics silently compare misaligned maps and masks; and Real-IAD,
which has no downstream split, must be split the same way on every run (seeded) and the
split written down.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional, Sequence

import torch
from datasets import Dataset, DatasetDict
from datasets import Image as ImageFeature

from ..data import REALIAD_SPLIT_ATTRIBUTE, detect_layout, load_ad_dataset, load_image_and_mask, realiad_eval_split
from ..data.mvtec_style import DATASET_ALIASES
from ..data.schema import as_root
from .config import EvaluationConfig
from .protocols import ProtocolSelection, select_protocol

REALIAD = "realiad"


@dataclass
class LoadedSplits:
    """The dataset of a run: ``train`` (fit data) and ``test`` rows of the requested categories."""

    train: Dataset
    test: Dataset
    layout: str
    categories: list[str]
    realiad_split: Optional[dict[str, Any]]  # the recorded Real-IAD split, or None


@dataclass
class Rows:
    """Rows of one split of one category: identifiers and labels, images still on disk."""

    dataset: Dataset  # image/mask columns not decoded ({"path", "bytes"} dicts)
    indices: list[int]  # rows of ``dataset``

    def __len__(self) -> int:
        return len(self.indices)

    def subset(self, positions: Sequence[int]) -> "Rows":
        return Rows(self.dataset, [self.indices[i] for i in positions])

    def column(self, name: str) -> list[Any]:
        values = self.dataset[name]
        return [values[i] for i in self.indices]

    @property
    def labels(self) -> list[int]:
        return [int(v) for v in self.column("label")]

    @property
    def sample_ids(self) -> list[str]:
        """``sample_id`` plus the view where there is one (Real-IAD views share a sample id)."""
        return [f"{sid}/{view}" if view else sid for sid, view in zip(self.column("sample_id"), self.column("view"))]

    def paths(self, root: str) -> list[Optional[str]]:
        """Image paths relative to the data root where they lie under it (else absolute)."""
        out = []
        for value in self.column("image"):
            path = value.get("path") if isinstance(value, dict) else None
            if path is None:
                out.append(None)
                continue
            try:
                out.append(Path(path).resolve().relative_to(Path(root).resolve()).as_posix())
            except ValueError:
                out.append(str(path))
        return out


def resolve_layout(root: str, layout: str) -> str:
    """``"auto"`` -> the detected layout; aliases (``"mpdd"``) -> their loader's name."""
    as_root(root)  # a missing folder is a ValueError naming it
    name = DATASET_ALIASES.get(layout, layout)
    return detect_layout(root) if name == "auto" else name


def _undecoded(dataset: Dataset) -> Dataset:
    """Keep image/mask columns as ``{"path", "bytes"}``: rows are read only when preprocessed."""
    return dataset.cast_column("image", ImageFeature(decode=False)).cast_column("mask", ImageFeature(decode=False))


def load_splits(config: EvaluationConfig) -> LoadedSplits:
    """Load the run's dataset; Real-IAD gets the seeded ``realiad_eval_split`` (recorded).

    Raises ``ValueError`` for a missing root, an unknown layout or categories not found.
    """
    layout = resolve_layout(config.data_root, config.layout)
    loaded: DatasetDict = load_ad_dataset(config.data_root, layout=layout, categories=config.categories)
    record = None
    if layout == REALIAD:
        loaded = realiad_eval_split(loaded["train"], fit_fraction=config.realiad_fit_fraction, seed=config.split_seed)
        record = _realiad_record(loaded, config)
    train, test = _undecoded(loaded["train"]), _undecoded(loaded["test"])
    categories = list(dict.fromkeys(config.categories or sorted(set(train["category"]) | set(test["category"]))))
    return LoadedSplits(train, test, layout, categories, record)


def _realiad_record(split: DatasetDict, config: EvaluationConfig) -> dict[str, Any]:
    """Which OK samples were fitted on, per category: enough to reproduce and audit the split."""
    per_category: dict[str, Any] = {}
    for name in sorted(set(split["train"]["category"]) | set(split["test"]["category"])):
        fit_ids = sorted({sid for sid, cat in zip(split["train"]["sample_id"], split["train"]["category"]) if cat == name})
        per_category[name] = {
            "fit_sample_ids": fit_ids,
            "num_train_images": sum(cat == name for cat in split["train"]["category"]),
            "num_test_images": sum(cat == name for cat in split["test"]["category"]),
        }
    return {"fit_fraction": config.realiad_fit_fraction, "seed": config.split_seed, "per_category": per_category, "split": getattr(split, REALIAD_SPLIT_ATTRIBUTE, None)}


def category_rows(dataset: Dataset, category: str) -> Rows:
    """The rows of one category, in the dataset's (sorted, reproducible) order."""
    return Rows(dataset, [i for i, name in enumerate(dataset["category"]) if name == category])


def preprocess_rows(rows: Rows, processor: Any, batch_size: int, with_masks: bool) -> tuple[torch.Tensor, Optional[torch.Tensor]]:
    """Read and preprocess rows: ``pixel_values [N, 3, H, W]`` and (optionally) masks ``[N, H, W]`` {0, 1}.

    Images and masks go through the same processor geometry (``preprocess_masks``).
    Reads ``batch_size`` files at a time so that a category's PIL images never all sit in memory.
    """
    if len(rows) == 0:
        raise ValueError("no images to preprocess: the split of this category is empty")
    pixels, masks = [], []
    for start in range(0, len(rows), batch_size):
        chunk = rows.subset(range(start, min(start + batch_size, len(rows))))
        pairs = [load_image_and_mask(rows.dataset[i]) for i in chunk.indices]
        pixels.append(processor([image for image, _ in pairs], return_tensors="pt")["pixel_values"].float())
        if with_masks:
            masks.append(processor.preprocess_masks([mask for _, mask in pairs]))
    pixel_values = torch.cat(pixels)
    return pixel_values, (torch.cat(masks) if with_masks else None)


@dataclass
class CategoryData:
    """One category, preprocessed and protocol-selected.

    ``pool_pixel_values [N_p, 3, H, W]``: the selected normal training images (they fit the
    detector and are the reference pool); ``train_pixel_values [N_p + N_noise, 3, H, W]``: the
    pool plus the noise images; ``test_pixel_values [N_te, 3, H, W]``, ``test_masks [N_te, H, W]``
    in {0, 1}, ``test_labels [N_te]`` (0/1).
    """

    name: str
    pool_pixel_values: torch.Tensor
    train_pixel_values: torch.Tensor
    test_pixel_values: torch.Tensor
    test_masks: torch.Tensor
    test_labels: torch.Tensor
    pool_ids: list[str]
    pool_paths: list[Optional[str]]
    test_ids: list[str]
    train_ids: list[str]
    selection: ProtocolSelection


def prepare_category(category: str, splits: LoadedSplits, processor: Any, config: EvaluationConfig) -> CategoryData:
    """Select (protocols) and preprocess one category's training and test images."""
    train_rows, test_rows = category_rows(splits.train, category), category_rows(splits.test, category)
    if len(test_rows) == 0:
        raise ValueError(f"category {category!r} has no test images under {config.data_root!r}: check the dataset")
    test_labels = test_rows.labels
    selection = select_protocol(category, train_rows.labels, test_labels, config)
    pool_rows = train_rows.subset(selection.train_normal)
    pool, _ = preprocess_rows(pool_rows, processor, config.batch_size, with_masks=False)
    test, masks = preprocess_rows(test_rows, processor, config.batch_size, with_masks=True)
    assert masks is not None
    train = torch.cat([pool, test[selection.noise]]) if selection.noise else pool
    return CategoryData(
        name=category, pool_pixel_values=pool, train_pixel_values=train, test_pixel_values=test,
        test_masks=masks, test_labels=torch.tensor(test_labels, dtype=torch.long),
        pool_ids=pool_rows.sample_ids, pool_paths=pool_rows.paths(config.data_root),
        test_ids=test_rows.sample_ids, train_ids=train_rows.sample_ids, selection=selection,
    )


def describe_model(model_or_path: Any) -> str:
    """How the model is named in ``results.json``: its path / Hub id, or its preset."""
    if isinstance(model_or_path, (str, os.PathLike)):
        return os.fspath(model_or_path)
    preset = getattr(getattr(model_or_path, "config", None), "preset", None)
    return f"<in-memory {type(model_or_path).__name__}, preset={preset}>"

"""From a Real-IAD folder to training batches, through ``datasets``.

Rows are loaded by :func:`adpretrain_hf.data.load_realiad` (a ``datasets.Dataset`` of
image/mask paths); ``with_transform`` makes the two augmented views and the mask on the
fly with the model's image processor, so images and masks share one geometry. A row's
augmentation is seeded from ``(run seed, epoch, row index)``: the same views whichever
dataloader worker makes them, and again after a resume.
References are drawn per batch in the main process (:class:`ReferenceSampler`) and their
backbone tokens come from :class:`ReferenceTokenCache`, never augmented.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional, Sequence

import numpy as np
import torch
from datasets import Dataset

from adpretrain_hf.data import ReferenceSampler, TwoViewAugment, load_image_and_mask, load_realiad
from adpretrain_hf.modeling.configuration_adpretrain import TRAINING_REFERENCE_SHOTS
from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor

from .seeding import AUGMENT_STREAM, derived_seed

ROW_INDEX = "row_index"


@dataclass
class TrainingData:
    """Everything the loop needs: the transformed dataset, its reference pools and a loader of raw pixels."""

    dataset: Dataset
    raw: Dataset
    sampler: ReferenceSampler
    processor: ADPretrainImageProcessor
    transform: Optional["TwoViewTransform"] = None

    def set_epoch(self, epoch: int) -> None:
        """Views of the coming epoch (call before iterating a loader: workers copy the transform then)."""
        if self.transform is not None:
            self.transform.epoch = int(epoch)

    def reference_rows(self) -> list[int]:
        """Every row a reference draw can return (the union of the sampler's pools), sorted."""
        return sorted({int(i) for key in self.sampler.keys for i in self.sampler.pool(*key)})

    def reference_pixels(self, index: int) -> torch.Tensor:
        """Processed, un-augmented pixel values ``[3, H, W]`` of row ``index`` (a reference)."""
        image, _ = load_image_and_mask(self.raw[int(index)])
        return self.processor(image, return_tensors="pt")["pixel_values"][0]


class TwoViewTransform:
    """A ``datasets`` transform: rows -> two augmented views, the shared mask and row metadata.

    Args:
        processor: resizes/normalises views to ``[3, H, W]`` and masks to ``[H, W]``.
        seed: the run's seed; row ``i`` of epoch ``e`` is augmented from a generator seeded with
            ``derived_seed(seed, AUGMENT_STREAM, e, i)``. ``None`` = fresh OS entropy per call.
    """

    def __init__(self, processor: ADPretrainImageProcessor, seed: Optional[int]) -> None:
        self.processor = processor
        self.seed = seed
        self.augmenter = TwoViewAugment()
        self.epoch = 0
        self.mean = torch.tensor(processor.image_mean, dtype=torch.float32)[:, None, None]
        self.std = torch.tensor(processor.image_std, dtype=torch.float32)[:, None, None]

    def generator(self, row: int) -> Optional[torch.Generator]:
        """Row ``row``'s generator this epoch (None without a seed: the augmenter draws fresh entropy)."""
        if self.seed is None:
            return None
        return torch.Generator().manual_seed(derived_seed(self.seed, AUGMENT_STREAM, self.epoch, row))

    def __call__(self, batch: dict[str, list[Any]]) -> dict[str, Any]:
        processor = self.processor
        view1, view2, masks = [], [], []
        for image_value, mask_value, row in zip(batch["image"], batch["mask"], batch[ROW_INDEX]):
            image, mask = load_image_and_mask({"image": image_value, "mask": mask_value})
            # Resize + crop first, augment at the model's resolution (the release blurs the 224 px view), normalise last.
            resized = processor(image, do_normalize=False, return_tensors="pt")["pixel_values"][0].float()
            first, second = self.augmenter(resized, generator=self.generator(int(row)))
            view1.append((first - self.mean) / self.std)
            view2.append((second - self.mean) / self.std)
            masks.append(mask)
        return {
            "view1": torch.stack(view1),
            "view2": torch.stack(view2),
            "mask": processor.preprocess_masks(masks),
            "category": batch["category"],
            "view": batch["view"],
            ROW_INDEX: batch[ROW_INDEX],
        }


def collate_views(examples: Sequence[dict[str, Any]]) -> dict[str, Any]:
    """Stack transformed rows into a batch (metadata stays as lists)."""
    return {
        "view1": torch.stack([e["view1"] for e in examples]),
        "view2": torch.stack([e["view2"] for e in examples]),
        "mask": torch.stack([e["mask"] for e in examples]),
        "category": [e["category"] for e in examples],
        "view": [e["view"] for e in examples],
        ROW_INDEX: torch.tensor([int(e[ROW_INDEX]) for e in examples]),
    }


def build_training_data(
    data_root: str,
    processor: ADPretrainImageProcessor,
    categories: Optional[Sequence[str]] = None,
    seed: Optional[int] = None,
) -> TrainingData:
    """Load Real-IAD rows with ``datasets`` and attach the two-view transform."""
    raw = load_realiad(data_root, categories=categories)
    raw = raw.add_column(ROW_INDEX, list(range(len(raw))))
    if sum(raw["label"]) == 0:
        raise ValueError(
            f"no anomalous image (with a mask) under {data_root}: pretraining needs NG samples with masks"
        )
    sampler = ReferenceSampler(raw, seed=seed)
    transform = TwoViewTransform(processor, seed)
    dataset = raw.with_transform(transform)
    return TrainingData(dataset=dataset, raw=raw, sampler=sampler, processor=processor, transform=transform)


def draw_references(
    data: TrainingData, batch: dict[str, Any], rng: np.random.Generator, shot_choices: Sequence[int] = TRAINING_REFERENCE_SHOTS
) -> torch.Tensor:
    """K (drawn once per batch from ``shot_choices``, the paper's Rand(1, 4, 8)) same-class,
    same-view normal rows per image, never the image itself: ``[B, K]``."""
    rows = batch[ROW_INDEX].tolist()
    k = int(shot_choices[rng.integers(len(shot_choices))])
    indices = [
        data.sampler.sample(category, view, k, rng, exclude=row)
        for category, view, row in zip(batch["category"], batch["view"], rows)
    ]
    return torch.tensor(indices, dtype=torch.long)

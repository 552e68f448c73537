"""The paper's evaluation protocols as one seeded selection of training and test images.

* full data (Table 1): every normal training image fits the detector.
* sample efficiency (4.4, Table 3a): ``train_fraction=0.1`` keeps that share of the normal
  training images (rounded, at least 1), drawn with the split seed.
* robustness to noise (4.4, Table 3b): ``noise_ratio=0.1`` adds ``int(0.1 * num_normal_train)``
  anomalous *test* images to the training set -- SoftPatch's count, relative to the normal
  training images -- and keeps them in the test set too (SoftPatch's "overlap" setting,
  which the paper adopts). The detector is not told which training images are anomalous.
* few-shot (4.5, Table 5): ``train_shots=2|4`` keeps exactly that many normal training images.

Draws use ``numpy.random.default_rng([split_seed, crc32(category)])``, so a category's
selection does not depend on which other categories run, and is the same on every machine.
"""

from __future__ import annotations

import math
import warnings
import zlib
from dataclasses import dataclass
from typing import Any

import numpy as np

from .config import NOISE_SETTING, EvaluationConfig


@dataclass
class ProtocolSelection:
    """Positions (into a category's train / test rows) that the protocol selected.

    ``train_normal``: normal training images that fit the detector (and form the reference
    pool). ``noise``: anomalous test images also put into the training set (they stay in
    the test set).
    """

    train_normal: list[int]
    noise: list[int]
    num_train_normal_available: int

    @property
    def num_train(self) -> int:
        return len(self.train_normal) + len(self.noise)


def category_rng(split_seed: int, category: str) -> np.random.Generator:
    """The generator of one category's protocol draws (independent of other categories)."""
    return np.random.default_rng([split_seed, zlib.crc32(category.encode("utf-8"))])


def _subsample(count: int, keep: int, rng: np.random.Generator) -> list[int]:
    """``keep`` of ``range(count)`` drawn without replacement, returned in ascending order."""
    if keep >= count:
        return list(range(count))
    return sorted(int(i) for i in rng.permutation(count)[:keep])


def select_protocol(
    category: str, train_labels: list[int], test_labels: list[int], config: EvaluationConfig
) -> ProtocolSelection:
    """Apply ``train_fraction`` / ``train_shots`` / ``noise_ratio`` to one category.

    Args:
        category: the category name (seeds its draws).
        train_labels: labels of its training rows (only 0s are used; a stray 1 is ignored).
        test_labels: labels of its test rows (noise is drawn from the 1s).

    Raises ``ValueError`` when the category has no normal training image, or fewer than
    ``train_shots``.
    """
    normal = [i for i, label in enumerate(train_labels) if label == 0]
    if not normal:
        raise ValueError(f"category {category!r} has no normal training image: add some or leave the category out")
    rng = category_rng(config.split_seed, category)
    if config.train_shots is not None:
        if config.train_shots > len(normal):
            raise ValueError(
                f"train_shots={config.train_shots} but category {category!r} has only {len(normal)} normal "
                "training images: pass a smaller train_shots"
            )
        keep = config.train_shots
    else:
        keep = max(1, int(round(config.train_fraction * len(normal))))
    chosen = [normal[i] for i in _subsample(len(normal), keep, rng)]

    noise: list[int] = []
    if config.noise_ratio > 0:
        anomalous = [i for i, label in enumerate(test_labels) if label == 1]
        wanted = int(math.floor(config.noise_ratio * len(chosen) + 1e-9))  # SoftPatch: int(noise * len(train))
        if wanted == 0:
            warnings.warn(
                f"noise_ratio={config.noise_ratio} of {len(chosen)} normal training images rounds down to 0 "
                f"anomalous images for category {category!r}: no noise is added (use a larger ratio)",
                stacklevel=2,
            )
        if wanted > len(anomalous):
            warnings.warn(
                f"noise_ratio={config.noise_ratio} asks for {wanted} anomalous images in category {category!r} "
                f"but its test set has {len(anomalous)}: using all of them",
                stacklevel=2,
            )
            wanted = len(anomalous)
        noise = [anomalous[i] for i in _subsample(len(anomalous), wanted, rng)]
    return ProtocolSelection(chosen, noise, len(normal))


def protocol_record(config: EvaluationConfig) -> dict[str, Any]:
    """The run-level protocol settings of ``results.json`` (per-category counts are added by the runner)."""
    return {
        "train_fraction": config.train_fraction,
        "train_shots": config.train_shots,
        "noise_ratio": config.noise_ratio,
        "noise_setting": NOISE_SETTING if config.noise_ratio > 0 else None,
        "noise_count_rule": "int(noise_ratio * num_normal_train_images), anomalous test images, also kept in test",
        "split_seed": config.split_seed,
        "shots": config.shots,
        "reference_strategy": config.effective_strategy,
        "reference_strategy_requested": config.reference_strategy,
        "reference_seeds": config.seeds,
        "quick": config.quick,
        "per_category": {},
    }


def category_protocol_record(
    selection: ProtocolSelection, train_ids: list[str], test_ids: list[str], test_labels: list[int], k: int
) -> dict[str, Any]:
    """Counts and sample ids of one category's selection (what was fitted on, what was tested)."""
    return {
        "num_train_normal_available": selection.num_train_normal_available,
        "num_train_normal": len(selection.train_normal),
        "num_noise": len(selection.noise),
        "num_train": selection.num_train,
        "num_test": len(test_ids),
        "num_test_anomalous": sum(test_labels),
        "num_references": k,
        "train_sample_ids": [train_ids[i] for i in selection.train_normal],
        "noise_sample_ids": [test_ids[i] for i in selection.noise],
    }


def effective_shots(shots: int, pool_size: int, category: str) -> int:
    """References per query: ``shots``, or the whole pool when it is smaller (few-shot runs)."""
    if shots > pool_size:
        warnings.warn(
            f"shots={shots} but category {category!r} has {pool_size} normal training images to draw "
            f"references from: using {pool_size}",
            stacklevel=2,
        )
        return pool_size
    return shots


"""Normal reference images for residual features during pretraining.

Each training image is matched against K normal images of its own class, and in Real-IAD
of its own camera view, drawn with replacement; K is drawn once per batch from
:data:`~adpretrain_hf.modeling.configuration_adpretrain.TRAINING_REFERENCE_SHOTS` (the official release's training recipe, "Residual features").

Only true normal images (``label == 0`` and ``defect == "good"``) are references: an NG
view of Real-IAD without a mask reads ``label == 0`` but shows a defective product.
"""

from __future__ import annotations

from collections import defaultdict
from typing import Sequence

import numpy as np
from datasets import Dataset

from ..modeling.configuration_adpretrain import TRAINING_REFERENCE_SHOTS
from .schema import GOOD_DEFECT, LABEL_NORMAL, NO_VIEW


class ReferenceSampler:
    """Indices of normal rows grouped by ``(category, view)`` (``view == ""`` without views).

    Args:
        dataset: a dataset with the loaders' columns (at least label, defect, category, view).
        seed: seeds the generator used when a call passes no ``rng``.
    """

    def __init__(self, dataset: Dataset, seed: int | None = None) -> None:
        if not isinstance(dataset, Dataset):
            raise TypeError(f"dataset must be a datasets.Dataset from the data loaders, got {type(dataset).__name__}")
        missing = [c for c in ("label", "defect", "category", "view") if c not in dataset.column_names]
        if missing:
            raise ValueError(f"dataset lacks columns {missing}: load it with adpretrain_hf.data loaders")
        pools: dict[tuple[str, str], list[int]] = defaultdict(list)
        columns = zip(dataset["label"], dataset["defect"], dataset["category"], dataset["view"])
        for index, (label, defect, category, view) in enumerate(columns):
            if label == LABEL_NORMAL and defect == GOOD_DEFECT:
                pools[(category, view)].append(index)
        self._pools = {key: np.asarray(indices, dtype=np.int64) for key, indices in pools.items()}
        self._rng = np.random.default_rng(seed)

    @property
    def keys(self) -> list[tuple[str, str]]:
        """The ``(category, view)`` pairs that have normal images."""
        return sorted(self._pools)

    def pool(self, category: str, view: str = NO_VIEW) -> np.ndarray:
        """All normal row indices of ``(category, view)``."""
        indices = self._pools.get((category, view))
        if indices is None:
            raise ValueError(
                f"no normal image for category {category!r}, view {view!r}: add OK images for it, "
                f"or train on categories/views that have them (available: {self.keys})"
            )
        return indices

    def draw_k(self, rng: np.random.Generator | None = None) -> int:
        """The number of references for a batch, uniform over :data:`TRAINING_REFERENCE_SHOTS`."""
        rng = self._rng if rng is None else rng
        return int(TRAINING_REFERENCE_SHOTS[rng.integers(len(TRAINING_REFERENCE_SHOTS))])

    def sample(
        self,
        category: str,
        view: str,
        k: int,
        rng: np.random.Generator | None = None,
        exclude: int | None = None,
    ) -> list[int]:
        """``k`` normal row indices of ``(category, view)``, drawn with replacement.

        ``exclude`` (a row index, usually the query itself) is left out of the pool, because a
        normal image matched against itself has all-zero residuals.
        """
        if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 1:
            raise ValueError(f"k must be a positive integer, got {k!r}")
        pool = self.pool(category, view)
        if exclude is not None:
            pool = pool[pool != exclude]
            if pool.size == 0:
                raise ValueError(
                    f"category {category!r}, view {view!r} has no normal image other than row {exclude}: "
                    "add more OK images"
                )
        rng = self._rng if rng is None else rng
        return pool[rng.integers(pool.size, size=int(k))].tolist()

    def sample_batch(
        self,
        categories: Sequence[str],
        views: Sequence[str],
        rng: np.random.Generator | None = None,
        exclude: Sequence[int | None] | None = None,
    ) -> tuple[int, list[list[int]]]:
        """Draw K once, then K references for each image of a batch.

        Returns:
            ``(K, indices)`` with ``indices[i]`` the K rows for image ``i``.
        """
        if len(categories) != len(views) or (exclude is not None and len(exclude) != len(categories)):
            raise ValueError("categories, views (and exclude) must have one entry per image of the batch")
        rng = self._rng if rng is None else rng
        k = self.draw_k(rng)
        excluded = exclude if exclude is not None else [None] * len(categories)
        return k, [self.sample(c, v, k, rng, e) for c, v, e in zip(categories, views, excluded)]

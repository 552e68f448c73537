"""The angle loss's center ``c`` before training: the release's one pass over the normal images.

``center_estimation="release"`` (``get_center_features.py`` of the release, fixture
``tests/fixtures/release_parity/center.safetensors``): one pass over every normal training image
(image label 0), un-augmented; each image is matched against its OWN small bank, the tokens of
``center_reference_shots`` (4) normal images of its class and view; the center of a layer is the
mean of ALL residual tokens of the pass (the release's token-count-weighted running mean; here
float64 sums, equal to float error). It is the mean of *un-projected* residuals and is subtracted
from *projected* features in the angle loss (``center_mode="residual"``); with
``center_mode="projected"`` the residuals go through the (untrained) projectors first.

Differences kept on purpose: an image is never its own reference (the package's sampler leaves the
query out, a self-match gives all-zero residuals); the references are drawn from the run's seed.

``center_estimation="batches"`` (ours) lives in ``training/loop.py`` (``Pretrainer.estimate_centers``):
the normal patches of the first ``center_batches`` augmented training batches.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Sequence
from typing import Optional

import numpy as np
import torch
from tqdm.auto import tqdm

from adpretrain_hf.losses import CenterEstimator
from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank

Residuals = Callable[[Sequence[torch.Tensor], Sequence[torch.Tensor]], list[torch.Tensor]]

CENTER_PASS_BATCH = 16
"""Images per backbone pass in the center pass (the release's loader batch size)."""


@torch.no_grad()
def release_centers(
    batches: Iterable[tuple[Sequence[torch.Tensor], Sequence[torch.Tensor]]],
    residuals: Residuals,
    project: Optional[Callable[[list[torch.Tensor], list[torch.Tensor]], list[torch.Tensor]]] = None,
) -> list[torch.Tensor]:
    """Per layer, the ``[C_l]`` mean of every residual token of the normal images in ``batches``.

    Args:
        batches: ``(tokens, banks)`` pairs, ``tokens`` per layer ``[B, N_l, C_l]`` of normal
            images only, ``banks`` per layer ``[B, K * N_l, C_l]``: each image's own references.
        residuals: the model's public step ``model.residuals(tokens, banks)`` (cosine NN).
        project: optional ``(residuals, banks) -> projected`` (``center_mode="projected"``).

    Returns:
        Per layer ``[C_l]`` float32 centers.
    """
    estimator = CenterEstimator()
    for tokens, banks in batches:
        features = residuals(list(tokens), list(banks))
        if project is not None:
            features = project(features, list(banks))
        estimator.update([f.float() for f in features])  # every token of a normal image counts
    if estimator.num_layers is None:
        raise ValueError("no normal training image for the center pass: the training set needs OK images")
    return estimator.compute()


def normal_rows(labels: Sequence[int]) -> list[int]:
    """Row indices of the images with image label 0 (the release's ``label == 0``)."""
    return [i for i, label in enumerate(labels) if int(label) == 0]


def center_pass_batches(
    rows: Sequence[int],
    pixels: Callable[[int], torch.Tensor],
    backbone_features: Callable[[torch.Tensor], Sequence[torch.Tensor]],
    reference_banks: Callable[[torch.Tensor], ReferenceBank],
    draw_references: Callable[[int, np.random.Generator], list[int]],
    rng: np.random.Generator,
    device: torch.device,
    batch_size: int = CENTER_PASS_BATCH,
    progress: bool = True,
) -> Iterator[tuple[list[torch.Tensor], list[torch.Tensor]]]:
    """``(tokens, banks)`` of ``rows`` in chunks of ``batch_size``, un-augmented, for :func:`release_centers`.

    ``pixels(row)``: processed ``[3, H, W]`` (no augmentation); ``draw_references(row, rng)``: the
    row's K reference rows; ``reference_banks([B, K] rows)``: per-image banks, per layer ``[B, K * N_l, C_l]``.
    """
    starts = range(0, len(rows), batch_size)
    for start in tqdm(starts, desc="center pass", disable=not progress):
        chunk = list(rows[start : start + batch_size])
        tokens = backbone_features(torch.stack([pixels(i) for i in chunk]).to(device))
        references = torch.tensor([draw_references(i, rng) for i in chunk], dtype=torch.long)
        yield list(tokens), list(reference_banks(references).layers)

"""Pixel masks -> per-patch anomaly labels on a backbone's token grid.

The losses need one label per patch token. Two label rules (``ADPretrainConfig.patch_label_rule``,
chosen by :func:`training_patch_labels`):

``"release"`` (the released code, ``tests/release_parity/test_patch_labels.py``): two rules for
    the two terms. Angle term (:func:`pixel_count_labels`): the mask is cut into
    ``patch x patch`` squares, ``patch = H // h``, and a patch is anomalous when it holds MORE
    than 32 defect pixels, an absolute count whatever the patch size (16% of a 14-px patch,
    12.5% of a 16-px one). Norm term (:func:`nearest_labels`): the mask resized to the grid with
    nearest interpolation, i.e. the patch's top-left pixel. Tiny defects can be invisible to one
    term or both.
``"fraction"`` (ours, :func:`patch_labels`): one rule for both terms, a patch is anomalous when
    the *fraction* of its masked pixels exceeds :data:`PATCH_ANOMALY_FRACTION` = 32/256, which
    does not depend on the image or patch size.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F

from adpretrain_hf.modeling.configuration_adpretrain import ANGLE_LABEL_MIN_PIXELS

PATCH_ANOMALY_FRACTION = 32 / 256
RELEASE_MIN_DEFECT_PIXELS = ANGLE_LABEL_MIN_PIXELS
"""Release angle-term rule: a patch is anomalous with MORE than this many defect pixels (32; the
config field ``angle_label_min_pixels`` carries it)."""


def _as_grid(grid: int | Sequence[int]) -> tuple[int, int]:
    if isinstance(grid, (int, np.integer)) and not isinstance(grid, bool):
        grid = (int(grid), int(grid))
    if not isinstance(grid, Sequence) or len(grid) != 2 or not all(
        isinstance(g, (int, np.integer)) and not isinstance(g, bool) for g in grid
    ):
        raise TypeError(f"grid must be (h, w) as two integers (or one int for a square grid), got {grid!r}")
    h, w = int(grid[0]), int(grid[1])
    if h < 1 or w < 1:
        raise ValueError(f"grid sides must be positive, got {(h, w)}")
    return h, w


def _as_masks(masks: torch.Tensor | np.ndarray) -> torch.Tensor:
    """Validate masks and return them as ``[B, 1, H, W]`` float32."""
    if isinstance(masks, np.ndarray):
        masks = torch.from_numpy(masks)
    if not isinstance(masks, torch.Tensor):
        raise TypeError(f"masks must be a torch.Tensor or numpy array, got {type(masks).__name__}")
    if masks.dim() == 4 and masks.shape[1] == 1:
        masks = masks[:, 0]
    if masks.dim() != 3:
        raise ValueError(f"masks must have shape [B, H, W] or [B, 1, H, W], got {list(masks.shape)}")
    masks = masks.float()
    if masks.numel() and (masks.min() < 0 or masks.max() > 1):
        raise ValueError(
            f"masks must hold values in {{0, 1}}, got range [{masks.min().item():g}, {masks.max().item():g}]: "
            "binarise 0/255 masks with (mask > 0)"
        )
    return masks[:, None]


def patch_fractions(masks: torch.Tensor | np.ndarray, grid: int | Sequence[int]) -> torch.Tensor:
    """The masked fraction of every patch, ``[B, h*w]`` float32 in row-major patch order.

    Computed by adaptive average pooling of the float mask. When ``H`` is divisible by
    ``h`` (and ``W`` by ``w``) this is exactly the mean over each ``H/h x W/w`` block.
    Otherwise patch ``i`` covers rows ``floor(i*H/h)`` to ``ceil((i+1)*H/h) - 1`` (windows
    overlap by at most one row), the same as ``F.interpolate(mode="area")``.
    """
    h, w = _as_grid(grid)
    pooled = F.adaptive_avg_pool2d(_as_masks(masks), (h, w))  # [B, 1, h, w]
    return pooled.flatten(1)


def patch_labels(
    masks: torch.Tensor | np.ndarray, grid: int | Sequence[int], threshold: float = PATCH_ANOMALY_FRACTION
) -> torch.Tensor:
    """Per-patch labels: ``True`` where more than ``threshold`` of the patch is masked.

    Args:
        masks: ``[B, H, W]`` or ``[B, 1, H, W]`` with values in {0, 1} (bool, int or float).
        grid: the token grid ``(h, w)``, e.g. ``model.grid_sizes[layer]``.
        threshold: masked fraction a patch must exceed, in [0, 1).

    Returns:
        ``[B, h*w]`` bool, row-major like the backbone's patch tokens.
    """
    if isinstance(threshold, bool) or not isinstance(threshold, (int, float)) or not 0.0 <= threshold < 1.0:
        raise ValueError(f"threshold must be a fraction in [0, 1), got {threshold!r}")
    return patch_fractions(masks, grid) > threshold


def pixel_count_labels(
    masks: torch.Tensor | np.ndarray, grid: int | Sequence[int], min_pixels: int = RELEASE_MIN_DEFECT_PIXELS
) -> torch.Tensor:
    """The release's angle-term labels: ``True`` where a patch holds MORE than ``min_pixels`` defect pixels.

    The mask ``[B, (1,) H, W]`` is cut into non-overlapping ``H // h x W // w`` squares (row-major;
    rows/columns beyond ``h * (H // h)`` are not in any patch, as in the release's patchify).

    Returns:
        ``[B, h*w]`` bool.
    """
    h, w = _as_grid(grid)
    if isinstance(min_pixels, bool) or not isinstance(min_pixels, (int, np.integer)) or min_pixels < 0:
        raise ValueError(f"min_pixels must be a pixel count >= 0, got {min_pixels!r}")
    m = _as_masks(masks)[:, 0]  # [B, H, W]
    ph, pw = m.shape[1] // h, m.shape[2] // w
    if ph < 1 or pw < 1:
        raise ValueError(f"the {tuple(m.shape[1:])} mask is smaller than the {(h, w)} grid: pass masks at the model's image size")
    counts = m[:, : h * ph, : w * pw].reshape(m.shape[0], h, ph, w, pw).sum(dim=(2, 4))  # [B, h, w]
    return (counts > min_pixels).flatten(1)


def nearest_labels(masks: torch.Tensor | np.ndarray, grid: int | Sequence[int]) -> torch.Tensor:
    """The release's norm-term labels: the mask resized to the grid with nearest interpolation.

    ``F.interpolate(mode="nearest")`` picks pixel ``(i * H // h, j * W // w)`` for an integer
    ratio, the patch's top-left pixel. Returns ``[B, h*w]`` bool.
    """
    h, w = _as_grid(grid)
    return F.interpolate(_as_masks(masks), size=(h, w), mode="nearest").flatten(1) > 0.5


def training_patch_labels(
    masks: torch.Tensor | np.ndarray,
    grid: int | Sequence[int],
    rule: str,
    *,
    min_pixels: int = RELEASE_MIN_DEFECT_PIXELS,
    fraction: float = PATCH_ANOMALY_FRACTION,
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(angle_labels, norm_labels)``, each ``[B, h*w]`` bool, by ``rule`` (``PATCH_LABEL_RULES``).

    ``"release"``: :func:`pixel_count_labels` (``min_pixels``) and :func:`nearest_labels`;
    ``"fraction"``: :func:`patch_labels` (``fraction``) for both (the same tensor twice).
    """
    if rule == "release":
        return pixel_count_labels(masks, grid, min_pixels), nearest_labels(masks, grid)
    if rule == "fraction":
        labels = patch_labels(masks, grid, fraction)
        return labels, labels
    raise ValueError(f"patch label rule {rule!r} is not supported: choose 'release' or 'fraction'")

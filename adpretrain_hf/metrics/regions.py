"""Connected ground-truth regions, the unit AUPRO averages over.

Why one module: both AUPRO variants need the same thing — every anomalous pixel tagged
with the id of its 8-connected defect region, ids unique across all images, and the size
of each region — and getting connectivity wrong (4- instead of 8-) silently changes PRO.
"""

from __future__ import annotations

import numpy as np

# 8-connectivity within an image, none across images: a 3x3x3 structure whose only
# non-zero slice is the middle one lets scipy label the whole [N, H, W] stack at once,
# giving ids that are already unique over all images.
_STRUCTURE_8_CONNECTED_PER_IMAGE = np.zeros((3, 3, 3), dtype=bool)
_STRUCTURE_8_CONNECTED_PER_IMAGE[1] = True


def label_regions(masks: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Label 8-connected defect regions of a mask stack.

    Args:
        masks: ``[N, H, W]`` bool ground truth.

    Returns:
        ``(region_ids [N, H, W] int32, sizes [R + 1] int64)``: 0 marks normal pixels and
        ``1..R`` the regions (unique over all images); ``sizes[r]`` is region r's pixel
        count and ``sizes[0]`` the number of normal pixels.
    """
    if masks.ndim != 3 or masks.dtype != np.bool_:
        raise ValueError(
            f"label_regions expects a [N, H, W] bool stack, got {masks.dtype} {masks.shape}: "
            "binarise and stack the masks first"
        )
    from scipy import ndimage  # here, not at import: the metric names stay light

    region_ids, _ = ndimage.label(masks, structure=_STRUCTURE_8_CONNECTED_PER_IMAGE)
    sizes = np.bincount(region_ids.reshape(-1)).astype(np.int64)
    return region_ids, sizes


def require_normals_and_defects(masks: np.ndarray) -> None:
    """AUPRO needs anomalous pixels (for PRO) and normal pixels (for the FPR axis)."""
    anomalous = int(np.count_nonzero(masks))
    if anomalous == 0:
        raise ValueError(
            "AUPRO needs at least one anomalous pixel, but every mask is all-normal: "
            "include anomalous test images with their masks (or report pixel metrics as N/A)"
        )
    if anomalous == masks.size:
        raise ValueError(
            "AUPRO needs at least one normal pixel to define the false-positive rate, but "
            "every mask pixel is anomalous: check that the masks are not inverted"
        )

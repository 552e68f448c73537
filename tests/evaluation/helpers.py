"""The evaluation tests' tiny dataset (conftest.py's ``mvtec_root``) as constants, and a brute-force AUPRO."""

import numpy as np
from scipy import ndimage

CATEGORIES = ["tile", "bottle"]
NUM_NORMAL, NUM_ANOMALOUS = 4, 2  # per category: 4 train normals; test = 2 anomalous + 2 normal


def brute_force_aupro(maps: np.ndarray, masks: np.ndarray, limit: float = 0.3) -> float:
    """PRO at every distinct score by explicit thresholding (8-connected regions per image), area to ``limit`` / limit."""
    regions = np.zeros(masks.shape, dtype=np.int64)
    offset = 0
    for i, mask in enumerate(masks):
        labelled, count = ndimage.label(mask > 0, structure=np.ones((3, 3)))
        regions[i] = np.where(labelled > 0, labelled + offset, 0)
        offset += count
    flat_maps, flat_regions = maps.ravel(), regions.ravel()
    sizes = np.bincount(flat_regions, minlength=offset + 1)
    normal = flat_regions == 0
    fpr, pro = [0.0], [0.0]
    for threshold in np.unique(flat_maps)[::-1]:
        marked = flat_maps >= threshold
        fpr.append((marked & normal).sum() / normal.sum())
        hits = np.bincount(flat_regions[marked], minlength=offset + 1)
        pro.append(float(np.mean(hits[1:] / sizes[1:])))
    fpr, pro = np.array(fpr), np.array(pro)
    inside = fpr <= limit
    area = np.trapezoid(pro[inside], fpr[inside])
    last = np.flatnonzero(inside)[-1]
    if last + 1 < fpr.size and fpr[last] < limit:
        end = pro[last] + (pro[last + 1] - pro[last]) * (limit - fpr[last]) / (fpr[last + 1] - fpr[last])
        area += 0.5 * (limit - fpr[last]) * (pro[last] + end)
    return float(area / limit)


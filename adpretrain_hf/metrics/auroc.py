"""Image- and pixel-level AUROC (the paper's I-AUROC and P-AUROC), via scikit-learn.

Why thin wrappers: ``sklearn.metrics.roc_auc_score`` is the reference implementation, but
it accepts NaN-free 1-d arrays only and fails with a terse message when one class is
missing; these functions take maps/masks as the detectors produce them (torch or numpy,
``[N, H, W]``) and say what to pass instead.
"""

from __future__ import annotations


from ._inputs import ArrayLike, check_maps_and_masks, check_scores_and_labels, require_both_classes


def image_auroc(scores: ArrayLike, labels: ArrayLike) -> float:
    """Area under the ROC curve of image scores.

    Args:
        scores: ``[N]`` anomaly scores (higher = more anomalous), torch or numpy.
        labels: ``[N]`` ground truth, 0 normal / 1 anomalous.

    Returns:
        AUROC in [0, 1]; ties count one half (Mann-Whitney U / (P * N)).
    """
    values, targets = check_scores_and_labels(scores, labels)
    require_both_classes(targets, "image AUROC", "image")
    from sklearn.metrics import roc_auc_score  # here, not at import (4 s): metric names stay light

    return float(roc_auc_score(targets, values))


def pixel_auroc(maps: ArrayLike, masks: ArrayLike) -> float:
    """Area under the ROC curve over all pixels of all images pooled together.

    Args:
        maps: ``[N, H, W]`` anomaly maps (``[N, 1, H, W]`` accepted).
        masks: ``[N, H, W]`` or ``[N, 1, H, W]`` ground truth in {0, 1}.

    Returns:
        Pixel AUROC in [0, 1].
    """
    score_maps, gt = check_maps_and_masks(maps, masks)
    flat_gt = gt.reshape(-1)
    require_both_classes(flat_gt, "pixel AUROC", "pixel")
    from sklearn.metrics import roc_auc_score

    return float(roc_auc_score(flat_gt, score_maps.reshape(-1)))

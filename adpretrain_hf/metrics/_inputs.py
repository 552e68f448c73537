"""Input checks shared by every metric.

Why a module of its own: the three metrics take the same kinds of input (torch tensors,
numpy arrays or nested lists from ``evaluate``) and must reject the same mistakes (NaN
scores, masks that are not {0, 1}, mismatched shapes) with the same clear messages.
torch is *not* imported here: a tensor can only be passed if torch is already loaded, so
numpy-only callers do not pay for the import.
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

ArrayLike = Any  # torch.Tensor | np.ndarray | nested sequences of numbers


def to_numpy(value: ArrayLike, name: str) -> np.ndarray:
    """Convert a tensor / array / nested list to a numpy array without copying when possible.

    Raises:
        TypeError: for ``None``, strings, or objects numpy turns into an ``object`` array.
    """
    if value is None:
        raise TypeError(f"{name} is None: pass a torch tensor or numpy array")
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        tensor = value.detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.float()
        return tensor.numpy()
    if isinstance(value, (str, bytes)):
        raise TypeError(f"{name} is a {type(value).__name__}: pass a torch tensor or numpy array")
    try:
        array = np.asarray(value)
    except ValueError as err:  # ragged nested lists
        raise TypeError(
            f"{name} could not be turned into an array ({err}): pass equally sized "
            "maps as one torch tensor or numpy array"
        ) from err
    if array.dtype == object or not (
        np.issubdtype(array.dtype, np.number) or array.dtype == np.bool_
    ):
        raise TypeError(
            f"{name} has dtype {array.dtype}: pass numbers (a float/int/bool tensor or array)"
        )
    return array


def as_scores(value: ArrayLike, name: str) -> np.ndarray:
    """Scores as a floating array, rejecting NaN/inf (a NaN would silently sort anywhere)."""
    array = to_numpy(value, name)
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    elif array.dtype not in (np.float32, np.float64):
        array = array.astype(np.float64)  # float16 etc.: exact widening keeps ties
    if array.size and not np.isfinite(array).all():
        bad = int((~np.isfinite(array)).sum())
        raise ValueError(
            f"{name} contains {bad} NaN/inf value(s): fix the scoring (or replace them, e.g. "
            "np.nan_to_num) before computing the metric"
        )
    return array


def as_binary(value: ArrayLike, name: str) -> np.ndarray:
    """Labels / masks as a bool array; values other than 0 and 1 are an error, not rounded."""
    array = to_numpy(value, name)
    if array.dtype == np.bool_:
        return array
    if np.issubdtype(array.dtype, np.floating) and array.size and not np.isfinite(array).all():
        raise ValueError(f"{name} contains NaN/inf: pass values in {{0, 1}}")
    if array.size and not np.isin(array, (0, 1)).all():
        found = np.unique(array)[:5].tolist()
        raise ValueError(
            f"{name} must hold only 0 and 1, found values such as {found}: binarise it first "
            "(e.g. mask > 0)"
        )
    return array.astype(bool)


def _drop_channel(array: np.ndarray, name: str) -> np.ndarray:
    """``[N, 1, H, W] -> [N, H, W]``; any other rank-4 shape is a mistake."""
    if array.ndim == 4:
        if array.shape[1] != 1:
            raise ValueError(
                f"{name} has shape {tuple(array.shape)}: a 4-d input must be [N, 1, H, W] "
                "(one channel); pass [N, H, W] maps"
            )
        return array[:, 0]
    return array


def check_maps_and_masks(maps: ArrayLike, masks: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate pixel-level inputs.

    Args:
        maps: anomaly maps ``[N, H, W]`` (or ``[N, 1, H, W]``), higher = more anomalous.
        masks: ground truth ``[N, H, W]`` or ``[N, 1, H, W]`` with values in {0, 1}.

    Returns:
        ``(maps [N, H, W] float32/float64, masks [N, H, W] bool)``.
    """
    score_maps = _drop_channel(as_scores(maps, "maps"), "maps")
    gt = _drop_channel(as_binary(masks, "masks"), "masks")
    if score_maps.ndim != 3:
        raise ValueError(
            f"maps has shape {tuple(score_maps.shape)}: expected [N, H, W] "
            "(for a single map use maps[None])"
        )
    if gt.shape != score_maps.shape:
        raise ValueError(
            f"masks shape {tuple(gt.shape)} does not match maps shape {tuple(score_maps.shape)}: "
            "resize the masks (nearest) or the maps (bilinear) to the same H, W"
        )
    if score_maps.size == 0:
        raise ValueError("maps is empty: pass at least one map with H, W > 0")
    return score_maps, gt


def check_scores_and_labels(scores: ArrayLike, labels: ArrayLike) -> tuple[np.ndarray, np.ndarray]:
    """Validate image-level inputs: ``scores [N]`` floats and ``labels [N]`` in {0, 1}."""
    values = as_scores(scores, "scores")
    targets = as_binary(labels, "labels")
    if values.ndim != 1 or targets.ndim != 1:
        raise ValueError(
            f"scores {tuple(values.shape)} and labels {tuple(targets.shape)} must both be 1-d "
            "[N]: flatten them (one score and one label per image)"
        )
    if values.shape != targets.shape:
        raise ValueError(
            f"scores has {values.shape[0]} entries but labels has {targets.shape[0]}: "
            "pass one label per score"
        )
    return values, targets


def require_both_classes(targets: np.ndarray, what: str, unit: str) -> None:
    """AUROC compares positives with negatives: both must exist."""
    positives = int(targets.sum())
    if positives == 0 or positives == targets.size:
        present = "anomalous (1)" if positives else "normal (0)"
        raise ValueError(
            f"{what} is undefined when every {unit} is {present}: pass {unit}s of both "
            "classes (at least one normal 0 and one anomalous 1)"
        )

"""Input validation shared by the losses and the center estimators.

Every error names the problem and the fix (house style). Checks look at shapes and dtypes only,
except for integer labels, whose values must be 0/1 (one reduction, no per-element Python work).
Numbers and choices are checked by ``check_positive`` / ``check_choice``, whose home is the loss
options' module (``LossOptions`` validates with them; remote code cannot import this package).
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

_FLOAT_DTYPES = (torch.float16, torch.bfloat16, torch.float32, torch.float64)


def check_chunk_size(chunk_size: int | None) -> int | None:
    """Return ``chunk_size`` if it is ``None`` or a positive int."""
    if chunk_size is None:
        return None
    if isinstance(chunk_size, bool) or not isinstance(chunk_size, int):
        raise TypeError(f"chunk_size must be an int or None, got {type(chunk_size).__name__}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size={chunk_size} is invalid: pass a positive number of anchors or None (automatic)")
    return chunk_size


def check_features(name: str, x: torch.Tensor, *, ndim: int | None = 3) -> torch.Tensor:
    """Check that ``x`` is a floating tensor (of ``ndim`` dims when given, shape ``[B, N, D]``)."""
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [B, N, D], got {type(x).__name__}")
    if x.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {x.dtype}: pass floating-point features (e.g. x.float())")
    if ndim is not None and x.ndim != ndim:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: expected [B, N, D] (batch, tokens, channels)")
    if ndim is None and x.ndim < 1:
        raise ValueError(f"{name} is a scalar: expected features of shape [..., D]")
    if x.shape[-1] == 0:
        raise ValueError(f"{name} has shape {tuple(x.shape)}: the channel dimension D must be > 0")
    return x


def check_labels(name: str, labels: torch.Tensor, shape: Sequence[int], device: torch.device) -> torch.Tensor:
    """Return ``labels`` as a bool tensor of ``shape`` on ``device`` (True = anomalous patch).

    Accepts bool tensors, or integer tensors holding only 0 and 1. Floating labels are refused:
    threshold them first (``labels > 0.5``) so that the rule is explicit.
    """
    if not isinstance(labels, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape {list(shape)}, got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex():
        raise TypeError(
            f"{name} has dtype {labels.dtype}: pass a bool mask (True = anomalous patch), "
            "e.g. labels > 0.5"
        )
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(
            f"{name} has shape {tuple(labels.shape)} but the features need {tuple(shape)}: "
            "pass one label per patch token ([B, N])"
        )
    if labels.dtype != torch.bool:
        if labels.numel() and bool(((labels != 0) & (labels != 1)).any()):
            raise ValueError(f"{name} holds values other than 0 and 1: pass a bool mask (True = anomalous patch)")
        labels = labels != 0
    return labels.to(device)


def check_center(name: str, center: torch.Tensor | None, dim: int) -> torch.Tensor | None:
    """Check that ``center`` is ``None`` or a floating tensor of shape ``[dim]``."""
    if center is None:
        return None
    if not isinstance(center, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of shape [{dim}] or None, got {type(center).__name__}")
    if center.dtype not in _FLOAT_DTYPES:
        raise TypeError(f"{name} has dtype {center.dtype}: pass a floating-point center")
    if tuple(center.shape) != (dim,):
        raise ValueError(
            f"{name} has shape {tuple(center.shape)}: expected [{dim}], one value per feature channel "
            "(CenterEstimator.compute() returns one such vector per layer)"
        )
    return center


def compute_dtype(x: torch.Tensor) -> torch.dtype:
    """The dtype the losses compute in: float64 stays float64, everything else becomes float32.

    Half-precision similarities, logsumexp and exponentials lose too much; the losses therefore
    upcast (and run with autocast disabled).
    """
    return torch.float64 if x.dtype == torch.float64 else torch.float32

"""Content keys of preprocessed pixels: equal pixels, equal key.

Why: reference banks are cached by the images they were computed from (the pipeline across
calls, the evaluation runner across cells); both use this one rule, so a key means the same
everywhere. Part of the remote-code bundle: imports only torch and hashlib.
"""

from __future__ import annotations

import hashlib
from typing import Sequence

import torch

DIGEST_BYTES = 16  # blake2b digest size: 128-bit keys


def pixel_hash(image: torch.Tensor) -> str:
    """A content key for one preprocessed image ``[3, H, W]`` (its float32 bytes)."""
    if not isinstance(image, torch.Tensor):
        raise TypeError(f"pixel_hash expects a torch.Tensor, got {type(image).__name__}: convert with torch.from_numpy")
    data = image.detach().float().cpu().contiguous().numpy().tobytes()
    return hashlib.blake2b(data, digest_size=DIGEST_BYTES).hexdigest()


def combine_keys(keys: Sequence[str]) -> str:
    """One key for an ordered list of keys (e.g. a reference set from its images' keys)."""
    keys = keys if isinstance(keys, str) else list(keys)  # a generator is read once
    if isinstance(keys, str) or not all(isinstance(key, str) for key in keys):
        raise TypeError(f"combine_keys expects a sequence of key strings, got {type(keys).__name__}: pass a list of keys")
    return hashlib.blake2b("|".join(keys).encode(), digest_size=DIGEST_BYTES).hexdigest()


__all__ = ["combine_keys", "pixel_hash"]

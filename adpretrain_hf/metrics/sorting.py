"""Sort pixels by score, carrying their region id: the one expensive step of AUPRO.

Why not just ``np.argsort``: on a category (200 maps of 224x224 = 10M pixels) argsort takes
~5 s on this machine's CPUs, while ``np.sort`` of plain 64-bit integers takes ~0.6 s. For
float32 maps (what the detectors produce) each pixel is packed into one uint64 — an
order-preserving 32-bit key of the score in the high half, the region id in the low half —
and that is sorted. Other dtypes fall back to argsort. Both give the same result: pixels in
decreasing score order with their region ids (the order *within* tied scores differs,
which AUPRO never looks at because it keeps one point per distinct score).
"""

from __future__ import annotations

from typing import Callable, NamedTuple

import numpy as np

_SIGN_BIT = np.uint32(0x80000000)
_LOW_32_BITS = np.uint64(0xFFFFFFFF)
_HALF = np.uint64(32)


class SortedPixels(NamedTuple):
    """Pixels in decreasing score order.

    Attributes:
        keys: ``[P]`` sort keys, equal exactly where the scores are equal (the scores
            themselves on the argsort path, uint32 keys on the packed path).
        region_ids: ``[P]`` region id of each pixel (0 = normal), unsigned or int64.
        to_scores: maps a selection of ``keys`` back to the float scores.
    """

    keys: np.ndarray
    region_ids: np.ndarray
    to_scores: Callable[[np.ndarray], np.ndarray]


def float32_order_key(scores: np.ndarray) -> np.ndarray:
    """uint32 keys whose unsigned order is the float order (finite float32 input).

    Positive floats get the sign bit set, negative floats have every bit flipped (their
    bit patterns grow with the magnitude). ``+ 0.0`` first turns -0.0 into +0.0 so that the
    two zeros, equal as floats, share one key.
    """
    bits = (scores + np.float32(0.0)).view(np.uint32)
    return np.where(bits >= _SIGN_BIT, ~bits, bits | _SIGN_BIT)


def float32_from_key(keys: np.ndarray) -> np.ndarray:
    """Inverse of :func:`float32_order_key` (uint32 keys -> float32 scores)."""
    bits = np.where(keys >= _SIGN_BIT, keys & ~_SIGN_BIT, ~keys)
    return bits.astype(np.uint32).view(np.float32)


def sort_by_score(scores: np.ndarray, region_ids: np.ndarray) -> SortedPixels:
    """Pixels in decreasing score order, with their region ids.

    Args:
        scores: ``[P]`` finite float scores (float32 takes the packed fast path).
        region_ids: ``[P]`` non-negative integer region ids (0 = normal pixel).
    """
    if scores.dtype == np.float32 and (region_ids.size == 0 or region_ids.max() <= _LOW_32_BITS):
        packed = float32_order_key(scores).astype(np.uint64) << _HALF
        packed |= region_ids.astype(np.uint64)
        packed.sort()
        packed = packed[::-1]
        keys = (packed >> _HALF).astype(np.uint32)
        return SortedPixels(keys, packed & _LOW_32_BITS, float32_from_key)
    order = np.argsort(scores)[::-1]
    return SortedPixels(scores[order], region_ids[order].astype(np.int64), np.asarray)

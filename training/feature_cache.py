"""Cache of frozen-backbone features of reference images across training steps.

The backbone is frozen and references are never augmented, so a reference image's
tokens are the same at every step. Each sample draws K in {1, 4, 8} references of its
class, so the same few hundred normal images are matched again and again: caching their
tokens removes up to 8 of the 10 backbone passes a sample costs (2 views + K refs).
Bounded: least recently used images are evicted beyond ``max_images``.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Sequence

import torch


class ReferenceFeatureCache:
    """Per-image backbone tokens, computed on first use.

    Args:
        backbone: callable ``pixel_values [n, 3, H, W] -> list of [n, N_l, C_l]``.
        load_pixels: ``row index -> [3, H, W]`` processed (not augmented) pixel values.
        device: where tokens are computed and kept.
        max_images: LRU capacity (0 disables caching: every call recomputes).
        batch_size: images per backbone pass when filling the cache.
    """

    def __init__(
        self,
        backbone: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        load_pixels: Callable[[int], torch.Tensor],
        device: torch.device,
        max_images: int = 4096,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
    ) -> None:
        self.backbone = backbone
        self.load_pixels = load_pixels
        self.device = device
        self.max_images = max_images
        self.batch_size = batch_size
        self.dtype = dtype
        self._store: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    @torch.no_grad()
    def _compute(self, indices: list[int]) -> dict[int, list[torch.Tensor]]:
        out: dict[int, list[torch.Tensor]] = {}
        for start in range(0, len(indices), self.batch_size):
            chunk = indices[start : start + self.batch_size]
            pixels = torch.stack([self.load_pixels(i) for i in chunk]).to(self.device, dtype=self.dtype)
            tokens = self.backbone(pixels)
            for j, index in enumerate(chunk):
                out[index] = [layer[j] for layer in tokens]
        return out

    def _remember(self, computed: dict[int, list[torch.Tensor]]) -> None:
        if self.max_images <= 0:
            return
        for index, tokens in computed.items():
            self._store[index] = tokens
            self._store.move_to_end(index)
        while len(self._store) > self.max_images:
            self._store.popitem(last=False)

    def banks(self, reference_indices: torch.Tensor) -> list[torch.Tensor]:
        """``reference_indices [B, K]`` -> per-layer banks ``[B, K*N_l, C_l]``."""
        if reference_indices.dim() != 2 or reference_indices.shape[1] == 0:
            raise ValueError("reference_indices must be [B, K] with K >= 1")
        flat = [int(i) for i in reference_indices.flatten().tolist()]
        unique = list(dict.fromkeys(flat))
        missing = [i for i in unique if i not in self._store]
        self.misses += len(missing)
        self.hits += len(unique) - len(missing)
        computed = self._compute(missing) if missing else {}
        self._remember(computed)
        lookup = {i: self._store[i] if i in self._store else computed[i] for i in unique}
        for index in unique:
            if index in self._store:
                self._store.move_to_end(index)
        batch, shots = reference_indices.shape
        num_layers = len(next(iter(lookup.values())))
        return [
            torch.stack([lookup[i][layer] for i in flat]).reshape(batch, -1, lookup[flat[0]][layer].shape[-1])
            for layer in range(num_layers)
        ]

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"cached_images": len(self), "hit_rate": self.hits / total if total else 0.0}

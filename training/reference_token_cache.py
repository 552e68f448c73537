"""Cache of frozen-backbone features of reference images across training steps.

The backbone is frozen and references are never augmented, so a reference image's
tokens are the same at every step. Each sample draws K in {1, 4, 8} references of its
class, so the same few hundred normal images are matched again and again: caching their
tokens removes up to 8 of the 10 backbone passes a sample costs (2 views + K refs).
Bounded: least recently used images are evicted beyond ``max_images``.

Exact resume needs an image's tokens to be the same bits whatever ran before: batched
conv/matmul kernels can round differently with the batch's size and content, and which
images miss together depends on history (a resumed run starts with an empty cache). So an
image is always computed in the same fixed group: consecutive chunks of the sorted
reference rows (``rows``); a miss computes its whole group, which also prefetches the
neighbours. Rows outside ``rows`` (or every row when ``rows`` is None) are computed alone.
"""

from __future__ import annotations

from collections import OrderedDict
from typing import Callable, Iterable, Optional, Sequence

import torch

from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank


class ReferenceTokenCache:
    """Per-image backbone tokens, computed on first use.

    Args:
        backbone_features: callable ``pixel_values [n, 3, H, W] -> list of [n, N_l, C_l]``: the
            model's public step ``model.backbone_features`` (a group is one call: one backbone pass).
        load_pixels: ``row index -> [3, H, W]`` processed (not augmented) pixel values.
        device: where tokens are computed and kept.
        max_images: LRU capacity (0 disables caching: every call recomputes).
        batch_size: images per backbone pass when filling the cache (the fixed group size).
        dtype: dtype of the pixels fed to the backbone (None = as loaded).
        rows: every row that may be asked for (the reference pools), split once into fixed
            groups of ``batch_size``; None = each image computed alone.
    """

    def __init__(
        self,
        backbone_features: Callable[[torch.Tensor], Sequence[torch.Tensor]],
        load_pixels: Callable[[int], torch.Tensor],
        device: torch.device,
        max_images: int = 4096,
        batch_size: int = 32,
        dtype: torch.dtype | None = None,
        rows: Optional[Iterable[int]] = None,
    ) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is invalid: pass the number of images per backbone pass (>= 1)")
        self.backbone_features = backbone_features
        self.load_pixels = load_pixels
        self.device = device
        self.max_images = max_images
        self.batch_size = batch_size
        self.dtype = dtype
        self._store: OrderedDict[int, list[torch.Tensor]] = OrderedDict()
        self._groups: dict[int, tuple[int, ...]] = {}
        ordered = sorted({int(i) for i in rows}) if rows is not None else []
        for start in range(0, len(ordered), batch_size):
            group = tuple(ordered[start : start + batch_size])
            self._groups.update({i: group for i in group})
        self.hits = 0
        self.misses = 0

    def __len__(self) -> int:
        return len(self._store)

    def group(self, index: int) -> tuple[int, ...]:
        """The rows always computed together with ``index`` (itself alone if it is in no group)."""
        return self._groups.get(index, (index,))

    @torch.no_grad()
    def _compute(self, indices: list[int]) -> dict[int, list[torch.Tensor]]:
        """Tokens of ``indices`` and of their groups' other members, one backbone pass per group."""
        out: dict[int, list[torch.Tensor]] = {}
        for index in indices:
            if index in out:
                continue
            chunk = self.group(index)
            pixels = torch.stack([self.load_pixels(i) for i in chunk]).to(self.device, dtype=self.dtype)
            tokens = self.backbone_features(pixels)
            for j, member in enumerate(chunk):
                out[member] = [layer[j] for layer in tokens]
        return out

    def _remember(self, computed: dict[int, list[torch.Tensor]]) -> None:
        if self.max_images <= 0:
            return
        for index, tokens in computed.items():
            self._store[index] = tokens
            self._store.move_to_end(index)
        while len(self._store) > self.max_images:
            self._store.popitem(last=False)

    def banks(self, reference_indices: torch.Tensor) -> ReferenceBank:
        """``reference_indices [B, K]`` -> per-image banks, per layer ``[B, K*N_l, C_l]`` (gathered from
        the distinct images' tokens when read, as the evaluation's aligned references are)."""
        if reference_indices.dim() != 2 or reference_indices.shape[1] == 0:
            raise ValueError("reference_indices must be [B, K] with K >= 1")
        flat = [int(i) for i in reference_indices.flatten().tolist()]
        unique = list(dict.fromkeys(flat))
        missing = [i for i in unique if i not in self._store]
        self.misses += len(missing)
        self.hits += len(unique) - len(missing)
        computed = self._compute(missing) if missing else {}
        lookup = {i: computed[i] if i in computed else self._store[i] for i in unique}  # before any eviction
        self._remember(computed)
        for index in unique:
            if index in self._store:
                self._store.move_to_end(index)
        position = {row: j for j, row in enumerate(unique)}
        pool = [torch.stack([lookup[i][layer] for i in unique]) for layer in range(len(lookup[unique[0]]))]  # [U, N_l, C_l]
        index = torch.tensor([[position[i] for i in row] for row in reference_indices.tolist()], dtype=torch.long)  # [B, K]
        return ReferenceBank.gathered(pool, index)

    def stats(self) -> dict[str, float]:
        total = self.hits + self.misses
        return {"cached_images": len(self), "hit_rate": self.hits / total if total else 0.0}

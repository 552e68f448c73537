"""One backbone pass per image in an evaluation: features cached by image content and reference set.

Why: every method of Table 1, both the "w/o" and "w/" cells, the reference bank and the
KMeans/aligned strategies all need the same backbone tokens of the same images; without a
cache the backbone ran 4.3x per distinct image (issue 14). :class:`FeatureCache` keeps, per
image (key: a hash of its preprocessed pixels), the backbone tokens, and per (image, reference
set) the residual and projected tokens, each ``[N_l, C_l]`` per layer in the model's dtype.
Entries live in memory up to a budget and spill to safetensors files on disk after it.
:class:`DirectSource` is the same interface without storage (the cache switched off), which
also counts the images the backbone sees.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass, field
from typing import Any, Optional, Sequence

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from ..extractor import REFERENCE_KINDS, FeaturePass, TokenLayers, feature_pass
from ..modeling.modeling_adpretrain import ADPretrainModel
from ..modeling.reference_bank_adpretrain import ReferenceBank, batch_keys
from .config import DEFAULT_FEATURE_CACHE_MB

BYTES_PER_MB = 2**20
SPILL_PREFIX = "adpretrain-feature-cache-"
NO_REFERENCES = "no-references"  # bank key of a model whose features do not depend on references


@dataclass
class CacheStats:
    """Counters of one category: how often the backbone and projectors ran, what was stored where."""

    backbone_images: int = 0  # images run through the backbone
    projector_images: int = 0  # images run through the residual + projector step
    distinct: set[str] = field(default_factory=set)  # content keys of every image asked for
    memory_bytes: int = 0
    disk_bytes: int = 0
    spill_files: int = 0

    def to_json(self) -> dict[str, Any]:
        return {
            "backbone_images": self.backbone_images, "projector_images": self.projector_images,
            "distinct_images": len(self.distinct), "memory_mb": round(self.memory_bytes / BYTES_PER_MB, 3),
            "disk_mb": round(self.disk_bytes / BYTES_PER_MB, 3), "spill_files": self.spill_files,
        }


class DirectSource:
    """No cache: every request runs its own pass (the behaviour before issue 14), counted."""

    def __init__(self) -> None:
        self.stats = CacheStats()

    def tokens(
        self, model: ADPretrainModel, kind: str, pixel_values: torch.Tensor, bank: Optional[ReferenceBank],
        batch_size: Optional[int] = None, image_keys: Optional[Sequence[str]] = None,
    ) -> TokenLayers:
        """Per layer ``[B, N_l, C_l]`` of ``kind`` for ``pixel_values [B, 3, H, W]`` (backbone in chunks of
        ``batch_size``). The content keys (``image_keys`` when given) only count distinct images."""
        self.stats.distinct.update(batch_keys(pixel_values) if image_keys is None else image_keys)
        self.stats.backbone_images += pixel_values.shape[0]
        if kind not in REFERENCE_KINDS:
            return model.backbone_features(pixel_values, batch_size)
        self.stats.projector_images += pixel_values.shape[0]
        return feature_pass(model, pixel_values, bank, batch_size=batch_size).get(kind)

    def close(self) -> None:
        """Nothing to release (same surface as :class:`FeatureCache`)."""


class FeatureCache:
    """Tokens by (image content, reference set), in memory up to ``budget_mb`` then on disk.

    Args:
        budget_mb: memory for entries (0: every entry goes to disk).
        spill_dir: folder for the spill files' temporary folder (default: the system's temp).
        kinds: reference-dependent kinds worth keeping (``"residual"``, ``"pretrained"``);
            backbone tokens are always kept, the other kinds derive from them.

    :meth:`admit` restricts storage to known images (the category's): images a detector makes
    itself (GLASS's augmentations, new every epoch) are computed but never stored.
    """

    def __init__(self, budget_mb: float = DEFAULT_FEATURE_CACHE_MB, spill_dir: Optional[str] = None, kinds: Sequence[str] = REFERENCE_KINDS) -> None:
        if budget_mb < 0:
            raise ValueError(f"feature cache budget {budget_mb} MB is negative: pass 0 (all on disk) or more")
        self.budget_bytes = int(budget_mb * BYTES_PER_MB)
        self.spill_dir = spill_dir
        self.kinds = tuple(k for k in kinds if k in REFERENCE_KINDS)
        self.stats = CacheStats()
        self._memory: dict[str, list[torch.Tensor]] = {}
        self._disk: dict[str, tuple[str, int, int]] = {}  # key -> (file, first tensor index, layers)
        self._folder: Optional[str] = None
        self._admitted: Optional[set[str]] = None

    def admit(self, pixel_values: torch.Tensor) -> None:
        """Store features only of these images ``[N, 3, H, W]`` (and others admitted before)."""
        if self._admitted is None:
            self._admitted = set()
        self._admitted.update(batch_keys(pixel_values))

    # -- lookup -----------------------------------------------------------------------
    @staticmethod
    def _key(kind: str, image_key: str, bank_key: Optional[str]) -> Optional[str]:
        if kind not in REFERENCE_KINDS:
            return f"{image_key}/backbone"
        return None if bank_key is None else f"{image_key}/{bank_key}/{kind}"

    @staticmethod
    def _bank_key(model: ADPretrainModel, bank: Optional[ReferenceBank], row: int) -> Optional[str]:
        """The reference set image ``row`` is matched against (``None``: unknown, not cacheable)."""
        if not model.config.needs_references:
            return NO_REFERENCES
        return None if bank is None else bank.key_for(row)

    def __contains__(self, key: Optional[str]) -> bool:
        return key is not None and (key in self._memory or key in self._disk)

    def _get_many(self, keys: list[str], device: torch.device) -> dict[str, list[torch.Tensor]]:
        """Several entries; each spill file is opened once."""
        found = {key: self._memory[key] for key in keys if key in self._memory}
        by_file: dict[str, list[str]] = {}
        for key in keys:
            if key not in found:
                by_file.setdefault(self._disk[key][0], []).append(key)
        for path, file_keys in by_file.items():
            with safe_open(path, framework="pt", device=str(device)) as handle:
                for key in file_keys:
                    _, start, layers = self._disk[key]
                    found[key] = [handle.get_tensor(str(start + layer)) for layer in range(layers)]
        return found

    def tokens(
        self, model: ADPretrainModel, kind: str, pixel_values: torch.Tensor, bank: Optional[ReferenceBank],
        batch_size: Optional[int] = None, image_keys: Optional[Sequence[str]] = None,
    ) -> TokenLayers:
        """Per layer ``[B, N_l, C_l]`` of ``kind`` for ``pixel_values [B, 3, H, W]``; misses run one
        pass (the backbone ``batch_size`` images at a time). ``image_keys``: the images'
        :func:`~adpretrain_hf.modeling.reference_bank_adpretrain.batch_keys` when the caller has them (else computed here)."""
        hashes = batch_keys(pixel_values) if image_keys is None else list(image_keys)
        self.stats.distinct.update(hashes)
        keys = [self._key(kind, h, self._bank_key(model, bank, i)) for i, h in enumerate(hashes)]
        missing = [i for i, key in enumerate(keys) if key not in self]
        fresh: dict[int, list[torch.Tensor]] = {}
        if missing:
            fresh = self._compute(model, kind, pixel_values, hashes, bank, missing, batch_size)
        device = next(model.parameters()).device
        stored = self._get_many([key for i, key in enumerate(keys) if i not in fresh], device)  # type: ignore[misc]
        rows = [fresh[i] if i in fresh else stored[key] for i, key in enumerate(keys)]  # type: ignore[index]
        return [torch.stack([row[layer] for row in rows]) for layer in range(len(rows[0]))]

    # -- computing and storing -------------------------------------------------------
    def _compute(
        self, model: ADPretrainModel, kind: str, pixel_values: torch.Tensor, hashes: list[str],
        bank: Optional[ReferenceBank], missing: list[int], batch_size: Optional[int] = None,
    ) -> dict[int, list[torch.Tensor]]:
        """One pass over the missing rows (backbone skipped where its tokens are cached); store and return them."""
        device = next(model.parameters()).device
        have_tokens = [i for i in missing if self._key("backbone", hashes[i], None) in self]
        need_tokens = [i for i in missing if i not in set(have_tokens)]
        out: dict[int, list[torch.Tensor]] = {}
        for rows, cached in ((need_tokens, False), (have_tokens, True)):
            if not rows:
                continue
            index = torch.tensor(rows)
            tokens = None
            if cached:
                token_keys: list[str] = [self._key("backbone", hashes[i], None) for i in rows]  # type: ignore[misc]
                got = self._get_many(token_keys, device)
                per_row = [got[key] for key in token_keys]
                tokens = [torch.stack([row[layer] for row in per_row]) for layer in range(len(per_row[0]))]
            sub_bank = bank.rows(index) if bank is not None and kind in REFERENCE_KINDS else None
            if kind not in REFERENCE_KINDS:  # the backbone alone: no projector for a "w/o" request
                result = FeaturePass(tokens if tokens is not None else model.backbone_features(pixel_values[index], batch_size))
            else:
                result = feature_pass(model, pixel_values[index], sub_bank, tokens, batch_size)
                self.stats.projector_images += len(rows)
            if not cached:
                self.stats.backbone_images += len(rows)
            entries: dict[str, list[torch.Tensor]] = {}
            for j, i in enumerate(rows):
                out[i] = [layer[j] for layer in result.get(kind)]
                if self._admitted is not None and hashes[i] not in self._admitted:  # not admitted: not stored
                    continue
                backbone_key = self._key("backbone", hashes[i], None)
                if not cached and backbone_key is not None:
                    entries[backbone_key] = [layer[j].clone() for layer in result.backbone]  # not a view of the batch
                for other in self.kinds:
                    value = getattr(result, other)
                    other_key = self._key(other, hashes[i], self._bank_key(model, sub_bank, j))
                    if value is not None and other_key is not None:
                        entries[other_key] = [layer[j].clone() for layer in value]
            self._put(entries)
        return out

    def _put(self, entries: dict[str, list[torch.Tensor]]) -> None:
        """Keep entries in memory while the budget allows; write the rest to one safetensors file.

        Entry by entry: a whole pool encoded in one call (``source.tokens(..., batch_size=...)``) fills the memory
        budget first and spills only what does not fit.
        """
        spilled: dict[str, list[torch.Tensor]] = {}
        for key, tensors in entries.items():
            entry_bytes = sum(t.numel() * t.element_size() for t in tensors)
            if not spilled and self.stats.memory_bytes + entry_bytes <= self.budget_bytes:
                self._memory[key] = tensors
                self.stats.memory_bytes += entry_bytes
            else:
                spilled[key] = tensors
        if not spilled:
            return
        entries = spilled
        size = sum(t.numel() * t.element_size() for tensors in entries.values() for t in tensors)
        if self._folder is None:
            self._folder = tempfile.mkdtemp(prefix=SPILL_PREFIX, dir=self.spill_dir)
        path = os.path.join(self._folder, f"{self.stats.spill_files:06d}.safetensors")
        flat: dict[str, torch.Tensor] = {}
        for key, tensors in entries.items():
            start = len(flat)
            for layer, tensor in enumerate(tensors):
                flat[str(start + layer)] = tensor.detach().contiguous()
            self._disk[key] = (path, start, len(tensors))
        save_file(flat, path)
        self.stats.spill_files += 1
        self.stats.disk_bytes += size

    def close(self) -> None:
        """Drop every entry and delete the spill files (call after a category)."""
        self._memory.clear()
        self._disk.clear()
        if self._folder is not None:
            shutil.rmtree(self._folder, ignore_errors=True)
            self._folder = None


def shared_bank(source: Any, model: ADPretrainModel, reference_pixel_values: torch.Tensor, batch_size: int) -> ReferenceBank:
    """The reference bank of ``[K, 3, H, W]`` normal images from the source's backbone tokens (no re-encoding when cached)."""
    if reference_pixel_values.shape[0] == 0:
        raise ValueError("the reference set is empty: pass at least one normal image")
    keys = batch_keys(reference_pixel_values)
    return ReferenceBank.from_tokens(source.tokens(model, "backbone", reference_pixel_values, None, batch_size=batch_size, image_keys=keys), keys)

"""``ReferenceBank``: the normal reference tokens that residual features are matched against,
the ONE reference-bank type of the package (issue 21).

A bank is per tapped layer ``[M_l, C_l]`` shared by every image (a few normal images' backbone
tokens), or ``[B, M_l, C_l]`` one bank per image of a batch (pretraining's K references per
sample, evaluation's semantic-aligned references). It is a value passed explicitly to
``model.forward(reference_features=bank.layers)`` / ``model.residuals``; the model keeps one
only as a user convenience (``model.set_references``). With content keys a cache can key the
features computed against it, and a shared bank of whole images knows its members, so an image
that is itself a reference is matched against the others only (:func:`leave_one_out_groups`).

Part of the remote-code bundle: imports only torch and its siblings.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

import torch

from .content_keys_adpretrain import combine_keys, pixel_hash

REFERENCE_BATCH_SIZE = 32
"""Reference images per backbone pass when a bank is computed from pixels."""


def batch_keys(pixel_values: torch.Tensor) -> list[str]:
    """``pixel_hash`` of each image of ``[B, 3, H, W]``, from one float32 CPU copy of the batch
    (``pixel_hash`` alone copies image by image): the same keys, one device transfer."""
    batch = pixel_values.detach().float().cpu()
    return [pixel_hash(image) for image in batch]


class ReferenceBank:
    """Normal reference tokens handed to ``model.forward(reference_features=bank.layers)``.

    Args:
        layers: per tapped layer ``[M_l, C_l]`` shared by every image, or ``[B, M_l, C_l]`` one
            bank per image of a batch.
        keys: one content key for a shared bank, or one per image for per-image banks; features
            computed against equal keys are equal, so a cache may key them by it (``None``: not
            cacheable).
        members: for a shared bank built from whole images, each reference image's content key,
            in bank order (each image owns ``M_l / K`` consecutive tokens of layer ``l``); it lets
            :meth:`without` drop one of them.

    :meth:`gathered` builds per-image banks that are gathered from a pool's tokens only when
    :attr:`layers` is read: a feature cache needs only the keys of the images it holds, so only
    its misses (:meth:`rows`) pay for the gather.
    """

    def __init__(
        self, layers: Sequence[torch.Tensor], keys: Optional[Sequence[str]] = None, members: Optional[Sequence[str]] = None
    ) -> None:
        self._layers = tuple(layers)
        self.keys = None if keys is None else tuple(keys)
        self.members = None if members is None else tuple(members)
        self._pool: Optional[tuple[torch.Tensor, ...]] = None  # gathered banks: per layer [N_pool, N_l, C_l]
        self._index: Optional[torch.Tensor] = None  # gathered banks: [B, k] pool positions per image

    @classmethod
    def gathered(
        cls, pool_tokens: Sequence[torch.Tensor], index: torch.Tensor, keys: Optional[Sequence[str]] = None
    ) -> "ReferenceBank":
        """Per-image banks ``[B, k*N_l, C_l]`` of the pool images ``index [B, k]``, from the pool's tokens
        per layer ``[N_pool, N_l, C_l]``; ``keys``: per image, the key of its reference set (``None``: not
        cacheable). No members: the caller never draws an image as its own reference (the aligned
        matcher skips it, pretraining's sampler excludes it)."""
        bank = cls((), keys)
        bank._pool, bank._index = tuple(pool_tokens), index
        return bank

    @property
    def layers(self) -> tuple[torch.Tensor, ...]:
        """Per layer ``[M_l, C_l]`` or ``[B, M_l, C_l]`` (a gathered bank gathers on every read: read it once)."""
        if self._pool is None:
            return self._layers
        return tuple(layer[self._index.to(layer.device)].flatten(1, 2) for layer in self._pool)

    @property
    def per_image(self) -> bool:
        return self._pool is not None or self._layers[0].dim() == 3

    def key_for(self, row: int) -> Optional[str]:
        """The bank's key as seen by image ``row`` of the batch."""
        if self.keys is None:
            return None
        return self.keys[row] if self.per_image else self.keys[0]

    def rows(self, index: torch.Tensor) -> "ReferenceBank":
        """The banks of some images of the batch (a shared bank is returned unchanged; a gathered
        bank stays ungathered)."""
        if not self.per_image:
            return self
        keys = None if self.keys is None else tuple(self.keys[i] for i in index.tolist())
        if self._pool is not None:
            return ReferenceBank.gathered(self._pool, self._index[index.to(self._index.device)], keys)
        return ReferenceBank(tuple(layer[index.to(layer.device)] for layer in self._layers), keys)

    def without(self, member: str) -> "ReferenceBank":
        """The shared bank without reference image ``member``'s tokens (leave-one-out).

        A normal image matched against a bank that holds its own tokens has an all-zero residual
        (every token's nearest reference is itself), unlike any other normal image; detectors fit
        on such images learn a point mass that no test image shows. Pretraining never draws an
        image as its own reference, and the aligned strategy excludes it: this does the same for
        a shared set. A bank of one image is returned unchanged (nothing would be left).
        """
        if self.members is None or member not in self.members or len(self.members) < 2:
            return self
        index = self.members.index(member)
        count = len(self.members)
        kept = []
        for layer in self._layers:
            per_member = layer.shape[0] // count
            kept.append(torch.cat([layer[: index * per_member], layer[(index + 1) * per_member :]]))
        members = self.members[:index] + self.members[index + 1 :]
        return ReferenceBank(tuple(kept), (combine_keys(list(members)),), members)

    @classmethod
    def from_tokens(cls, tokens: Sequence[torch.Tensor], image_keys: Optional[Sequence[str]] = None) -> "ReferenceBank":
        """A shared bank from the references' tokens (per layer ``[K, N_l, C_l]`` -> ``[K*N_l, C_l]``)."""
        keys = None if image_keys is None else (combine_keys(list(image_keys)),)
        return cls(tuple(layer.flatten(0, 1) for layer in tokens), keys, image_keys)

    @classmethod
    def from_pixels(cls, model: Any, reference_pixel_values: torch.Tensor, batch_size: int = REFERENCE_BATCH_SIZE) -> "ReferenceBank":
        """A shared bank of normal images ``[K, 3, H, W]`` (one backbone pass over them, in chunks
        of ``batch_size`` moved to the model's device and dtype by ``model.backbone_features``)."""
        bank = model.compute_reference_bank(reference_pixel_values, batch_size)
        image_keys = batch_keys(reference_pixel_values)
        return cls(tuple(bank), (combine_keys(image_keys),), image_keys)


def leave_one_out_groups(
    pixel_values: torch.Tensor, bank: Optional[ReferenceBank], keys: Optional[Sequence[str]] = None
) -> list[tuple[torch.Tensor, Optional[ReferenceBank]]]:
    """Split a batch ``[B, 3, H, W]`` by the bank each image must be matched against.

    Images that are members of a shared bank get the bank without themselves
    (:meth:`ReferenceBank.without`); all others share ``bank``. Returns ``(row indices, bank)``
    pairs covering the batch; one pair when no image is a reference. ``keys``: the images'
    :func:`batch_keys` if the caller has them; else they are computed only for a bank with members.
    """
    everyone = torch.arange(pixel_values.shape[0])
    if bank is None or bank.members is None or bank.per_image or len(bank.members) < 2:
        return [(everyone, bank)]
    keys = batch_keys(pixel_values) if keys is None else list(keys)
    members = set(bank.members)
    if not members.intersection(keys):
        return [(everyone, bank)]
    others = [row for row, key in enumerate(keys) if key not in members]
    groups = [(torch.tensor(others, dtype=torch.long), bank)] if others else []
    for row, key in enumerate(keys):
        if key in members:
            groups.append((torch.tensor([row], dtype=torch.long), bank.without(key)))
    return groups

"""The reference-feature cache: the backbone's own tokens, each image computed once, history-free."""

import pytest
import torch

from adpretrain_hf.training.reference_token_cache import ReferenceTokenCache


def test_reference_cache_returns_the_backbones_tokens(tiny_clip_model):
    images = torch.randn(5, 3, 64, 64)
    calls = []

    def backbone(pixels):
        calls.append(pixels.shape[0])
        return tiny_clip_model.backbone(pixels)

    cache = ReferenceTokenCache(backbone, lambda i: images[i], torch.device("cpu"), max_images=3)
    indices = torch.tensor([[0, 1], [1, 4]])
    banks = cache.banks(indices)
    direct = tiny_clip_model.backbone(images)
    assert banks.per_image and banks.keys is None
    for layer, bank in enumerate(banks.layers):
        assert bank.shape == (2, 2 * 64, 32)
        expected = torch.cat([direct[layer][0], direct[layer][1]])
        assert torch.allclose(bank[0], expected, atol=1e-6)
    assert sum(calls) == 3  # three distinct images computed once
    cache.banks(torch.tensor([[4, 1]]))
    assert sum(calls) == 3 and cache.hits == 2  # served from the cache
    cache.banks(torch.tensor([[2, 3]]))
    assert len(cache) == 3  # LRU bound holds


def test_reference_tokens_do_not_depend_on_what_was_computed_before():
    """A backbone whose tokens depend on the rest of its batch (as batched kernels can, by an
    ulp) must still give an image the same tokens whatever the cache's history: a resumed run
    starts with an empty cache and must see the uninterrupted run's bits."""
    images = torch.randn(7, 3, 4, 4)
    rows = [0, 2, 3, 4, 6]  # the reference pool; groups of 2: (0, 2), (3, 4), (6,)
    calls = []

    def batch_mixing(pixels):
        calls.append(pixels.shape[0])
        tokens = pixels.flatten(2).transpose(1, 2)  # [n, 16, 3]
        return [tokens + pixels.mean(), tokens * pixels.std()]

    def direct(group, index):
        out = batch_mixing(images[list(group)])
        return [layer[group.index(index)] for layer in out]

    busy = ReferenceTokenCache(batch_mixing, lambda i: images[i], torch.device("cpu"), max_images=2, batch_size=2, rows=rows)
    busy.banks(torch.tensor([[3, 0], [6, 2]]))
    busy.banks(torch.tensor([[4, 6]]))
    fresh = ReferenceTokenCache(batch_mixing, lambda i: images[i], torch.device("cpu"), max_images=2, batch_size=2, rows=rows)
    query = torch.tensor([[2, 4, 1], [6, 0, 3]])  # 1 is outside the pool: computed alone
    calls.clear()
    fresh_banks = fresh.banks(query)
    assert sorted(calls) == [1, 1, 2, 2]  # groups (0, 2), (3, 4) and (6,), and row 1 alone
    for layer, (a, b) in enumerate(zip(busy.banks(query).layers, fresh_banks.layers, strict=True)):
        assert torch.equal(a, b)  # bit for bit, whatever came before
        for sample, picked in enumerate(query.tolist()):
            groups = {0: (0, 2), 2: (0, 2), 3: (3, 4), 4: (3, 4), 6: (6,), 1: (1,)}
            expected = torch.cat([direct(groups[i], i)[layer] for i in picked])
            assert torch.equal(b[sample], expected)
    with pytest.raises(ValueError, match="batch_size"):
        ReferenceTokenCache(batch_mixing, lambda i: images[i], torch.device("cpu"), batch_size=0)

"""ReferenceBank, the one reference-bank type: leave-one-out of a shared bank's members, per-image
rows, and gathered (lazy) per-image banks equal to the same banks built eagerly (that only cache
misses gather: tests/evaluation/test_reference_sets.py)."""

import torch

from adpretrain_hf.modeling.content_keys_adpretrain import combine_keys, pixel_hash
from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank, batch_keys, leave_one_out_groups


def _images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 64, 64, generator=generator)


def test_without_drops_exactly_one_members_tokens(tiny_clip_model):
    references = _images(3, seed=1)
    bank = ReferenceBank.from_pixels(tiny_clip_model, references)
    keys = [pixel_hash(image) for image in references]
    assert bank.members == tuple(keys)
    smaller = bank.without(keys[1])
    expected = tiny_clip_model.compute_reference_bank(references[[0, 2]])
    for got, want in zip(smaller.layers, expected):
        torch.testing.assert_close(got, want)
    assert smaller.members == (keys[0], keys[2]) and smaller.keys != bank.keys
    single = ReferenceBank.from_pixels(tiny_clip_model, references[:1])
    assert single.without(keys[0]) is single  # one reference: nothing would be left, keep it


def test_batches_without_references_stay_one_group(tiny_clip_model):
    bank = ReferenceBank.from_pixels(tiny_clip_model, _images(2, seed=2))
    groups = leave_one_out_groups(_images(4, seed=3), bank)
    assert len(groups) == 1 and groups[0][1] is bank and groups[0][0].tolist() == [0, 1, 2, 3]


def test_batch_keys_are_each_images_pixel_hash():
    images = _images(3, seed=6)
    assert batch_keys(images) == [pixel_hash(image) for image in images]


def test_gathered_banks_equal_the_eager_per_image_banks():
    g = torch.Generator().manual_seed(7)
    pool = [torch.randn(5, 4, 3, generator=g), torch.randn(5, 2, 6, generator=g)]  # per layer [N_pool, N_l, C_l]
    index = torch.tensor([[0, 3], [4, 1], [2, 2]])  # [B, k]
    keys = tuple(combine_keys([str(j) for j in row.tolist()]) for row in index)
    eager = ReferenceBank([torch.stack([layer[row].reshape(-1, layer.shape[-1]) for row in index]) for layer in pool], keys)
    lazy = ReferenceBank.gathered(pool, index, keys)
    assert lazy.per_image and eager.per_image and lazy.members is None
    for got, want in zip(lazy.layers, eager.layers):
        assert got.shape == want.shape and torch.equal(got, want)
    rows = torch.tensor([2, 0])
    for got, want in zip(lazy.rows(rows).layers, eager.rows(rows).layers):
        assert torch.equal(got, want)
    assert lazy.rows(rows).keys == eager.rows(rows).keys == (keys[2], keys[0])
    assert [lazy.key_for(i) for i in range(3)] == list(keys)
    assert lazy.without("anything") is lazy  # no members: leave-one-out is the matcher's


def test_a_shared_bank_is_one_key_for_every_row():
    g = torch.Generator().manual_seed(8)
    bank = ReferenceBank.from_tokens([torch.randn(2, 4, 3, generator=g)], ["a", "b"])
    assert not bank.per_image and bank.layers[0].shape == (8, 3)
    assert bank.key_for(0) == bank.key_for(5) == combine_keys(["a", "b"]) and bank.members == ("a", "b")
    assert bank.rows(torch.tensor([1])) is bank

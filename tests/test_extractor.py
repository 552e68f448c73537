"""Reference images are never matched against themselves (leave-one-out), in the extractor and the runner."""

import pytest
import torch

from adpretrain_hf.extractor import ModelFeatureExtractor
from adpretrain_hf.modeling.content_keys_adpretrain import pixel_hash
from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank, leave_one_out_groups


def _images(n: int, seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(n, 3, 64, 64, generator=generator)


def test_a_reference_in_the_batch_is_matched_against_the_other_references_only(tiny_clip_model):
    images = _images(5)
    references = images[:3]  # images 0..2 are references and also in the batch (as in a fit set)
    extractor = ModelFeatureExtractor(tiny_clip_model, feature_kind="residual")
    extractor.set_references(references)
    maps = extractor(images)

    # Independently: image i < 3 against the bank of the two other references; 3, 4 against all three.
    for i in range(5):
        others = [j for j in range(3) if j != i]
        bank = [layer for layer in tiny_clip_model.compute_reference_bank(references[others])]
        out = tiny_clip_model(images[i : i + 1], reference_features=bank, output_anomaly_map=False)
        for layer, grid_map in zip(out.residuals, maps):
            expected = layer[0].float().T.reshape(grid_map.shape[1:])
            torch.testing.assert_close(grid_map[i], expected, rtol=1e-5, atol=1e-5)
    # The bug this prevents: against a bank holding itself, every residual of a reference is 0.
    assert all(float(m[:3].abs().amax()) > 0 for m in maps)


def test_the_runners_shared_bank_knows_its_members(tiny_clip_model):
    """The evaluation builds its shared bank through ``shared_bank``: it must carry the members,
    or fit images that are references would silently get all-zero residuals again."""
    from adpretrain_hf.evaluation.image_feature_cache import DirectSource, shared_bank

    references = _images(3, seed=4)
    bank = shared_bank(DirectSource(), tiny_clip_model, references, batch_size=2)
    assert bank.members == tuple(pixel_hash(image) for image in references)
    groups = leave_one_out_groups(torch.cat([references[1:2], _images(1, seed=5)]), bank)
    assert [rows.tolist() for rows, _ in groups] == [[1], [0]]
    assert groups[1][1].members == (bank.members[0], bank.members[2])


def test_layer_positions_pick_from_the_tapped_layers(tiny_clip_model):
    """``layer_positions`` are 0-based positions in ``config.layers`` (not block numbers)."""
    images = _images(2, seed=5)
    everything = ModelFeatureExtractor(tiny_clip_model, feature_kind="backbone")(images)
    tokens = tiny_clip_model.backbone_features(images)  # independent: the model's step, gridded here
    side = tiny_clip_model.grid_sizes[0][0]
    picked = ModelFeatureExtractor(tiny_clip_model, feature_kind="backbone", layer_positions=[3, 1])(images)
    for got, position in zip(picked, [3, 1]):
        expected = tokens[position].float().transpose(1, 2).reshape(2, -1, side, side)
        torch.testing.assert_close(got, expected)
        torch.testing.assert_close(got, everything[position])
    with pytest.raises(TypeError, match="layers"):  # the old keyword is gone (one name per concept)
        ModelFeatureExtractor(tiny_clip_model, feature_kind="backbone", layers=[3, 1])
    with pytest.raises(ValueError, match="out of range.*positions 0..3"):
        ModelFeatureExtractor(tiny_clip_model, feature_kind="backbone", layer_positions=[4])


def test_each_image_is_hashed_once_per_call(tiny_clip_model, monkeypatch):
    """A cached call with a reference in the batch needs the keys for the cache and for
    leave-one-out: computed once in the extractor and passed down."""
    import hashlib

    from adpretrain_hf.evaluation.image_feature_cache import DirectSource, FeatureCache

    images = _images(4, seed=6)
    bank = ReferenceBank.from_pixels(tiny_clip_model, images[:2])
    hashed = []
    original = hashlib.blake2b
    image_bytes = images[0].numel() * 4  # pixel_hash digests an image's float32 bytes (combine_keys: short strings)

    def counting(data, **kwargs):
        if len(data) == image_bytes:
            hashed.append(1)
        return original(data, **kwargs)

    monkeypatch.setattr(hashlib, "blake2b", counting)
    for source in (FeatureCache(), DirectSource()):
        hashed.clear()
        ModelFeatureExtractor(tiny_clip_model, "residual", references=bank, source=source)(images)
        assert len(hashed) == 4
    hashed.clear()
    ModelFeatureExtractor(tiny_clip_model, "residual", references=ReferenceBank(bank.layers))(images)
    assert hashed == []  # no cache and no members: nothing needs a key

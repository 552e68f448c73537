"""adpretrain_hf.evaluation.reference_sets: the aligned plan and its per-image reference banks."""

import warnings

import torch

from adpretrain_hf.evaluation.reference_sets import PerImageReferenceExtractor, plan_references
from adpretrain_hf.extractor import ModelFeatureExtractor


def test_aligned_plan_clamps_k_and_gives_each_image_its_own_bank(model):
    """The references themselves are tested in test_references.py; here: the plan and the per-image banks."""
    g = torch.Generator().manual_seed(0)
    pool, queries = torch.randn(5, 3, 64, 64, generator=g), torch.randn(2, 3, 64, 64, generator=g)
    pool_ids, test_ids = [f"tile/train/{i}" for i in range(5)], ["tile/test/0", "tile/test/1"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init matcher
        plan = plan_references("aligned", model, pool, k=5, seed=0, pool_ids=pool_ids, pool_paths=[None] * 5,
                               test_pixel_values=queries, test_ids=test_ids, batch_size=4, device="cpu")
    assert plan.k == 4 and plan.record["k"] == 4  # 5 pool images, one of them a training image's self
    aligned = plan.aligned
    own = aligned.indices(pool)
    assert all(sorted(own[i].tolist()) == sorted(set(range(5)) - {i}) for i in range(5))  # all but itself
    refs = aligned.indices(queries)
    assert plan.record["per_test_image"] == {t: [pool_ids[j] for j in row.tolist()] for t, row in zip(test_ids, refs)}
    # Per-image banks give each image exactly what a call with its own references gives.
    extractor = PerImageReferenceExtractor(ModelFeatureExtractor(model, "pretrained"), aligned)
    batched = extractor(queries)
    for i in range(2):
        alone = model(queries[i : i + 1], reference_pixel_values=pool[refs[i]], output_anomaly_map=False).features
        assert torch.allclose(batched[-1][i].flatten(1).T, alone[-1][0].float(), atol=1e-5)
    assert model.reference_bank is None  # restored


def test_aligned_banks_are_gathered_only_for_cache_misses(model, monkeypatch):
    """The per-image bank is lazy: images whose features are cached never have theirs gathered,
    and a call through the cache gives what the uncached extractor gives."""
    from adpretrain_hf.evaluation.image_feature_cache import FeatureCache
    from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank

    g = torch.Generator().manual_seed(1)
    pool, queries = torch.randn(4, 3, 64, 64, generator=g), torch.randn(3, 3, 64, 64, generator=g)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # random-init matcher
        plan = plan_references("aligned", model, pool, k=2, seed=0, pool_ids=[str(i) for i in range(4)], pool_paths=[None] * 4,
                               test_pixel_values=queries, test_ids=["a", "b", "c"], batch_size=4, device="cpu")
    gathered = []
    original = ReferenceBank.layers.fget

    def counted(self):
        if self._index is not None:  # a gathered bank: count the images gathered
            gathered.append(self._index.shape[0])
        return original(self)

    monkeypatch.setattr(ReferenceBank, "layers", property(counted))
    plain = PerImageReferenceExtractor(ModelFeatureExtractor(model, "pretrained"), plan.aligned)(queries)
    cached_extractor = PerImageReferenceExtractor(ModelFeatureExtractor(model, "pretrained", source=FeatureCache()), plan.aligned)
    first = cached_extractor(queries[:2])
    gathered.clear()
    second = cached_extractor(queries)
    assert gathered == [1]  # only the third image (a miss) had its bank gathered
    for a, b, c in zip(first, second, plain):  # batches of other sizes: equal up to float rounding
        torch.testing.assert_close(a, b[:2], rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(b, c, rtol=1e-5, atol=1e-5)

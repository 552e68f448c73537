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

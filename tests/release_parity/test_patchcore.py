"""Release PatchCore against the released code's own outputs (tests/fixtures/release_parity/patchcore.safetensors).

Every stored output is checked (bank, coreset rows, NN distances and rows, patch grids, maps
before and after smoothing, image scores), and each rule is checked to matter: the package's
non-release variant (channel-weighted embedding, exact k-center from one start, unsquared
distances, Eq. 7, align_corners=True, max of the smoothed map) differs beyond the tolerance.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adpretrain_hf.detectors.coreset import greedy_k_center
from adpretrain_hf.modeling.matching_adpretrain import nearest_neighbors
from adpretrain_hf.modeling.release_scoring_adpretrain import (
    RELEASE_PATCHCORE_DIM,
    release_greedy_coreset,
    release_nn_squared_distances,
    release_patchcore_embed,
    release_patchcore_image_scores,
    release_patchcore_maps,
)
from adpretrain_hf.modeling.scoring_adpretrain import aggregate_patch_features, reweighted_scores

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_parity" / "patchcore.safetensors"
IMAGE_SIZE = (56, 56)  # manifest: input_shape (3, 56, 56)
GRID = (8, 8)
EMBED_ATOL = 1e-6  # pooling only: float32 rounding
DIST_ATOL = 5e-4  # manifest: faiss float32 expansion vs exact differs by <= 2.4e-4 (values 84-4200)
MAP_ATOL = 5e-4  # maps are linear in the distances


@pytest.fixture(scope="module")
def fx():
    return load_file(str(FIXTURE))


def levels(fx, split):
    return [fx[f"input.{split}_features.level{l}"] for l in range(4)]


def assert_differs(value, reference, atol):
    assert value.shape != reference.shape or (value.float() - reference.float()).abs().max() > 10 * atol


def test_memory_bank_is_the_release_embedding(fx):
    bank = release_patchcore_embed(levels(fx, "train")).reshape(-1, RELEASE_PATCHCORE_DIM)
    torch.testing.assert_close(bank, fx["a.output.memory_bank"], atol=EMBED_ATOL, rtol=0)
    # the package's embedding (channel-weighted, min(1024, sum C) wide, all levels) is not it
    package = aggregate_patch_features(levels(fx, "train")[-3:])
    package = package.reshape(-1, package.shape[-1])  # [256, 192]
    assert_differs(package, fx["a.output.memory_bank"], EMBED_ATOL)
    # the level-0 map is ignored: using the first three levels instead changes the bank
    first_three = release_patchcore_embed(levels(fx, "train")[:3]).reshape(-1, RELEASE_PATCHCORE_DIM)
    assert_differs(first_three, fx["a.output.memory_bank"], EMBED_ATOL)


def test_greedy_coreset_given_the_recorded_projection_and_starts(fx):
    reduced, starts = fx["b.intermediate.coreset_reduced_features"], fx["b.intermediate.coreset_start_points"]
    chosen = release_greedy_coreset(reduced, starts, count=fx["b.output.coreset_indices"].numel())
    assert chosen.tolist() == fx["b.output.coreset_indices"].tolist()
    torch.testing.assert_close(fx["a.output.memory_bank"][chosen], fx["b.output.memory_bank"], atol=0, rtol=0)
    # the package's exact k-center from one start picks other rows
    exact = greedy_k_center(reduced, chosen.numel(), start_index=int(starts[0]))
    assert exact.tolist() != chosen.tolist()


@pytest.mark.parametrize("case", ["a", "b"])
def test_distances_grids_maps_and_image_scores(fx, case):
    queries = release_patchcore_embed(levels(fx, "test")).reshape(-1, RELEASE_PATCHCORE_DIM)
    bank = fx[f"{case}.output.memory_bank"]
    dist, index = release_nn_squared_distances(queries, bank)
    assert index.tolist() == fx[f"{case}.output.nn_index"].tolist()
    torch.testing.assert_close(dist, fx[f"{case}.output.nn_sq_distance"], atol=DIST_ATOL, rtol=0)
    grid = dist.reshape(-1, *GRID)
    torch.testing.assert_close(grid, fx[f"{case}.output.patch_score_grid"], atol=DIST_ATOL, rtol=0)
    upsampled, smoothed = release_patchcore_maps(grid, IMAGE_SIZE)
    if case == "a":  # case b's unsmoothed map is not stored
        torch.testing.assert_close(upsampled, fx["a.output.map_upsampled_unsmoothed"], atol=MAP_ATOL, rtol=0)
    torch.testing.assert_close(smoothed, fx[f"{case}.output.anomaly_map"], atol=MAP_ATOL, rtol=0)
    scores = release_patchcore_image_scores(grid)
    torch.testing.assert_close(scores, fx[f"{case}.output.image_scores"], atol=DIST_ATOL, rtol=0)

    # the package's matcher finds the same rows (one fact: the nearest row), ...
    _, package_index = nearest_neighbors(queries, bank, metric="l2", backend="torch")
    assert package_index.tolist() == index.tolist()
    # ... but every other non-release rule changes the outputs
    assert_differs(dist.sqrt(), fx[f"{case}.output.nn_sq_distance"], DIST_ATOL)  # not squared
    flipped = torch.nn.functional.interpolate(grid.unsqueeze(1), size=IMAGE_SIZE, mode="bilinear", align_corners=True)
    assert_differs(flipped.squeeze(1), fx[f"{case}.output.anomaly_map"], MAP_ATOL)  # align_corners flipped
    worst = grid.flatten(1).argmax(dim=1)
    eq7 = reweighted_scores(queries.reshape(4, -1, RELEASE_PATCHCORE_DIM)[torch.arange(4), worst],
                            index.reshape(4, -1)[torch.arange(4), worst], bank)
    assert_differs(eq7, fx[f"{case}.output.image_scores"], DIST_ATOL)  # Eq. 7 (on squared or not: it differs)
    assert_differs(smoothed.flatten(1).amax(dim=1), fx[f"{case}.output.image_scores"], DIST_ATOL)  # map max

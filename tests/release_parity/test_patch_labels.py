"""Patch labels of the release at patch 14 (16x16 grid) and 16 (14x14 grid), 224 px masks.

The release labels a patch anomalous for the angle term when it holds MORE than 32 defect pixels
(``utils.patchify_mask``) and for the norm term by nearest interpolation (the patch's top-left
pixel). ``patch_label_rule="release"`` must reproduce both exactly; the package's single fraction
rule (``"fraction"``) must not (the fixture's masks include blobs of exactly 32 and 33 pixels and a
3x3 blob on a patch's top-left pixel, where the rules part).
"""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.data.patch_labels import nearest_labels, pixel_count_labels, training_patch_labels

from .conftest import load_fixture

GRIDS = {14: 16, 16: 14}  # patch size -> grid side at 224 px


@pytest.mark.parametrize("patch", sorted(GRIDS))
@pytest.mark.parametrize("rule,matches", [("release", True), ("fraction", False)])
def test_angle_and_norm_labels(patch, rule, matches):
    t = load_fixture("patch_labels")
    masks, grid = t["input.masks"].float(), GRIDS[patch]
    angle, norm = training_patch_labels(masks, grid, rule)
    assert angle.shape == (3, grid * grid) and norm.shape == (3, grid * grid)
    angle_same = torch.equal(angle.float(), t[f"output.angle_labels.patch{patch}"])
    norm_same = torch.equal(norm.float().reshape(3, grid, grid), t[f"output.norm_labels.patch{patch}"])
    if matches:
        assert angle_same and norm_same
    else:  # the fraction rule's 32/256 is the release's count at patch 16 only, so there only the norm term parts
        assert not norm_same and angle_same is (patch == 16)


@pytest.mark.parametrize("patch", sorted(GRIDS))
def test_angle_rule_is_an_absolute_count_of_more_than_32(patch):
    """Against the recorded pixel counts: 32 pixels is normal, 33 anomalous; a threshold of 31
    or 33 (an off-by-one in the rule) would not match."""
    t = load_fixture("patch_labels")
    masks, grid, counts = t["input.masks"].float(), GRIDS[patch], t[f"derived.defect_pixels_per_patch.patch{patch}"]
    assert {32.0, 33.0} <= set(counts.unique().tolist())
    assert torch.equal(pixel_count_labels(masks, grid, 32), counts > 32)
    for wrong in (31, 33):
        assert not torch.equal(pixel_count_labels(masks, grid, wrong).float(), t[f"output.angle_labels.patch{patch}"])


@pytest.mark.parametrize("patch", sorted(GRIDS))
def test_norm_rule_is_the_top_left_pixel(patch):
    t = load_fixture("patch_labels")
    masks, grid = t["input.masks"].float(), GRIDS[patch]
    top_left = masks[:, 0, ::patch, ::patch][:, :grid, :grid] > 0.5  # independent: plain slicing
    assert torch.equal(nearest_labels(masks, grid).reshape(3, grid, grid), top_left)
    assert torch.equal(top_left.float(), t[f"output.norm_labels.patch{patch}"])

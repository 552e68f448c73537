"""The release's center c (``get_center_features.py``) against ``center.safetensors``.

One pass over the normal images (labels 0; images 1 and 5 of the fixture are anomalous and must
be ignored), each image matched against its own bank of 4 reference images (cosine NN, the
package's matcher through ``ADPretrainModel.residuals``), c = mean of all residual tokens.
``training.center.release_centers`` must reproduce it within the manifest's tolerance (a float64
plain mean differs from the release's running mean by <= 7.8e-8); the other variants (anomalous
images included, as an all-images pass would; fewer references, as the batches mode's random K
may draw) must not.
"""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.training.center import normal_rows, release_centers

from .conftest import load_fixture

LEVELS = range(4)
BATCH = 3  # the fixture's loader batch size
TOL = {"rtol": 0.0, "atol": 1e-6}


def tokens(t: torch.Tensor) -> torch.Tensor:
    """(..., C, h, w) -> (..., h*w, C)."""
    return t.flatten(-2).transpose(-1, -2)


def fixture_batches(include_anomalous: bool = False, shots: int = 4):
    """The release's loop over the loader (batches of 3), keeping the normal images of each batch."""
    t = load_fixture("center")
    labels = t["input.image_labels"].tolist()
    normal = normal_rows(labels)
    assert normal == t["input.normal_image_index"].tolist()
    for start in range(0, len(labels), BATCH):
        rows = [i for i in range(start, start + BATCH) if include_anomalous or labels[i] == 0]
        feats = [tokens(t[f"input.features.level{l}"][rows]) for l in LEVELS]  # [B, 16, C]
        # image i's own bank: its 4 reference images' tokens, concatenated ([4*16, C]); an anomalous
        # image (variant only) borrows the bank of the first normal image
        slots = [normal.index(i) if i in normal else 0 for i in rows]
        banks = [tokens(t[f"input.reference_features.level{l}"][slots, :shots]).flatten(1, 2) for l in LEVELS]
        yield feats, banks


def test_fixture_facts():
    t = load_fixture("center")
    assert t["input.image_labels"].tolist().count(1) == 2 and t["output.centers"].shape == (4, 16)


@pytest.mark.parametrize(
    "variant,matches",
    [({}, True), ({"include_anomalous": True}, False), ({"shots": 1}, False)],
    ids=["release", "anomalous-images-included", "one-reference"],
)
def test_release_center(tiny_clip_model, variant, matches):
    t = load_fixture("center")
    centers = release_centers(fixture_batches(**variant), tiny_clip_model.residuals)
    same = [torch.allclose(c, t["output.centers"][l], **TOL) for l, c in zip(LEVELS, centers)]
    assert all(same) if matches else not any(same), same


def test_release_center_equals_an_independent_float64_mean():
    """The same center written out: per normal image, per token, argmax of cosine, raw difference."""
    t = load_fixture("center")
    labels = t["input.image_labels"].tolist()
    normal = [i for i, label in enumerate(labels) if label == 0]
    for level in LEVELS:
        rows = []
        for slot, image in enumerate(normal):
            query = tokens(t[f"input.features.level{level}"][image]).double()  # [16, C]
            bank = tokens(t[f"input.reference_features.level{level}"][slot]).reshape(-1, query.shape[1]).double()
            cos = torch.nn.functional.normalize(query, dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
            rows.append(query - bank[cos.argmax(dim=1)])
        expected = torch.cat(rows).mean(dim=0)
        assert torch.allclose(expected.float(), t["output.centers"][level], atol=1e-6)

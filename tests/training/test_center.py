"""``training/center.py``: the release's one-pass center, on the real loop and on its own.

The fixture comparison is in ``tests/release_parity/test_center.py``; here the pass is checked on
the assembled ``Pretrainer`` (every normal image once, un-augmented, K = center_reference_shots
references each, never itself) against a plain-torch recomputation from what it read.
"""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.training.arguments import PretrainArguments
from adpretrain_hf.training.center import normal_rows, release_centers
from adpretrain_hf.training.loop import Pretrainer


def test_normal_rows():
    assert normal_rows([0, 1, 0, 0, 1]) == [0, 2, 3]


def test_no_normal_image_is_a_clear_error(tiny_clip_model):
    with pytest.raises(ValueError, match="no normal training image"):
        release_centers(iter([]), tiny_clip_model.residuals)


@pytest.mark.parametrize("center_mode", ["residual", "projected"])
def test_loop_release_center_pass(realiad_root, tmp_path, center_mode):
    args = PretrainArguments(
        data_root=str(realiad_root), output_dir=str(tmp_path / "run"), preset="tiny-clip",
        model={"center_estimation": "release", "center_mode": center_mode}, batch_size=4, num_workers=0,
        mixed_precision="no", progress=False,
    )
    trainer = Pretrainer(args)
    shots = trainer.config.center_reference_shots
    banks_seen, pixels_seen = [], []
    original_banks, original_pixels = trainer.cache.banks, trainer.data.reference_pixels

    def banks(indices):
        banks_seen.append(indices.clone())
        return original_banks(indices)

    def pixels(row):
        pixels_seen.append(row)
        return original_pixels(row)

    trainer.cache.banks, trainer.data.reference_pixels = banks, pixels
    centers = trainer.estimate_centers()

    labels = trainer.data.raw["label"]
    normal = [i for i, label in enumerate(labels) if label == 0]
    queries = pixels_seen  # the cache loads reference pixels through its own callable
    assert sorted(queries) == normal  # every normal image, once, nothing else
    references = torch.cat(banks_seen)
    assert references.shape == (len(normal), shots)
    assert all(q not in refs.tolist() for q, refs in zip(queries, references))  # never its own reference

    model = trainer.model
    with torch.no_grad():
        x = model.backbone_features(torch.stack([original_pixels(i) for i in queries]))
        ref_tokens = [model.backbone_features(torch.stack([original_pixels(int(j)) for j in refs])) for refs in references]
    for layer, center in enumerate(centers):
        rows = []
        for b in range(len(queries)):
            bank = ref_tokens[b][layer].reshape(-1, x[layer].shape[-1])
            cos = torch.nn.functional.normalize(x[layer][b], dim=1) @ torch.nn.functional.normalize(bank, dim=1).T
            rows.append(x[layer][b] - bank[cos.argmax(dim=1)])
        residual = torch.stack(rows)
        if center_mode == "projected":
            with torch.no_grad():
                residual = model.project([residual], layer_positions=[layer])[0]
        expected = residual.reshape(-1, residual.shape[-1]).double().mean(dim=0)
        torch.testing.assert_close(center.double(), expected, rtol=1e-4, atol=1e-5)

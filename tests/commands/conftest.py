"""The deploy commands' workspace: a tiny checkpoint, image folders, and a fitted detector (module-scoped)."""

import numpy as np
import pytest
import torch

from adpretrain_hf.cli import main

from .helpers import SIZE, _defect, _normal, _save


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A checkpoint, normal training images, an MVTec-style labelled val folder, test images that clash by name."""
    root = tmp_path_factory.mktemp("deploy")
    from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel

    torch.manual_seed(0)
    ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).save_pretrained(root / "ckpt")
    rng = np.random.default_rng(0)
    for i in range(8):
        _save(_normal(rng), root / "train" / f"{i}.png")
    for i in range(4):
        _save(_normal(rng), root / "val" / "good" / f"{i}.png")
        _save(_normal(rng), root / "val_normal" / f"{i}.png")
    for i in range(3):
        _save(_defect(rng), root / "val" / "scratch" / f"{i}.png")
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[20:40, 20:40] = 255
        _save(mask, root / "ground_truth" / "scratch" / f"{i}_mask.png")  # MVTec: beside the test folder
    _save(_defect(rng), root / "test" / "a.png")  # the kind of defect the val folder labelled
    _save(_normal(rng), root / "test" / "a.jpg")
    _save(_normal(rng, (50, 90)), root / "test" / "sub" / "a.png")
    return root


@pytest.fixture(scope="module")
def fitted(workspace):
    code = main([
        "fit", "--model", str(workspace / "ckpt"), "--method", "patchcore", "--train", str(workspace / "train"),
        "--val", str(workspace / "val"), "--output", str(workspace / "det"), "--device", "auto", "--no-progress",
    ])
    assert code == 0
    return workspace / "det"

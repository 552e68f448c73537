"""Images and the workspace of the deploy commands' tests (fit, predict, export, their shared input/output).

Plain functions: tests/commands/conftest.py and tests/project/test_deploy_commands.py wrap them in fixtures.
"""

from pathlib import Path

import numpy as np
import torch
from PIL import Image

SIZE = 64  # tiny-clip's input size


def _normal(rng, size=(SIZE, SIZE)):
    """A flat grey part with mild noise: what the detector learns as normal."""
    return (np.full((*size, 3), 110, np.uint8) + rng.integers(0, 25, (*size, 3), dtype=np.uint8))


def _defect(rng, box=(20, 40, 20, 40), size=(SIZE, SIZE)):
    image = _normal(rng, size)
    top, bottom, left, right = box
    image[top:bottom, left:right] = 255
    return image


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


def make_workspace(root: Path) -> Path:
    """A checkpoint, normal training images, an MVTec-style labelled val folder, test images that clash by name."""
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

"""adpretrain_hf.evaluation.category_inputs: dataset rows of a category -> protocol-selected tensors.

The references read the generated MVTec-style tree directly (file listing, PIL) and run the
processor on those images themselves; the protocol draw comes from select_protocol (tested in
test_protocols.py).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.data import generate_dataset
from adpretrain_hf.evaluation import EvaluationConfig
from adpretrain_hf.evaluation.category_inputs import (
    category_rows,
    describe_model,
    load_splits,
    prepare_category,
    preprocess_rows,
    resolve_layout,
)
from adpretrain_hf.evaluation.protocols import select_protocol
from adpretrain_hf.modeling.image_processing_adpretrain import processor_for

SIZE = 32  # generated images; the tiny-clip processor resizes them to its own input size


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("mvtec")
    generate_dataset(root, layout="mvtec", categories=["tile", "wood"], num_normal=5, num_anomalous=2,
                     image_size=SIZE, seed=0, progress=False)
    return root


@pytest.fixture(scope="module")
def processor():
    return processor_for(ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")))


def _on_disk(root: Path, category: str, split: str) -> list[Path]:
    return sorted((root / category / split).rglob("*.png"))


def test_splits_and_rows_are_the_files_on_disk(root):
    splits = load_splits(EvaluationConfig(str(root)))
    assert (splits.layout, splits.categories, splits.realiad_split) == ("mvtec", ["tile", "wood"], None)
    for category in ("tile", "wood"):
        train, test = category_rows(splits.train, category), category_rows(splits.test, category)
        assert sorted(train.paths(str(root))) == [p.relative_to(root).as_posix() for p in _on_disk(root, category, "train")]
        tested = dict(zip(test.paths(str(root)), test.labels))
        expected = {p.relative_to(root).as_posix(): int(p.parent.name != "good") for p in _on_disk(root, category, "test")}
        assert tested == expected
        assert len(set(test.sample_ids)) == len(test)
    assert load_splits(EvaluationConfig(str(root), categories=["wood"])).categories == ["wood"]


def test_preprocess_rows_runs_the_processor_on_images_and_masks_alike(root, processor):
    splits = load_splits(EvaluationConfig(str(root), categories=["tile"]))
    rows = category_rows(splits.test, "tile")
    pixels, masks = preprocess_rows(rows, processor, batch_size=3, with_masks=True)  # 4 images: two chunks
    paths = [root / p for p in rows.paths(str(root))]
    images = [Image.open(p).convert("RGB") for p in paths]
    expected = processor(images, return_tensors="pt")["pixel_values"].float()
    torch.testing.assert_close(pixels, expected)
    for path, mask in zip(paths, masks):
        mask_file = root / "tile" / "ground_truth" / path.parent.name / f"{path.stem}_mask.png"
        if path.parent.name == "good":
            assert not mask.any()
        else:
            side = mask.shape[-1]  # the processor's geometry, checked here on a binary mask resized by hand
            resized = np.array(Image.open(mask_file).convert("L").resize((side, side), Image.NEAREST)) > 0
            assert mask.shape == (side, side) and set(mask.unique().tolist()) <= {0.0, 1.0}
            assert (mask.numpy() > 0).mean() == pytest.approx(resized.mean(), abs=0.05)
    only, none_ = preprocess_rows(rows, processor, batch_size=8, with_masks=False)
    assert none_ is None and torch.equal(only, pixels)
    with pytest.raises(ValueError, match="no images to preprocess: the split of this category is empty"):
        preprocess_rows(rows.subset([]), processor, batch_size=2, with_masks=True)


def test_prepare_category_applies_the_protocol(root, processor):
    config = EvaluationConfig(str(root), categories=["tile"], train_fraction=0.6, noise_ratio=0.5, split_seed=4)
    splits = load_splits(config)
    data = prepare_category("tile", splits, processor, config)
    train_rows, test_rows = category_rows(splits.train, "tile"), category_rows(splits.test, "tile")
    selection = select_protocol("tile", train_rows.labels, test_rows.labels, config)
    assert data.pool_ids == [train_rows.sample_ids[i] for i in selection.train_normal] and len(data.pool_ids) == 3
    pool, _ = preprocess_rows(train_rows.subset(selection.train_normal), processor, 8, with_masks=False)
    test, masks = preprocess_rows(test_rows, processor, 8, with_masks=True)
    torch.testing.assert_close(data.pool_pixel_values, pool)
    torch.testing.assert_close(data.train_pixel_values, torch.cat([pool, test[selection.noise]]))  # pool + noise
    assert len(selection.noise) == 1 and data.test_labels.tolist() == test_rows.labels
    torch.testing.assert_close(data.test_masks, masks)
    assert all(p.startswith("tile/train/good/") for p in data.pool_paths)


def test_missing_data_and_layouts(root, processor, tmp_path):
    assert resolve_layout(str(root), "auto") == "mvtec" and resolve_layout(str(root), "mvtec") == "mvtec"
    with pytest.raises(ValueError, match="nowhere. is not an existing folder: check the path"):
        resolve_layout(str(tmp_path / "nowhere"), "auto")
    config = EvaluationConfig(str(root))
    with pytest.raises(ValueError, match="category 'carpet' has no test images under .*: check the dataset"):
        prepare_category("carpet", load_splits(config), processor, config)


def test_describe_model():
    assert describe_model("some/checkpoint") == "some/checkpoint" and describe_model(Path("a/b")) == "a/b"
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip"))
    assert describe_model(model) == f"<in-memory ADPretrainModel, preset={model.config.preset}>"

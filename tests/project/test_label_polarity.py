"""Label polarity across function boundaries: 1 / True / white = anomalous, everywhere.

Each test crosses one boundary (mask file -> row, row -> processor mask, mask -> patch
labels, rows -> reference pool / detector fit data / noise images) and checks the side
that comes out against an independent reading of the side that went in.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adpretrain_hf.data import (
    GOOD_DEFECT,
    generate_dataset,
    load_image_and_mask,
    load_realiad,
    patch_labels,
    realiad_eval_split,
)
from adpretrain_hf.modeling import ADPretrainConfig
from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor

SIZE = 64


@pytest.fixture(scope="module")
def realiad_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("polarity_realiad")
    generate_dataset(root, layout="realiad", categories=["bottle"], num_normal=4, num_anomalous=4,
                     image_size=SIZE, seed=5, num_views=2, progress=False)
    return root


@pytest.fixture(scope="module")
def processor():
    return ADPretrainImageProcessor.from_adpretrain_config(ADPretrainConfig.from_preset("tiny-clip"))


def test_rows_label_one_iff_the_mask_file_has_white_pixels(realiad_root):
    from datasets import Image as ImageFeature

    rows = load_realiad(realiad_root)
    paths = rows.cast_column("mask", ImageFeature(decode=False))["mask"]
    assert set(rows["label"]) == {0, 1}
    for row, stored in zip(rows, paths):
        _, mask = load_image_and_mask(row)
        white = 0 if stored is None else int((np.asarray(Image.open(stored["path"])) > 0).sum())
        assert (row["label"] == 1) == (white > 0)
        assert int((np.asarray(mask) > 0).sum()) == white  # the loaded mask keeps white = defect


def test_processor_masks_are_one_on_the_defect(processor):
    mask = np.zeros((2 * SIZE, 2 * SIZE), dtype=np.uint8)
    mask[32:64, 96:128] = 255  # a defect block aligned with the 2x downscale
    out = processor.preprocess_masks([Image.fromarray(mask), Image.new("L", (2 * SIZE, 2 * SIZE), 0)])
    expected = torch.from_numpy(mask[::2, ::2] > 0).float()  # independent nearest 2x downscale
    torch.testing.assert_close(out[0], expected)
    assert out[1].sum() == 0


def test_patch_labels_are_true_on_masked_patches():
    grid, cell = 8, SIZE // 8
    masks = torch.zeros(1, SIZE, SIZE)
    masks[0, 0:cell, 0:cell] = 1  # patch 0 fully masked
    masks[0, cell : 2 * cell, 0:2] = 1  # patch 8: 16/64 = 0.25 of its pixels
    masks[0, 0:1, cell : cell + 8] = 1  # patch 1: exactly 8/64 = 0.125, not more: normal
    labels = patch_labels(masks, grid)
    fractions = masks.reshape(1, grid, cell, grid, cell).mean(dim=(2, 4)).reshape(1, -1)
    assert torch.equal(labels, fractions > 32 / 256)
    assert labels[0].nonzero().flatten().tolist() == [0, 8]


def test_training_batches_and_references_keep_polarity(realiad_root, processor):
    from adpretrain_hf.training.data_pipeline import build_training_data

    data = build_training_data(str(realiad_root), processor, seed=0)
    for index in range(len(data.raw)):
        row = data.raw[index]
        example = data.dataset[index]
        assert (row["label"] == 1) == bool(example["mask"].sum() > 0)
    rng = np.random.default_rng(0)
    for category, view in data.sampler.keys:
        drawn = data.sampler.sample(category, view, 8, rng)
        assert all(data.raw[int(i)]["label"] == 0 and data.raw[int(i)]["defect"] == GOOD_DEFECT for i in drawn)


def test_realiad_fit_split_holds_only_ok_images(realiad_root):
    split = realiad_eval_split(load_realiad(realiad_root), seed=0)
    assert set(split["train"]["label"]) == {0} and set(split["train"]["defect"]) == {GOOD_DEFECT}
    assert 1 in split["test"]["label"] and 0 in split["test"]["label"]


def test_protocol_fits_on_normal_images_and_adds_anomalous_noise():
    from adpretrain_hf.evaluation.config import EvaluationConfig
    from adpretrain_hf.evaluation.protocols import select_protocol

    train_labels = [0, 1, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0]  # stray anomalies must not be fitted on
    test_labels = [1, 0, 1, 1, 0, 1, 0, 1, 1, 1]
    config = EvaluationConfig(data_root=".", noise_ratio=0.3)
    selection = select_protocol("bottle", train_labels, test_labels, config)
    assert sorted(selection.train_normal) == [i for i, v in enumerate(train_labels) if v == 0]
    assert len(selection.noise) == int(0.3 * 10)
    assert all(test_labels[i] == 1 for i in selection.noise)


def test_detector_fit_data_is_the_normal_pool_plus_anomalous_noise(tmp_path, processor):
    from adpretrain_hf.evaluation.config import EvaluationConfig
    from adpretrain_hf.evaluation.category_inputs import load_splits, prepare_category

    root = tmp_path / "mvtec"
    generate_dataset(root, layout="mvtec", categories=["bottle"], num_normal=10, num_anomalous=4,
                     image_size=SIZE, seed=2, progress=False)
    config = EvaluationConfig(data_root=str(root), noise_ratio=0.2, batch_size=8)
    splits = load_splits(config)
    data = prepare_category("bottle", splits, processor, config)
    train_labels = [splits.train[i]["label"] for i in range(len(splits.train))]
    assert all(train_labels[i] == 0 for i in data.selection.train_normal)
    assert len(data.selection.noise) == 2
    noise = torch.tensor(data.selection.noise)
    assert bool((data.test_labels[noise] == 1).all())
    assert bool((data.test_masks[noise].flatten(1).sum(1) > 0).all())  # labelled 1 and masked: defects
    normal_test = data.test_labels == 0
    assert float(data.test_masks[normal_test].sum()) == 0.0
    pool = data.train_pixel_values[: len(data.selection.train_normal)]
    torch.testing.assert_close(pool, data.pool_pixel_values)
    torch.testing.assert_close(data.train_pixel_values[len(pool):], data.test_pixel_values[noise])

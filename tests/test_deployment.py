"""adpretrain_hf.deployment: images in, batched scoring, wrapping a fitted detector, and the input checks.

References: the processor run directly on the same PIL images, and a fake detector model whose
maps and scores are plain tensor reductions (so batching can be checked against one pass).
Calibration itself is tested against numpy/sklearn in tests/modeling/test_calibration_adpretrain.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from PIL import Image

from adpretrain_hf.deployment import detector_to_model, fit_detector, load_pixel_values, predict_maps
from adpretrain_hf.detectors import build_detector
from adpretrain_hf.extractor import ModelFeatureExtractor
from adpretrain_hf.modeling.image_processing_adpretrain import processor_for


def _images(count: int, seed: int = 0, size=(40, 56)) -> list[Image.Image]:
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)) for _ in range(count)]


def test_images_become_the_processors_pixel_values(tiny_clip_model, tmp_path):
    processor = processor_for(tiny_clip_model)
    images = _images(3)
    expected = processor(images, return_tensors="pt")["pixel_values"].float()
    torch.testing.assert_close(load_pixel_values(images, processor), expected)
    images[1].save(tmp_path / "one.png")
    torch.testing.assert_close(load_pixel_values(str(tmp_path / "one.png"), processor), expected[1:2])  # a path alone
    torch.testing.assert_close(load_pixel_values(np.asarray(images[2]), processor), expected[2:3])  # an array alone
    assert load_pixel_values(expected.double(), processor).dtype == torch.float32  # tensors pass through as float


@pytest.mark.parametrize(
    "images, match",
    [
        (torch.zeros(2, 1, 8, 8), r"images tensor must be processed pixel values \[N, 3, H, W\], got \(2, 1, 8, 8\)"),
        (torch.zeros(3, 8, 8), r"got \(3, 8, 8\): pass PIL images or paths instead"),
        (None, "no images given: pass PIL images, paths or numpy arrays"),
        ([], "no images given: the list is empty"),
    ],
)
def test_bad_images_are_one_line_errors(tiny_clip_model, images, match):
    with pytest.raises(ValueError, match=match) as caught:
        load_pixel_values(images, processor_for(tiny_clip_model))
    assert "\n" not in str(caught.value)


class FakeDetectorModel:
    """``score``: maps = channel mean ``[b, H, W]``, scores = their max ``[b]``; records batch sizes."""

    device = torch.device("cpu")

    def __init__(self):
        self.batches: list[int] = []

    def score(self, pixel_values):
        self.batches.append(pixel_values.shape[0])
        maps = pixel_values.double().mean(dim=1)
        return maps, maps.flatten(1).amax(dim=1)


def test_predict_maps_scores_in_batches_like_one_pass():
    pixel_values = torch.randn(7, 3, 5, 4, generator=torch.Generator().manual_seed(0))
    fake = FakeDetectorModel()
    maps, scores = predict_maps(fake, pixel_values, batch_size=3, progress=False)
    assert fake.batches == [3, 3, 1]
    expected = pixel_values.mean(dim=1)
    torch.testing.assert_close(maps, expected)
    torch.testing.assert_close(scores, expected.flatten(1).amax(dim=1))
    assert maps.dtype == scores.dtype == torch.float32


class NotAModelExtractor(torch.nn.Module):
    """Features without an ADPretrain model behind them: nothing to bundle into a detector folder."""

    feature_kind = "custom"
    grid_sizes = [(2, 2)]

    def forward(self, pixel_values):
        return [torch.nn.functional.adaptive_avg_pool2d(pixel_values, 2)]


def test_detector_to_model_needs_a_fitted_detector_on_the_model(tiny_clip_model):
    with pytest.raises(TypeError, match="needs a detector on a ModelFeatureExtractor .* got NotAModelExtractor"):
        detector_to_model(build_detector("featurenorm", NotAModelExtractor(), progress=False))
    unfitted = build_detector("patchcore", ModelFeatureExtractor(tiny_clip_model, feature_kind="backbone"), progress=False)
    with pytest.raises(RuntimeError, match=r"PatchCore\w* is not fitted: call fit\(normal_images\) first"):
        detector_to_model(unfitted)


def test_fit_detector_input_errors(tiny_clip_model):
    with pytest.raises(TypeError, match="model must be an ADPretrainModel or a checkpoint folder / Hub id, got int"):
        fit_detector(3, "featurenorm", _images(2), progress=False)
    with pytest.raises(ValueError, match="no train_images given: the list is empty"):
        fit_detector(tiny_clip_model, "featurenorm", [], progress=False)
    with pytest.raises(ValueError, match="val_labels / val_masks given without val_images: pass the validation images too"):
        fit_detector(tiny_clip_model, "featurenorm", _images(2), feature_kind="backbone", val_labels=[0, 1], progress=False)


def test_fit_detector_checks_the_validation_arguments_before_fitting(tiny_clip_model):
    # empty train_images would fail in the fit: the validation check must come first
    with pytest.raises(ValueError, match="val_labels / val_masks given without val_images"):
        fit_detector(tiny_clip_model, "featurenorm", [], val_masks=[None], progress=False)

"""Inputs that used to pass silently wrong: 16-bit images, 0/1 and palette masks, NaN/inf, integer, empty."""

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.image_io_adpretrain import read_image, read_mask
from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor
from adpretrain_hf.modeling.reference_bank_adpretrain import ReferenceBank


@pytest.fixture(scope="module")
def model():
    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()


@pytest.fixture(scope="module")
def pipe(model):
    refs = [np.random.default_rng(i).integers(0, 256, (64, 64, 3), dtype=np.uint8) for i in range(2)]
    return pipeline("anomaly-features", model=model, device="cpu", references=refs)


def _ramp16(height=48, width=80):
    """A 16-bit grayscale ramp over the whole range (saturates to white if clipped at 255)."""
    return (np.linspace(0, 65535, height * width).reshape(height, width)).astype(np.uint16)


# -- images -----------------------------------------------------------------------------------
def test_16bit_png_is_rescaled_not_saturated(tmp_path, pipe):
    ramp = _ramp16()
    Image.fromarray(ramp).save(tmp_path / "ramp.png")
    assert Image.open(tmp_path / "ramp.png").mode.startswith("I;16")
    expected = np.repeat(np.rint(ramp / 257.0).astype(np.uint8)[..., None], 3, axis=-1)  # 65535 -> 255
    assert np.array_equal(np.asarray(read_image(tmp_path / "ramp.png")), expected)
    assert np.array_equal(np.asarray(read_image(ramp)), expected)  # a uint16 array the same way
    from_file = pipe(str(tmp_path / "ramp.png"), output="score")["score"]
    assert from_file == pytest.approx(pipe(expected, output="score")["score"], abs=1e-6)
    white = pipe(np.full_like(expected, 255), output="score")["score"]
    assert abs(from_file - white) > 1e-3


@pytest.mark.parametrize(
    "image,pattern",
    [
        (Image.new("RGB", (0, 0)), "0x0 pixels"),
        (np.zeros((0, 5, 3), np.uint8), "5x0 pixels"),
        (Image.new("RGB", (1, 1)), "1x1 pixels, smaller than one token of the backbone"),
        (np.full((64, 64), np.nan, np.float32), "NaN/inf"),
        (np.full((64, 64), np.inf, np.float32), "NaN/inf"),
    ],
)
def test_empty_tiny_and_nonfinite_images_are_refused(pipe, image, pattern):
    with pytest.raises(ValueError, match=pattern):
        pipe(image)


def test_nonfinite_reference_is_named(pipe):
    good = np.zeros((64, 64, 3), np.float32)
    with pytest.raises(ValueError, match="reference #1.*NaN/inf"):
        pipe(good, references=[good, np.full((64, 64, 3), np.nan, np.float32)])


# -- the model ---------------------------------------------------------------------------------
def test_model_refuses_nonfinite_integer_and_empty_pixel_values(model):
    refs = torch.randn(3, 3, 64, 64)
    x = torch.randn(4, 3, 64, 64)
    x[2, 1, 5, 5] = float("nan")
    with pytest.raises(ValueError, match=r"pixel_values holds NaN/inf values in image #2"):
        model(x, reference_pixel_values=refs)
    refs[1, 0, 0, 0] = float("inf")
    with pytest.raises(ValueError, match=r"reference_pixel_values holds NaN/inf values in image #1"):
        model(torch.randn(1, 3, 64, 64), reference_pixel_values=refs)
    with pytest.raises(ValueError, match=r"reference_pixel_values holds NaN/inf values in image #1"):
        model.set_references(refs)
    with pytest.raises(TypeError, match="uint8.*ADPretrainImageProcessor"):
        model(torch.zeros(1, 3, 64, 64, dtype=torch.uint8), reference_pixel_values=torch.randn(1, 3, 64, 64))
    with pytest.raises(ValueError, match=r"empty batch \(0, 3, 64, 64\)"):
        model(torch.zeros(0, 3, 64, 64), reference_pixel_values=torch.randn(1, 3, 64, 64))
    bank = [torch.randn(8, 32) for _ in range(4)]
    bank[3][0, 0] = float("nan")
    with pytest.raises(ValueError, match="tapped layer #3 holds NaN/inf"):
        model.set_reference_bank(ReferenceBank(bank))
    with pytest.raises(TypeError, match=r"takes a ReferenceBank, got list: wrap"):
        model.set_reference_bank(bank)


def test_finite_inputs_are_unchanged_by_the_checks(model):
    x, refs = torch.randn(2, 3, 64, 64), torch.randn(2, 3, 64, 64)
    bank = model.compute_reference_bank(refs)
    out = model(x, reference_features=bank)
    assert torch.isfinite(out.score).all() and torch.equal(out.score, model(x, reference_pixel_values=refs).score)


# -- masks: nonzero = defect, whatever the storage -----------------------------------------------
def _palette_mask(indices):
    image = Image.fromarray(indices.astype(np.uint8), "P")
    image.putpalette([0, 0, 0, 90, 20, 20] + [0] * 762)  # index 1 is dark red: luminance < 128
    return image


def test_masks_in_every_storage_give_the_same_defect_pixels():
    processor = ADPretrainImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    defect = np.zeros((64, 64), bool)
    defect[10:30, 5:20] = True  # 64x64: the processor's resize and crop are the identity
    storages = [
        defect.astype(np.uint8),  # 0/1 uint8 array
        Image.fromarray(defect.astype(np.uint8), "L"),  # PIL L with 0/1
        Image.fromarray(defect.astype(np.uint8) * 255, "L"),  # PIL L with 0/255
        _palette_mask(defect),  # palette, VisA-style
        defect,  # bool
        torch.from_numpy(defect.astype(np.float32)),
        np.stack([defect * 200, defect * 0, defect * 0], axis=-1).astype(np.uint8),  # red on black RGB
        (defect * 1000).astype(np.uint16),
    ]
    out = processor.preprocess_masks(storages)
    assert out.shape == (len(storages), 64, 64)
    for i in range(len(storages)):
        assert torch.equal(out[i], torch.from_numpy(defect.astype(np.float32))), f"storage #{i}"


def test_mask_reader_rules(tmp_path):
    _palette_mask(np.eye(4, dtype=np.uint8)).save(tmp_path / "visa.png")
    assert np.array_equal(read_mask(tmp_path / "visa.png"), np.eye(4, dtype=bool))
    rgba = np.zeros((4, 4, 4), np.uint8)
    rgba[..., 3] = 255  # opaque black: alpha is not a defect
    rgba[1, 2, 1] = 7
    expected = np.zeros((4, 4), bool)
    expected[1, 2] = True
    assert np.array_equal(read_mask(Image.fromarray(rgba, "RGBA")), expected)
    with pytest.raises(ValueError, match="NaN/inf"):
        read_mask(np.full((4, 4), np.nan))

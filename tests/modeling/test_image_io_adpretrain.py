"""Reading images and masks: every storage (16-bit, float, palette, alpha, channels-first) to the
values numpy computes here, and every bad input to a one-line error naming the fix."""

import numpy as np
import pytest
import torch
from PIL import Image

from adpretrain_hf.modeling.image_io_adpretrain import array_to_uint8, read_image, read_mask

RNG = np.random.default_rng(0)


def test_sixteen_bit_and_float_images_are_rescaled_not_clipped(tmp_path):
    wide = RNG.integers(0, 65536, (5, 7)).astype(np.uint16)
    Image.fromarray(wide).save(tmp_path / "wide.png")  # a 16-bit grayscale PNG
    rgb = np.asarray(read_image(tmp_path / "wide.png"))
    expected = np.clip(np.rint(wide / 257.0), 0, 255).astype(np.uint8)
    assert rgb.shape == (5, 7, 3) and all(np.array_equal(rgb[..., c], expected) for c in range(3))
    unit = RNG.random((4, 6)).astype(np.float32)
    assert np.array_equal(np.asarray(read_image(Image.fromarray(unit, "F")))[..., 0], np.rint(unit * 255).astype(np.uint8))


def test_arrays_of_every_dtype_and_alpha():
    rgba = RNG.integers(0, 256, (3, 4, 4), dtype=np.uint8)
    assert np.array_equal(np.asarray(read_image(rgba)), rgba[..., :3])  # alpha dropped
    wide = RNG.integers(0, 65536, (3, 4, 3)).astype(np.uint16)
    assert np.array_equal(array_to_uint8(wide), np.rint(wide / 257.0).astype(np.uint8))
    unit = RNG.random((3, 4, 1))
    assert np.array_equal(array_to_uint8(unit), np.round(unit[..., 0] * 255).astype(np.uint8))


def test_masks_from_every_storage_mark_nonzero_as_defect(tmp_path):
    truth = RNG.random((6, 5)) > 0.5
    palette = Image.fromarray(truth.astype(np.uint8), "P")
    palette.putpalette([200, 200, 200, 0, 0, 0] + [0] * 762)  # index 0 is bright: indices count, not colours
    palette.save(tmp_path / "mask.png")
    rgba = np.zeros((6, 5, 4), np.uint8)
    rgba[..., 1] = truth * 255
    rgba[..., 3] = 255  # an opaque alpha channel is not a defect
    for mask in (tmp_path / "mask.png", palette, torch.from_numpy(truth[None].astype(np.float32)), rgba,
                 Image.fromarray(rgba, "RGBA"), truth.astype(np.uint16) * 65535):
        assert np.array_equal(read_mask(mask), truth), type(mask).__name__


@pytest.mark.parametrize(
    "call, error, message",
    [
        (lambda: read_image(np.zeros((3, 8, 8), np.uint8)), ValueError, r"channels-first\? use array\.transpose\(1, 2, 0\)"),
        (lambda: read_image(np.full((4, 4), 2.0)), ValueError, r"values in \[0, 1\], got \[2, 2\]: divide by 255"),
        (lambda: read_image(np.zeros((4, 4), np.int32)), ValueError, "dtype int32: pass uint8"),
        (lambda: read_image(np.full((4, 4), np.nan)), ValueError, "NaN/inf values: fix or drop"),
        (lambda: read_image(np.zeros((0, 4), np.uint8)), ValueError, r"is 4x0 pixels \(empty\)"),
        (lambda: read_image(torch.zeros(3, 4, 4)), TypeError, r"got Tensor: convert tensors with \.permute\(1, 2, 0\)"),
        (lambda: read_image("/no/such/file.png"), ValueError, "does not exist: pass the path of an image file"),
        (lambda: read_mask(np.full((4, 4), np.inf)), ValueError, r"NaN/inf values: masks are 0 \(normal\)"),
        (lambda: read_mask(np.zeros((2, 2, 2, 2))), ValueError, r"has shape \(2, 2, 2, 2\): pass \[H, W\]"),
        (lambda: read_mask([[0, 1]]), TypeError, "must be a PIL image, a path, a numpy array or a tensor, got list"),
    ],
)
def test_bad_inputs_are_one_line_errors(call, error, message):
    with pytest.raises(error, match=message) as info:
        call()
    assert "\n" not in str(info.value)


def test_an_unreadable_file_names_itself(tmp_path):
    (tmp_path / "broken.png").write_bytes(b"not a png")
    with pytest.raises(ValueError, match=r"could not read mask file .*broken\.png.*that PIL can open"):
        read_mask(tmp_path / "broken.png")


def _exif_jpeg(path, array, orientation):
    image = Image.fromarray(array)
    exif = image.getexif()
    exif[0x0112] = orientation
    image.save(path, exif=exif, quality=95)


def test_exif_orientation_is_applied_to_files_and_pil_images(tmp_path):
    """Orientation 6 (rotate 90 degrees clockwise to display): a 40x80 stored JPEG is shown, and read, 80 high, 40 wide,
    with the stored left half (white) on top."""
    stored = np.zeros((40, 80, 3), np.uint8)
    stored[:, :40] = 255
    _exif_jpeg(tmp_path / "o.jpg", stored, 6)
    read = np.asarray(read_image(tmp_path / "o.jpg"))
    assert read.shape == (80, 40, 3)
    expected = np.rot90(stored, k=-1)  # clockwise, independent of PIL's transpose tables
    assert np.abs(read.astype(int) - expected.astype(int)).mean() < 8  # JPEG noise only
    with Image.open(tmp_path / "o.jpg") as handle:
        assert np.array_equal(np.asarray(read_image(handle)), read)


def test_large_files_are_decoded_reduced_and_huge_ones_refused(tmp_path, monkeypatch):
    from adpretrain_hf.modeling import image_io_adpretrain as io

    monkeypatch.setattr(io, "WORKING_MAX_SIDE", 100)
    rows, cols = np.mgrid[0:250, 0:420]
    array = np.stack([rows * 255 // 249, cols * 255 // 419, (rows + cols) * 255 // 668], axis=-1).astype(np.uint8)  # smooth: JPEG-friendly
    Image.fromarray(array).save(tmp_path / "big.png")
    Image.fromarray(array).save(tmp_path / "big.jpg", quality=95)
    factor = 5  # ceil(420 / 100)
    png = read_image(tmp_path / "big.png")
    assert png.size == (84, 50)
    box = array.reshape(50, factor, 84, factor, 3).mean(axis=(1, 3))  # the mean of each 5x5 block, computed here
    assert np.abs(np.asarray(png, dtype=float) - box).max() <= 1.0
    jpg = read_image(tmp_path / "big.jpg")
    assert jpg.size == (84, 50)  # the same working size through JPEG's draft decode
    assert np.abs(np.asarray(jpg, dtype=float) - box).mean() < 3
    monkeypatch.setattr(io, "MAX_DECODE_PIXELS", 250 * 420 - 1)
    with pytest.raises(ValueError, match=r"big.png' is 420x250 pixels .* downscale it first"):
        read_image(tmp_path / "big.png")


def test_sixteen_bit_png_files_are_reduced_with_their_range(tmp_path, monkeypatch):
    from adpretrain_hf.modeling import image_io_adpretrain as io

    monkeypatch.setattr(io, "WORKING_MAX_SIDE", 50)
    Image.fromarray(np.full((100, 100), 65535, np.uint16)).save(tmp_path / "w.png")
    read = np.asarray(read_image(tmp_path / "w.png"))
    assert read.shape == (50, 50, 3) and (read == 255).all()

"""Content keys: blake2b of the float32 pixel bytes, computed here with hashlib and numpy."""

import hashlib

import numpy as np
import pytest
import torch

from adpretrain_hf.modeling.content_keys_adpretrain import DIGEST_BYTES, combine_keys, pixel_hash


def _blake(data: bytes) -> str:
    return hashlib.blake2b(data, digest_size=16).hexdigest()


def test_pixel_hash_is_blake2b_of_the_float32_bytes():
    pixels = np.random.default_rng(0).random((3, 5, 4)).astype(np.float32)
    assert DIGEST_BYTES == 16
    assert pixel_hash(torch.from_numpy(pixels)) == _blake(pixels.tobytes())
    # equal pixels, equal key, whatever the storage: float64, a transposed view, requires_grad
    as_double = torch.from_numpy(pixels.astype(np.float64)).requires_grad_()
    strided = torch.from_numpy(np.ascontiguousarray(pixels.transpose(0, 2, 1))).transpose(1, 2)
    assert pixel_hash(as_double) == pixel_hash(strided) == _blake(pixels.tobytes())
    changed = pixels.copy()
    changed[2, 4, 3] = np.nextafter(changed[2, 4, 3], np.float32(2))  # one ulp in one pixel
    assert pixel_hash(torch.from_numpy(changed)) != pixel_hash(torch.from_numpy(pixels))


def test_combined_key_is_ordered():
    keys = [_blake(b"a"), _blake(b"b")]
    assert combine_keys(keys) == _blake(f"{keys[0]}|{keys[1]}".encode())
    assert combine_keys(keys) != combine_keys(keys[::-1])


def test_bad_inputs_are_one_line_errors():
    with pytest.raises(TypeError, match=r"pixel_hash expects a torch\.Tensor.*got ndarray.*torch\.from_numpy"):
        pixel_hash(np.zeros((3, 2, 2), np.float32))
    with pytest.raises(TypeError, match=r"combine_keys expects a sequence of key strings.*got str"):
        combine_keys("abc")

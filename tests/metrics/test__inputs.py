"""The metrics' shared input checks (metrics/_inputs.py), called directly.

What passes must come back as the same numbers in the documented shape and dtype (compared with
numpy conversions written here); every mistake fails with one line naming the input and the fix.
The metrics' own bad-input tests are in tests/metrics/test_auroc.py and test_aupro.py.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch

from adpretrain_hf.metrics._inputs import (
    as_binary,
    as_scores,
    check_maps_and_masks,
    check_scores_and_labels,
    require_both_classes,
    to_numpy,
)


def raises_one_line(kind: type[Exception], match: str, call, *args) -> None:
    """``call(*args)`` raises ``kind`` with a single-line message matching ``match``."""
    with pytest.raises(kind, match=match) as error:
        call(*args)
    assert "\n" not in str(error.value), str(error.value)


def test_to_numpy_accepts_tensors_arrays_and_lists():
    values = [[0.5, 1.25], [2.0, -3.0]]
    reference = np.array(values)
    for given in (torch.tensor(values, dtype=torch.float64), torch.tensor(values, requires_grad=True, dtype=torch.float64),
                  reference, values):
        got = to_numpy(given, "maps")
        assert isinstance(got, np.ndarray)
        np.testing.assert_array_equal(got, reference)
    bf16 = to_numpy(torch.tensor(values, dtype=torch.bfloat16), "maps")  # numpy has no bfloat16
    assert bf16.dtype == np.float32
    np.testing.assert_array_equal(bf16, reference.astype(np.float32))  # these values are exact in bfloat16
    raises_one_line(TypeError, r"maps is None: pass a torch tensor or numpy array", to_numpy, None, "maps")
    raises_one_line(TypeError, r"maps is a str", to_numpy, "0.5", "maps")
    raises_one_line(TypeError, r"maps could not be turned into an array .*: pass equally sized maps", to_numpy,
                    [[0.1, 0.2], [0.3]], "maps")
    raises_one_line(TypeError, r"maps has dtype object: pass numbers", to_numpy, np.array([{}, 1], dtype=object), "maps")


def test_scores_are_floats_and_finite():
    assert as_scores(np.array([1, 2], dtype=np.int64), "scores").dtype == np.float64
    assert as_scores(np.array([1, 2], dtype=np.float16), "scores").dtype == np.float64  # widened, ties kept
    kept = np.array([0.1, 0.2], dtype=np.float32)
    assert as_scores(kept, "scores").dtype == np.float32
    np.testing.assert_array_equal(as_scores([True, False], "scores"), np.array([1.0, 0.0]))
    raises_one_line(ValueError, r"scores contains 2 NaN/inf value\(s\): fix the scoring", as_scores,
                    np.array([0.1, np.nan, np.inf]), "scores")


def test_binary_masks_are_bool_and_never_rounded():
    np.testing.assert_array_equal(as_binary(np.array([0.0, 1.0, 1.0]), "masks"), np.array([False, True, True]))
    np.testing.assert_array_equal(as_binary(torch.tensor([1, 0], dtype=torch.uint8), "masks"), np.array([True, False]))
    raises_one_line(ValueError, r"masks must hold only 0 and 1, found values such as \[0, 255\]: binarise it first",
                    as_binary, np.array([0, 255]), "masks")
    raises_one_line(ValueError, r"masks must hold only 0 and 1", as_binary, np.array([0.0, 0.5]), "masks")
    raises_one_line(ValueError, r"masks contains NaN/inf: pass values in \{0, 1\}", as_binary, np.array([np.nan, 1.0]), "masks")


def test_maps_and_masks_drop_one_channel_and_must_match():
    rng = np.random.default_rng(0)
    maps = rng.random((2, 1, 3, 4)).astype(np.float32)
    masks = rng.random((2, 3, 4)) > 0.5
    got_maps, got_masks = check_maps_and_masks(torch.from_numpy(maps), masks.astype(np.uint8)[:, None])
    np.testing.assert_array_equal(got_maps, maps[:, 0])
    np.testing.assert_array_equal(got_masks, masks)
    assert got_masks.dtype == np.bool_
    raises_one_line(ValueError, r"maps has shape \(2, 2, 3, 4\): a 4-d input must be \[N, 1, H, W\]",
                    check_maps_and_masks, np.zeros((2, 2, 3, 4)), masks)
    raises_one_line(ValueError, r"maps has shape \(3, 4\): expected \[N, H, W\] \(for a single map use maps\[None\]\)",
                    check_maps_and_masks, np.zeros((3, 4)), masks[0])
    raises_one_line(ValueError, r"masks shape \(2, 4, 3\) does not match maps shape \(2, 3, 4\): resize",
                    check_maps_and_masks, maps[:, 0], masks.transpose(0, 2, 1))
    raises_one_line(ValueError, r"maps is empty", check_maps_and_masks, np.zeros((0, 3, 4)), np.zeros((0, 3, 4)))


def test_scores_and_labels_and_both_classes():
    values, targets = check_scores_and_labels([0.3, 0.1, 0.9], torch.tensor([0, 0, 1]))
    np.testing.assert_array_equal(values, np.array([0.3, 0.1, 0.9]))
    np.testing.assert_array_equal(targets, np.array([False, False, True]))
    raises_one_line(ValueError, r"must both be 1-d \[N\]: flatten them", check_scores_and_labels, [[0.3, 0.1]], [0, 1])
    raises_one_line(ValueError, r"scores has 3 entries but labels has 2: pass one label per score",
                    check_scores_and_labels, [0.3, 0.1, 0.2], [0, 1])
    require_both_classes(targets, "image AUROC", "image")  # one of each: fine
    raises_one_line(ValueError, r"image AUROC is undefined when every image is normal \(0\)",
                    require_both_classes, np.zeros(3, dtype=bool), "image AUROC", "image")
    raises_one_line(ValueError, r"pixel AUROC is undefined when every pixel is anomalous \(1\)",
                    require_both_classes, np.ones(3, dtype=bool), "pixel AUROC", "pixel")

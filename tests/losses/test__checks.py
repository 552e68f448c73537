"""The losses' input checks (losses/_checks.py; check_choice and check_positive live with
LossOptions in modeling/loss_options_adpretrain.py), called directly: what passes comes back as it
should (labels as the bool mask ``labels != 0`` computed here), and each mistake fails with one
line that names the argument and the fix. The losses' own bad-input tests are in
tests/losses/test_total.py.
"""

from __future__ import annotations

import math

import pytest
import torch

from adpretrain_hf.losses._checks import check_center, check_chunk_size, check_features, check_labels, compute_dtype
from adpretrain_hf.modeling.loss_options_adpretrain import check_choice, check_positive


def raises_one_line(kind: type[Exception], match: str, call, *args, **kwargs) -> None:
    """``call(*args, **kwargs)`` raises ``kind`` with a single-line message matching ``match``."""
    with pytest.raises(kind, match=match) as error:
        call(*args, **kwargs)
    assert "\n" not in str(error.value), str(error.value)


def test_choice_and_positive_numbers():
    assert check_choice("norm_kind", "paper", ("paper", "release")) == "paper"
    raises_one_line(ValueError, r"norm_kind='huber' is not supported: pass one of 'paper', 'release'",
                    check_choice, "norm_kind", "huber", ("paper", "release"))
    assert check_positive("radius", 2) == 2.0 and isinstance(check_positive("radius", 2), float)
    assert check_positive("weight", 0, allow_zero=True) == 0.0
    for bad in (0.0, -1.0, math.nan, math.inf):
        raises_one_line(ValueError, r"radius=.* is invalid: pass a finite number > 0", check_positive, "radius", bad)
    raises_one_line(ValueError, r"pass a finite number >= 0", check_positive, "weight", -0.5, allow_zero=True)
    for bad in (True, "1", None):
        raises_one_line(TypeError, r"radius must be a number, got", check_positive, "radius", bad)


def test_chunk_size():
    assert check_chunk_size(None) is None and check_chunk_size(7) == 7
    raises_one_line(ValueError, r"chunk_size=0 is invalid: pass a positive number of anchors or None", check_chunk_size, 0)
    for bad in (2.0, True):
        raises_one_line(TypeError, r"chunk_size must be an int or None", check_chunk_size, bad)


def test_features_shapes_and_dtypes():
    x = torch.zeros(2, 3, 4)
    assert check_features("view1", x) is x
    assert check_features("feats", torch.zeros(5, 4), ndim=None).shape == (5, 4)
    raises_one_line(TypeError, r"view1 must be a torch.Tensor of shape \[B, N, D\], got list", check_features, "view1", [[1.0]])
    raises_one_line(TypeError, r"view1 has dtype torch.int64: pass floating-point features \(e.g. x.float\(\)\)",
                    check_features, "view1", torch.zeros(2, 3, 4, dtype=torch.long))
    raises_one_line(ValueError, r"view1 has shape \(3, 4\): expected \[B, N, D\]", check_features, "view1", torch.zeros(3, 4))
    raises_one_line(ValueError, r"feats is a scalar", check_features, "feats", torch.tensor(1.0), ndim=None)
    raises_one_line(ValueError, r"the channel dimension D must be > 0", check_features, "view1", torch.zeros(2, 3, 0))


def test_labels_become_the_bool_mask_of_nonzero_entries():
    ints = torch.tensor([[0, 1, 1], [1, 0, 0]])
    expected = torch.tensor([[False, True, True], [True, False, False]])
    for labels in (ints, ints.to(torch.uint8), expected):
        got = check_labels("labels", labels, (2, 3), torch.device("cpu"))
        assert got.dtype == torch.bool and torch.equal(got, expected)
    assert check_labels("labels", torch.zeros(0, 3, dtype=torch.long), (0, 3), torch.device("cpu")).dtype == torch.bool
    raises_one_line(TypeError, r"labels has dtype torch.float32: pass a bool mask .* e.g. labels > 0.5",
                    check_labels, "labels", ints.float(), (2, 3), torch.device("cpu"))
    raises_one_line(ValueError, r"labels has shape \(3, 2\) but the features need \(2, 3\): pass one label per patch",
                    check_labels, "labels", ints.T, (2, 3), torch.device("cpu"))
    raises_one_line(ValueError, r"labels holds values other than 0 and 1",
                    check_labels, "labels", ints * 2, (2, 3), torch.device("cpu"))
    raises_one_line(TypeError, r"labels must be a torch.Tensor of shape \[2, 3\], got list",
                    check_labels, "labels", ints.tolist(), (2, 3), torch.device("cpu"))


def test_center_and_compute_dtype():
    assert check_center("center", None, 4) is None
    center = torch.zeros(4)
    assert check_center("center", center, 4) is center
    raises_one_line(ValueError, r"center has shape \(3,\): expected \[4\], one value per feature channel",
                    check_center, "center", torch.zeros(3), 4)
    raises_one_line(TypeError, r"center has dtype torch.int64: pass a floating-point center",
                    check_center, "center", torch.zeros(4, dtype=torch.long), 4)
    raises_one_line(TypeError, r"center must be a torch.Tensor of shape \[4\] or None", check_center, "center", [0.0] * 4, 4)
    expected = {torch.float64: torch.float64, torch.float32: torch.float32,
                torch.float16: torch.float32, torch.bfloat16: torch.float32}  # half precision is upcast
    for dtype, want in expected.items():
        assert compute_dtype(torch.zeros(1, dtype=dtype)) == want

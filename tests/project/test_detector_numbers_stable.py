"""Issue 21's promise: renovating the detectors changes no number.

Every registered detector is fitted on the tiny CNN preset (seeded model and images, see
tests/project/detector_numbers.py) and its maps and scores, from the fitting code's ``predict``
and from the deployed folder model's forward, must equal bit for bit the values recorded from
the code *before* the renovation (tests/fixtures/detector_numbers.safetensors, whose metadata
names the commit). Bitwise, not a tolerance: the same float operations in the same order.
"""

from __future__ import annotations

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from adpretrain_hf.detectors import DETECTORS
from tests.project.detector_numbers import FIXTURE, RECORDED_FROM, cases, expected, numbers, tiny_model

CASES = cases()


@pytest.fixture(scope="module")
def recorded() -> dict[str, torch.Tensor]:
    return load_file(str(FIXTURE))


@pytest.fixture(scope="module")
def model():
    return tiny_model()


def test_the_fixture_records_the_pre_renovation_code():
    with safe_open(str(FIXTURE), framework="pt") as handle:
        assert handle.metadata()["recorded_from"] == RECORDED_FROM


def test_every_registered_detector_is_covered():
    assert {method for _, method, _, _ in CASES} == set(DETECTORS)


@pytest.mark.parametrize("name,method,kind,options", CASES, ids=[c[0] for c in CASES])
def test_maps_and_scores_equal_the_recorded_ones_bitwise(recorded, model, name, method, kind, options):
    got = numbers(model, name, method, kind, options)
    assert {k for k in recorded if k.startswith(name + ".")} <= set(got)
    for key, value in got.items():
        want = expected(recorded, key)
        assert torch.equal(value, want), f"{key} changed: max |diff| {(value - want).abs().max():.3g}"

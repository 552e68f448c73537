"""Release FeatureNorm against the released code's own outputs (tests/fixtures/release_parity/featurenorm.safetensors).

Case a: given features (16x16 -> 224). Case b: the validation path, encoder maps -> cosine-NN
residuals (the package's matcher) -> projector -> scores. The projector step is taken from
the fixture's recorded output (``b.intermediate.projected``): loading the release ``.pth``
through the converter is tested by the converter's own parity suite (test_projector.py).
Each rule is checked to matter: the package's ``||e||`` token score and ``align_corners=False``
maps differ beyond the tolerance.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adpretrain_hf.modeling.anomaly_map_adpretrain import anomaly_map_from_grids, feature_norm_grids
from adpretrain_hf.modeling.release_scoring_adpretrain import (
    release_featurenorm_maps,
    release_featurenorm_token_scores,
    release_level_mean_map,
    smooth_maps,
)
from adpretrain_hf.modeling.residual_adpretrain import residual_features

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_parity" / "featurenorm.safetensors"
LEVELS = 4
IMAGE_SIZE = {"a": (224, 224), "b": (56, 56)}
SCORE_ATOL = 1e-5  # float32 norms of 16-64 channels
RESIDUAL_ATOL = 1e-6  # a subtraction of the same rows


@pytest.fixture(scope="module")
def fx():
    return load_file(str(FIXTURE))


def projected(fx, case):
    key = "a.input.features" if case == "a" else "b.intermediate.projected"
    return [fx[f"{key}.level{l}"] for l in range(LEVELS)]


def assert_differs(value, reference, atol):
    assert (value.float() - reference.float()).abs().max() > 10 * atol


@pytest.mark.parametrize("case", ["a", "b"])
def test_token_scores_maps_and_image_scores(fx, case):
    levels = projected(fx, case)
    for l, features in enumerate(levels):
        expected = fx[f"{case}.output.token_score.level{l}"]
        torch.testing.assert_close(release_featurenorm_token_scores(features), expected, atol=SCORE_ATOL, rtol=0)
        assert_differs(features.norm(dim=1), expected, SCORE_ATOL)  # the package's ||e|| token score
    unsmoothed, smoothed, scores = release_featurenorm_maps(levels, IMAGE_SIZE[case])
    if case == "b":  # case a's unsmoothed map is not stored
        torch.testing.assert_close(unsmoothed, fx["b.intermediate.map_mean_upsampled_unsmoothed"], atol=SCORE_ATOL, rtol=0)
    torch.testing.assert_close(smoothed, fx[f"{case}.output.anomaly_map"], atol=SCORE_ATOL, rtol=0)
    torch.testing.assert_close(scores, fx[f"{case}.output.image_scores"], atol=SCORE_ATOL, rtol=0)

    grids = [release_featurenorm_token_scores(f) for f in levels]
    flipped = smooth_maps(release_level_mean_map(grids, IMAGE_SIZE[case], align_corners=False))
    assert_differs(flipped, fx[f"{case}.output.anomaly_map"], SCORE_ATOL)  # align_corners flipped
    tokens = [f.flatten(2).transpose(1, 2) for f in levels]  # [B, h*w, D]
    package_maps, package_scores = anomaly_map_from_grids(feature_norm_grids(tokens, [f.shape[-2:] for f in levels]),
                                                          IMAGE_SIZE[case])
    assert_differs(package_maps, fx[f"{case}.output.anomaly_map"], SCORE_ATOL)  # the package's default
    assert_differs(package_scores, fx[f"{case}.output.image_scores"], SCORE_ATOL)


@pytest.mark.parametrize("level", range(LEVELS))
def test_case_b_residuals_through_the_package_matcher(fx, level):
    """Encoder maps and the class bank -> the release's cosine-NN residuals, by the package's matcher."""
    encoder = fx[f"b.input.encoder_features.level{level}"]  # [B, C, h, w]
    tokens = encoder.flatten(2).transpose(1, 2)  # [B, h*w, C]
    residual = residual_features(tokens, fx[f"b.input.reference_bank.level{level}"], metric="cosine", backend="torch")
    as_map = residual.transpose(1, 2).reshape(encoder.shape)
    torch.testing.assert_close(as_map, fx[f"b.intermediate.residual.level{level}"], atol=RESIDUAL_ATOL, rtol=0)
    plain_l2 = residual_features(tokens, fx[f"b.input.reference_bank.level{level}"], metric="l2", backend="torch")
    assert_differs(plain_l2.transpose(1, 2).reshape(encoder.shape), fx[f"b.intermediate.residual.level{level}"],
                   RESIDUAL_ATOL)  # matching by plain L2 instead of cosine picks other rows

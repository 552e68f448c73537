"""Release PaDiM against the released code's own outputs (tests/fixtures/release_parity/padim.safetensors).

Checked: per-level mean, covariance (+0.01 I), inverse, Mahalanobis grids, the level-mean map
before smoothing, the globally min-max normalised maps and the image scores; and that each rule
matters: the package's align_corners=False maps, a per-image normalisation, a biased or
unregularised covariance or the squared form differ beyond the tolerance. The package's own
Cholesky-based distance is checked equal on the same statistics (the grids are one fact).
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adpretrain_hf.modeling.anomaly_map_adpretrain import upsample_and_average
from adpretrain_hf.modeling.release_scoring_adpretrain import (
    global_min_max_normalise,
    release_level_mean_map,
    release_padim_distances,
    release_padim_fit,
    smooth_maps,
)
from adpretrain_hf.modeling.scoring_adpretrain import mahalanobis_distances

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "release_parity" / "padim.safetensors"
LEVELS = 4
IMAGE_SIZE = (56, 56)
STAT_ATOL = 1e-6  # manifest: float64 mean/cov differ from the stored float32 by <= 4.7e-7
GRID_ATOL = 1e-4  # values 1.7-64; the float32 inverse dominates (manifest: fp64 differs by <= 3.4e-4)
PACKAGE_GRID_RTOL = 3e-5  # the package's float32 Cholesky solve: ~1e-5 relative to the release's float32 inverse
MAP_ATOL = 1e-4
NORMALISED_ATOL = 1e-5  # values in [0, 1]


@pytest.fixture(scope="module")
def fx():
    return load_file(str(FIXTURE))


@pytest.fixture(scope="module")
def fitted(fx):
    return [release_padim_fit(fx[f"input.train_features.level{l}"]) for l in range(LEVELS)]


@pytest.fixture(scope="module")
def grids(fx, fitted):
    return [release_padim_distances(fx[f"input.test_features.level{l}"], mean, inv)
            for l, (mean, _, inv) in enumerate(fitted)]


def assert_differs(value, reference, atol):
    assert (value.float() - reference.float()).abs().max() > 10 * atol


@pytest.mark.parametrize("level", range(LEVELS))
def test_gaussian_statistics(fx, fitted, level):
    mean, cov, inv = fitted[level]
    torch.testing.assert_close(mean, fx[f"output.mean.level{level}"], atol=STAT_ATOL, rtol=0)
    torch.testing.assert_close(cov, fx[f"output.cov.level{level}"], atol=STAT_ATOL, rtol=0)
    torch.testing.assert_close(inv, fx[f"output.cov_inv.level{level}"], atol=STAT_ATOL * 100, rtol=1e-5)
    train = fx[f"input.train_features.level{level}"]
    _, no_eps, _ = release_padim_fit(train, cov_eps=0.0)
    assert_differs(no_eps, fx[f"output.cov.level{level}"], STAT_ATOL)  # the +0.01 I matters
    n = train.shape[0]
    _, unbiased, _ = release_padim_fit(train)
    eye = torch.eye(unbiased.shape[0]).unsqueeze(-1)
    divided_by_n = (unbiased - 0.01 * eye) * (n - 1) / n + 0.01 * eye  # numpy.cov(bias=True) instead
    assert_differs(divided_by_n, fx[f"output.cov.level{level}"], STAT_ATOL)


@pytest.mark.parametrize("level", range(LEVELS))
def test_mahalanobis_grids(fx, fitted, grids, level):
    expected = fx[f"output.mahalanobis_grid.level{level}"]
    torch.testing.assert_close(grids[level], expected, atol=GRID_ATOL, rtol=0)
    assert_differs(grids[level].square(), expected, GRID_ATOL)  # the release takes the square root
    # the package's Cholesky form on the same statistics gives the same grid
    mean, cov, _ = fitted[level]
    test = fx[f"input.test_features.level{level}"]
    b, c, h, w = test.shape
    cholesky = torch.linalg.cholesky(cov.double().permute(2, 0, 1)).float()
    package = mahalanobis_distances(test.reshape(b, c, h * w), mean.T.contiguous(), cholesky).reshape(b, h, w)
    torch.testing.assert_close(package, expected, atol=GRID_ATOL, rtol=PACKAGE_GRID_RTOL)


def test_maps_normalisation_and_image_scores(fx, grids):
    unsmoothed = release_level_mean_map(grids, IMAGE_SIZE)
    torch.testing.assert_close(unsmoothed, fx["output.map_mean_upsampled_unsmoothed"], atol=MAP_ATOL, rtol=0)
    normalised, scores = global_min_max_normalise(smooth_maps(unsmoothed))
    torch.testing.assert_close(normalised, fx["output.anomaly_map_normalized"], atol=NORMALISED_ATOL, rtol=0)
    torch.testing.assert_close(scores, fx["output.image_scores"], atol=NORMALISED_ATOL, rtol=0)
    assert float(scores.max()) == 1.0  # the set's largest value becomes exactly 1

    # the package's upsampling (align_corners=False) is not the release's
    assert_differs(upsample_and_average(grids, IMAGE_SIZE), fx["output.map_mean_upsampled_unsmoothed"], MAP_ATOL)
    # a per-image min-max (or none) is not the release's global one
    smoothed = smooth_maps(unsmoothed)
    per_image = torch.stack([global_min_max_normalise(m.unsqueeze(0))[0][0] for m in smoothed])
    assert_differs(per_image, fx["output.anomaly_map_normalized"], NORMALISED_ATOL)
    assert_differs(smoothed, fx["output.anomaly_map_normalized"], NORMALISED_ATOL)


def test_normalisation_depends_on_the_test_set(fx, grids):
    """The quirk the protocol step documents: an image's normalised score changes with its company."""
    maps = smooth_maps(release_level_mean_map(grids, IMAGE_SIZE))
    _, together = global_min_max_normalise(maps)
    _, normals_only = global_min_max_normalise(maps[:2])
    assert abs(float(together[0]) - float(normals_only[0])) > 0.1
    with pytest.raises(ValueError, match="min-max range is empty"):
        global_min_max_normalise(torch.ones(2, 4, 4))

"""The detectors' ``variant="release"`` end to end against the released code's own outputs.

The pure release maths is proven function by function in test_{patchcore,padim,featurenorm}.py;
here the ASSEMBLED detectors (fitting side + ``DetectorModule.forward``, the one scoring path)
run on the fixtures' features through an extractor that hands them out by image index, and
their maps and image scores are compared with the fixture within the same tolerances. Each
test also runs ``variant="package"`` (the package's own maths) and asserts it differs.
"""

from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from adpretrain_hf.detectors import FeatureNorm, PaDiM, PatchCore
from adpretrain_hf.evaluation.protocols import apply_post_processing
from adpretrain_hf.modeling.release_scoring_adpretrain import release_coreset_indices

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "release_parity"
LEVELS = 4
PATCHCORE_SIZE = (56, 56)
PATCHCORE_ATOL = 5e-4  # as test_patchcore.py: distances 84-4200, float32 expansion vs exact
PADIM_SIZE = (56, 56)
PADIM_MAP_ATOL = 1e-4  # as test_padim.py
PADIM_NORMALISED_ATOL = 1e-5
FEATURENORM_SIZE = (224, 224)
FEATURENORM_ATOL = 1e-5  # as test_featurenorm.py


class FixtureExtractor:
    """Pixel values whose ``[:, 0, 0, 0]`` is an image index -> that image's fixture maps (one per level)."""

    feature_kind = "pretrained"
    device = torch.device("cpu")

    def __init__(self, levels: list[torch.Tensor], image_size: tuple[int, int]) -> None:
        self.levels = levels
        self.image_size = image_size
        self.layer_positions = list(range(len(levels)))

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        index = pixel_values[:, 0, 0, 0].long()
        return [level[index] for level in self.levels]

    def images(self, count: int) -> torch.Tensor:
        pixels = torch.zeros(count, 3, *self.image_size)
        pixels[:, 0, 0, 0] = torch.arange(count, dtype=torch.float32)
        return pixels


def split(fx: dict, key: str) -> list[torch.Tensor]:
    return [fx[f"{key}.level{l}"] for l in range(LEVELS)]


def assert_differs(value: torch.Tensor, reference: torch.Tensor, atol: float) -> None:
    assert (value.float() - reference.float()).abs().max() > 10 * atol


@pytest.fixture(scope="module")
def patchcore_fx():
    return load_file(str(FIXTURES / "patchcore.safetensors"))


def fitted_patchcore(fx: dict, variant: str, ratio: float = 1.0, seed: int = 0) -> tuple[PatchCore, torch.Tensor]:
    train = FixtureExtractor(split(fx, "input.train_features"), PATCHCORE_SIZE)
    detector = PatchCore(train, coreset_ratio=ratio, variant=variant, seed=seed, backend="torch", progress=False)
    detector.fit(train.images(4))
    test = FixtureExtractor(split(fx, "input.test_features"), PATCHCORE_SIZE)
    detector.extractor = test
    return detector, test.images(4)


def test_patchcore_release_variant_full_bank(patchcore_fx):
    """Case a: the whole bank (no coreset); maps and image scores as the release."""
    fx = patchcore_fx
    detector, test_images = fitted_patchcore(fx, "release")
    torch.testing.assert_close(detector.memory_bank, fx["a.output.memory_bank"], atol=1e-6, rtol=0)
    maps, scores = detector.predict(test_images)
    torch.testing.assert_close(maps, fx["a.output.anomaly_map"], atol=PATCHCORE_ATOL, rtol=0)
    torch.testing.assert_close(scores, fx["a.output.image_scores"], atol=PATCHCORE_ATOL, rtol=0)
    unsmoothed, _ = PatchCore(detector.extractor, variant="release", sigma=0, progress=False).module, None
    unsmoothed.set_fitted({"memory_bank": detector.memory_bank})
    plain, _ = unsmoothed(detector._used_features(detector.extractor(test_images)), PATCHCORE_SIZE)
    torch.testing.assert_close(plain, fx["a.output.map_upsampled_unsmoothed"], atol=PATCHCORE_ATOL, rtol=0)
    # the package's variant (channel-weighted embedding, plain L2, Eq. 7) is not the release
    package, package_images = fitted_patchcore(fx, "package")
    package_maps, package_scores = package.predict(package_images)
    assert_differs(package_maps, fx["a.output.anomaly_map"], PATCHCORE_ATOL)
    assert_differs(package_scores, fx["a.output.image_scores"], PATCHCORE_ATOL)


def test_patchcore_release_variant_coreset(patchcore_fx):
    """The fitted bank is the release coreset's rows; with case b's bank the module gives case b's outputs."""
    fx = patchcore_fx
    detector, test_images = fitted_patchcore(fx, "release", ratio=0.1, seed=3)
    rows = release_coreset_indices(fx["a.output.memory_bank"], 0.1, 128, generator=torch.Generator().manual_seed(3))
    torch.testing.assert_close(detector.memory_bank, fx["a.output.memory_bank"][rows], atol=1e-6, rtol=0)
    assert detector.memory_bank.shape == fx["b.output.memory_bank"].shape  # int(256 * 0.1) rows, as the release
    package, _ = fitted_patchcore(fx, "package", ratio=0.1, seed=3)
    assert package.memory_bank.shape[1] != fx["b.output.memory_bank"].shape[1]  # 192 wide, not 1024
    detector.module.set_fitted({"memory_bank": fx["b.output.memory_bank"]})  # the recorded projection's selection
    maps, scores = detector.predict(test_images)
    torch.testing.assert_close(maps, fx["b.output.anomaly_map"], atol=PATCHCORE_ATOL, rtol=0)
    torch.testing.assert_close(scores, fx["b.output.image_scores"], atol=PATCHCORE_ATOL, rtol=0)


@pytest.mark.parametrize("variant", ["release", "package"])
def test_padim_release_variant_and_the_protocol_step(variant):
    fx = load_file(str(FIXTURES / "padim.safetensors"))
    train = FixtureExtractor(split(fx, "input.train_features"), PADIM_SIZE)
    test = FixtureExtractor(split(fx, "input.test_features"), PADIM_SIZE)
    outputs = {}
    for sigma in (0.0, 4.0):
        detector = PaDiM(train, variant=variant, sigma=sigma, progress=False).fit(train.images(8))
        detector.extractor = test
        outputs[sigma] = detector.predict(test.images(4))
    unsmoothed, (maps, scores) = outputs[0.0][0], outputs[4.0]
    normalised, image_scores = apply_post_processing("release", "padim", maps, scores)
    checks = [(unsmoothed, fx["output.map_mean_upsampled_unsmoothed"], PADIM_MAP_ATOL),
              (normalised, fx["output.anomaly_map_normalized"], PADIM_NORMALISED_ATOL),
              (image_scores, fx["output.image_scores"], PADIM_NORMALISED_ATOL)]
    if variant == "release":
        for value, expected, atol in checks:
            torch.testing.assert_close(value, expected, atol=atol, rtol=0)
        assert float(image_scores.max()) == 1.0
        # the package protocol runs no step: its maps stay un-normalised
        assert apply_post_processing("package", "padim", maps, scores)[0] is maps
    else:  # align_corners=False (and the Cholesky solve) is not the release
        assert_differs(unsmoothed, fx["output.map_mean_upsampled_unsmoothed"], PADIM_MAP_ATOL)
        assert_differs(normalised, fx["output.anomaly_map_normalized"], PADIM_NORMALISED_ATOL)


@pytest.mark.parametrize("variant", ["release", "package"])
def test_featurenorm_release_variant(variant):
    fx = load_file(str(FIXTURES / "featurenorm.safetensors"))
    extractor = FixtureExtractor(split(fx, "a.input.features"), FEATURENORM_SIZE)
    maps, scores = FeatureNorm(extractor, variant=variant, progress=False).predict(extractor.images(2))
    if variant == "release":
        torch.testing.assert_close(maps, fx["a.output.anomaly_map"], atol=FEATURENORM_ATOL, rtol=0)
        torch.testing.assert_close(scores, fx["a.output.image_scores"], atol=FEATURENORM_ATOL, rtol=0)
    else:  # ||e|| and align_corners=False
        assert_differs(maps, fx["a.output.anomaly_map"], FEATURENORM_ATOL)
        assert_differs(scores, fx["a.output.image_scores"], FEATURENORM_ATOL)

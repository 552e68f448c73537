"""adpretrain_hf.evaluation.protocols: the seeded train/noise selection of the paper's protocols.

The reference redraws each selection as the module's docstring specifies it, written out here:
``numpy.random.default_rng([split_seed, crc32(category)])``, one permutation for the normal
training images, then one for the anomalous test images (the noise).
"""

from __future__ import annotations

import zlib

import numpy as np
import pytest
import torch

from adpretrain_hf.evaluation import EvaluationConfig
from adpretrain_hf.evaluation.protocols import (
    category_protocol_record,
    effective_shots,
    select_protocol,
)

TRAIN = [0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0]  # 11 normal training images, one stray anomalous row
TEST = [1, 0, 1, 1, 0, 1, 1, 0]  # 5 anomalous test images


def reference_selection(category, train_labels, test_labels, seed, keep, noise_ratio=0.0):
    """(train positions, noise positions) drawn by hand from the documented generator."""
    rng = np.random.default_rng([seed, zlib.crc32(category.encode("utf-8"))])
    normal = [i for i, label in enumerate(train_labels) if label == 0]
    drawn = rng.permutation(len(normal))[:keep] if keep < len(normal) else np.arange(len(normal))
    chosen = sorted(normal[int(i)] for i in drawn)
    anomalous = [i for i, label in enumerate(test_labels) if label == 1]
    wanted = min(int(noise_ratio * len(chosen) + 1e-9), len(anomalous))
    if noise_ratio == 0:
        return chosen, []
    drawn = rng.permutation(len(anomalous))[:wanted] if wanted < len(anomalous) else np.arange(len(anomalous))
    return chosen, sorted(anomalous[int(i)] for i in drawn)


def _config(**kwargs) -> EvaluationConfig:
    return EvaluationConfig("unused", **kwargs)


@pytest.mark.parametrize("seed", [0, 3])
@pytest.mark.parametrize("category", ["tile", "bottle"])
@pytest.mark.parametrize("fraction, keep", [(1.0, 11), (0.5, round(0.5 * 11)), (0.1, 1), (0.01, 1)])
def test_train_fraction_draws_the_documented_subset(seed, category, fraction, keep):
    got = select_protocol(category, TRAIN, TEST, _config(train_fraction=fraction, split_seed=seed))
    expected, _ = reference_selection(category, TRAIN, TEST, seed, keep)
    assert got.train_normal == expected and len(got.train_normal) == keep
    assert 2 not in got.train_normal  # the stray anomalous training row never fits the detector
    assert got.noise == [] and got.num_train_normal_available == 11 and got.num_train == keep


@pytest.mark.parametrize("shots", [1, 4, 11])
def test_train_shots_keeps_exactly_that_many(shots):
    got = select_protocol("screw", TRAIN, TEST, _config(train_shots=shots, split_seed=1))
    assert got.train_normal == reference_selection("screw", TRAIN, TEST, 1, shots)[0]


def test_categories_and_seeds_draw_independently():
    one = select_protocol("tile", TRAIN, TEST, _config(train_fraction=0.5))
    assert select_protocol("tile", TRAIN, TEST, _config(train_fraction=0.5)).train_normal == one.train_normal
    others = {tuple(select_protocol(c, TRAIN, TEST, _config(train_fraction=0.5, split_seed=s)).train_normal)
              for c in ("tile", "wood", "washer") for s in (0, 1)}
    assert len(others) > 3  # the category name and the seed both change the draw


@pytest.mark.parametrize("ratio", [0.2, 0.4])
def test_noise_is_softpatchs_count_of_anomalous_test_images(ratio):
    got = select_protocol("tile", TRAIN, TEST, _config(noise_ratio=ratio, split_seed=2))
    train, noise = reference_selection("tile", TRAIN, TEST, 2, 11, ratio)
    assert got.train_normal == train and got.noise == noise
    assert len(noise) == int(ratio * 11) and all(TEST[i] == 1 for i in noise)
    assert got.num_train == 11 + len(noise)
    record = category_protocol_record(got, [f"tr{i}" for i in range(12)], [f"te{i}" for i in range(8)], TEST, k=3)
    assert record["noise_sample_ids"] == [f"te{i}" for i in noise] and record["num_test_anomalous"] == sum(TEST)
    assert (record["num_train"], record["num_noise"], record["num_references"]) == (11 + len(noise), len(noise), 3)
    assert record["train_sample_ids"] == [f"tr{i}" for i in train]


def test_noise_that_rounds_to_zero_or_exceeds_the_test_set_warns():
    with pytest.warns(UserWarning, match="rounds down to 0"):
        assert select_protocol("tile", TRAIN, TEST, _config(noise_ratio=0.05)).noise == []
    with pytest.warns(UserWarning, match="its test set has 5: using all of them"):
        got = select_protocol("tile", TRAIN, TEST, _config(noise_ratio=0.9))
    assert got.noise == [i for i, label in enumerate(TEST) if label == 1]


@pytest.mark.parametrize(
    "train, config, match",
    [
        ([1, 1], _config(), "category 'tile' has no normal training image: add some or leave the category out"),
        ([0, 0, 0], _config(train_shots=4), "train_shots=4 but category 'tile' has only 3 .*pass a smaller train_shots"),
    ],
)
def test_impossible_selections_are_one_line_errors(train, config, match):
    with pytest.raises(ValueError, match=match) as caught:
        select_protocol("tile", train, TEST, config)
    assert "\n" not in str(caught.value)


def test_effective_shots_is_clamped_to_the_pool_with_a_warning():
    assert effective_shots(4, 10, "tile") == 4
    with pytest.warns(UserWarning, match="shots=8 .* has 3 normal training images .* using 3"):
        assert effective_shots(8, 3, "tile") == 3


# -- detector protocols (issue 19) -------------------------------------------------------------
from adpretrain_hf.evaluation.config import DEFAULT_PROTOCOL, PROTOCOL_CHOICES  # noqa: E402
from adpretrain_hf.evaluation.protocols import (  # noqa: E402
    DETECTOR_PROTOCOLS,
    apply_post_processing,
    detector_protocol,
    detector_protocol_record,
    protocol_deviations,
    protocol_detector_options,
    protocol_record,
)


def test_protocol_names_have_one_home_and_release_is_the_default():
    assert tuple(DETECTOR_PROTOCOLS) == PROTOCOL_CHOICES
    assert DEFAULT_PROTOCOL == "release" == EvaluationConfig(data_root="x").protocol
    assert protocol_detector_options("release", "patchcore") == {"variant": "release", "image_score": "max"}
    assert protocol_detector_options("package", "patchcore") == {"variant": "package", "image_score": "reweighted"}
    assert protocol_detector_options("release", "cflow") == {}  # no protocol changes the trained methods
    with pytest.raises(ValueError, match="choose one of"):
        detector_protocol("paper")
    with pytest.raises(ValueError, match="unknown protocol"):
        EvaluationConfig(data_root="x", protocol="paper").validate()


def test_release_post_processing_is_the_global_min_max_over_the_test_set():
    maps = torch.tensor([[[1.0, 2.0]], [[3.0, 5.0]]])
    scores = maps.flatten(1).amax(dim=1)
    normalised, image_scores = apply_post_processing("release", "padim", maps, scores)
    torch.testing.assert_close(normalised, (maps - 1.0) / 4.0)  # ONE min (1) and max (5) over both images
    torch.testing.assert_close(image_scores, torch.tensor([0.25, 1.0]))
    same_maps, same_scores = apply_post_processing("package", "padim", maps, scores)
    assert same_maps is maps and same_scores is scores
    assert apply_post_processing("release", "patchcore", maps, scores)[0] is maps  # PaDiM's step only


def test_deviations_from_what_the_protocol_fixes_are_recorded():
    config = EvaluationConfig(data_root="x", methods="padim,cflow")
    assert protocol_deviations(config) == []
    shots = EvaluationConfig(data_root="x", shots=2, reference_seeds=3)
    assert protocol_deviations(shots) == [
        "shots=2 (protocol 'release' fixes 8)",
        "reference_strategy='random' (protocol 'release' fixes 'first')",
        "reference_seeds=3 (protocol 'release' fixes 1)",
    ]
    assert protocol_deviations(EvaluationConfig(data_root="x", protocol="package", shots=2)) == []
    record = protocol_record(config)["detector_protocol"]
    assert record == detector_protocol_record(config)
    assert record["detector_options"] == {"padim": {"variant": "release"}}  # only the methods run
    assert record["post_processing"] == {"padim": ["global_min_max"]}

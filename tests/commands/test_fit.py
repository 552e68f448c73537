"""`adpretrain fit`: the threshold from a normal-only val folder (against the pipeline's own scores) and the
layer-position flag with its old name."""

import json

import numpy as np
import pytest

from adpretrain_hf.cli import main

QUANTILE = 0.9
MARGIN = 0.25


def test_a_normal_only_val_folder_sets_the_quantile_threshold(workspace, tmp_path):
    assert main([
        "fit", "--model", str(workspace / "ckpt"), "--method", "featurenorm", "--train", str(workspace / "train"),
        "--val", str(workspace / "val_normal"), "--quantile", str(QUANTILE), "--margin", str(MARGIN),
        "--output", str(tmp_path / "fn"), "--no-progress",
    ]) == 0
    config = json.loads((tmp_path / "fn" / "config.json").read_text())
    from transformers import pipeline

    scores = [r["score"] for r in pipeline("anomaly-detection", model=str(tmp_path / "fn"), device="cpu")(
        [str(p) for p in sorted((workspace / "val_normal").iterdir())])]
    expected = float(np.quantile(scores, QUANTILE)) + MARGIN * (max(scores) - min(scores))
    assert config["image_threshold"] == pytest.approx(expected, rel=1e-5)
    assert config["score_min"] == pytest.approx(min(scores), rel=1e-5) and config["score_max"] == pytest.approx(max(scores), rel=1e-5)


def test_layer_positions_flag_and_its_old_name(workspace, tmp_path):
    """``--layer-positions 1,3`` fits on positions 1 and 3 of the tapped layers; ``--layers`` still
    works for one release, with a FutureWarning naming the new flag."""
    common = ["fit", "--model", str(workspace / "ckpt"), "--method", "featurenorm", "--train", str(workspace / "train"),
              "--no-progress"]
    assert main([*common, "--layer-positions", "1,3", "--output", str(tmp_path / "new")]) == 0
    with pytest.warns(FutureWarning, match="--layer-positions"):
        assert main([*common, "--layers", "1,3", "--output", str(tmp_path / "old")]) == 0
    for name in ("new", "old"):
        assert json.loads((tmp_path / name / "config.json").read_text())["layer_positions"] == [1, 3]


def test_the_torch_free_copies_match_their_sources():
    from adpretrain_hf.commands import fit
    from adpretrain_hf.modeling.calibration_adpretrain import DEFAULT_QUANTILE
    from adpretrain_hf.detectors import METHODS
    from adpretrain_hf.modeling.configuration_detector_adpretrain import DETECTOR_FEATURE_KINDS

    assert fit.METHODS == METHODS and fit.DEFAULT_QUANTILE == DEFAULT_QUANTILE
    assert sorted(fit.FEATURE_KINDS) == sorted(DETECTOR_FEATURE_KINDS)

"""`adpretrain fit`: the threshold from a normal-only val folder (against the pipeline's own scores) and the
layer-position flag."""

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


def test_layer_positions_flag(workspace, tmp_path):
    """``--layer-positions 1,3`` fits on positions 1 and 3 of the tapped layers; the old ``--layers`` is gone."""
    common = ["fit", "--model", str(workspace / "ckpt"), "--method", "featurenorm", "--train", str(workspace / "train"),
              "--no-progress"]
    assert main([*common, "--layer-positions", "1,3", "--output", str(tmp_path / "new")]) == 0
    assert json.loads((tmp_path / "new" / "config.json").read_text())["layer_positions"] == [1, 3]
    with pytest.raises(SystemExit):
        main([*common, "--layers", "1,3", "--output", str(tmp_path / "old")])


def test_the_torch_free_copies_match_their_sources():
    from adpretrain_hf.commands import fit
    from adpretrain_hf.modeling.calibration_adpretrain import DEFAULT_QUANTILE
    from adpretrain_hf.modeling.configuration_detector_adpretrain import DETECTOR_FEATURE_KINDS

    assert fit.DEFAULT_QUANTILE == DEFAULT_QUANTILE
    assert sorted(fit.FEATURE_KINDS) == sorted(DETECTOR_FEATURE_KINDS)


@pytest.mark.parametrize(("flag", "value", "message"), [
    ("--margin", "nan", "is not a finite number"), ("--margin", "inf", "is not a finite number"),
    ("--margin", "-0.1", "is negative"), ("--quantile", "nan", "is not a finite number"), ("--quantile", "1.5", "outside (0, 1]"),
])
def test_non_finite_or_out_of_range_numbers_are_argument_errors(workspace, tmp_path, capsys, flag, value, message):
    with pytest.raises(SystemExit) as info:
        main(["fit", "--model", str(workspace / "ckpt"), "--method", "featurenorm", "--train", str(workspace / "train"),
              "--output", str(tmp_path / "fn"), f"{flag}={value}"])
    assert info.value.code == 2 and message in capsys.readouterr().err
    assert not (tmp_path / "fn").exists()


def test_the_method_is_checked_against_the_detector_registry(workspace, tmp_path, capsys):
    from adpretrain_hf.detectors import DETECTORS

    assert main(["fit", "--model", str(workspace / "ckpt"), "--method", "patchcor", "--train", str(workspace / "train"),
                 "--output", str(tmp_path / "x")]) == 1
    err = capsys.readouterr().err
    assert "--method 'patchcor' is not a detector" in err and ", ".join(DETECTORS) in err
    assert not (tmp_path / "x").exists()


def test_an_unreadable_training_image_is_skipped_and_recorded(workspace, tmp_path):
    train = tmp_path / "train"
    train.mkdir()
    for path in sorted((workspace / "train").glob("*.png")):
        (train / path.name).write_bytes(path.read_bytes())
    (train / "broken.png").write_bytes(b"not a png")
    argv = ["fit", "--model", str(workspace / "ckpt"), "--method", "featurenorm", "--train", str(train), "--no-progress"]
    assert main([*argv, "--output", str(tmp_path / "fn")]) == 0
    errors = (tmp_path / "fn" / "errors.csv").read_text()
    assert "broken.png" in errors and errors.count("\n") == 2  # header + the one file
    assert main([*argv, "--output", str(tmp_path / "strict"), "--strict"]) == 1

"""`adpretrain predict`: predictions.csv, raw maps and overlays, against the anomaly-detection pipeline run
directly on each image (the workspace and an uncalibrated FeatureNorm folder: conftest.py; the fit/predict/export chain: tests/project/test_deploy_commands.py)."""

import csv

import numpy as np
import pytest
from PIL import Image
from transformers import pipeline

from adpretrain_hf.cli import main


def test_predictions_are_the_pipelines_per_image_results(featurenorm, workspace, tmp_path, capsys):
    images = workspace / "train"  # 8 images at batch size 1: two chunks of 4
    argv = ["predict", "--detector", str(featurenorm), "--images", str(images), "--output", str(tmp_path),
            "--save-maps", "--batch-size", "1", "--device", "cpu", "--no-progress"]
    assert main(argv) == 0
    rows = list(csv.DictReader(open(tmp_path / "predictions.csv")))
    paths = sorted(images.glob("*.png"))
    assert [r["path"] for r in rows] == [str(p) for p in paths]
    detect = pipeline("anomaly-detection", model=str(featurenorm), device="cpu")
    for row, path in zip(rows, paths):
        (alone,) = detect([str(path)], return_tensors="np")
        assert float(row["score"]) == pytest.approx(float(alone["score"]), rel=1e-5)
        assert row["label"] == row["normalized_score"] == ""  # not calibrated: no label, no score range
        saved = np.load(tmp_path / "maps" / f"{path.stem}_png.npy")
        np.testing.assert_allclose(saved, np.asarray(alone["anomaly_map"], dtype=np.float32), rtol=1e-5, atol=1e-6)
        with Image.open(tmp_path / "overlays" / f"{path.stem}_png.png") as overlay, Image.open(path) as image:
            assert overlay.height > image.height and overlay.width >= image.width  # the image, its colour bar and caption
    out = capsys.readouterr().out
    assert "8 images scored on cpu (detector not calibrated: no labels)" in out and "maps in" in out


def test_without_overlays_or_maps_only_the_csv_is_written(featurenorm, workspace, tmp_path, monkeypatch):
    def no_map_files(*args, **kwargs):
        raise AssertionError("a map was saved although neither overlays nor --save-maps need it")

    monkeypatch.setattr(np, "save", no_map_files)
    argv = ["predict", "--detector", str(featurenorm), "--images", str(workspace / "test" / "*.png"),
            "--output", str(tmp_path), "--no-overlays", "--no-progress"]
    assert main(argv) == 0
    assert sorted(p.name for p in tmp_path.iterdir()) == ["predictions.csv"]
    assert len(list(csv.DictReader(open(tmp_path / "predictions.csv")))) == 1


@pytest.mark.parametrize(
    ("extra", "folder", "message"),
    [
        (["--batch-size", "0"], "fn", "argument --batch-size: 0 must be >= 1"),
        ([], "train", "holds no config.json"),
        ([], "no_such_detector", "no_such_detector does not exist (a local path; Hub ids are written org/name)"),
    ],
)
def test_bad_options_are_one_line_before_any_output(featurenorm, workspace, tmp_path, capsys, extra, folder, message):
    argv = ["predict", "--detector", str(workspace / folder), "--images", str(workspace / "test"),
            "--output", str(tmp_path / "out"), *extra]
    with pytest.raises(SystemExit) as info:
        main(argv)
    assert info.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[-1] and err[-1].startswith("adpretrain predict: error:")  # usage lines + the one error line
    assert "Traceback" not in "\n".join(err)
    assert not (tmp_path / "out").exists()

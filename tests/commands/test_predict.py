"""`adpretrain predict`: predictions.csv, raw maps and overlays, against the anomaly-detection pipeline run
directly on each image (the workspace and an uncalibrated FeatureNorm folder: conftest.py; the fit/predict/export chain: tests/project/test_deploy_commands.py)."""

import csv
import os
import shutil
from pathlib import Path

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


@pytest.fixture(scope="module")
def calibrated(workspace, tmp_path_factory):
    """A FeatureNorm folder calibrated on the labelled val folder: image and pixel thresholds."""
    folder = tmp_path_factory.mktemp("calibrated") / "fn"
    assert main(["fit", "--model", str(workspace / "ckpt"), "--method", "featurenorm", "--train", str(workspace / "train"),
                 "--val", str(workspace / "val"), "--output", str(folder), "--no-progress"]) == 0
    return folder


def _rows(folder):
    return list(csv.DictReader(open(folder / "predictions.csv")))


def test_one_file_is_an_input_and_masks_are_saved(calibrated, workspace, tmp_path):
    image = workspace / "test" / "a.png"
    assert main(["predict", "--detector", str(calibrated), "--images", str(image), "--output", str(tmp_path),
                 "--save-masks", "--no-progress"]) == 0
    (row,) = _rows(tmp_path)
    (alone,) = pipeline("anomaly-detection", model=str(calibrated), device="cpu")([str(image)], return_tensors="np")
    assert row["path"] == str(image.absolute()) and row["label"] == str(int(alone["label"]))
    with Image.open(tmp_path / "masks" / "a_png.png") as mask:
        assert np.array_equal(np.asarray(mask) > 0, alone["pred_mask"]) and set(np.unique(np.asarray(mask))) <= {0, 255}


def test_the_threshold_flag_sets_this_runs_labels(calibrated, workspace, tmp_path):
    images = str(workspace / "val")
    assert main(["predict", "--detector", str(calibrated), "--images", images, "--output", str(tmp_path / "low"),
                 "--threshold=-1e9", "--no-overlays", "--no-progress"]) == 0
    assert main(["predict", "--detector", str(calibrated), "--images", images, "--output", str(tmp_path / "high"),
                 "--threshold", "1e9", "--no-overlays", "--no-progress"]) == 0
    assert {r["label"] for r in _rows(tmp_path / "low")} == {"1"} and {r["label"] for r in _rows(tmp_path / "high")} == {"0"}


def test_an_unreadable_file_is_skipped_recorded_and_strict_fails(featurenorm, workspace, tmp_path, capsys):
    folder = tmp_path / "in"
    folder.mkdir()
    for path in sorted((workspace / "train").glob("*.png"))[:3]:
        (folder / path.name).write_bytes(path.read_bytes())
    data = (workspace / "train" / "3.png").read_bytes()
    (folder / "truncated.png").write_bytes(data[: len(data) // 2])
    argv = ["predict", "--detector", str(featurenorm), "--images", str(folder), "--no-progress", "--batch-size", "2"]
    assert main([*argv, "--output", str(tmp_path / "lenient")]) == 0
    rows = _rows(tmp_path / "lenient")
    assert sorted(Path(r["path"]).name for r in rows) == ["0.png", "1.png", "2.png"]  # the good ones, all scored
    errors = list(csv.DictReader(open(tmp_path / "lenient" / "errors.csv")))
    assert [Path(e["path"]).name for e in errors] == ["truncated.png"] and errors[0]["error"]
    captured = capsys.readouterr()
    assert "warning: skipped" in captured.err and "1 of 4 images could not be read" in captured.out
    assert main([*argv, "--output", str(tmp_path / "strict"), "--strict"]) == 1
    assert len(_rows(tmp_path / "strict")) == 3


def test_a_crash_leaves_no_half_csv(featurenorm, workspace, tmp_path, monkeypatch):
    from adpretrain_hf.commands import _deploy_io

    real = _deploy_io.score_in_chunks

    def crash_after_two(*args, **kwargs):
        for i, item in enumerate(real(*args, **kwargs)):
            if i == 2:
                raise RuntimeError("killed")
            yield item

    monkeypatch.setattr(_deploy_io, "score_in_chunks", crash_after_two)
    with pytest.raises(RuntimeError):
        main(["--debug", "predict", "--detector", str(featurenorm), "--images", str(workspace / "train"),
              "--output", str(tmp_path), "--no-progress", "--batch-size", "1"])
    assert not (tmp_path / "predictions.csv").exists() and not list(tmp_path.glob(".predictions.csv*"))


def test_overlays_read_like_the_model_and_carry_the_decision(calibrated, tmp_path):
    """A 16-bit PNG: the overlay's image part is the shared reader's pixels (not a washed-out second
    reader), blended as render_overlay does; the caption names score, label and thresholds."""
    from adpretrain_hf.modeling.image_io_adpretrain import read_image
    from adpretrain_hf.overlays import render_overlay

    folder = tmp_path / "in"
    folder.mkdir()
    ramp = (np.linspace(0, 40000, 64 * 64).reshape(64, 64)).astype(np.uint16)
    Image.fromarray(ramp).save(folder / "wide.png")
    assert main(["predict", "--detector", str(calibrated), "--images", str(folder), "--output", str(tmp_path / "o"),
                 "--save-maps", "--no-progress"]) == 0
    amap = np.load(tmp_path / "o" / "maps" / "wide_png.npy")
    config = pipeline("anomaly-detection", model=str(calibrated), device="cpu").model.config
    expected = render_overlay(read_image(folder / "wide.png"), amap, vmin=float(amap.min()), vmax=float(amap.max()),
                              pred_mask=amap >= config.pixel_threshold)
    with Image.open(tmp_path / "o" / "overlays" / "wide_png.png") as overlay:
        top = np.asarray(overlay.convert("RGB"))[: expected.height, : expected.width]
        assert np.array_equal(top, np.asarray(expected))
        assert overlay.height > expected.height  # the caption strip


def test_decision_lines_explain_label_and_mask_disagreeing():
    from adpretrain_hf.overlays import decision_lines

    anomalous_no_mask = decision_lines(2.0, True, 1.5, 3.0, map_max=2.5, mask_pixels=0)
    assert "ANOMALOUS" in anomalous_no_mask[0] and "image threshold 1.5" in anomalous_no_mask[0]
    assert "no contour although anomalous" in anomalous_no_mask[-1] and "thresholds differ" in anomalous_no_mask[-1]
    agree = decision_lines(2.0, True, 1.5, 1.0, map_max=2.5, mask_pixels=12)
    assert len(agree) == 2 and "12 px" in agree[1]
    assert "contour although normal" in decision_lines(1.0, False, 1.5, 0.5, map_max=1.0, mask_pixels=5)[-1]
    assert decision_lines(1.0, None, None, None, map_max=1.0, mask_pixels=None) == ["score 1 (not calibrated: no label)"]


@pytest.mark.parametrize("runtime", ["onnx", "openvino"])
def test_an_exported_graph_scores_like_torch(calibrated, workspace, tmp_path, capsys, runtime):
    pytest.importorskip("onnxruntime" if runtime == "onnx" else "openvino")
    folder = tmp_path / "fn"
    shutil.copytree(calibrated, folder)
    assert main(["export", "--detector", str(folder), "--format", runtime]) == 0
    common = ["predict", "--detector", str(folder), "--images", str(workspace / "val"), "--save-maps", "--no-overlays", "--no-progress"]
    assert main([*common, "--output", str(tmp_path / "torch"), "--device", "cpu"]) == 0
    assert main([*common, "--output", str(tmp_path / runtime), "--runtime", runtime]) == 0
    assert f"scored on cpu ({runtime})" in capsys.readouterr().out
    torch_rows, graph_rows = _rows(tmp_path / "torch"), _rows(tmp_path / runtime)
    assert [r["path"] for r in graph_rows] == [r["path"] for r in torch_rows] and len(torch_rows) >= 4
    for want, got in zip(torch_rows, graph_rows):
        assert float(got["score"]) == pytest.approx(float(want["score"]), rel=1e-4, abs=1e-5)
        assert got["label"] == want["label"]
    for saved in (tmp_path / "torch" / "maps").rglob("*.npy"):
        got = np.load(tmp_path / runtime / "maps" / saved.relative_to(tmp_path / "torch" / "maps"))
        np.testing.assert_allclose(got, np.load(saved), rtol=1e-4, atol=1e-4)


def test_a_missing_or_stale_export_is_refused_before_any_output(calibrated, workspace, tmp_path, capsys):
    folder = tmp_path / "fn"
    shutil.copytree(calibrated, folder)
    argv = ["predict", "--detector", str(folder), "--images", str(workspace / "val"), "--output", str(tmp_path / "out"),
            "--runtime", "onnx", "--no-progress"]
    assert main(argv) == 1
    err = capsys.readouterr().err
    assert "has no exported onnx graph" in err and f"hint: adpretrain export --detector {folder} --format onnx" in err
    assert main(["export", "--detector", str(folder), "--format", "onnx"]) == 0
    weights = folder / "model.safetensors"
    later = (folder / "model.onnx").stat().st_mtime + 10
    os.utime(weights, (later, later))  # fitted again after the export
    assert main(argv) == 1
    assert "is older than" in capsys.readouterr().err
    assert main([*argv, "--device", "cuda"]) == 1
    assert "runs on the CPU" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


def test_the_torch_free_runtime_list_matches_the_exported_graphs():
    from adpretrain_hf.commands import _deploy_io
    from adpretrain_hf.exported_detector import EXPORT_NAMES

    assert _deploy_io.RUNTIMES == ("torch", *EXPORT_NAMES)

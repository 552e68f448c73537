"""`adpretrain fit | predict | export` end to end on a tiny preset, with images made here
(tests/commands/helpers.py), and the three commands' one-line errors.

Cross-cutting: each command's own tests are in tests/commands/test_<command>.py."""

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from adpretrain_hf.cli import main
from adpretrain_hf.overlays import COLORBAR_PANEL_WIDTH

from tests.commands.helpers import SIZE, make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("deploy"))


@pytest.fixture(scope="module")
def fitted(workspace):
    code = main([
        "fit", "--model", str(workspace / "ckpt"), "--method", "patchcore", "--train", str(workspace / "train"),
        "--val", str(workspace / "val"), "--output", str(workspace / "det"), "--device", "auto", "--no-progress",
    ])
    assert code == 0
    return workspace / "det"


def test_fit_predict_export_chain(fitted, workspace):
    config = json.loads((fitted / "config.json").read_text())
    assert config["method"] == "patchcore" and config["calibration"] == "f1"  # labelled val: F1 thresholds
    assert "anomaly-detection" in config["custom_pipelines"]

    out = workspace / "pred"
    assert main(["predict", "--detector", str(fitted), "--images", str(workspace / "test"), "--output", str(out),
                 "--save-maps", "--batch-size", "2", "--no-progress"]) == 0
    rows = list(csv.DictReader(open(out / "predictions.csv")))
    assert [Path(r["path"]).relative_to(workspace / "test").as_posix() for r in rows] == ["a.jpg", "a.png", "sub/a.png"]

    from transformers import pipeline

    reference = pipeline("anomaly-detection", model=str(fitted), device="cpu")
    for row in rows:
        expected = reference(row["path"])
        assert float(row["score"]) == pytest.approx(expected["score"], rel=1e-4)
        assert float(row["normalized_score"]) == pytest.approx(expected["normalized_score"], abs=1e-4)
        assert row["label"] == str(int(float(row["score"]) >= config["image_threshold"]))
    assert [r["label"] for r in rows] == ["0", "1", "0"]  # the white box is found, the plain parts pass

    sub_map = np.load(out / "maps" / "sub" / "a_png.npy")
    assert sub_map.shape == (50, 90)  # the image's own size
    np.testing.assert_allclose(sub_map, reference(str(workspace / "test" / "sub" / "a.png"))["anomaly_map"].numpy(), rtol=1e-4, atol=1e-5)
    for stem, (height, width) in {"a_png": (64, 64), "a_jpg": (64, 64), "sub/a_png": (50, 90)}.items():
        overlay_width, overlay_height = Image.open(out / "overlays" / f"{stem}.png").size
        assert overlay_width >= width + COLORBAR_PANEL_WIDTH and overlay_height > height  # map, colour bar, caption below

    assert main(["export", "--detector", str(fitted), "--output", str(workspace / "det.onnx")]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(workspace / "det.onnx"), providers=["CPUExecutionProvider"])
    from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor

    pixels = ADPretrainImageProcessor.from_pretrained(fitted)(Image.open(rows[1]["path"]).convert("RGB"), return_tensors="pt")["pixel_values"]
    onnx_map, onnx_score = session.run(None, {"pixel_values": pixels.numpy()})
    assert float(onnx_score[0]) == pytest.approx(float(rows[1]["score"]), rel=1e-4)
    assert onnx_map.shape == (1, SIZE, SIZE)


@pytest.mark.parametrize(
    ("argv", "message", "code"),
    [
        (["predict", "--detector", "{ws}/det", "--images", "{ws}/nowhere", "--output", "{ws}/x"], "nowhere does not exist", 2),
        (["predict", "--detector", "{ws}/det", "--images", "{ws}/test/*.bmp", "--output", "{ws}/x"], "no images match", 2),
        (["fit", "--model", "{ws}/ckpt", "--method", "patchcore", "--train", "{ws}/train", "--output", "{ws}/y", "--quantile", "2"], "outside (0, 1]", 2),
        (["export", "--detector", "{ws}/train"], "not a detector folder", 1),
        (["fit", "--model", "{ws}/ckpt", "--method", "featurenorm", "--train", "{ws}/train", "--output", "{ws}/y",
          "--layer-positions", "a,b"], "not a comma-separated list of integers", 1),
    ],
)
def test_bad_input_gives_one_line(argv, message, code, fitted, workspace, capsys):
    """Argument errors (exit 2: argparse's usage and one error line) and run-time errors (exit 1: one
    error line and a hint), never a traceback; nothing written."""
    argv = [a.format(ws=workspace) for a in argv]
    if code == 2:
        with pytest.raises(SystemExit) as info:
            main(argv)
        assert info.value.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert message in err[-1] and ": error: argument" in err[-1] and "Traceback" not in "\n".join(err)
        assert not (workspace / "x").exists() and not (workspace / "y").exists()
        return
    assert main(argv) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[0] and err[1].strip().startswith("hint:") and len(err) == 2

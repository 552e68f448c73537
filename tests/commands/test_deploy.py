"""`adpretrain fit | predict | export` end to end on a tiny preset, with images made here; and
`adpretrain --help` staying free of torch."""

import csv
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adpretrain_hf.cli import main
from adpretrain_hf.commands._deploy_io import find_images, load_validation_set, output_stem
from adpretrain_hf.overlays import COLORBAR_PANEL_WIDTH

SIZE = 64  # tiny-clip's input size
QUANTILE = 0.9
MARGIN = 0.25


def _normal(rng, size=(SIZE, SIZE)):
    """A flat grey part with mild noise: what the detector learns as normal."""
    return (np.full((*size, 3), 110, np.uint8) + rng.integers(0, 25, (*size, 3), dtype=np.uint8))


def _defect(rng, box=(20, 40, 20, 40), size=(SIZE, SIZE)):
    image = _normal(rng, size)
    top, bottom, left, right = box
    image[top:bottom, left:right] = 255
    return image


def _save(array, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    """A checkpoint, normal training images, an MVTec-style labelled val folder, test images that clash by name."""
    root = tmp_path_factory.mktemp("deploy")
    from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel

    torch.manual_seed(0)
    ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).save_pretrained(root / "ckpt")
    rng = np.random.default_rng(0)
    for i in range(8):
        _save(_normal(rng), root / "train" / f"{i}.png")
    for i in range(4):
        _save(_normal(rng), root / "val" / "good" / f"{i}.png")
        _save(_normal(rng), root / "val_normal" / f"{i}.png")
    for i in range(3):
        _save(_defect(rng), root / "val" / "scratch" / f"{i}.png")
        mask = np.zeros((SIZE, SIZE), np.uint8)
        mask[20:40, 20:40] = 255
        _save(mask, root / "ground_truth" / "scratch" / f"{i}_mask.png")  # MVTec: beside the test folder
    _save(_defect(rng), root / "test" / "a.png")  # the kind of defect the val folder labelled
    _save(_normal(rng), root / "test" / "a.jpg")
    _save(_normal(rng, (50, 90)), root / "test" / "sub" / "a.png")
    return root


@pytest.fixture(scope="module")
def fitted(workspace):
    code = main([
        "fit", "--model", str(workspace / "ckpt"), "--method", "patchcore", "--train", str(workspace / "train"),
        "--val", str(workspace / "val"), "--output", str(workspace / "det"), "--device", "auto", "--no-progress",
    ])
    assert code == 0
    return workspace / "det"


def test_help_imports_no_torch():
    """The console script's --help parses every subcommand without torch or transformers."""
    script = Path(sys.executable).with_name("adpretrain")
    probe = (
        "import sys\nfrom adpretrain_hf.cli import main\ntry:\n    main(['--help'])\nexcept SystemExit:\n    pass\n"
        "heavy = sorted(m for m in ('torch', 'transformers', 'numpy') if m in sys.modules)\nprint('HEAVY', heavy)\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "HEAVY []" in result.stdout and "predict" in result.stdout
    if script.is_file():  # the real entry point, as a user runs it
        timed = subprocess.run([sys.executable, "-X", "importtime", str(script), "--help"], capture_output=True, text=True, timeout=120)
        assert timed.returncode == 0
        imported = {line.rsplit("|", 1)[-1].strip() for line in timed.stderr.splitlines() if line.startswith("import time:")}
        assert "torch" not in imported and "transformers" not in imported


def test_import_still_registers_everything():
    probe = (
        "import adpretrain_hf\nfrom transformers import AutoConfig\nfrom transformers.pipelines import PIPELINE_REGISTRY\n"
        "print(type(AutoConfig.for_model('adpretrain-detector')).__name__, sorted(t for t in PIPELINE_REGISTRY.get_supported_tasks() if t.startswith('anomaly')))\n"
    )
    result = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "ADPretrainDetectorConfig ['anomaly-detection', 'anomaly-features']" in result.stdout


def test_the_val_folder_is_read_the_mvtec_way(workspace):
    labelled = load_validation_set(str(workspace / "val"))
    assert labelled.labels == [0] * 4 + [1] * 3 and labelled.defects == ["scratch"]
    assert [m.name if m else None for m in labelled.masks] == [None] * 4 + [f"{i}_mask.png" for i in range(3)]
    normal = load_validation_set(str(workspace / "val_normal"))
    assert normal.labels is None and len(normal.images) == 4


def test_output_names_never_clash(workspace):
    root, images = find_images(str(workspace / "test"), "images")
    stems = [output_stem(p, root).as_posix() for p in images]
    assert stems == ["a_jpg", "a_png", "sub/a_png"]
    _, globbed = find_images(str(workspace / "test" / "**" / "*.png"), "images")
    assert [p.relative_to(workspace / "test").as_posix() for p in globbed] == ["a.png", "sub/a.png"]


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
        assert Image.open(out / "overlays" / f"{stem}.png").size == (width + COLORBAR_PANEL_WIDTH, height)

    assert main(["export", "--detector", str(fitted), "--output", str(workspace / "det.onnx")]) == 0
    import onnxruntime

    session = onnxruntime.InferenceSession(str(workspace / "det.onnx"), providers=["CPUExecutionProvider"])
    from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor

    pixels = ADPretrainImageProcessor.from_pretrained(fitted)(Image.open(rows[1]["path"]).convert("RGB"), return_tensors="pt")["pixel_values"]
    onnx_map, onnx_score = session.run(None, {"pixel_values": pixels.numpy()})
    assert float(onnx_score[0]) == pytest.approx(float(rows[1]["score"]), rel=1e-4)
    assert onnx_map.shape == (1, SIZE, SIZE)


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


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["predict", "--detector", "{ws}/det", "--images", "{ws}/nowhere", "--output", "{ws}/x"], "neither a folder nor a glob"),
        (["predict", "--detector", "{ws}/det", "--images", "{ws}/test/*.bmp", "--output", "{ws}/x"], "no images match"),
        (["fit", "--model", "{ws}/ckpt", "--method", "patchcore", "--train", "{ws}/train", "--output", "{ws}/y", "--quantile", "2"], "outside (0, 1]"),
        (["export", "--detector", "{ws}/train"], "not a detector folder"),
        (["fit", "--model", "{ws}/ckpt", "--method", "featurenorm", "--train", "{ws}/train", "--output", "{ws}/y",
          "--layer-positions", "a,b"], "not a comma-separated list of integers"),
    ],
)
def test_bad_input_gives_one_line(argv, message, fitted, workspace, capsys):
    assert main([a.format(ws=workspace) for a in argv]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert message in err[0] and err[1].strip().startswith("hint:") and len(err) == 2

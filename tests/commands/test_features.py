"""``adpretrain features``: real batching, validated options (exit 2, one line), distinct output names."""

import csv
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from adpretrain_hf import ADPretrainModel
from adpretrain_hf.cli import main
from adpretrain_hf.commands import features as features_command


@pytest.fixture
def folders(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    rng = np.random.default_rng(0)
    (tmp_path / "test").mkdir()
    (tmp_path / "good").mkdir()
    for name in ("a.png", "a.jpg", "b.png", "c.png", "d.png"):
        Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "test" / name)
    Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(tmp_path / "good" / "g.png")
    return tmp_path


def _args(folders, *extra):
    return ["features", "--model", str(folders / "ckpt"), "--images", str(folders / "test"),
            "--references", str(folders / "good"), "--output", str(folders / "out"), *extra]


def test_batches_reach_the_model_and_outputs_keep_extensions(folders, monkeypatch):
    sizes = []
    forward = ADPretrainModel.forward

    def spy(self, pixel_values, *args, **kwargs):
        sizes.append(pixel_values.shape[0])
        return forward(self, pixel_values, *args, **kwargs)

    monkeypatch.setattr(ADPretrainModel, "forward", spy)
    assert main(_args(folders, "--batch-size", "3")) == 0
    assert sorted(sizes) == [2, 3]  # 5 images in two model calls, not five
    rows = {Path(r["path"]).name: float(r["score"]) for r in csv.DictReader(open(folders / "out" / "scores.csv"))}
    assert sorted(rows) == ["a.jpg", "a.png", "b.png", "c.png", "d.png"]
    maps = sorted(p.name for p in (folders / "out" / "maps").iterdir())
    assert maps == ["a_jpg.png", "a_png.png", "b_png.png", "c_png.png", "d_png.png"]  # predict's naming rule
    # Scores against the model called directly on the processed images.
    from transformers import AutoImageProcessor

    processor = AutoImageProcessor.from_pretrained(folders / "ckpt")
    model = ADPretrainModel.from_pretrained(folders / "ckpt").eval()
    with torch.no_grad():
        refs = processor([Image.open(folders / "good" / "g.png").convert("RGB")], return_tensors="pt")["pixel_values"]
        for name, score in rows.items():
            pixels = processor([Image.open(folders / "test" / name).convert("RGB")], return_tensors="pt")["pixel_values"]
            assert score == pytest.approx(float(forward(model, pixels, reference_pixel_values=refs).score), abs=1e-5)


@pytest.mark.parametrize(
    "extra,pattern",
    [
        (["--shots", "-7"], "argument --shots: -7 must be >= 1"),
        (["--batch-size", "0"], "argument --batch-size: 0 must be >= 1"),
        (["--device", "gpu7"], "argument --device: 'gpu7' is not a device"),
        (["--images", "/no/such/folder"], "argument --images: /no/such/folder does not exist"),
    ],
)
def test_bad_options_exit_2_naming_them(folders, capsys, extra, pattern):
    with pytest.raises(SystemExit) as info:
        main(_args(folders, *extra))
    assert info.value.code == 2
    assert pattern in capsys.readouterr().err


def test_missing_model_folder_is_named(folders, capsys):
    for missing in (str(folders / "nope"), "./nope", "runs/nope/ckpt"):
        with pytest.raises(SystemExit) as info:
            main(["features", "--model", missing, "--images", str(folders / "test"),
                  "--references", str(folders / "good"), "--output", str(folders / "out")])
        assert info.value.code == 2
        assert f"{missing} does not exist (a local path" in capsys.readouterr().err
    assert not (folders / "out").exists()


def _write_images(folder, count, seed, size=(80, 100)):
    folder.mkdir(parents=True)
    rng = np.random.default_rng(seed)
    for i in range(count):
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(folder / f"img_{i}.png")


def test_features_command_scores_a_folder(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    _write_images(tmp_path / "test", 3, seed=0)
    _write_images(tmp_path / "good", 2, seed=1, size=(64, 64))
    code = main([
        "features", "--model", str(tmp_path / "ckpt"), "--images", str(tmp_path / "test"),
        "--references", str(tmp_path / "good"), "--output", str(tmp_path / "out"), "--save-features",
    ])
    assert code == 0
    rows = list(csv.DictReader(open(tmp_path / "out" / "scores.csv")))
    assert [Path(r["path"]).name for r in rows] == ["img_0.png", "img_1.png", "img_2.png"]
    assert Image.open(tmp_path / "out" / "maps" / "img_0_png.png").size == (100, 80)  # the image's own size
    features = np.load(tmp_path / "out" / "features" / "img_0_png.npz")
    assert sorted(features.files) == ["block_1", "block_2", "block_3", "block_4"]
    assert features["block_1"].shape == (8, 8, 32)


def test_sub_folders_and_single_files_are_inputs_as_in_predict(folders, capsys):
    nested = folders / "test" / "line2" / "a.png"
    nested.parent.mkdir()
    Image.open(folders / "test" / "a.png").save(nested)
    assert main(_args(folders)) == 0
    rows = [Path(r["path"]) for r in csv.DictReader(open(folders / "out" / "scores.csv"))]
    assert nested.absolute() in rows and len(rows) == 6  # the sub-folder is searched, like predict does
    assert (folders / "out" / "maps" / "line2" / "a_png.png").is_file() and (folders / "out" / "maps" / "a_png.png").is_file()
    assert main(["features", "--model", str(folders / "ckpt"), "--images", str(nested), str(folders / "test" / "b.png"),
                 "--references", str(folders / "good" / "g.png"), "--output", str(folders / "two")]) == 0
    assert len(list(csv.DictReader(open(folders / "two" / "scores.csv")))) == 2

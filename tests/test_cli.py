"""The `adpretrain` CLI: every subcommand's help, one-line errors, features, card, and the quick demo."""

import csv
import json
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from adpretrain_hf.cli import COMMANDS, main

METHODS = ("featurenorm", "patchcore")
FEATURES = ("backbone", "pretrained")
METRICS = ("image_auroc", "pixel_auroc", "aupro")


@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_every_subcommand_has_help(command, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--help"])
    assert info.value.code == 0
    assert "usage: adpretrain" in capsys.readouterr().out


def test_errors_are_one_line_with_a_hint(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "adpretrain_hf.cli", "card", "--checkpoint", str(tmp_path / "missing")],
        capture_output=True, text=True,
    )
    assert result.returncode == 1
    assert "error:" in result.stderr and "hint:" in result.stderr
    assert "Traceback" not in result.stderr


def test_demo_quick_writes_every_result(tmp_path):
    out = tmp_path / "demo"
    result = subprocess.run(
        [sys.executable, "-m", "adpretrain_hf.cli", "demo", "--quick", "--output", str(out)],
        capture_output=True, text=True, timeout=600,
    )
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    results = json.loads((out / "results.json").read_text())["results"]
    for category in ("washer", "mean"):
        for method in METHODS:
            for kind in FEATURES:
                for metric in METRICS:
                    value = results[category][method][kind][metric]
                    assert 0.0 <= value <= 1.0, (category, method, kind, metric, value)
    assert (out / "checkpoint" / "model" / "model.safetensors").is_file()
    assert (out / "comparison.png").is_file() and (out / "feature_norm_histograms.png").is_file()
    assert "pretrained features are" in result.stdout  # the honest verdict is printed


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
    assert [r["file"] for r in rows] == ["img_0.png", "img_1.png", "img_2.png"]
    assert Image.open(tmp_path / "out" / "maps" / "img_0.png.png").size == (100, 80)  # the image's own size
    features = np.load(tmp_path / "out" / "features" / "img_0.png.npz")
    assert sorted(features.files) == ["block_1", "block_2", "block_3", "block_4"]
    assert features["block_1"].shape == (8, 8, 32)


def test_card_results_come_from_the_evaluation_json(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    payload = {"results": {"mean": {"patchcore": {"backbone": dict.fromkeys(METRICS, 0.5), "pretrained": {"image_auroc": 0.9123, "pixel_auroc": 0.8, "aupro": 0.7}}}}}
    (tmp_path / "results.json").write_text(json.dumps(payload))
    assert main(["card", "--checkpoint", str(tmp_path / "ckpt"), "--results", str(tmp_path / "results.json")]) == 0
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert "| patchcore | pretrained | 91.2 | 80.0 | 70.0 |" in card
    assert "model-index" in card and "0.9123" in card


def test_results_of_several_runs_are_merged(tmp_path):
    from adpretrain_hf.hub_publishing import load_results

    scores = dict.fromkeys(METRICS, 0.5)
    (tmp_path / "a.json").write_text(json.dumps({"results": {"mean": {"patchcore": {"backbone": scores}}}}))
    (tmp_path / "b.json").write_text(json.dumps({"results": {"mean": {"patchcore": {"pretrained": scores}, "padim": {"backbone": scores}}}}))
    merged = load_results([tmp_path / "a.json", tmp_path / "b.json"])
    assert set(merged["mean"]) == {"patchcore", "padim"}
    assert set(merged["mean"]["patchcore"]) == {"backbone", "pretrained"}

"""Model cards state only what was recorded: the run's data folder, repo id, backbone weights, results."""

import json
import subprocess
import sys

import pytest
from huggingface_hub import ModelCard

from adpretrain_hf.cli import main
from adpretrain_hf.hub_publishing import build_model_card, load_results, training_record, write_model_card
from adpretrain_hf.modeling import ADPretrainConfig

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def _run_args(data_root, **overrides):
    """The dict ``PretrainArguments.to_dict()`` hands the card writer at the end of training."""
    args = {
        "data_root": str(data_root), "output_dir": "unused", "preset": "tiny-clip", "model": {}, "backbone_weights": None,
        "categories": None, "epochs": 2, "batch_size": 4, "learning_rate": 3e-3, "weight_decay": 5e-4,
        "lr_milestones": [7, 9], "seed": 7, "mixed_precision": "no", "max_steps": None, "push_to_hub": True,
        "hub_model_id": "someone/my-detector-features",
    }
    args.update(overrides)
    return args


@pytest.fixture
def trained_checkpoint(tiny_clip_model, tmp_path):
    """A model folder with 3 steps in its own metrics.jsonl (the default metrics_file=), a data folder of 2 classes.

    Training itself writes metrics.jsonl into output_dir, beside the model folder, and passes it as metrics_file=.
    """
    ckpt = tmp_path / "run"
    tiny_clip_model.save_pretrained(ckpt)
    (ckpt / "metrics.jsonl").write_text("".join(json.dumps({"step": i, "loss": 1.0}) + "\n" for i in range(1, 4)))
    data = tmp_path / "my_parts"
    for name in ("gear", "washer"):
        (data / name / "OK").mkdir(parents=True)
    return ckpt, data


def test_a_training_card_states_the_runs_own_data_repo_and_backbone(trained_checkpoint):
    ckpt, data = trained_checkpoint
    path = write_model_card(ckpt, training_args=_run_args(data))
    card = ModelCard.load(path)
    meta = card.data.to_dict()
    assert meta["model_name"] == "someone/my-detector-features"  # the --hub-model-id, not adpretrain/<preset>
    assert "pipeline_tag" not in meta  # image-feature-extraction cannot load this model
    assert "datasets" not in meta and "Real-IAD (30" not in card.text  # nothing claimed about Real-IAD
    assert "base_model" not in meta  # random backbone: no base model to name
    assert "`my_parts`" in card.text and "gear, washer" in card.text
    assert str(data.parent) not in card.text  # local paths are reduced to the folder name
    assert "Optimisation steps run: 3." in card.text
    assert "randomly initialised" in card.text
    assert 'AutoModel.from_pretrained("someone/my-detector-features")' in card.text
    assert "| train.seed | 7 |" in card.text


def identity_of(checkpoint):
    """What the runner records in results.json for a model loaded from ``checkpoint``."""
    from adpretrain_hf.evaluation.identity import model_identity
    from adpretrain_hf.modeling import ADPretrainModel

    return model_identity(ADPretrainModel.from_pretrained(str(checkpoint)), checkpoint)


def test_results_added_later_keep_the_recorded_training_facts(trained_checkpoint, tmp_path):
    ckpt, data = trained_checkpoint
    write_model_card(ckpt, training_args=_run_args(data, categories=["gear"], hub_model_id=None))
    scores = {"image_auroc": 0.875, "pixel_auroc": 0.5, "aupro": 0.25}
    payload = {"results": {"mean": {"featurenorm": {"pretrained": scores}}}, "config": {"data_root": "/x/visa_subset", "layout_resolved": "mvtec"},
               "model_identity": identity_of(ckpt)}
    (tmp_path / "results.json").write_text(json.dumps(payload))
    assert main(["card", "--checkpoint", str(ckpt), "--results", str(tmp_path / "results.json")]) == 0
    card = ModelCard.load(ckpt / "README.md")
    assert "categories gear." in card.text and "washer" not in card.text.split("## Training data")[1].split("##")[0]
    assert "\n# run\n" in card.text  # no Hub id recorded: the folder's name
    index = card.data.to_dict()["model-index"][0]["results"][0]
    assert index["dataset"]["name"] == "visa_subset (mvtec layout)"  # what the evaluation recorded, not "MVTec AD"
    assert {m["value"] for m in index["metrics"]} == {round(v, 4) for v in scores.values()}


@pytest.mark.parametrize(
    ("weights", "expected"),
    [("auto", "owner/clip-backbone"), ("other/weights", "other/weights"), (None, None)],
)
def test_base_model_is_the_backbone_the_run_loaded(weights, expected, tmp_path):
    config = ADPretrainConfig.from_preset("tiny-clip", backbone_id="owner/clip-backbone")
    record = training_record(_run_args(tmp_path, backbone_weights=weights))
    meta = build_model_card(config, "me/x", training_record=record).data.to_dict()
    assert meta.get("base_model") == expected


def test_a_local_backbone_folder_is_not_a_base_model(tmp_path):
    local = tmp_path / "owner" / "weights"
    local.mkdir(parents=True)
    record = training_record(_run_args(tmp_path, backbone_weights=str(local)))
    config = ADPretrainConfig.from_preset("tiny-clip", backbone_id="owner/clip-backbone")
    card = build_model_card(config, "me/x", training_record=record)
    assert "base_model" not in card.data.to_dict()
    assert "local folder weights" in card.text


def test_a_planned_card_says_it_is_planned(tmp_path):
    out = tmp_path / "card.md"
    assert main(["card", "--preset", "clip-base", "--output", str(out)]) == 0
    card = ModelCard.load(out)
    meta = card.data.to_dict()
    assert meta["base_model"] == ADPretrainConfig.from_preset("clip-base").backbone_id
    assert "datasets" not in meta and "pipeline_tag" not in meta
    assert "Not trained yet" in card.text


def test_shipped_preset_cards_match_the_generator(tmp_path):
    from adpretrain_hf.hub_publishing import template_path

    for name in ("clip-base", "clip-large", "dinov2-base", "dinov2-large", "imagebind"):
        shipped = template_path().parent / f"{name}.md"
        assert main(["card", "--preset", name, "--output", str(tmp_path / f"{name}.md")]) == 0
        assert shipped.read_text() == (tmp_path / f"{name}.md").read_text(), f"regenerate model_cards/{name}.md"


def test_a_card_without_a_training_record_claims_no_training_data(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path / "plain")
    card = ModelCard.load(write_model_card(tmp_path / "plain"))
    assert "Not recorded" in card.text and "datasets" not in card.data.to_dict()


def test_results_that_are_not_json_name_the_file(tmp_path):
    bad = tmp_path / "notjson"
    bad.write_text("accuracy: high\n")
    with pytest.raises(ValueError, match="notjson is not JSON"):
        load_results([bad])
    (tmp_path / "list.json").write_text("[1, 2]")
    with pytest.raises(ValueError, match="list.json holds a JSON list"):
        load_results([tmp_path / "list.json"])


def test_card_command_prints_one_line_for_bad_results(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    (tmp_path / "notjson").write_text("{oops")
    result = subprocess.run(
        [sys.executable, "-m", "adpretrain_hf.cli", "card", "--checkpoint", str(tmp_path / "ckpt"), "--results", str(tmp_path / "notjson")],
        capture_output=True, text=True, timeout=300,
    )
    assert result.returncode == 1
    error_line = result.stderr.strip().splitlines()[0]
    assert str(tmp_path / "notjson") in error_line and "is not JSON" in error_line
    assert "Traceback" not in result.stderr


def test_results_of_several_runs_are_merged(tmp_path):
    from adpretrain_hf.hub_publishing import load_results

    scores = dict.fromkeys(METRICS, 0.5)
    (tmp_path / "a.json").write_text(json.dumps({"results": {"mean": {"patchcore": {"backbone": scores}}}}))
    (tmp_path / "b.json").write_text(json.dumps({"results": {"mean": {"patchcore": {"pretrained": scores}, "padim": {"backbone": scores}}}}))
    merged = load_results([tmp_path / "a.json", tmp_path / "b.json"])
    assert set(merged["mean"]) == {"patchcore", "padim"}
    assert set(merged["mean"]["patchcore"]) == {"backbone", "pretrained"}


# -- the card states only what is true of this model (issue 23, item 6) ---------------------------
def _results_file(path, identity, intervals=None):
    scores = dict.fromkeys(METRICS, 0.5)
    payload = {"results": {"mean": {"patchcore": {"backbone": scores, "pretrained": dict.fromkeys(METRICS, 0.75)}}},
               "model_identity": identity}
    if intervals is not None:
        payload["intervals"] = intervals
    path.write_text(json.dumps(payload))
    return path


def test_results_of_another_model_are_refused(tmp_path):
    import torch

    from adpretrain_hf.modeling import ADPretrainModel

    for name, seed, overrides in (("mine", 0, {}), ("other_weights", 1, {}), ("other_config", 0, {"hypersphere_radius": 0.5})):
        torch.manual_seed(seed)
        ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip", **overrides)).save_pretrained(tmp_path / name)
    mine = tmp_path / "mine"
    assert write_model_card(mine, results_files=[_results_file(tmp_path / "ok.json", identity_of(mine))]).is_file()
    with pytest.raises(ValueError, match=r"another model \(weights differ; it records .*other_weights\)"):
        write_model_card(mine, results_files=[_results_file(tmp_path / "w.json", identity_of(tmp_path / "other_weights"))])
    with pytest.raises(ValueError, match=r"another model \(config differ"):
        write_model_card(mine, results_files=[_results_file(tmp_path / "c.json", identity_of(tmp_path / "other_config"))])
    with pytest.raises(ValueError, match="records no model identity"):
        write_model_card(mine, results_files=[_results_file(tmp_path / "none.json", None)])
    assert main(["card", "--checkpoint", str(mine), "--results", str(tmp_path / "w.json")]) == 1
    assert main(["card", "--preset", "clip-base", "--output", str(tmp_path / "p.md"), "--results", str(tmp_path / "ok.json")]) == 1


def test_the_card_shows_the_paired_intervals_and_what_they_cover(tmp_path, tiny_clip_model):
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    entry = {"difference": 0.25, "low": -0.031, "high": 0.4}
    intervals = {"covers": "test images: a paired bootstrap", "confidence": 0.95, "resamples": 1000,
                 "results": {"mean": {"patchcore": {"pretrained": dict.fromkeys(METRICS, entry)}}}}
    files = [_results_file(tmp_path / "r.json", identity_of(tmp_path / "ckpt"), intervals)]
    text = ModelCard.load(write_model_card(tmp_path / "ckpt", results_files=files)).text
    assert "| patchcore | pretrained | 75.0 (+25.0 [-3.1, +40.0]) | 75.0 (+25.0 [-3.1, +40.0]) |" in text
    assert "| patchcore | backbone | 50.0 | 50.0 | 50.0 |" in text
    assert "bootstrap 95% interval (1000 resamples)" in text and "covers test images: a paired bootstrap" in text


def test_the_training_record_states_backbone_weights_loaded_before_training(realiad_root, tmp_path):
    """The demo's path: weights loaded into the model, then the model handed to the loop (args say nothing)."""
    import torch
    from transformers import CLIPVisionModel

    from adpretrain_hf.modeling import ADPretrainModel
    from adpretrain_hf.training.arguments import PretrainArguments
    from adpretrain_hf.training.loop import run_pretraining

    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip"))
    CLIPVisionModel(model.backbone.model.config).save_pretrained(tmp_path / "my_clip_weights")
    model.load_backbone_weights(str(tmp_path / "my_clip_weights"))
    args = PretrainArguments(preset="tiny-clip", data_root=str(realiad_root), output_dir=str(tmp_path / "run"), batch_size=4,
                             max_steps=1, epochs=1, center_batches=1, num_workers=0, progress=False, report_to="none")
    folder = run_pretraining(args, model=model)
    record = json.loads((folder / "training_record.json").read_text())
    assert record["backbone_weights"] == "local folder my_clip_weights"
    card = (folder / "README.md").read_text()
    assert "randomly initialised" not in card and "Backbone weights: `local folder my_clip_weights`." in card

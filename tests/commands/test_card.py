"""`adpretrain card`: the card's results table and model-index come from the evaluation JSON."""

import json

from adpretrain_hf.cli import main

METRICS = ("image_auroc", "pixel_auroc", "aupro")


def test_card_results_come_from_the_evaluation_json(tiny_clip_model, tmp_path):
    tiny_clip_model.save_pretrained(tmp_path / "ckpt")
    from adpretrain_hf.evaluation.identity import model_identity
    from adpretrain_hf.modeling import ADPretrainModel

    identity = model_identity(ADPretrainModel.from_pretrained(str(tmp_path / "ckpt")))
    payload = {"results": {"mean": {"patchcore": {"backbone": dict.fromkeys(METRICS, 0.5), "pretrained": {"image_auroc": 0.9123, "pixel_auroc": 0.8, "aupro": 0.7}}}},
               "model_identity": identity}
    (tmp_path / "results.json").write_text(json.dumps(payload))
    assert main(["card", "--checkpoint", str(tmp_path / "ckpt"), "--results", str(tmp_path / "results.json")]) == 0
    card = (tmp_path / "ckpt" / "README.md").read_text()
    assert "| patchcore | pretrained | 91.2 | 80.0 | 70.0 |" in card
    assert "model-index" in card and "0.9123" in card

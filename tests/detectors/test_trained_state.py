"""Saving and loading trained detectors (trained_state.py): identical predictions after a round
trip for every method, folders of the previous release, and a folder of another detector refused."""

from __future__ import annotations

import json

import pytest
import torch

from adpretrain_hf.detectors.glass import GLASS
from adpretrain_hf.detectors.trained import CONFIG_FILE
from adpretrain_hf.detectors.uniad import UniAD, UniADConfig
from tests.detectors.trained_helpers import METHODS, TEST, TRAIN



@pytest.mark.parametrize("cls", METHODS, ids=lambda c: c.name)
def test_save_load_gives_identical_predictions(fitted, predictions, trained_ext, cls, tmp_path):
    fitted[cls].save(tmp_path)
    loaded = cls.load(tmp_path, trained_ext, progress=False)
    maps, scores = loaded.predict(TEST)
    assert torch.equal(maps, predictions[cls][0]) and torch.equal(scores, predictions[cls][1])
    assert loaded.config == fitted[cls].config and loaded.history.epoch_losses == fitted[cls].history.epoch_losses


def test_state_saved_before_the_rename_loads(trained_ext, tmp_path):
    """Folders written before issue 14 hold the positions under ``"layers"``: they load the same."""
    config = UniADConfig(epochs=1, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                         dim_feedforward=32, batch_size=8)
    det = UniAD(trained_ext, config, layer_positions=[1], progress=False).fit(TRAIN[:8])
    det.save(tmp_path)
    settings = json.loads((tmp_path / CONFIG_FILE).read_text())
    assert settings["layer_positions"] == [1] and "layers" not in settings
    settings["layers"] = settings.pop("layer_positions")  # the previous release's file
    (tmp_path / CONFIG_FILE).write_text(json.dumps(settings))
    loaded = UniAD.load(tmp_path, trained_ext, progress=False)
    assert loaded.layer_positions == [1]
    for got, want in zip(loaded.predict(TEST[:4]), det.predict(TEST[:4])):
        assert torch.equal(got, want)


def test_load_refuses_another_detector(fitted, trained_ext, tmp_path):
    fitted[GLASS].save(tmp_path)
    assert (tmp_path / CONFIG_FILE).is_file()
    with pytest.raises(ValueError, match="'glass' detector"):
        UniAD.load(tmp_path, trained_ext)
    with pytest.raises(RuntimeError, match="not fitted"):
        UniAD(trained_ext).save(tmp_path / "x")

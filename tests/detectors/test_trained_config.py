"""The settings and training record every trained detector shares (detectors/trained_config.py).

A tiny config subclass stands in for a method's: its epoch field, quick preset and a tuple field
(JSON stores tuples as lists). The JSON round trip is checked against ``dataclasses.asdict`` +
``json`` written out here; validation against one bad value per field.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields

import pytest

from adpretrain_hf.detectors.cflow import CFLOWConfig
from adpretrain_hf.detectors.trained_config import MIXED_PRECISION_CHOICES, TrainedConfig, TrainingHistory


@dataclass
class SketchConfig(TrainedConfig):
    """A method config in miniature: ``rounds`` is its epoch count, ``quick=True`` cuts it to 2."""

    epoch_field = "rounds"
    quick_overrides = {"rounds": 2, "batch_size": 3}

    rounds: int = 50
    kernel: tuple[int, int] = (3, 5)


def test_epochs_quick_and_with_epochs_touch_only_the_epoch_field():
    config = SketchConfig(batch_size=16, seed=7)
    assert config.num_epochs == 50
    quick = config.quick()
    assert (quick.rounds, quick.batch_size, quick.seed, quick.num_epochs) == (2, 3, 7, 2)
    longer = config.with_epochs(9)
    assert longer.num_epochs == 9 and asdict(longer) == {**asdict(config), "rounds": 9}
    assert config.rounds == 50  # copies: the original is unchanged
    assert CFLOWConfig().with_epochs(4).meta_epochs == 4  # a real method's epoch field


def test_from_dict_inverts_a_json_round_trip():
    config = SketchConfig(rounds=4, kernel=(1, 7), validation_fraction=0.25, mixed_precision="bf16")
    stored = json.loads(json.dumps(asdict(config)))
    assert stored["kernel"] == [1, 7]  # JSON has no tuples
    loaded = SketchConfig.from_dict(stored)
    assert loaded == config and isinstance(loaded.kernel, tuple)
    assert {f.name for f in fields(loaded)} == set(stored)
    with pytest.raises(ValueError, match=r"unknown SketchConfig fields \['dsc_hidden'\]: was this saved by another detector"):
        SketchConfig.from_dict({**stored, "dsc_hidden": 8})


@pytest.mark.parametrize(
    ("bad", "message"),
    [
        ({"rounds": 0}, r"rounds must be >= 1, got 0"),
        ({"batch_size": 0}, r"batch_size must be >= 1, got 0"),
        ({"validation_fraction": 1.0}, r"validation_fraction must be in \[0, 1\), got 1.0"),
        ({"validation_fraction": -0.1}, r"validation_fraction must be in \[0, 1\)"),
        ({"keep_best_on_validation": True}, r"needs a validation split: set validation_fraction > 0"),
        ({"mixed_precision": "fp17"}, r"mixed_precision must be one of .*'bf16'.*, got 'fp17'"),
    ],
)
def test_validate_names_the_bad_field_and_the_fix(bad, message):
    SketchConfig().validate()  # the defaults are valid
    with pytest.raises(ValueError, match=message) as error:
        SketchConfig(**bad).validate()
    assert "\n" not in str(error.value)


def test_every_mixed_precision_choice_validates():
    for choice in MIXED_PRECISION_CHOICES:
        SketchConfig(mixed_precision=choice).validate()
    SketchConfig(validation_fraction=0.5, keep_best_on_validation=True).validate()


def test_histories_do_not_share_their_lists():
    a, b = TrainingHistory(), TrainingHistory()
    a.step_losses.append(1.0)
    a.val_losses.append(2.0)
    assert b == TrainingHistory(step_losses=[], epoch_losses=[], val_losses=[], best_epoch=None)
    assert TrainingHistory(**json.loads(json.dumps(asdict(a)))) == a  # what a saved detector stores

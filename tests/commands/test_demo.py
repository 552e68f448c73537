"""`adpretrain demo`: its flags become the DemoSettings of the run (the run itself: tests/test_demo.py).

The reference is DemoSettings built directly from the same values; the demo is replaced by a recorder.
"""

import pytest

from adpretrain_hf import demo as demo_module
from adpretrain_hf.cli import main
from adpretrain_hf.demo import DemoSettings


@pytest.fixture
def recorded(monkeypatch):
    calls = []
    monkeypatch.setattr(demo_module, "run_demo", lambda output, settings: calls.append((output, settings)))
    return calls


@pytest.mark.parametrize(
    "argv, expected",
    [
        (["--quick"], DemoSettings.quick(seed=0)),
        (["--quick", "--steps", "3", "--seed", "5"], DemoSettings.quick(steps=3, seed=5)),
        (["--backbone", "tiny-dinov2", "--image-size", "96"], DemoSettings(backbone="tiny-dinov2", image_size=96, seed=0)),
        ([], DemoSettings(seed=0)),
    ],
)
def test_flags_become_the_demo_settings(recorded, argv, expected, tmp_path):
    assert main(["demo", *argv, "--output", str(tmp_path / "out")]) == 0
    assert recorded == [(str(tmp_path / "out"), expected)]


def test_the_default_output_folder(recorded):
    assert main(["demo", "--quick"]) == 0
    assert recorded[0][0] == "adpretrain-demo"


def test_a_bad_number_is_a_usage_error(recorded):
    with pytest.raises(SystemExit) as info:
        main(["demo", "--steps", "many"])
    assert info.value.code == 2 and not recorded

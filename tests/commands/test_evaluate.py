"""`adpretrain evaluate`: its flags come from EvaluationConfig; a run and its one-line errors."""

import json
import warnings

import pytest

from adpretrain_hf.cli import main as cli_main
from adpretrain_hf.data import generate_dataset
from adpretrain_hf.evaluation import config as evaluation_config


@pytest.fixture(scope="module")
def mvtec_root(tmp_path_factory):
    """One category of the evaluation tests' tiny MVTec-style dataset (tests/evaluation/conftest.py)."""
    root = tmp_path_factory.mktemp("mvtec")
    generate_dataset(root, layout="mvtec", categories=["tile"], num_normal=4, num_anomalous=2,
                     image_size=64, seed=0, progress=False)
    return root


def test_cli_help_lists_the_config_choices(capsys):
    """The flags come from EvaluationConfig: its choices appear in --help, no mirror to keep in sync."""
    with pytest.raises(SystemExit) as exit_info:
        cli_main(["evaluate", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for option in ("--model", "--preset", "--reference-seeds", "--no-compare-backbone", "--train-shots", "--noise-ratio"):
        assert option in text
    assert "{" + ",".join(evaluation_config.LAYOUT_CHOICES) + "}" in text
    assert "{" + ",".join(evaluation_config.REFERENCE_STRATEGY_CHOICES) + "}" in text
    assert "bfloat16" in text
    assert "(default: " + ",".join(evaluation_config.DEFAULT_METHODS) + ")" in " ".join(text.split())


def test_cli_run_and_errors(mvtec_root, tmp_path, capsys):
    out = tmp_path / "cli"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        code = cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(mvtec_root), "--categories", "tile",
                         "--methods", "featurenorm,padim", "--shots", "2", "--output", str(out), "--num-overlays", "1",
                         "--no-progress", "--protocol", "release"])
    assert code == 0
    assert "| category | FeatureNorm w/o | FeatureNorm w/ | PaDiM w/o | PaDiM w/ |" in capsys.readouterr().out
    payload = json.loads((out / "results.json").read_text())
    assert payload["config"]["model"] == "preset:tiny-clip (random weights)"
    assert set(payload["results"]["tile"]) == {"featurenorm", "padim"}
    assert len(list((out / "overlays" / "tile").glob("*.png"))) == 1
    detector_protocol = payload["protocol"]["detector_protocol"]
    assert detector_protocol["name"] == "release" and detector_protocol["post_processing"] == {"padim": ["global_min_max"]}
    assert detector_protocol["detector_options"] == {"featurenorm": {"variant": "release"}, "padim": {"variant": "release"}}

    package = tmp_path / "package"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        assert cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(mvtec_root), "--categories", "tile",
                         "--methods", "padim", "--shots", "2", "--output", str(package), "--num-overlays", "0",
                         "--no-compare-backbone", "--no-progress", "--protocol", "package"]) == 0
    capsys.readouterr()
    recorded = json.loads((package / "results.json").read_text())["protocol"]["detector_protocol"]
    assert recorded["name"] == "package" and recorded["detector_options"] == {"padim": {"variant": "package"}}
    assert recorded["post_processing"] == {}

    assert cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(mvtec_root), "--methods", "featurenorm,bogus"]) == 1
    assert "choose from" in capsys.readouterr().err
    assert cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(tmp_path / "nowhere")]) == 1
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["evaluate", "--preset", "tiny-clip", "--data", str(mvtec_root), "--categories", "carpet", "--no-progress"]) == 1
    err = capsys.readouterr().err
    assert "not found" in err and "hint:" in err

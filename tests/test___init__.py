"""adpretrain_hf/__init__.py: a light package import, lazy public names, and registration where the models are defined.

The light CLI (no torch, no transformers for --help and argument errors) is checked in tests/test_cli.py;
a saved folder loading through AutoModel in tests/modeling/test_modeling_adpretrain.py.
"""

import importlib
import subprocess
import sys

import pytest

import adpretrain_hf

PUBLIC = ("ADPretrainConfig", "ADPretrainModel", "ADPretrainOutput", "PRESETS", "get_preset")


@pytest.mark.parametrize("name", PUBLIC)
def test_public_names_are_the_defining_modules_objects(name):
    defined = getattr(importlib.import_module("adpretrain_hf.modeling"), name)
    assert getattr(adpretrain_hf, name) is defined
    assert name in adpretrain_hf.__all__


def test_an_unknown_name_is_an_attribute_error():
    with pytest.raises(AttributeError, match="module 'adpretrain_hf' has no attribute 'ADPretrainModle'"):
        adpretrain_hf.ADPretrainModle  # noqa: B018
    assert not hasattr(adpretrain_hf, "ADPretrainModle")


def test_the_package_import_registers_and_the_console_script_import_is_light():
    """``import adpretrain_hf`` registers the models with the Auto classes (the design card's
    ``import adpretrain_hf; AutoModel.from_pretrained(...)``); under the console script's program
    name it imports neither torch nor transformers (no frame inspection decides that), and the
    first public model name then registers."""
    registered = (
        "import sys\nimport adpretrain_hf\n"
        "from transformers import AutoConfig, AutoModel\n"
        "config = AutoConfig.for_model('adpretrain', preset='tiny-clip')\n"
        "print('REGISTERED', type(config).__name__, AutoModel._model_mapping[type(config)].__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", registered], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "REGISTERED ADPretrainConfig ADPretrainModel" in result.stdout
    light = (
        "import sys\nsys.argv = ['/usr/bin/adpretrain', '--help']\nimport adpretrain_hf\n"
        "print('LIGHT', sorted(m for m in ('torch', 'transformers') if m in sys.modules))\n"
        "adpretrain_hf.ADPretrainModel\n"
        "from transformers import AutoConfig, AutoModel\n"
        "config = AutoConfig.for_model('adpretrain', preset='tiny-clip')\n"
        "print('REGISTERED', type(config).__name__, AutoModel._model_mapping[type(config)].__name__)\n"
    )
    result = subprocess.run([sys.executable, "-c", light], capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LIGHT []" in result.stdout and "REGISTERED ADPretrainConfig ADPretrainModel" in result.stdout
    assert "_getframe" not in open(adpretrain_hf.__file__).read()

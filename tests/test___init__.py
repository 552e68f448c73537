"""adpretrain_hf/__init__.py: lazy public names, registration with the Auto classes, and the light-import rule.

The light ``adpretrain --help`` import (no torch, no transformers) is checked in a subprocess in
tests/test_cli.py; a saved folder loading through AutoModel in tests/modeling/test_modeling_adpretrain.py.
"""

import importlib

import pytest
from transformers import AutoConfig, AutoModel

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


def test_importing_from_a_test_registers_with_the_auto_classes():
    """A library import (not the console script) registers at once; register() is idempotent."""
    from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel

    assert adpretrain_hf._registered
    adpretrain_hf.register()
    config = AutoConfig.for_model(ADPretrainConfig.model_type, preset="tiny-clip")
    assert type(config) is ADPretrainConfig
    assert AutoModel._model_mapping[ADPretrainConfig] is ADPretrainModel
    assert not adpretrain_hf._imported_for_a_light_module()  # called from test code: not the console script

"""Precision names: every alias, in any case, to the dtype its name spells; bad names explained."""

import pytest
import torch

from adpretrain_hf.modeling.dtypes_adpretrain import DTYPE_NAMES, DTYPES, dtype_from_name, stored_dtype

# Written independently of the table: what each alias means in torch's own vocabulary.
EXPECTED = {"float32": "float32", "fp32": "float32", "float": "float32", "bfloat16": "bfloat16", "bf16": "bfloat16",
            "float16": "float16", "fp16": "float16", "half": "float16"}


def test_every_alias_in_any_case():
    assert set(DTYPES) == set(EXPECTED) and set(DTYPE_NAMES) == set(EXPECTED.values())
    for alias, name in EXPECTED.items():
        for spelling in (alias, alias.upper(), alias.capitalize()):
            assert dtype_from_name(spelling) is getattr(torch, name)


def test_none_and_dtypes_pass_through():
    assert dtype_from_name(None) is None
    assert dtype_from_name(torch.float64) is torch.float64


@pytest.mark.parametrize("value", ["float64", "int8", "", 16])
def test_unknown_names_are_one_line_errors(value):
    with pytest.raises(ValueError, match=r"dtype=.* is not supported: pass one of \['bf16'.*or a torch\.dtype") as info:
        dtype_from_name(value)
    assert "\n" not in str(info.value)


@pytest.mark.parametrize("name", ["float32", "float64", "int64", "int32", "bool", "float16", "bfloat16"])
def test_stored_dtype_reads_what_str_dtype_writes(name):
    assert stored_dtype(name) is getattr(torch, name)
    assert str(stored_dtype(name)).replace("torch.", "") == name


@pytest.mark.parametrize("name", ["int65", "", "Tensor", 16])
def test_unknown_stored_dtype_is_a_one_line_value_error(name):
    with pytest.raises(ValueError, match=r"stored dtype .* is not a torch dtype: fix the folder's config.json") as info:
        stored_dtype(name)
    assert "\n" not in str(info.value)

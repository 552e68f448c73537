"""The old ``layers=`` keyword of positions: accepted for one release, warning, never silently ambiguous."""

import warnings

import pytest

from adpretrain_hf.renamed_keywords import renamed_keyword


def test_new_name_alone_passes_through_silently():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert renamed_keyword([0, 2], None, "Thing") == [0, 2]
        assert renamed_keyword(None, None, "Thing") is None


def test_old_name_warns_with_the_new_name_and_the_caller_line():
    def owner(layer_positions=None, layers=None):
        return renamed_keyword(layer_positions, layers, "owner")

    with pytest.warns(FutureWarning, match=r"owner: the keyword layers= is deprecated.*pass layer_positions=") as record:
        assert owner(layers=[1]) == [1]
    assert record[0].filename == __file__  # points at the user's call, not at this package


def test_both_names_at_once_is_an_error():
    with pytest.raises(TypeError, match="both layer_positions= and layers="):
        renamed_keyword([0], [1], "owner")


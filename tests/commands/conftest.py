"""The deploy commands' workspace: a tiny checkpoint and image folders (helpers.make_workspace) (module-scoped)."""

import pytest

from .helpers import make_workspace


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return make_workspace(tmp_path_factory.mktemp("deploy"))

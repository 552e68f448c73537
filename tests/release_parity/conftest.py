"""Release-parity suites: the package's release mode against the released code's own outputs.

The fixtures (``tests/fixtures/release_parity/``, see its README.md, manifest.json and NOTICE.md)
hold inputs plus the outputs the released ADPretrain code computed from them. Tests load them
through the fixtures below: ``load_fixture("losses")`` is the ``{key: tensor}`` dict of
``losses.safetensors``, ``release_manifest`` the parsed ``manifest.json``.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file as _load_safetensors

FIXTURES = Path(__file__).resolve().parents[1] / "fixtures" / "release_parity"
"""The copied fixture folder (byte-identical to the fixture set; never edited)."""


@lru_cache(maxsize=None)
def _cached(name: str) -> dict[str, torch.Tensor]:
    path = FIXTURES / (name if name.endswith(".safetensors") else f"{name}.safetensors")
    if not path.is_file():
        raise FileNotFoundError(f"no release fixture {path.name} in {FIXTURES}: copy the fixture set there")
    return _load_safetensors(str(path))


def load_fixture(name: str) -> dict[str, torch.Tensor]:
    """``{key: tensor}`` of ``<name>.safetensors`` (a fresh dict; the tensors are shared, do not modify them)."""
    return dict(_cached(name))


@lru_cache(maxsize=None)
def manifest() -> dict:
    """The parsed ``manifest.json`` (provenance, arguments, tolerances, quirks)."""
    return json.loads((FIXTURES / "manifest.json").read_text())


@pytest.fixture(scope="session")
def release_manifest() -> dict:
    return manifest()


@pytest.fixture(scope="session")
def fixture_loader():
    """``fixture_loader("losses")`` -> ``{key: tensor}`` (see :func:`load_fixture`)."""
    return load_fixture

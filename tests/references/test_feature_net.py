"""The matcher's feature network (references/feature_net.py): random init with a warning, a
ResNet-18 state dict from a path, and the errors for a bad file or type."""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.references import SemanticAlignedMatcher


def test_feature_net_sources(tmp_path, resnet):
    with pytest.warns(UserWarning, match="randomly initialised"):
        unweighted = SemanticAlignedMatcher(device="cpu", kmeans_backend="sklearn")
    assert unweighted.random_init
    path = tmp_path / "resnet18.pt"
    torch.save(resnet.state_dict(), path)
    from_path = SemanticAlignedMatcher(str(path), device="cpu", kmeans_backend="sklearn")
    assert not from_path.random_init
    assert not torch.equal(unweighted.feature_net.layer1[1].conv2.weight, resnet.layer1[1].conv2.weight)
    torch.testing.assert_close(from_path.feature_net.layer1[1].conv2.weight, resnet.layer1[1].conv2.weight)
    torch.save({"conv1.weight": torch.zeros(1)}, tmp_path / "bad.pt")
    with pytest.raises(ValueError, match="not a ResNet-18 state dict"):
        SemanticAlignedMatcher(str(tmp_path / "bad.pt"), device="cpu")
    with pytest.raises(TypeError, match="feature_net must be"):
        SemanticAlignedMatcher(42, device="cpu")  # type: ignore[arg-type]

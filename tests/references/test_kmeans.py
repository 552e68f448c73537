"""KMeans-diverse references (references/kmeans.py) on well-separated blobs: one pick per
cluster per round, nearest to the centre first."""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.references import kmeans_diverse_references


# -- KMeans-diverse references and the strategy registry -------------------------------------
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """4 well-separated gaussian blobs of 10 points each in 3-D; returns points and blob ids."""
    generator = torch.Generator().manual_seed(4)
    centres = torch.tensor([[0.0, 0, 0], [20, 0, 0], [0, 20, 0], [0, 0, 20]])
    points = torch.cat([c + torch.randn(10, 3, generator=generator) for c in centres])
    return points, torch.arange(4).repeat_interleave(10)


def test_kmeans_references_spread_over_clusters_nearest_first():
    points, blob = blobs()
    picks = kmeans_diverse_references(points, k=8, num_clusters=4)
    assert len(set(picks)) == 8
    assert sorted(blob[picks[:4]].tolist()) == [0, 1, 2, 3]  # first round: one per cluster
    assert sorted(blob[picks[4:]].tolist()) == [0, 1, 2, 3]  # second round: one more each
    for b in range(4):  # within a blob: nearest to its mean (the converged centre), then the next
        members = torch.nonzero(blob == b).flatten()
        order = members[torch.argsort((points[members] - points[members].mean(0)).norm(dim=1))]
        assert [p for p in picks if blob[p] == b] == order[:2].tolist()
    assert sorted(blob[kmeans_diverse_references(points, k=4)].tolist()) == [0, 1, 2, 3]  # num_clusters = k
    with pytest.raises(ValueError, match="k=41"):
        kmeans_diverse_references(points, k=41)

"""Plain reference computations shared by the modeling tests (not fixtures)."""

from __future__ import annotations

import torch


def brute_force_nearest(queries, bank, metric):
    """Explicit per-query loop: the slow, obvious definition."""
    out = []
    for q in queries:
        if metric == "cosine":
            scores = [float(torch.dot(q, b) / (q.norm() * b.norm())) for b in bank]
            out.append(max(range(len(scores)), key=scores.__getitem__))
        else:
            scores = [float((q - b).square().sum()) for b in bank]
            out.append(min(range(len(scores)), key=scores.__getitem__))
    return torch.tensor(out)

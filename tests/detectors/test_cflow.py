"""CFLOW: the positional encoding against its formula, the flow's log-det against an autograd
Jacobian, and the fit-time normaliser (the training maximum)."""

from __future__ import annotations

import pytest
import torch

from adpretrain_hf.detectors.cflow import CFLOW, CFLOWConfig, ConditionalFlow, positional_encoding_2d
from tests.detectors.trained_helpers import TRAIN



def test_positional_encoding_matches_formula():
    enc = positional_encoding_2d(8, 3, 5)  # half = 4: frequencies 1 and 1/100
    i, j = torch.meshgrid(torch.arange(3.0), torch.arange(5.0), indexing="ij")
    expected = torch.stack([torch.sin(j), torch.cos(j), torch.sin(j / 100), torch.cos(j / 100),
                            torch.sin(i), torch.cos(i), torch.sin(i / 100), torch.cos(i / 100)])
    torch.testing.assert_close(enc, expected)


@pytest.mark.parametrize("soft", [True, False])
def test_flow_log_det_matches_autograd_jacobian(soft):
    torch.manual_seed(0)
    flow = ConditionalFlow(5, CFLOWConfig(coupling_blocks=3, condition_dim=4, permute_soft=soft)).double()
    for p in flow.parameters():  # move away from the identity-like initialisation
        p.data.add_(0.3 * torch.randn_like(p))
    x, c = torch.randn(3, 5, dtype=torch.float64), torch.randn(3, 4, dtype=torch.float64)
    _, log_det = flow(x, c)
    for n in range(3):
        jac = torch.autograd.functional.jacobian(lambda v: flow(v[None], c[n : n + 1])[0][0], x[n])
        torch.testing.assert_close(log_det[n], torch.linalg.slogdet(jac)[1])


def test_cflow_normaliser_is_the_training_maximum(fitted, trained_ext):
    """``M_l`` is the max per-dim log-likelihood over training positions: training grids reach 0, never below."""
    grids = fitted[CFLOW].module.score_grids(trained_ext(TRAIN))[0]
    for g in grids:
        assert g.min().abs() < 1e-5

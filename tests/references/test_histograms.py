"""Appendix C's histograms (references/histograms.py): the grid cells, codeword histograms against
the explicit cosine formula, and the block-wise KL (Eq. 9) against loops over scipy's ``rel_entr``."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy.special import rel_entr

from adpretrain_hf.references import block_kl_alignment, codeword_histograms, grid_cell_index


# -- grid, histograms, KL ---------------------------------------------------------------
def test_grid_cells_split_uneven_maps_into_near_equal_rectangles():
    grid = grid_cell_index(16, 56, 5).reshape(16, 56)
    assert sorted(grid.unique().tolist()) == list(range(25))
    for axis, side in ((0, 16), (1, 56)):
        band = (grid // 5)[:, 0] if axis == 0 else (grid % 5)[0, :]  # row-band / column-band id
        assert torch.all(band[1:] >= band[:-1])  # contiguous runs
        sizes = torch.bincount(band, minlength=5)
        assert sizes.sum() == side and sizes.max() - sizes.min() <= 1
    assert torch.equal(grid, (grid // 5)[:, :1] * 5 + (grid % 5)[:1, :])  # cells are rectangles
    assert torch.equal(torch.bincount(grid_cell_index(10, 10, 5)), torch.full((25,), 4))  # divisible: exact
    with pytest.raises(ValueError, match="smaller grid_size"):
        grid_cell_index(4, 16, 5)


def test_codeword_histograms_match_explicit_cosine_formula():
    generator = torch.Generator().manual_seed(1)
    tokens, codebook = torch.randn(2, 5, 4, generator=generator), torch.randn(6, 4, generator=generator)
    got = codeword_histograms(tokens, codebook, chunk_size=1).double().numpy()
    for n in range(2):
        for loc in range(5):
            f = tokens[n, loc].double().numpy()
            bins = np.array([(1 + f @ c / (np.linalg.norm(f) * np.linalg.norm(c))) / 2 for c in codebook.double().numpy()])
            np.testing.assert_allclose(got[n, loc], bins / bins.sum(), rtol=1e-5, atol=1e-7)


def explicit_block_kl(query: np.ndarray, pool: np.ndarray, cells: np.ndarray) -> np.ndarray:
    """Eq. 9 with loops: mean over cells of max over the cell's locations of KL(pool || query)."""
    out = np.zeros((query.shape[0], pool.shape[0]))
    for q in range(query.shape[0]):
        for i in range(pool.shape[0]):
            per_cell = [max(rel_entr(pool[i, l], query[q, l]).sum() for l in np.flatnonzero(cells == c)) for c in np.unique(cells)]
            out[q, i] = np.mean(per_cell)
    return out


@pytest.mark.parametrize("spread", [1.0, 1e-2])  # peaked histograms, and near-uniform ones (KL ~ 1e-4: float32 cancellation)
def test_block_kl_matches_explicit_loop(spread):
    generator = torch.Generator().manual_seed(2)
    cells = grid_cell_index(5, 3, 2)  # 5 x 3 map, 2 x 2 grid: cells of 6, 3, 4 and 2 locations

    def histograms(n):
        logits = spread * torch.randn(n, 15, 7, generator=generator, dtype=torch.float64)
        return torch.softmax(logits, dim=-1)

    query, pool = histograms(2), histograms(5)
    expected = explicit_block_kl(query.numpy(), pool.numpy(), cells.numpy())
    got = block_kl_alignment(query.float(), pool.float(), cells, 4, chunk_size=2)
    assert got.shape == (2, 5)
    np.testing.assert_allclose(got.double().numpy(), expected, rtol=2e-3, atol=1e-9)
    assert expected.min() > 0  # the example is not degenerate

"""The streamed per-image counts below each positive == a brute-force count, whatever the chunking and ties."""

from __future__ import annotations

import numpy as np
import pytest

from adpretrain_hf.evaluation import ranked_pairs
from adpretrain_hf.evaluation.ranked_pairs import CountsBelow, _sort_float32_with_labels, rows_by_image


def _brute_force_rows(negatives, images, positives, num_images):
    """``[P, N]``: (negatives of image j < s) + (those <= s), one positive at a time."""
    return np.array([[np.sum((images == j) & (negatives < s)) + np.sum((images == j) & (negatives <= s))
                      for j in range(num_images)] for s in positives])


def _streamed_rows(below: CountsBelow, descending, rows):
    out = []
    for chunk in below.chunks(descending, rows):
        out.append(chunk.at_cut[chunk.below] + chunk.at_cut[chunk.not_above])
    return np.concatenate(out)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])  # the packed-key sort and the argsort path
@pytest.mark.parametrize("rows", [1, 2, 3, 7, 100])
def test_streamed_rows_equal_brute_force_counts_with_ties(dtype, rows, monkeypatch):
    monkeypatch.setattr(ranked_pairs, "CHUNK_ELEMENTS", 5)  # the normals, too, passed in several blocks
    rng = np.random.default_rng(rows)
    negatives = rng.integers(-4, 5, size=200).astype(dtype)  # 9 levels: ties everywhere, both signs
    images = rng.integers(0, 4, size=200)
    positives = np.sort(rng.integers(-6, 7, size=40).astype(dtype))[::-1]  # some above / below every negative
    got = _streamed_rows(CountsBelow(negatives, images, 4), positives, rows)
    assert (got == _brute_force_rows(negatives, images, positives, 4)).all()


def test_minus_zero_ties_with_zero():
    negatives = np.array([-0.0, 0.0, 1.0, -1.0], dtype=np.float32)
    got = _streamed_rows(CountsBelow(negatives, np.array([0, 1, 0, 1]), 2), np.array([0.0, -0.0], dtype=np.float32), 1)
    assert got.tolist() == [[1, 3], [1, 3]]  # image 0: -0.0 tied (1); image 1: -1 below (2) and 0.0 tied (1)


def test_float32_sort_keeps_each_score_with_its_label():
    rng = np.random.default_rng(0)
    scores = np.concatenate([rng.normal(size=500), [0.0, -0.0, np.inf, -np.inf, 1e-45, -1e-45]]).astype(np.float32)
    labels = np.arange(scores.size) * 7919 % 2**32
    sorted_scores, sorted_labels = _sort_float32_with_labels(scores, labels)
    assert (sorted_scores == np.sort(scores)).all()
    assert sorted(zip(sorted_labels.tolist(), sorted_scores.tolist())) == sorted(zip(labels.tolist(), scores.tolist()))


def test_rows_by_image_sums_a_slice_of_rows_by_image():
    rng = np.random.default_rng(1)
    negatives, images = rng.normal(size=300), rng.integers(0, 3, size=300)
    positives = np.sort(rng.normal(size=20))[::-1]
    (chunk,) = CountsBelow(negatives, images, 3).chunks(positives, 20)
    pos_images, values = rng.integers(0, 3, size=20), rng.random(20)
    matrix, cuts = rows_by_image(chunk, pos_images[5:12], values[5:12], 5, 12, 3)
    rows = _brute_force_rows(negatives, images, positives, 3)[5:12]
    expected = np.zeros((3, 3))
    np.add.at(expected, pos_images[5:12], rows * values[5:12, None])
    assert np.allclose(matrix @ chunk.at_cut[cuts], expected, rtol=1e-14, atol=0)


def test_unsorted_positives_are_a_one_line_error():
    below = CountsBelow(np.array([0.0, 1.0]), np.array([0, 0]), 1)
    with pytest.raises(ValueError, match="highest first"):
        next(below.chunks(np.array([0.5, 2.0]), 4))

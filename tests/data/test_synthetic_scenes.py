"""Synthetic scenes: aligned and unaligned poses of the products."""

from __future__ import annotations

import numpy as np

from adpretrain_hf.data.synthetic_scenes import SCENES


def centroid(foreground: np.ndarray) -> np.ndarray:
    ys, xs = np.nonzero(foreground)
    return np.array([xs.mean(), ys.mean()])


def principal_angle(foreground: np.ndarray) -> float:
    ys, xs = np.nonzero(foreground)
    cov = np.cov(np.stack([xs, ys]).astype(float))
    vec = np.linalg.eigh(cov)[1][:, -1]
    return float(np.arctan2(vec[1], vec[0]) % np.pi)


def test_aligned_and_unaligned_poses():
    size = 96
    def scenes(aligned):
        return [SCENES["screw"](np.random.default_rng(s), size, aligned).foreground for s in range(12)]
    tight, loose = scenes(True), scenes(False)
    assert np.std([centroid(f) for f in tight], axis=0).max() < 0.03 * size
    assert np.std([centroid(f) for f in loose], axis=0).max() > 0.05 * size
    tight_angles = [principal_angle(f) for f in tight]
    tight_spread = np.ptp(np.unwrap(np.array(tight_angles) * 2) / 2)
    assert tight_spread < np.deg2rad(10)
    loose_angles = np.array([principal_angle(f) for f in loose])
    assert np.ptp(loose_angles) > np.deg2rad(60)

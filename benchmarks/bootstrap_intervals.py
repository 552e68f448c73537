"""Cost of the paired bootstrap intervals: weighted resample metrics vs materialising each resample.

    python benchmarks/bootstrap_intervals.py [--images 100] [--size 128] [--resamples 1000]

Prints a table: setup (pair counts, sorts) and all resamples of one cell with
``evaluation/weighted_metrics.py``, against the plain metrics on materialised resamples
(timed on a few, extrapolated). Random maps with one rectangular defect per anomalous image.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

from adpretrain_hf.evaluation.bootstrap import draw_indices, weights_from_indices
from adpretrain_hf.evaluation.weighted_metrics import ResampledMetrics
from adpretrain_hf.metrics import aupro, image_auroc, pixel_auroc

BRUTE_FORCE_SAMPLES = 5


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=100, help="test images (40%% normal)")
    parser.add_argument("--size", type=int, default=128, help="map side in pixels")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    n, size = args.images, args.size
    labels = (np.arange(n) >= int(0.4 * n)).astype(int)
    masks = np.zeros((n, size, size), dtype=bool)
    for i in np.flatnonzero(labels):
        y, x = rng.integers(0, size - size // 5, 2)
        masks[i, y:y + size // 6, x:x + size // 5] = True
    maps = (rng.normal(size=masks.shape) + masks).astype(np.float32)
    scores = maps.reshape(n, -1).max(axis=1).astype(np.float64)
    indices = draw_indices(labels, args.resamples, seed=0)
    weights = weights_from_indices(indices, n)

    start = time.perf_counter()
    metrics = ResampledMetrics(maps, scores, labels, masks)
    setup = time.perf_counter() - start
    start = time.perf_counter()
    metrics(weights)
    weighted = time.perf_counter() - start
    start = time.perf_counter()
    for rows in indices[:BRUTE_FORCE_SAMPLES]:
        image_auroc(scores[rows], labels[rows]), pixel_auroc(maps[rows], masks[rows]), aupro(maps[rows], masks[rows])
    per_resample = (time.perf_counter() - start) / BRUTE_FORCE_SAMPLES

    print(f"one cell: {n} images of {size}x{size} ({masks.sum()} defect pixels), {args.resamples} resamples, 3 metrics")
    print("| method | seconds |")
    print("| --- | ---: |")
    print(f"| weighted: setup (pair counts, sorts) | {setup:.2f} |")
    print(f"| weighted: all resamples | {weighted:.2f} |")
    print(f"| materialised resamples (extrapolated from {BRUTE_FORCE_SAMPLES}) | {per_resample * args.resamples:.0f} |")


if __name__ == "__main__":
    main()

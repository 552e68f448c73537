"""Time of the vectorised AUPRO against the slow threshold-loop reference of the tests.

The large case is a category's worth of maps (default 200 x 224 x 224 = 10M pixels, float32
as the detectors produce them, ~half the images with defects). The slow reference (one
pass over all pixels per distinct score, one per region) is quadratic, so it runs on a small
case only; the vectorised code is timed on that same case for the ratio.

    python benchmarks/metrics.py                 # defaults
    python benchmarks/metrics.py --n 50 --size 128 --slow-n 4 --slow-size 24
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Callable

import numpy as np

from adpretrain_hf.metrics import aupro, pixel_auroc

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
from slow_references import blob_masks, slow_aupro, slow_release_aupro  # noqa: E402


def best_of(repeats: int, fn: Callable[[], float]) -> tuple[float, float]:
    """(best wall time in s, value) over ``repeats`` runs."""
    times, value = [], float("nan")
    for _ in range(repeats):
        start = time.perf_counter()
        value = fn()
        times.append(time.perf_counter() - start)
    return min(times), value


def make_case(n: int, size: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Random blob masks and noisy float32 maps that score defects higher."""
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, n=n, size=size, defect_prob=0.5)
    maps = (masks * 0.6 + rng.random(masks.shape)).astype(np.float32)
    return maps, masks


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=200, help="maps in the large case")
    parser.add_argument("--size", type=int, default=224, help="map side in the large case")
    parser.add_argument("--slow-n", type=int, default=4, help="maps in the slow-reference case")
    parser.add_argument("--slow-size", type=int, default=32, help="map side in the slow case")
    parser.add_argument("--repeats", type=int, default=2, help="timed runs (best is kept)")
    args = parser.parse_args()

    rows = []
    maps, masks = make_case(args.n, args.size, seed=0)
    label = f"{args.n}x{args.size}x{args.size}"
    for name, fn in [
        ("aupro mvtec (float32, packed sort)", lambda: aupro(maps, masks)),
        ("aupro mvtec (float64, argsort)", lambda: aupro(maps.astype(np.float64), masks)),
        ("aupro release (200 thresholds)", lambda: aupro(maps, masks, variant="release")),
        ("pixel_auroc (sklearn)", lambda: pixel_auroc(maps, masks)),
    ]:
        seconds, value = best_of(args.repeats, fn)
        rows.append((name, label, seconds, None, value))

    small, small_masks = make_case(args.slow_n, args.slow_size, seed=1)
    small64 = small.astype(np.float64)
    label = f"{args.slow_n}x{args.slow_size}x{args.slow_size}"
    for name, fast, slow in [
        ("aupro mvtec vs slow loop", lambda: aupro(small, small_masks),
         lambda: slow_aupro(small64, small_masks)),
        ("aupro release vs slow loop", lambda: aupro(small, small_masks, variant="release"),
         lambda: slow_release_aupro(small64, small_masks)),
    ]:
        fast_s, fast_v = best_of(args.repeats, fast)
        slow_s, slow_v = best_of(1, slow)
        assert abs(fast_v - slow_v) < 1e-6, (name, fast_v, slow_v)
        rows.append((name, label, fast_s, slow_s, fast_v))

    header = ("what", "maps", "vectorised s", "slow s", "ratio", "value")
    print("{:38s} {:>12s} {:>13s} {:>9s} {:>8s} {:>8s}".format(*header))
    for name, shape, fast_s, slow_s, value in rows:
        slow_txt = f"{slow_s:9.3f}" if slow_s is not None else f"{'-':>9s}"
        ratio = f"{slow_s / fast_s:8.0f}" if slow_s is not None else f"{'-':>8s}"
        print(f"{name:38s} {shape:>12s} {fast_s:13.4f} {slow_txt} {ratio} {value:8.4f}")


if __name__ == "__main__":
    main()

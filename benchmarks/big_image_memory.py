"""Peak memory of `adpretrain predict` on one very large PNG (issue 23: a 140 KB PNG of
12000 x 12000 px took 13.5 GB RSS and 81 s before the shared reader decoded large files reduced).

    python benchmarks/big_image_memory.py [--side 12000] [--work DIR]

Prints a table: image, file size, seconds, peak RSS of the `predict` process (its own
``ru_maxrss``: imports, model and all), for a small image (the baseline) and the big one. The
PNG is written row by row (zlib stream), so this script never holds the image in memory.
tests/benchmarks/test_big_image_memory.py checks the bound below with the same functions.
"""

from __future__ import annotations

import argparse
import json
import struct
import subprocess
import sys
import tempfile
import time
import zlib
from pathlib import Path

PEAK_RSS_BOUND_MB = 2048
"""Stated bound for one 12000 x 12000 RGB PNG through `predict` (tiny preset, CPU): the decoded
image (432 MB, reduced right after decoding to at most WORKING_MAX_SIDE per side) plus the
interpreter, torch and the model."""
DEFECT_FRACTION = 0.1  # side of the bright square in the big image, as a fraction of its side

_PROBE = (
    "import json, resource, sys, time\n"
    "from adpretrain_hf.cli import main\n"
    "start = time.perf_counter()\n"
    "code = main(json.loads(sys.argv[1]))\n"
    "print('RESULT', json.dumps({'code': code, 'seconds': time.perf_counter() - start,"
    " 'maxrss_mb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))\n"
)


def write_png(path: Path, width: int, height: int, defect_fraction: float = DEFECT_FRACTION) -> Path:
    """A grey RGB PNG with a bright square in the middle, encoded one row at a time (8-bit, no filter)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    side = int(min(width, height) * defect_fraction)
    top, left = (height - side) // 2, (width - side) // 2
    plain = b"\x00" + bytes([120, 120, 120]) * width
    marked = b"\x00" + bytes([120, 120, 120]) * left + bytes([250, 250, 250]) * side + bytes([120, 120, 120]) * (width - left - side)
    compressor, parts = zlib.compressobj(6), []
    for row in range(height):
        parts.append(compressor.compress(marked if top <= row < top + side else plain))
    parts.append(compressor.flush())
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", b"".join(parts)) + chunk(b"IEND", b""))
    return path


def make_detector(folder: Path) -> Path:
    """A calibrated FeatureNorm folder on the tiny-clip preset (random weights: memory, not accuracy)."""
    import numpy as np
    import torch

    from adpretrain_hf.deployment import fit_detector
    from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel

    torch.manual_seed(0)
    rng = np.random.default_rng(0)
    images = [np.full((64, 64, 3), 120, np.uint8) + rng.integers(0, 20, (64, 64, 3), dtype=np.uint8) for _ in range(8)]
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()
    fit_detector(model, "featurenorm", images[:6], val_images=images[6:], progress=False).save_pretrained(folder)
    return folder


def measure_predict(detector: Path, image: Path, output: Path) -> dict:
    """Run `adpretrain predict` on ``image`` in a fresh process: ``{"code", "seconds", "maxrss_mb"}``."""
    argv = ["predict", "--detector", str(detector), "--images", str(image), "--output", str(output), "--no-progress", "--device", "cpu"]
    result = subprocess.run([sys.executable, "-c", _PROBE, json.dumps(argv)], capture_output=True, text=True, timeout=600)
    if "RESULT " not in result.stdout:
        raise RuntimeError(f"predict failed: {result.stderr[-2000:]}")
    return json.loads(result.stdout.split("RESULT ", 1)[1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--side", type=int, default=12000, help="side of the big square PNG in pixels (default 12000)")
    parser.add_argument("--work", default=None, help="scratch folder (default: a temporary one)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as scratch:
        work = Path(args.work or scratch)
        work.mkdir(parents=True, exist_ok=True)
        detector = make_detector(work / "detector")
        rows = []
        for name, side in (("small", 256), ("big", args.side)):
            start = time.perf_counter()
            image = write_png(work / f"{name}.png", side, side)
            written = time.perf_counter() - start
            result = measure_predict(detector, image, work / f"out_{name}")
            rows.append((f"{side} x {side} PNG", image.stat().st_size / 1024, written, result))
        print("| image | file KB | write s | predict s | peak RSS MB | exit |")
        print("| --- | ---: | ---: | ---: | ---: | ---: |")
        for label, kb, written, result in rows:
            print(f"| {label} | {kb:.0f} | {written:.1f} | {result['seconds']:.1f} | {result['maxrss_mb']:.0f} | {result['code']} |")
        print(f"\nbound (tests/benchmarks/test_big_image_memory.py): {PEAK_RSS_BOUND_MB} MB")


if __name__ == "__main__":
    main()

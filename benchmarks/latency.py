"""Per-image latency of the deploy path, stage by stage, next to the bare backbone forward.

    python benchmarks/latency.py                                   # EfficientNet-Lite0 (real weights), 224 px
    python benchmarks/latency.py --preset clip-base --train-images 10   # random weights: fine for timing
    python benchmarks/latency.py --threads 1,2 --batch-sizes 1,16 --runtimes eager,onnx,openvino

For each feature kind (pretrained / backbone) and method (FeatureNorm / PatchCore) a detector is
fitted on synthetic normal images, saved, and loaded back through ``pipeline("anomaly-detection")``
(as a user deploys it: the banks are prepared on load). Timed, warm, median of ``--repeats``:

- ``backbone``: ``model.backbone_features`` alone (the bare backbone forward every path pays);
- the stages of ``detector.score`` measured inside one real call (the public steps are wrapped
  with timers, nothing is re-implemented here): ``backbone``, ``residual`` (matching + subtraction),
  ``projector``, ``search`` (PatchCore's memory-bank search), ``map+score`` (the rest: patch
  aggregation, upsampling, smoothing, image score);
- ``pipeline``: the whole ``pipeline(...)`` call on PIL images (reading, resizing, mapping back);
- ``onnx`` / ``openvino``: the exported graph (``adpretrain_hf.export``) run by ``ExportedDetector``
  (``--micro-batch`` images per graph call, 1 as deployed), same thread count, with its
  peak resident memory in a fresh process as ``load + run``: the peak after loading (and compiling)
  the graph, and what one run adds above it (``VmHWM`` of the child's own image: ``ru_maxrss`` would
  count the parent's memory at fork too).

A second table gives each search's GFLOP/s (2 n m d per call) next to a plain ``torch.mm`` of the
same ``[n, d] x [d, m]`` size timed in the same process (its faster layout: row blocks of at most
2^24 outputs, or 512 x 512 tiles).
The machine is shared: compare the ratios, and use ``OMP_WAIT_POLICY=PASSIVE`` (set by default).
"""

from __future__ import annotations

import argparse
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path
from typing import Callable, Iterator

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch: spinning OpenMP workers fight on shared cores

import numpy as np  # noqa: E402
import torch  # noqa: E402
from PIL import Image  # noqa: E402
from transformers import pipeline  # noqa: E402

from adpretrain_hf import ADPretrainConfig, ADPretrainModel  # noqa: E402
from adpretrain_hf import registration  # noqa: E402,F401  (registers the pipeline task)
from adpretrain_hf.deployment import fit_detector  # noqa: E402
from adpretrain_hf.modeling import matching_adpretrain  # noqa: E402
from adpretrain_hf.modeling.dtypes_adpretrain import DTYPES, dtype_from_name  # noqa: E402

STAGES = ("backbone", "residual", "projector", "search", "map+score")
MM_BLOCK_OUTPUTS = 1 << 24  # rows x bank columns of one torch.mm reference block
MM_TILE = 512  # the reference's cache-sized tiles
POLL_SECONDS = 0.002


def synchronize() -> None:
    """Wait for queued GPU work, so wall-clock timers measure it (nothing on the CPU)."""
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        torch.cuda.synchronize()


class StageTimer:
    """Wraps the feature model's public steps and the matcher's search entry with wall-clock timers.

    A search that runs inside ``residuals`` counts as residual matching (its FLOPs are recorded
    under ``residual``); the bank search of the detector is any other search call.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.flops: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
        self._active: list[str] = []

    @contextlib.contextmanager
    def stage(self, name: str) -> Iterator[None]:
        self._active.append(name)
        synchronize()
        start = time.perf_counter()
        try:
            yield
        finally:
            synchronize()
            self.seconds[name] += time.perf_counter() - start
            self._active.pop()

    def wrap_step(self, owner: object, attr: str, name: str) -> Callable[[], None]:
        original = getattr(owner, attr)

        def timed(*args, **kwargs):
            with self.stage(name):
                return original(*args, **kwargs)

        setattr(owner, attr, timed)
        return lambda: delattr(owner, attr) if attr in vars(owner) else None

    def wrap_search(self) -> Callable[[], None]:
        """Patch the matcher's search entry (``nearest_neighbors`` dispatches to it by module lookup)."""
        restores = []
        for attr in matching_adpretrain.SEARCH_ENTRY_POINTS if hasattr(matching_adpretrain, "SEARCH_ENTRY_POINTS") else (
            "_traceable_search", "_torch_search", "_faiss_search"
        ):
            original = getattr(matching_adpretrain, attr, None)
            if original is None:
                continue

            def timed(queries, bank, *args, _original=original, **kwargs):
                rows = bank.shape[0] if hasattr(bank, "shape") else bank.rows
                shape = (int(queries.shape[0]), int(rows), int(queries.shape[1]))
                if "residual" in self._active:
                    self.flops["residual"].append(shape)
                    return _original(queries, bank, *args, **kwargs)
                self.flops["search"].append(shape)
                with self.stage("search"):
                    return _original(queries, bank, *args, **kwargs)

            setattr(matching_adpretrain, attr, timed)
            restores.append(lambda attr=attr, original=original: setattr(matching_adpretrain, attr, original))
        return lambda: [restore() for restore in restores]


def median_seconds(run: Callable[[], object], warmup: int, repeats: int) -> float:
    for _ in range(warmup):
        run()
    times = []
    for _ in range(repeats):
        synchronize()
        start = time.perf_counter()
        run()
        synchronize()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def staged_seconds(detector, pixels: torch.Tensor, warmup: int, repeats: int) -> dict[str, float]:
    """Median seconds per stage of ``detector.score(pixels)`` (one real call per repeat)."""
    model = detector.adpretrain
    runs = []
    for i in range(warmup + repeats):
        timer = StageTimer()
        restores = [timer.wrap_step(model, name, stage) for name, stage in
                    (("backbone_features", "backbone"), ("residuals", "residual"), ("project", "projector"))]
        restores.append(timer.wrap_search())
        try:
            with torch.no_grad():
                synchronize()
                start = time.perf_counter()
                detector.score(pixels)
                synchronize()
                total = time.perf_counter() - start
        finally:
            for restore in restores:
                restore()
        if i >= warmup:
            stages = {name: timer.seconds.get(name, 0.0) for name in STAGES[:-1]}
            stages["map+score"] = total - sum(stages.values())
            stages["total"] = total
            stages["flops"] = dict(timer.flops)
            runs.append(stages)
    out = {name: statistics.median(run[name] for run in runs) for name in (*STAGES, "total")}
    out["flops"] = runs[0]["flops"]
    return out


_PEAK_CHILD = r"""
import resource, sys, numpy as np
path, batch, size, threads, micro = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), int(sys.argv[5])


def peak_mb():
    # VmHWM: this process image's peak (Linux). ru_maxrss would also count the parent's RSS at fork.
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


from adpretrain_hf.exported_detector import ExportedDetector
run = ExportedDetector(path, threads=threads, micro_batch=micro)
x = np.random.default_rng(0).standard_normal((batch, 3, size, size)).astype(np.float32)
base = peak_mb()
run(x)
print(base, peak_mb() - base)
"""


def runtime_peak_mb(path: Path, batch: int, size: int, threads: int, micro_batch: int) -> tuple[float, float]:
    """``(load, run)`` peak resident memory (MB) of an exported graph in a fresh process: the peak
    after loading (and compiling) the graph, and what one ``batch`` run (fed ``micro_batch`` images
    per graph call) adds above it (0 where the compile peak is higher than the run's)."""
    out = subprocess.run([sys.executable, "-c", _PEAK_CHILD, str(path), str(batch), str(size), str(threads), str(micro_batch)],
                         capture_output=True, text=True, check=True)
    load, run = out.stdout.strip().splitlines()[-1].split()
    return float(load), float(run)


def mm_gflops(shapes: list[tuple[int, int, int]], warmup: int, repeats: int, device: str = "cpu") -> tuple[float, float]:
    """(GFLOP, GFLOP/s) of plain float32 ``torch.mm`` on ``device`` over the same ``(n, m, d)`` problems
    (the searches run in float32 whatever the model's dtype): the faster of row blocks of at most
    2^24 outputs and cache-sized 512 x 512 tiles (the GEMM's best rate here)."""
    operands = [(torch.randn(n, d, device=device), torch.randn(d, m, device=device).contiguous()) for n, m, d in shapes]

    def rows_blocks() -> None:
        for q, b in operands:
            rows = max(1, MM_BLOCK_OUTPUTS // b.shape[1])
            for start in range(0, q.shape[0], rows):
                torch.mm(q[start : start + rows], b)

    def tiles() -> None:
        for q, b in operands:
            for start in range(0, q.shape[0], MM_TILE):
                for col in range(0, b.shape[1], MM_TILE):
                    torch.mm(q[start : start + MM_TILE], b[:, col : col + MM_TILE])

    gflop = sum(2.0 * n * m * d for n, m, d in shapes) / 1e9
    return gflop, gflop / min(median_seconds(rows_blocks, warmup, repeats), median_seconds(tiles, warmup, repeats))


def build_model(args: argparse.Namespace) -> ADPretrainModel:
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset(args.preset, image_size=args.image_size)).eval()
    weights = args.backbone_weights
    if weights is None and args.preset == "efficientnet-lite0":
        weights = "auto"
    if weights and weights != "random":
        model.load_backbone_weights(None if weights == "auto" else weights)
    return model


def runtime_sessions(detector, folder: Path, runtimes: list[str], threads: int, micro_batch: int) -> dict[str, tuple[Path, Callable]]:
    """Exported graphs of ``detector`` as ``(path, pixels -> outputs)``, one per requested runtime,
    each an ``ExportedDetector`` fed ``micro_batch`` images per graph call (as deployed)."""
    from adpretrain_hf import export
    from adpretrain_hf.exported_detector import EXPORT_NAMES, ExportedDetector

    paths = {}
    if "onnx" in runtimes:
        paths["onnx"] = export.export_onnx(detector, folder / EXPORT_NAMES["onnx"])
    if "openvino" in runtimes:
        paths["openvino"] = export.export_openvino(detector, folder / EXPORT_NAMES["openvino"])
    calls = {}
    for name, path in paths.items():
        runner = ExportedDetector(path, threads=threads, micro_batch=micro_batch)
        calls[name] = (path, lambda px, runner=runner: runner(px.numpy()))
    return calls


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="efficientnet-lite0", help="feature-model preset (e.g. clip-base)")
    parser.add_argument("--image-size", type=int, default=224, help="input size in pixels")
    parser.add_argument("--backbone-weights", default=None,
                        help="'auto' (the preset's real weights; the default for efficientnet-lite0), 'random', or a file")
    parser.add_argument("--features", default="pretrained,backbone", help="comma-separated feature kinds")
    parser.add_argument("--methods", default="featurenorm,patchcore", help="comma-separated methods")
    parser.add_argument("--train-images", type=int, default=20, help="normal images the detectors are fitted on")
    parser.add_argument("--batch-sizes", default="1,16", help="comma-separated batch sizes")
    parser.add_argument("--threads", default="1", help="comma-separated torch / runtime thread counts")
    parser.add_argument("--runtimes", default="eager,onnx", help="eager plus any of onnx, openvino")
    parser.add_argument("--device", default="cpu", help="torch device of the eager path (cuda: use --runtimes eager)")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES),
                        help="the deployed detector's dtype (pipeline and score; fitting stays float32)")
    parser.add_argument("--micro-batch", type=int, default=1,
                        help="images per exported-graph call (ExportedDetector's micro_batch; 1 as deployed)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed runs before timing")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs (the median is reported)")
    args = parser.parse_args()
    runtimes = [r for r in args.runtimes.split(",") if r != "eager"]
    dtype = dtype_from_name(args.dtype)
    if runtimes and (args.device != "cpu" or dtype != torch.float32):
        parser.error(f"the exported graphs ({', '.join(runtimes)}) run in float32 on the CPU: with --device {args.device} "
                     f"--dtype {args.dtype} use --runtimes eager")

    model = build_model(args).to(args.device)
    size = args.image_size
    rng = np.random.default_rng(0)
    train = torch.from_numpy(rng.standard_normal((args.train_images, 3, size, size)).astype(np.float32)).to(args.device)
    batch_sizes = [int(b) for b in args.batch_sizes.split(",")]
    thread_counts = [int(t) for t in args.threads.split(",")]
    images = [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(max(batch_sizes))]
    rows, searches = [], []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.features.split(","):
            for method in args.methods.split(","):
                torch.set_num_threads(2)
                folder = Path(tmp) / f"{kind}-{method}"
                fit_detector(model, method, train, feature_kind=kind, progress=False, batch_size=8).save_pretrained(folder)
                detect = pipeline("anomaly-detection", model=str(folder), device=args.device, dtype=dtype)
                detector = detect.model.eval()
                bank = getattr(detector.detector, "memory_bank", None)
                for threads in thread_counts:
                    torch.set_num_threads(threads)
                    calls = runtime_sessions(detector, folder, runtimes, threads, args.micro_batch)
                    for batch in batch_sizes:
                        cpu_pixels = torch.from_numpy(rng.standard_normal((batch, 3, size, size)).astype(np.float32))
                        pixels = cpu_pixels.to(device=args.device, dtype=dtype)
                        with torch.no_grad():
                            bare = median_seconds(lambda: detector.adpretrain.backbone_features(pixels), args.warmup, args.repeats)
                        stages = staged_seconds(detector, pixels, args.warmup, args.repeats)
                        piped = median_seconds(lambda: detect(images[:batch], batch_size=batch), args.warmup, args.repeats)
                        row = {"kind": kind, "method": method, "threads": threads, "batch": batch, "bare": bare,
                               "pipeline": piped, "bank": None if bank is None else tuple(bank.shape), **stages}
                        for name, (path, call) in calls.items():
                            row[name] = median_seconds(lambda: call(cpu_pixels), args.warmup, args.repeats)
                            row[name + "_mb"] = runtime_peak_mb(path, batch, size, threads, args.micro_batch)
                        rows.append(row)
                        for stage in ("residual", "search"):
                            shapes = stages["flops"].get(stage)
                            if shapes and stages[stage] > 0:
                                gflop, mm_rate = mm_gflops(shapes, args.warmup, args.repeats, args.device)
                                searches.append((kind, method, threads, batch, stage, shapes, stages[stage], gflop, mm_rate))
                    del calls

    print(f"\npreset {args.preset}, {size}x{size} px, {args.device} {args.dtype}, backbone weights: {args.backbone_weights or ('auto' if args.preset == 'efficientnet-lite0' else 'random')}, "
          f"torch {torch.__version__}, OMP_WAIT_POLICY={os.environ.get('OMP_WAIT_POLICY')}, load avg {os.getloadavg()[0]:.1f}\n")
    extra = "".join(f" {name} ms/img | ÷ backbone | {name} peak MB (load + run) |" for name in runtimes)
    print("| features | method | threads | batch | backbone | residual | projector | search | map+score | score (eager) "
          "| pipeline | ÷ backbone |" + extra)
    print("| --- | --- | ---: | ---: |" + " ---: |" * (8 + 3 * len(runtimes)))
    for r in rows:
        per = lambda seconds: 1000.0 * seconds / r["batch"]  # noqa: E731
        cells = [per(r[s]) for s in STAGES]
        line = (f"| {r['kind']} | {r['method']} | {r['threads']} | {r['batch']} | "
                + " | ".join(f"{c:.1f}" for c in cells)
                + f" | {per(r['total']):.1f} | {per(r['pipeline']):.1f} | {r['pipeline'] / r['bare']:.2f}x |")
        for name in runtimes:
            load, run = r[name + "_mb"]
            line += f" {per(r[name]):.1f} | {r[name] / r['bare']:.2f}x | {load:.0f} + {run:.0f} |"
        print(line)
    print("\n(ms per image, stages from inside one eager detector.score call; 'backbone' column = that call's "
          "backbone stage; ÷ backbone divides by a separate bare backbone_features call)")
    if searches:
        print("\n| features | method | threads | batch | search | n x m x d (per call) | ms / batch | GFLOP | GFLOP/s "
              "| torch.mm GFLOP/s | % of mm |")
        print("| --- | --- | ---: | ---: | --- | --- | ---: | ---: | ---: | ---: | ---: |")
        for kind, method, threads, batch, stage, shapes, seconds, gflop, mm_rate in searches:
            dims = ", ".join(f"{n}x{m}x{d}" for n, m, d in shapes)
            rate = gflop / seconds
            print(f"| {kind} | {method} | {threads} | {batch} | {stage} | {dims} | {1000 * seconds:.1f} | {gflop:.2f} "
                  f"| {rate:.1f} | {mm_rate:.1f} | {100 * rate / mm_rate:.0f}% |")
        print("\n(the residual row times matching + subtraction + gathering, so its rate is a lower bound)")


if __name__ == "__main__":
    main()

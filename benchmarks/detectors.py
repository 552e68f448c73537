"""Fit / predict time and peak memory of PatchCore and PaDiM on synthetic features.

The detectors see a lookup "extractor" returning precomputed random features, so only the
detector's own work is timed (embedding, coreset, statistics, search, map post-processing).
Default: 200 train + 50 test images, 3 layers x 256 channels on a 16x16 grid, 224x224
maps, on the CPU (and the GPU when one is visible). anomalib's PatchCore / PaDiM run on
the same features in the same process only if ``import anomalib`` works.

Peak memory: CPU = peak RSS above the phase's starting RSS (a psutil sampler thread;
glibc's free memory is trimmed before each phase so earlier runs do not hide it);
GPU = ``torch.cuda.max_memory_allocated`` above the phase's start.

PaDiM runs in both forms (``padim`` = one Gaussian per layer, the default; ``padim-concat``
= one Gaussian over the concatenated layers); the ``stats MiB`` column is the size of the
fitted statistics, and a first table gives the formula's value for real backbones.

    python benchmarks/detectors.py                    # ~1 minute on 2 cores
    python benchmarks/detectors.py --train 50 --channels 128 --devices cpu --threads 0
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import os
import threading
import time
from types import SimpleNamespace
from typing import Callable, Iterator

import psutil
import torch

from adpretrain_hf.detectors import PaDiM, PatchCore
from adpretrain_hf.detectors import patchcore as patchcore_module
from adpretrain_hf.detectors.padim import padim_statistics_bytes
from adpretrain_hf.modeling.detectors_adpretrain import PADIM_MODES
from adpretrain_hf.modeling.matching_adpretrain import faiss_available


#: (name, per-layer (C, h, w)) of real backbones at 224 px, for the PaDiM memory table
PADIM_MEMORY_LAYOUTS = (
    ("CLIP ViT-L/14 @224 (4 x 1024 on 16x16)", [(1024, 16, 16)] * 4),
    ("EfficientNet-Lite0 @224 (24/40/112 on 56/28/14)", [(24, 56, 56), (40, 28, 28), (112, 14, 14)]),
    ("WideResNet-50 @224 (256/512/1024 on 56/28/14)", [(256, 56, 56), (512, 28, 28), (1024, 14, 14)]),
)
PADIM_METHODS = {"padim": "per_layer", "padim-concat": "concatenated"}


def print_padim_memory_table(extra: tuple[str, list[tuple[int, int, int]]]) -> None:
    """Formula memory of PaDiM's fitted statistics (float32 means + Cholesky factors), both forms."""
    print("PaDiM statistics (float32 means + Cholesky factors), formula:")
    header = f"{'layout':<52}" + "".join(f"{mode + ' MiB':>20}" for mode in PADIM_MODES)
    print(header)
    print("-" * len(header))
    for name, shapes in (*PADIM_MEMORY_LAYOUTS, extra):
        print(f"{name:<52}" + "".join(f"{padim_statistics_bytes(shapes, mode) / 2**20:>20,.1f}" for mode in PADIM_MODES))
    print()


class LookupExtractor:
    """Returns stored features: image ``i`` carries its index in pixel ``[0, 0, 0]``."""

    feature_kind = "backbone"

    def __init__(self, tables: list[torch.Tensor], image_size: int) -> None:
        self.tables = tables  # per layer [N, C, h, w]
        self.image_size = (image_size, image_size)
        self.device = tables[0].device

    def __call__(self, pixel_values: torch.Tensor) -> list[torch.Tensor]:
        idx = pixel_values[:, 0, 0, 0].long().to(self.device)
        return [t.index_select(0, idx) for t in self.tables]


def index_batches(first: int, count: int, batch: int, size: int) -> Iterator[torch.Tensor]:
    for start in range(first, first + count, batch):
        b = min(batch, first + count - start)
        pixels = torch.zeros(b, 3, size, size)
        pixels[:, 0, 0, 0] = torch.arange(start, start + b, dtype=torch.float32)
        yield pixels


class PeakMemory:
    """Peak memory of a phase in MiB (RSS sampler on CPU, the CUDA allocator on GPU)."""

    def __init__(self, device: torch.device) -> None:
        self.device, self.peak_mib = device, 0.0

    def __enter__(self) -> "PeakMemory":
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
            self._base = torch.cuda.memory_allocated()
            return self
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)  # hand freed heap back so the baseline is honest
        self._proc, self._stop = psutil.Process(os.getpid()), threading.Event()
        self._base = self._peak = self._proc.memory_info().rss
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()
        return self

    def _sample(self) -> None:
        while not self._stop.is_set():
            self._peak = max(self._peak, self._proc.memory_info().rss)
            time.sleep(0.002)

    def __exit__(self, *exc) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize()
            self.peak_mib = (torch.cuda.max_memory_allocated() - self._base) / 2**20
            return
        self._stop.set()
        self._thread.join()
        self._peak = max(self._peak, self._proc.memory_info().rss)
        self.peak_mib = (self._peak - self._base) / 2**20


def timed(device: torch.device, fn: Callable[[], object]) -> tuple[object, float, float]:
    """Run ``fn``; return (result, seconds, peak MiB)."""
    with PeakMemory(device) as mem:
        start = time.perf_counter()
        out = fn()
        if device.type == "cuda":
            torch.cuda.synchronize()
        seconds = time.perf_counter() - start
    return out, seconds, mem.peak_mib


def bench_ours(name: str, extractor: LookupExtractor, args, device: torch.device) -> dict:
    if name == "patchcore":
        det = PatchCore(extractor, coreset_ratio=args.coreset_ratio, batch_size=args.batch_size, progress=False)
    else:
        det = PaDiM(extractor, mode=PADIM_METHODS[name], batch_size=args.batch_size, progress=False)
    coreset_s = []
    originals = dict(patchcore_module.CORESETS)  # PatchCore looks its coreset up here, by variant

    def timed_coreset(select):  # time the coreset inside PatchCore.fit
        def run(*a, **k):
            start = time.perf_counter()
            out = select(*a, **k)
            if device.type == "cuda":
                torch.cuda.synchronize()
            coreset_s.append(time.perf_counter() - start)
            return out

        return run

    patchcore_module.CORESETS.update({variant: timed_coreset(select) for variant, select in originals.items()})
    try:
        _, fit_s, fit_mib = timed(device, lambda: det.fit(index_batches(0, args.train, args.batch_size, args.image_size)))
    finally:
        patchcore_module.CORESETS.update(originals)
    (maps, _), pred_s, pred_mib = timed(
        device, lambda: det.predict(index_batches(args.train, args.test, args.batch_size, args.image_size))
    )
    if name == "patchcore":
        note = f"bank {tuple(det.memory_bank.shape)}, coreset {sum(coreset_s):.1f}s"
        stats_mib = det.memory_bank.numel() * det.memory_bank.element_size() / 2**20
    else:
        note = f"cov {[tuple(c.shape) for c in det.cholesky]}"
        stats_mib = det.statistics_bytes() / 2**20
    return dict(fit_s=fit_s, fit_mib=fit_mib, pred_s=pred_s, pred_mib=pred_mib, stats_mib=stats_mib, note=note)


def bench_anomalib(name: str, tables: list[torch.Tensor], args, device: torch.device) -> dict:
    """anomalib 2.x components on the same features (its own embedding: concat, no 1024 pooling)."""
    from anomalib.models.components import KCenterGreedy, MultiVariateGaussian
    from anomalib.models.image.padim.anomaly_map import AnomalyMapGenerator as PadimMaps
    from anomalib.models.image.patchcore.anomaly_map import AnomalyMapGenerator as PatchcoreMaps
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    layers = [f"layer{i}" for i in range(len(tables))]
    holder = SimpleNamespace(layers=layers)
    pool = torch.nn.AvgPool2d(3, 1, 1)
    size = (args.image_size, args.image_size)

    def batches(first: int, count: int) -> Iterator[dict[str, torch.Tensor]]:
        for start in range(first, first + count, args.batch_size):
            stop = min(start + args.batch_size, first + count)
            yield {n: t[start:stop] for n, t in zip(layers, tables)}

    if name not in ("patchcore", "padim-concat"):
        raise NotImplementedError(f"anomalib has no {name} form (its PaDiM concatenates layers)")
    if name == "patchcore":
        def embed(feats):
            emb = PatchcoreModel.generate_embedding(holder, {k: pool(v) for k, v in feats.items()})
            return emb, PatchcoreModel.reshape_embedding(emb)

        def fit():
            bank = torch.cat([embed(f)[1] for f in batches(0, args.train)])
            return KCenterGreedy(embedding=bank, sampling_ratio=args.coreset_ratio).sample_coreset()

        bank, fit_s, fit_mib = timed(device, fit)
        maps_gen = PatchcoreMaps().to(device)

        def predict():
            out = []
            for f in batches(args.train, args.test):
                emb, flat = embed(f)
                scores, _ = PatchcoreModel.euclidean_dist(flat, bank).min(1)
                out.append(maps_gen(patch_scores=scores.reshape(emb.shape[0], 1, *emb.shape[-2:]), image_size=size))
            return torch.cat(out)
    else:
        gaussian = MultiVariateGaussian()

        def fit():
            emb = torch.cat([torch.cat(list(f.values()), 1) for f in batches(0, args.train)])
            return gaussian.fit(emb)

        _, fit_s, fit_mib = timed(device, fit)
        maps_gen = PadimMaps(sigma=4).to(device)

        def predict():
            return torch.cat([
                maps_gen(embedding=torch.cat(list(f.values()), 1), mean=gaussian.mean,
                         inv_covariance=gaussian.inv_covariance, image_size=size)
                for f in batches(args.train, args.test)
            ])

    with torch.no_grad():
        _, pred_s, pred_mib = timed(device, predict)
    return dict(fit_s=fit_s, fit_mib=fit_mib, pred_s=pred_s, pred_mib=pred_mib, stats_mib=float("nan"), note="anomalib")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=200, help="normal training images")
    parser.add_argument("--test", type=int, default=50, help="test images")
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--channels", type=int, default=256, help="channels per layer")
    parser.add_argument("--grid", type=int, default=16, help="feature grid side (all layers)")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--coreset-ratio", type=float, default=0.1)
    parser.add_argument("--devices", default="auto", help="'auto' (cpu + cuda if visible), or e.g. 'cpu', 'cuda'")
    parser.add_argument("--methods", default="patchcore,padim,padim-concat", help="patchcore, padim (per layer), padim-concat")
    parser.add_argument(
        "--threads", type=int, default=1,
        help="torch CPU threads; 0 = torch's default. 1 by default: on a shared, busy 2-core machine OpenMP "
        "spin-waiting made the coreset loop 4x slower with 2 threads (at idle both take the same time)",
    )
    args = parser.parse_args()
    if args.threads > 0:
        torch.set_num_threads(args.threads)

    auto = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])
    devices = auto if args.devices == "auto" else args.devices.split(",")
    try:
        import anomalib  # noqa: F401

        have_anomalib = True
    except ImportError:
        have_anomalib = False
        print("anomalib not installed: skipped")

    n = args.train + args.test
    print_padim_memory_table((f"this run ({args.layers} x {args.channels} on {args.grid}x{args.grid})",
                              [(args.channels, args.grid, args.grid)] * args.layers))
    print(
        f"features: {args.train} train + {args.test} test images x {args.layers} layers x {args.channels}-d "
        f"at {args.grid}x{args.grid}; maps {args.image_size}x{args.image_size}; torch threads {torch.get_num_threads()}; "
        f"faiss {'yes' if faiss_available() else 'no'}; load avg {os.getloadavg()[0]:.1f}"
    )
    header = (f"{'device':<7}{'method':<14}{'impl':<10}{'fit s':>8}{'fit MiB':>10}{'pred s':>9}{'pred MiB':>10}"
              f"{'stats MiB':>11}  notes")
    print(header)
    print("-" * len(header))
    for dev in devices:
        device = torch.device(dev)
        gen = torch.Generator().manual_seed(0)
        tables = [torch.randn(n, args.channels, args.grid, args.grid, generator=gen).to(device) for _ in range(args.layers)]
        extractor = LookupExtractor(tables, args.image_size)
        for method in args.methods.split(","):
            runs = [("ours", lambda: bench_ours(method, extractor, args, device))]
            if have_anomalib and method in ("patchcore", "padim-concat"):
                runs.append(("anomalib", lambda: bench_anomalib(method, tables, args, device)))
            for impl, run in runs:
                try:
                    r = run()
                except Exception as err:  # report and go on (e.g. an anomalib API change)
                    print(f"{dev:<7}{method:<14}{impl:<10}  failed: {type(err).__name__}: {err}")
                    continue
                print(
                    f"{dev:<7}{method:<14}{impl:<10}{r['fit_s']:>8.2f}{r['fit_mib']:>10.0f}"
                    f"{r['pred_s']:>9.2f}{r['pred_mib']:>10.0f}{r['stats_mib']:>11.1f}  {r['note']}"
                )
        del tables, extractor


if __name__ == "__main__":
    main()

"""Forward + backward time and peak memory of the angle loss, chunked vs unchunked.

Shapes are the paper's training step for one layer: batch 32 x 256 tokens x 2 views x D=1024
(16,384 features). Each configuration runs in a fresh process so that its peak memory is its own:
on CPU the peak resident set (VmHWM, reset through /proc/self/clear_refs) above the resident set
just before the step; on CUDA ``torch.cuda.max_memory_allocated`` above the allocation before it.
The "block bound" column is the largest similarity block, ``chunk x M_neg`` float32 elements.

    python benchmarks/losses.py                       # CPU, 50 % anomalous patches: the most work
    python benchmarks/losses.py --anomaly-rate 0.05   # a more typical share of defect patches
    python benchmarks/losses.py --device cuda --dense # also the full masked [P, 2P] baseline
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time

import torch

from adpretrain_hf.losses import angle_contrastive_loss, default_chunk_size, norm_contrastive_loss

# name -> chunk_size ("all": every anchor of a label group in one chunk, "default": the auto chunk)
CONFIGS = {
    "unchunked (one chunk per label group)": "all",
    "default chunk": "default",
    "chunk 256": 256,
}
DENSE = "dense masked [P, 2P] (naive)"


def _dense_angle(view1, view2, labels, center, temperature=0.15):
    """Naive Eq. (2): the full masked anchor x all-features block, first-view anchors."""
    per_view, dim = view1.shape[0] * view1.shape[1], view1.shape[2]
    z = torch.nn.functional.normalize(torch.cat([view1.reshape(-1, dim), view2.reshape(-1, dim)]) - center, dim=1)
    m = torch.cat([labels.reshape(-1), labels.reshape(-1)])
    logits = (z[:per_view] @ z.T) / temperature  # [P, 2P]
    logits = logits.masked_fill(m[:per_view, None] == m[None, :], float("-inf"))
    positive = (z[:per_view] * z[per_view:]).sum(1) / temperature
    return (torch.logsumexp(logits, 1) - positive).mean()


def _rss_kib(field: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def run_one(name: str, args: argparse.Namespace) -> dict:
    """Time one forward + backward of one configuration; returns a row of the table."""
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(0)
    shape = (args.batch, args.tokens, args.dim)
    scale = args.dim**-0.5  # norms ~1, around the hypersphere (randn norms ~32 overflow exp(n - r))
    view1 = (scale * torch.randn(shape, generator=g)).to(device).requires_grad_()
    view2 = (view1.detach() + 0.3 * scale * torch.randn(shape, generator=g).to(device)).requires_grad_()
    labels = (torch.rand(shape[:2], generator=g) < args.anomaly_rate).to(device)
    center = torch.zeros(args.dim, device=device)
    features = 2 * args.batch * args.tokens
    anomalous, normal = int(labels.sum()), int((~labels).sum())  # per view = first-view anchors

    if name == DENSE:
        chunk, block = args.batch * args.tokens, args.batch * args.tokens * features

        def step():
            return _dense_angle(view1, view2, labels, center)

    else:
        chunk_setting = CONFIGS[name]
        chunk = {"all": 2 * args.batch * args.tokens, "default": default_chunk_size(features)}.get(chunk_setting, chunk_setting)
        block = max(min(chunk, normal) * 2 * anomalous, min(chunk, anomalous) * 2 * normal)

        def step():
            return angle_contrastive_loss(view1, view2, labels, center, chunk_size=chunk)

    def full_step():
        loss = step() + norm_contrastive_loss(view1, labels) + norm_contrastive_loss(view2, labels)
        loss.backward()
        return loss

    if device.type == "cuda":
        full_step()  # warm-up (kernels, allocator)
        view1.grad = view2.grad = None
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset VmHWM to the current resident set
        before = _rss_kib("VmRSS") * 1024
    start = time.perf_counter()
    loss = full_step()
    if device.type == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() - before
    else:
        peak = _rss_kib("VmHWM") * 1024 - before
    seconds = time.perf_counter() - start
    return {
        "config": name,
        "chunk": chunk,
        "block_bound_mib": block * 4 / 2**20,
        "seconds": seconds,
        "peak_mib": peak / 2**20,
        "loss": float(loss),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--batch", type=int, default=32)
    parser.add_argument("--tokens", type=int, default=256)
    parser.add_argument("--dim", type=int, default=1024)
    parser.add_argument("--anomaly-rate", type=float, default=0.5, help="fraction of anomalous patches (0.5: most work)")
    parser.add_argument("--dense", action="store_true", help="also run the naive full-block baseline")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.one:
        print(json.dumps(run_one(args.one, args)))
        return

    names = list(CONFIGS) + ([DENSE] if args.dense else [])
    passthrough = [a for a in sys.argv[1:] if a != "--dense"]
    print(
        f"angle + norm loss, forward + backward: batch {args.batch} x {args.tokens} tokens x 2 views x "
        f"D={args.dim} on {args.device}, {args.anomaly_rate:.0%} anomalous patches, anchors=first, float32"
    )
    print(f"| {'configuration':38s} | {'chunk':>6s} | {'block bound MiB':>15s} | {'fwd+bwd s':>9s} | {'peak MiB':>8s} | {'loss':>9s} |")
    print(f"|{'-' * 40}|{'-' * 8}|{'-' * 17}|{'-' * 11}|{'-' * 10}|{'-' * 11}|")
    for name in names:
        out = subprocess.run([sys.executable, __file__, *passthrough, "--one", name], capture_output=True, text=True)
        if out.returncode:
            print(f"| {name:38s} | failed: {out.stderr.strip().splitlines()[-1] if out.stderr else out.returncode}")
            continue
        row = json.loads(out.stdout.strip().splitlines()[-1])
        print(
            f"| {name:38s} | {row['chunk']:6d} | {row['block_bound_mib']:15.0f} | {row['seconds']:9.2f} | "
            f"{row['peak_mib']:8.0f} | {row['loss']:9.4f} |"
        )


if __name__ == "__main__":
    main()

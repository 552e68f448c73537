"""What the atomic, structure-recording ``save_pretrained`` costs over transformers' plain one.

Three ways to write the same random-weight model of a preset, each repeated ``--repeats`` times
into the same folder (a re-save, the common case):

* ``plain``: ``PreTrainedModel.save_pretrained`` in place (not atomic, no structure record).
* ``atomic``: ``ADPretrainModel.save_pretrained``: temporary sibling folder, safetensors header
  rewritten with the structure metadata (one extra streamed copy of the weights), fsync, swap.
* ``atomic, no fsync``: the same with the flush to disk skipped, so ``atomic`` minus this row
  is the cost of durability against power loss (a kill alone does not need it).

The machine's other load changes wall times: compare rows of one run, not runs.

Run: ``python benchmarks/save_overhead.py [--preset tiny-clip] [--repeats 5]``.
"""

from __future__ import annotations

import argparse
import os
import tempfile

import torch

from latency import median_seconds  # the benchmarks' one timer

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling import atomic_io_adpretrain
from adpretrain_hf.modeling.modeling_adpretrain import ADPretrainPreTrainedModel


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--preset", default="tiny-clip")
    parser.add_argument("--repeats", type=int, default=5)
    args = parser.parse_args()
    os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset(args.preset)).eval()
    with tempfile.TemporaryDirectory() as root:
        plain_dir, atomic_dir = os.path.join(root, "plain"), os.path.join(root, "atomic")
        plain = median_seconds(lambda: ADPretrainPreTrainedModel.save_pretrained(model, plain_dir), 0, args.repeats)
        atomic = median_seconds(lambda: model.save_pretrained(atomic_dir), 0, args.repeats)
        flush = atomic_io_adpretrain._fsync_tree
        atomic_io_adpretrain._fsync_tree = lambda folder: None
        try:
            no_fsync = median_seconds(lambda: model.save_pretrained(atomic_dir), 0, args.repeats)
        finally:
            atomic_io_adpretrain._fsync_tree = flush
        size = sum(os.path.getsize(os.path.join(atomic_dir, f)) for f in os.listdir(atomic_dir) if f.endswith(".safetensors"))
    print(f"preset {args.preset}: {size / 2**20:.1f} MiB of weights, median of {args.repeats} re-saves")
    print(f"| {'save':<16} | {'seconds':>8} | {'vs plain':>8} |")
    print(f"| {'-' * 16} | {'-' * 8} | {'-' * 8} |")
    for name, seconds in (("plain", plain), ("atomic", atomic), ("atomic, no fsync", no_fsync)):
        print(f"| {name:<16} | {seconds:8.3f} | {seconds / plain:7.2f}x |")


if __name__ == "__main__":
    main()

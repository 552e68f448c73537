"""Reference strategies on non-aligned objects: the first K normal images vs semantic-aligned ones.

    python benchmarks/aligned_vs_first.py --checkpoint adpretrain-demo/checkpoint/model --work /tmp/aligned

Synthetic MVTec-layout objects at random positions and rotations (``aligned=False``); the
same pretrained checkpoint evaluated by the runner with ``reference_strategy="first"`` and
``"aligned"`` (appendix C). The matcher's light CNN is EfficientNet-Lite0's stem and first two
stages with the real ImageNet weights (ResNet-18 weights, the appendix's choice, cannot be had
offline). Prints I-AUROC / P-AUROC / PRO per strategy.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn

OBJECTS = ("bottle", "screw", "washer")


def early_stage_net() -> nn.Module:
    """EfficientNet-Lite0 (real ImageNet weights) up to stride 4: a light early-feature CNN."""
    from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel

    model = ADPretrainModel(ADPretrainConfig.from_preset("efficientnet-lite0", layers=[2]))
    model.load_backbone_weights()
    return model.backbone.model.eval()


class FirstMap(nn.Module):
    """timm features_only returns a list: the matcher needs one [N, C, H, W] map."""

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)[0]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", required=True, help="a pretrained ADPretrain checkpoint folder")
    parser.add_argument("--work", default="/tmp/aligned-vs-first")
    parser.add_argument("--methods", default="featurenorm,patchcore")
    args = parser.parse_args()

    from adpretrain_hf.data import generate_dataset
    from adpretrain_hf.evaluation import evaluate_model

    work = Path(args.work)
    data = work / "unaligned-mvtec"
    if not data.is_dir():
        generate_dataset(data, layout="mvtec", categories=OBJECTS, num_normal=24, num_anomalous=12, image_size=128, seed=7, aligned=False, progress=False)
    net = FirstMap(early_stage_net())
    rows = []
    for strategy in ("first", "aligned"):
        results = evaluate_model(
            args.checkpoint, str(data), layout="mvtec", methods=tuple(args.methods.split(",")), shots=8, compare_backbone=False,
            output_dir=str(work / strategy), reference_strategy=strategy, aligned_feature_net=net if strategy == "aligned" else None,
            print_markdown=False, progress=False,
        )
        for method, kinds in results["results"]["mean"].items():
            scores = kinds["pretrained"]
            rows.append(f"| {strategy} | {method} | {100 * scores['image_auroc']:.1f} | {100 * scores['pixel_auroc']:.1f} | {100 * scores['aupro']:.1f} |")
    print("\n| references | method | I-AUROC | P-AUROC | PRO |\n| --- | --- | ---: | ---: | ---: |")
    print("\n".join(rows))


if __name__ == "__main__":
    main()

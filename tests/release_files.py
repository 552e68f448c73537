"""Release-layout projector files made from shape arithmetic, and a tiny saved backbone (plain functions).

Shared by tests/test_convert_release.py (the converter) and tests/commands/test_convert.py (the command).
"""

import math

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from adpretrain_hf import get_preset

D, N_REFS, HEADS, LAYERS = 32, 16, 4, 4  # tiny-clip widths, a custom N_r


def _release_shapes(dim, n_refs, ref_proj="conv1d"):
    """The release's per-projector layout from the notes' arithmetic: MLP 4D, SE bottleneck D/4."""
    hidden, squeeze = 4 * dim, dim // 4
    proj = {"conv1d": (dim, dim, 1), "conv2d": (dim, dim, 1, 1), "linear": (dim, dim)}[ref_proj]
    return {
        "ref": (n_refs, dim), "ref_proj.weight": proj, "ref_proj.bias": (dim,),
        "attn.in_proj_weight": (3 * dim, dim), "attn.in_proj_bias": (3 * dim,),
        "attn.out_proj.weight": (dim, dim), "attn.out_proj.bias": (dim,),
        "mlp.fc1.weight": (hidden, dim), "mlp.fc1.bias": (hidden,),
        "mlp.se.0.weight": (squeeze, hidden), "mlp.se.0.bias": (squeeze,),
        "mlp.se.2.weight": (hidden, squeeze), "mlp.se.2.bias": (hidden,),
        "mlp.fc2.weight": (dim, hidden), "mlp.fc2.bias": (dim,),
    }



def _release_state(ref_proj="conv1d", seed=0, layers=LAYERS, dim=D, n_refs=N_REFS):
    """A release-layout state dict in bf16; weights ~ 1/sqrt(fan_in) so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(layers):
        for name, shape in _release_shapes(dim, n_refs, ref_proj).items():
            scale = 1.0 if name == "ref" else 1.0 / math.sqrt(shape[1] if len(shape) > 1 else shape[0])
            state[f"projectors.{i}.{name}"] = (torch.randn(shape, generator=g) * scale).to(torch.bfloat16)
    return state



def _save(tmp_path, obj, name="release.pth"):
    path = tmp_path / name
    torch.save(obj, path)
    return path



def _tiny_backbone_dir(tmp_path):
    kwargs = {k: v for k, v in get_preset("tiny-clip").backbone_config.items() if k != "model_type"}
    torch.manual_seed(7)
    CLIPVisionModel(CLIPVisionConfig(**kwargs)).save_pretrained(tmp_path / "backbone")
    return str(tmp_path / "backbone")


"""Release-layout projector files made from shape arithmetic, and a tiny saved backbone (plain functions).

Shared by tests/test_convert_release.py (the converter) and tests/commands/test_convert.py (the command).
"""

import math

import torch
from transformers import CLIPVisionConfig, CLIPVisionModel

from adpretrain_hf import get_preset

D, N_REFS, HEADS, LAYERS = 32, 16, 4, 4  # tiny-clip widths, a custom N_r


def _release_shapes(dim, n_refs, ref_proj="conv1d"):
    """The release's per-level layout (models/projector.py): MLP 4D, SE bottleneck D/4, Conv1d k=1 projection."""
    hidden, squeeze = 4 * dim, dim // 4
    proj = {"conv1d": (dim, dim, 1), "conv2d": (dim, dim, 1, 1), "linear": (dim, dim)}[ref_proj]
    return {
        "x_ref": (1, n_refs, dim), "ref_proj.project.weight": proj, "ref_proj.project.bias": (dim,),
        "layers.0.cross_attn.in_proj_weight": (3 * dim, dim), "layers.0.cross_attn.in_proj_bias": (3 * dim,),
        "layers.0.cross_attn.out_proj.weight": (dim, dim), "layers.0.cross_attn.out_proj.bias": (dim,),
        "layers.0.mlp.fc1.weight": (hidden, dim), "layers.0.mlp.fc1.bias": (hidden,),
        "layers.0.mlp.se.fc1.weight": (squeeze, hidden), "layers.0.mlp.se.fc1.bias": (squeeze,),
        "layers.0.mlp.se.fc2.weight": (hidden, squeeze), "layers.0.mlp.se.fc2.bias": (hidden,),
        "layers.0.mlp.fc2.weight": (dim, hidden), "layers.0.mlp.fc2.bias": (dim,),
    }


def _level(i):
    """The release's name of tapped layer i (0-based): l1_proj .. l4_proj."""
    return f"l{i + 1}_proj."


def _release_state(ref_proj="conv1d", seed=0, layers=LAYERS, dim=D, n_refs=N_REFS):
    """A release-layout state dict in bf16; weights ~ 1/sqrt(fan_in) so activations stay O(1)."""
    g = torch.Generator().manual_seed(seed)
    state = {}
    for i in range(layers):
        for name, shape in _release_shapes(dim, n_refs, ref_proj).items():
            scale = 1.0 if name == "x_ref" else 1.0 / math.sqrt(shape[1] if len(shape) > 1 else shape[0])
            state[_level(i) + name] = (torch.randn(shape, generator=g) * scale).to(torch.bfloat16)
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


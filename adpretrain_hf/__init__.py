"""adpretrain-hf: anomaly representation pretraining (ADPretrain) for the Hugging Face ecosystem.

Importing the package registers the model with the Auto classes (``AutoConfig``,
``AutoModel``, ``AutoImageProcessor``) and the ``anomaly-features`` pipeline task, so
``AutoModel.from_pretrained(...)`` and ``pipeline("anomaly-features", ...)`` work without
``trust_remote_code``.
"""

from transformers import AutoConfig, AutoModel

from .modeling import ADPretrainConfig, ADPretrainModel, ADPretrainOutput, PRESETS, get_preset

__version__ = "0.1.0"

AutoConfig.register(ADPretrainConfig.model_type, ADPretrainConfig, exist_ok=True)
AutoModel.register(ADPretrainConfig, ADPretrainModel, exist_ok=True)

from . import registration  # noqa: E402,F401  (image processor + pipeline task, once they exist)

__all__ = ["ADPretrainConfig", "ADPretrainModel", "ADPretrainOutput", "PRESETS", "get_preset", "__version__"]

"""adpretrain-hf: anomaly representation pretraining (ADPretrain) for the Hugging Face ecosystem."""

__version__ = "0.1.0"

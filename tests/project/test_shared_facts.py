"""Facts with one home: the package's copies are the modeling/metrics ones, and the pipeline keys
reference sets with the evaluation's pixel-hash rule (checked against hashlib directly)."""

from __future__ import annotations

import hashlib

import numpy as np
import torch
from PIL import Image
from transformers import pipeline

from adpretrain_hf import extractor
from adpretrain_hf.data import sampling
from adpretrain_hf.evaluation import config as evaluation_config
from adpretrain_hf.metrics import names
from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling import configuration_adpretrain, dtypes_adpretrain
from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor


def test_package_copies_are_the_homes():
    # evaluation.config stays torch-free (the CLI builds its flags from it): it imports these inside its checks
    assert extractor.FEATURE_KINDS is configuration_adpretrain.FEATURE_KINDS
    assert not hasattr(evaluation_config, "FEATURE_KINDS") and not hasattr(evaluation_config, "DTYPES")
    assert evaluation_config.METRICS is names.METRIC_NAMES
    assert not hasattr(sampling, "REFERENCE_SHOT_CHOICES") and not hasattr(extractor, "pixel_hash")  # no aliases: one name
    assert set(names.METRIC_LABELS) == set(names.METRIC_DEFINITIONS) == set(names.METRIC_NAMES)


def test_every_dtype_alias_parses_to_a_canonical_dtype():
    canonical = {getattr(torch, name) for name in dtypes_adpretrain.DTYPE_NAMES}
    for alias, dtype in dtypes_adpretrain.DTYPES.items():
        assert evaluation_config.parse_dtype(alias.upper()) == dtype and dtype in canonical


def test_pipeline_reference_key_uses_the_pixel_hash_rule():
    torch.manual_seed(0)
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).eval()
    processor = ADPretrainImageProcessor.from_adpretrain_config(model.config)
    pipe = pipeline("anomaly-features", model=model, image_processor=processor, device="cpu")
    refs = [np.random.default_rng(seed).integers(0, 256, (40, 52, 3), dtype=np.uint8) for seed in (1, 2)]
    key, pixels = pipe._prepare_references(refs)
    expected_pixels = processor([Image.fromarray(r) for r in refs], return_tensors="pt")["pixel_values"].float()
    per_image = [hashlib.blake2b(p.contiguous().numpy().tobytes(), digest_size=16).hexdigest() for p in expected_pixels]
    assert torch.equal(pixels, expected_pixels)
    assert key == hashlib.blake2b("|".join(per_image).encode(), digest_size=16).hexdigest()

"""The cases of tests/project/test_detector_numbers_stable.py and the script that records them.

Issue 21 renovates the detectors (one ``nn.Module`` per method, one scoring path) with the
promise "behaviour and numbers unchanged". This module fits every registered detector on a
tiny random CNN preset (seeded model and images, both feature kinds where cheap) and scores
seeded test images twice: through the fitting code (``detector.predict``) and through the
deployed folder model (``detector_to_model(detector)(pixel_values)``).

``python -m tests.project.detector_numbers`` rewrites ``tests/fixtures/detector_numbers.safetensors``
from the code as it is. The committed file was recorded from the code *before* the issue-21
renovation (its metadata says so): regenerate it only for an intended change of the numbers.
"""

from __future__ import annotations

from pathlib import Path

import torch

FIXTURE = Path(__file__).resolve().parents[1] / "fixtures" / "detector_numbers.safetensors"
RECORDED_FROM = "post-renovation merge: the renovation was proven bitwise against main e7e6f42; re-recorded for the intended changes merged with it (release projector init, fused-GEMM L2 search rounding)"
TRAIN_IMAGES, TEST_IMAGES, REFERENCE_IMAGES = 6, 2, 3

# (case name, method, feature kind, constructor options); trained configs are a few steps long.
def cases() -> list[tuple[str, str, str, dict]]:
    from adpretrain_hf.detectors.cflow import CFLOWConfig
    from adpretrain_hf.detectors.glass import GLASSConfig
    from adpretrain_hf.detectors.uniad import UniADConfig

    cflow = CFLOWConfig(meta_epochs=1, sub_epochs=1, batch_size=3, coupling_blocks=2, condition_dim=16, lr_warm_epochs=0)
    glass = GLASSConfig(meta_epochs=1, dsc_hidden=16, embed_dim=None)
    uniad = UniADConfig(epochs=1, hidden_dim=16, num_heads=2, num_encoder_layers=1, num_decoder_layers=1,
                        dim_feedforward=32, batch_size=3)
    return [
        ("featurenorm-pretrained", "featurenorm", "pretrained", {}),
        ("featurenorm-backbone", "featurenorm", "backbone", {}),
        ("patchcore-pretrained", "patchcore", "pretrained", {"embedding_dim": 16, "coreset_ratio": 0.25}),
        ("patchcore-backbone-max", "patchcore", "backbone", {"image_score": "max", "layer_positions": [0, 2]}),
        ("patchcore-backbone-mapmax", "patchcore", "backbone", {"image_score": "map_max", "coreset_ratio": 0.5}),
        ("padim-pretrained", "padim", "pretrained", {}),
        ("padim-backbone-concat", "padim", "backbone", {"mode": "concatenated", "num_features": 20}),
        ("cflow-pretrained", "cflow", "pretrained", {"config": cflow}),
        ("glass-backbone", "glass", "backbone", {"config": glass, "layer_positions": [0, 1, 2]}),
        ("uniad-pretrained", "uniad", "pretrained", {"config": uniad}),
    ]


def images(n: int, size: int, seed: int) -> torch.Tensor:
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def tiny_model():
    from adpretrain_hf import ADPretrainConfig, ADPretrainModel

    torch.manual_seed(0)
    return ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn")).eval()


def fit_case(model, method: str, kind: str, options: dict):
    """The fitted detector of one case (the fitting code's API: build_detector(...).fit(images))."""
    from adpretrain_hf.detectors import build_detector
    from adpretrain_hf.extractor import ModelFeatureExtractor

    size = model.config.image_size
    train = images(TRAIN_IMAGES, size, 0)
    extractor = ModelFeatureExtractor(model, kind)
    extractor.set_references(train[:REFERENCE_IMAGES])
    return build_detector(method, extractor, progress=False, batch_size=4, **options).fit(train)


def numbers(model, name: str, method: str, kind: str, options: dict) -> dict[str, torch.Tensor]:
    """``{name}.fit_map [N, H, W]``, ``.fit_score [N]`` (detector.predict) and ``.model_map`` /
    ``.model_score`` (the deployed ADPretrainDetectorModel's forward) on the seeded test images.
    The fixture stores a model value only where it differs from the fit value (``stored``)."""
    from adpretrain_hf.deployment import detector_to_model

    detector = fit_case(model, method, kind, options)
    test = images(TEST_IMAGES, model.config.image_size, 1)
    fit_map, fit_score = detector.predict(test)
    out = detector_to_model(detector)(test)
    return {
        f"{name}.fit_map": fit_map.contiguous(), f"{name}.fit_score": fit_score.contiguous(),
        f"{name}.model_map": out.anomaly_map.contiguous(), f"{name}.model_score": out.score.contiguous(),
    }


def stored(values: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    """``values`` without the ``model_*`` entries that equal their ``fit_*`` twin bit for bit (a smaller file)."""
    return {k: v for k, v in values.items()
            if ".model_" not in k or not torch.equal(v, values[k.replace(".model_", ".fit_")])}


def expected(recorded: dict[str, torch.Tensor], key: str) -> torch.Tensor:
    """The recorded value of ``key``; a ``model_*`` value absent from the file equals its ``fit_*`` twin."""
    return recorded[key] if key in recorded else recorded[key.replace(".model_", ".fit_")]


def record() -> None:
    """Record with one intra-op thread, as tests/conftest.py runs the tests (reduction order)."""
    from safetensors.torch import save_file

    torch.set_num_threads(1)
    model = tiny_model()
    tensors: dict[str, torch.Tensor] = {}
    for name, method, kind, options in cases():
        tensors.update(stored(numbers(model, name, method, kind, options)))
    FIXTURE.parent.mkdir(parents=True, exist_ok=True)
    save_file(tensors, str(FIXTURE), metadata={"recorded_from": RECORDED_FROM, "torch": torch.__version__})
    print(f"wrote {len(tensors)} tensors to {FIXTURE}")


if __name__ == "__main__":
    record()

"""One home for the image processor: ``processor_for(model)``.

A tiny checkpoint gets an edited ``preprocessor_config.json`` (other mean/std and resample);
every consumer (both pipelines, the evaluation runner, ``fit_detector``, the pretraining data)
must produce the pixel values of an independently built processor with the edited values, not
the config's default. A crop size that cannot feed the model is refused with both sizes named,
and a load -> save round trip keeps the edit.
"""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from transformers import pipeline
from transformers.image_utils import PILImageResampling

import adpretrain_hf  # noqa: F401  (registers the pipeline tasks)
from adpretrain_hf.modeling import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling.image_processing_adpretrain import (
    PROCESSOR_FILE,
    ADPretrainImageProcessor,
    hub_download_kwargs,
    processor_for,
    resolve_file,
)
from adpretrain_hf.modeling.modeling_detector_adpretrain import ADPretrainDetectorModel

EDITED_MEAN = [0.2, 0.3, 0.4]
EDITED_STD = [0.5, 0.6, 0.7]
EDITED_RESAMPLE = PILImageResampling.BILINEAR
DETECTOR_MEAN = [0.6, 0.5, 0.1]
ATOL = 1e-6


def edit_processor(folder, **values) -> None:
    """Overwrite fields of the folder's preprocessor_config.json (what a user does by hand)."""
    path = folder / PROCESSOR_FILE
    data = json.loads(path.read_text())
    data.update(values)
    path.write_text(json.dumps(data))


def independent(size: int, mean=EDITED_MEAN, std=EDITED_STD, resample=EDITED_RESAMPLE) -> ADPretrainImageProcessor:
    """The processor the edited file describes, built from its values (not read from any file)."""
    return ADPretrainImageProcessor(
        size={"shortest_edge": size}, crop_size={"height": size, "width": size},
        image_mean=list(mean), image_std=list(std), resample=resample,
    )


def pixels(processor, images) -> torch.Tensor:
    return processor(images, return_tensors="pt")["pixel_values"]


def rgb(seed: int, height: int = 72, width: int = 88) -> Image.Image:
    """A random non-square image: the resize and the crop both do something."""
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8))


@pytest.fixture
def edited_ckpt(tmp_path):
    """A tiny-clip checkpoint whose preprocessor_config.json has another mean/std and resample."""
    torch.manual_seed(0)
    ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip")).save_pretrained(tmp_path / "ckpt")
    edit_processor(tmp_path / "ckpt", image_mean=EDITED_MEAN, image_std=EDITED_STD, resample=int(EDITED_RESAMPLE))
    return tmp_path / "ckpt"


def assert_edited(got: torch.Tensor, images, size: int) -> None:
    """``got`` equals the edited processor's pixels and differs from the config default's."""
    expected = pixels(independent(size), images)
    default = pixels(ADPretrainImageProcessor.from_adpretrain_config(ADPretrainConfig.from_preset("tiny-clip")), images)
    assert got.shape == expected.shape
    torch.testing.assert_close(got, expected, atol=ATOL, rtol=0)
    assert (got - default).abs().max() > 0.1  # the edit is visible: the check above could fail


def test_processor_for_uses_the_saved_edit(edited_ckpt):
    model = ADPretrainModel.from_pretrained(edited_ckpt)
    images = [rgb(0), rgb(1)]
    processor = processor_for(model)
    assert list(processor.image_mean) == EDITED_MEAN and processor.resample == EDITED_RESAMPLE
    assert_edited(pixels(processor, images), images, model.config.image_size)


def test_in_memory_model_gets_the_config_default(tiny_clip_model):
    processor = processor_for(tiny_clip_model)
    size = tiny_clip_model.config.image_size
    assert processor.output_size == (size, size)
    assert list(processor.image_mean) == list(tiny_clip_model.config.image_mean)
    assert list(processor.image_std) == list(tiny_clip_model.config.image_std)


def test_features_pipeline_uses_the_edit_from_a_folder_and_from_a_loaded_model(edited_ckpt):
    image = rgb(2)
    for model in (str(edited_ckpt), ADPretrainModel.from_pretrained(edited_ckpt)):
        pipe = pipeline("anomaly-features", model=model, device="cpu")
        assert_edited(pipe.preprocess(image)["pixel_values"], [image], 64)


def test_runner_preprocesses_with_the_edit(edited_ckpt, tmp_path, monkeypatch):
    from adpretrain_hf.data import generate_dataset
    from adpretrain_hf.evaluation import evaluate_model, runner
    from adpretrain_hf.evaluation.category_inputs import prepare_category

    root = tmp_path / "mvtec"
    generate_dataset(root, layout="mvtec", categories=["bottle"], num_normal=3, num_anomalous=2, image_size=80,
                     seed=0, progress=False)
    seen = {}

    class Stop(Exception):
        pass

    def capture(category, splits, processor, config):
        seen["data"] = prepare_category(category, splits, processor, config)
        seen["args"] = (category, splits, config)
        raise Stop  # preprocessing is all this test needs

    monkeypatch.setattr(runner, "prepare_category", capture)
    with pytest.raises(Stop):
        evaluate_model(str(edited_ckpt), root, methods=["featurenorm"], shots=1, progress=False)
    expected = prepare_category(*seen["args"][:2], independent(64), seen["args"][2])
    default = prepare_category(*seen["args"][:2], ADPretrainImageProcessor(size={"shortest_edge": 64},
                               crop_size={"height": 64, "width": 64}), seen["args"][2])
    torch.testing.assert_close(seen["data"].test_pixel_values, expected.test_pixel_values, atol=ATOL, rtol=0)
    assert (seen["data"].test_pixel_values - default.test_pixel_values).abs().max() > 0.1


def test_fit_detector_uses_the_edit_and_its_folder_keeps_it(edited_ckpt, tmp_path, monkeypatch):
    from adpretrain_hf import deployment

    images = [rgb(i, 64, 80) for i in range(3)]
    produced = []
    original = deployment.load_pixel_values

    def record(images_in, processor, what="images"):
        produced.append(original(images_in, processor, what))
        return produced[-1]

    monkeypatch.setattr(deployment, "load_pixel_values", record)
    detector = deployment.fit_detector(str(edited_ckpt), "featurenorm", images, progress=False)
    assert_edited(produced[0], images, 64)
    detector.save_pretrained(tmp_path / "det")
    saved = json.loads((tmp_path / "det" / PROCESSOR_FILE).read_text())
    assert (saved["image_mean"], saved["image_std"], saved["resample"]) == (EDITED_MEAN, EDITED_STD, int(EDITED_RESAMPLE))
    detect = pipeline("anomaly-detection", model=str(tmp_path / "det"), device="cpu")
    assert_edited(detect.preprocess(images[0])["pixel_values"], images[:1], 64)


def test_detector_folder_processor_wins_over_the_feature_model(edited_ckpt, tmp_path):
    from adpretrain_hf.deployment import fit_detector

    fit_detector(str(edited_ckpt), "featurenorm", [rgb(i, 64, 64) for i in range(2)], progress=False).save_pretrained(tmp_path / "det")
    edit_processor(tmp_path / "det", image_mean=DETECTOR_MEAN)
    loaded = ADPretrainDetectorModel.from_pretrained(tmp_path / "det")
    image = rgb(5)
    expected = pixels(independent(64, mean=DETECTOR_MEAN), [image])
    torch.testing.assert_close(pixels(processor_for(loaded), [image]), expected, atol=ATOL, rtol=0)
    detect = pipeline("anomaly-detection", model=str(tmp_path / "det"), device="cpu")
    torch.testing.assert_close(detect.preprocess(image)["pixel_values"], expected, atol=ATOL, rtol=0)


def test_training_data_uses_the_edit(edited_ckpt, realiad_root, tmp_path):
    from adpretrain_hf.data.augment import load_image_and_mask
    from adpretrain_hf.training.arguments import PretrainArguments
    from adpretrain_hf.training.loop import Pretrainer

    args = PretrainArguments(data_root=str(realiad_root), output_dir=str(tmp_path / "run"), preset="tiny-clip",
                             epochs=1, batch_size=2, max_steps=1, num_workers=0, mixed_precision="no", progress=False)
    trainer = Pretrainer(args, model=ADPretrainModel.from_pretrained(edited_ckpt))
    image, _ = load_image_and_mask(trainer.data.raw[0])
    assert_edited(trainer.data.reference_pixels(0)[None], [image], 64)


def test_mismatched_crop_size_is_refused_naming_both_sizes(edited_ckpt):
    edit_processor(edited_ckpt, crop_size={"height": 48, "width": 48}, size={"shortest_edge": 48})
    model = ADPretrainModel.from_pretrained(edited_ckpt)
    with pytest.raises(ValueError, match=r"crop_size \{'height': 48, 'width': 48\}.*image_size is 64.*preprocessor_config.json"):
        processor_for(model)
    with pytest.raises(ValueError, match="image_size is 64"):
        pipeline("anomaly-features", model=str(edited_ckpt), device="cpu")


def test_resize_below_the_crop_is_refused(edited_ckpt):
    edit_processor(edited_ckpt, size={"shortest_edge": 40})
    with pytest.raises(ValueError, match="shortest_edge 40, below the 64x64 crop"):
        processor_for(ADPretrainModel.from_pretrained(edited_ckpt))


@pytest.mark.parametrize("same_folder", [False, True])
def test_load_save_round_trip_keeps_the_edit(edited_ckpt, tmp_path, same_folder):
    target = edited_ckpt if same_folder else tmp_path / "copy"
    ADPretrainModel.from_pretrained(edited_ckpt).save_pretrained(target)
    saved = json.loads((target / PROCESSOR_FILE).read_text())
    assert (saved["image_mean"], saved["image_std"], saved["resample"]) == (EDITED_MEAN, EDITED_STD, int(EDITED_RESAMPLE))
    image = rgb(7)
    torch.testing.assert_close(pixels(processor_for(ADPretrainModel.from_pretrained(target)), [image]),
                               pixels(independent(64), [image]), atol=ATOL, rtol=0)


def test_hub_id_uses_the_processor_cached_with_it(edited_ckpt, tmp_path):
    """A Hub id loaded from a cache folder (offline): from_pretrained keeps that repo's processor."""
    import shutil

    snapshot = "0" * 40
    repo = tmp_path / "hub" / "models--someone--tiny"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(snapshot)
    shutil.copytree(edited_ckpt, repo / "snapshots" / snapshot)
    model = ADPretrainModel.from_pretrained("someone/tiny", cache_dir=str(tmp_path / "hub"), local_files_only=True)
    assert model.name_or_path == "someone/tiny"
    image = rgb(9)
    assert_edited(pixels(processor_for(model), [image]), [image], 64)


def test_resolve_file_finds_a_folders_file_in_its_subfolder_and_none_when_absent(tmp_path):
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "a.json").write_text("{}")
    assert resolve_file(tmp_path, "a.json", {"subfolder": "sub", "layers": [1]}) == str(tmp_path / "sub" / "a.json")
    assert resolve_file(tmp_path, "a.json", {}) is None
    assert resolve_file("nobody/no-such-repo", "a.json", {"local_files_only": True, "cache_dir": str(tmp_path)}) is None


def test_hub_download_kwargs_keeps_only_the_download_options():
    assert hub_download_kwargs({"revision": "v1", "layers": [1], "subfolder": "s"}) == {"revision": "v1", "subfolder": "s"}

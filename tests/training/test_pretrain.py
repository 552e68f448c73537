"""Pretraining: arguments, reference sampling and cache, and real runs of training/pretrain.py."""

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from adpretrain_hf import ADPretrainModel
from adpretrain_hf.losses import PAPER_LOSS_FORM
from adpretrain_hf.training.arguments import PretrainArguments, load_arguments
from adpretrain_hf.training.feature_cache import ReferenceFeatureCache

REPO = Path(__file__).resolve().parents[2]
PRETRAIN = REPO / "training" / "pretrain.py"


def _run(args, env_extra=None, launcher=None, timeout=600):
    env = {**os.environ, "PYTHONUNBUFFERED": "1", **(env_extra or {})}
    cmd = (launcher or [sys.executable]) + [str(PRETRAIN), *args]
    result = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout, cwd=REPO)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


def _metrics(output_dir):
    return [json.loads(line) for line in (Path(output_dir) / "metrics.jsonl").read_text().splitlines()]


def _common(data, out):
    return [
        "--config", str(REPO / "training/configs/tiny-clip.yaml"), "--data-root", str(data), "--output-dir", str(out),
        "--batch-size", "16", "--no-progress", "--set", "model.training_reference_shots=[8]", "--set", "lr_milestones=[100]",
    ]


def test_pretraining_lowers_the_loss_and_writes_a_loadable_checkpoint(realiad_root, tmp_path):
    out = tmp_path / "run"
    # The paper's loss form: on tiny random features (small norms) it is stable and falls fast; the
    # release's default form lowers the loss by only ~18% in these 30 steps (tests/project/test_loss_recipes.py runs it).
    paper_form = [arg for k, v in PAPER_LOSS_FORM.items() for arg in ("--set", f"model.{k}={str(v).lower()}")]
    _run(_common(realiad_root, out) + ["--epochs", "30", "--set", "learning_rate=3e-3"] + paper_form)
    losses = [r["loss"] for r in _metrics(out)]
    assert len(losses) == 30  # 10 images, batch 16: one step per epoch
    assert np.isfinite(losses).all()
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5]), losses
    assert {"angle/layer_0", "norm/layer_3", "lr", "cache/hit_rate"} <= set(_metrics(out)[0])
    assert list((out / "logs").rglob("events.out.tfevents*")), "tensorboard logs missing"
    assert "## Hyperparameters" in (out / "model" / "README.md").read_text()

    from transformers import AutoModel

    model = AutoModel.from_pretrained(out / "model")
    assert isinstance(model, ADPretrainModel) and bool(model.centers.initialized)
    assert all(torch.isfinite(c).all() and c.abs().sum() > 0 for c in model.centers.get())

    from transformers import pipeline

    image = np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)
    result = pipeline("anomaly-features", model=str(out / "model"), device="cpu")(image, references=[image[::-1], image[:, ::-1]], output="score")
    assert np.isfinite(result["score"])


def test_resume_continues_from_the_saved_step(realiad_root, tmp_path):
    out = tmp_path / "run"
    _run(_common(realiad_root, out) + ["--epochs", "10", "--max-steps", "3"])
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3]
    saved = sorted((out / "checkpoints").glob("checkpoint_*"))
    assert saved, "no accelerate checkpoint written"
    _run(_common(realiad_root, out) + ["--epochs", "10", "--max-steps", "5", "--resume", "latest"])
    assert [r["step"] for r in _metrics(out)] == [1, 2, 3, 4, 5]
    assert [r["epoch"] for r in _metrics(out)][3:] == [3, 4]


def test_two_cpu_processes_under_accelerate_launch(realiad_root, tmp_path):
    out = tmp_path / "ddp"
    launcher = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no"]
    result = _run(
        _common(realiad_root, out) + ["--epochs", "2", "--batch-size", "4"],
        env_extra={"ACCELERATE_USE_CPU": "1", "OMP_NUM_THREADS": "1"},
        launcher=launcher,
    )
    records = _metrics(out)
    # 10 images, 2 processes x batch 4 -> 2 steps per epoch (each process sees half the data).
    assert [r["step"] for r in records] == [1, 2, 3, 4], result.stdout[-1000:]
    assert ADPretrainModel.from_pretrained(out / "model").centers.initialized
    assert result.stdout.count("checkpoint written:") == 1  # main process only


def test_arguments_merge_yaml_flags_and_overrides(tmp_path):
    config = tmp_path / "c.yaml"
    config.write_text("preset: tiny-clip\nepochs: 3\nlearning_rate: 1.0e-4\n")
    args = load_arguments(str(config), {"epochs": 5, "batch_size": None}, ["learning_rate=2e-3", "model.norm_kind=release", "model.layers=[1, 2]"])
    assert (args.preset, args.epochs, args.batch_size, args.learning_rate) == ("tiny-clip", 5, 32, 2e-3)
    assert args.model == {"norm_kind": "release", "layers": [1, 2]}
    with pytest.raises(ValueError, match="not a pretraining argument"):
        load_arguments(None, {}, ["nonsense=1"])
    config.write_text("epoch: 3\n")
    with pytest.raises(ValueError, match="unknown keys"):
        load_arguments(str(config), {}, [])


def test_missing_data_root_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="data_root"):
        PretrainArguments().validate()
    with pytest.raises(ValueError, match="not a folder"):
        PretrainArguments(data_root=str(tmp_path / "nope")).validate()


def test_reference_cache_returns_the_backbones_tokens(tiny_clip_model):
    images = torch.randn(5, 3, 64, 64)
    calls = []

    def backbone(pixels):
        calls.append(pixels.shape[0])
        return tiny_clip_model.backbone(pixels)

    cache = ReferenceFeatureCache(backbone, lambda i: images[i], torch.device("cpu"), max_images=3)
    indices = torch.tensor([[0, 1], [1, 4]])
    banks = cache.banks(indices)
    direct = tiny_clip_model.backbone(images)
    for layer, bank in enumerate(banks):
        assert bank.shape == (2, 2 * 64, 32)
        expected = torch.cat([direct[layer][0], direct[layer][1]])
        assert torch.allclose(bank[0], expected, atol=1e-6)
    assert sum(calls) == 3  # three distinct images computed once
    cache.banks(torch.tensor([[4, 1]]))
    assert sum(calls) == 3 and cache.hits == 2  # served from the cache
    cache.banks(torch.tensor([[2, 3]]))
    assert len(cache) == 3  # LRU bound holds


def test_reference_tokens_do_not_depend_on_what_was_computed_before():
    """A backbone whose tokens depend on the rest of its batch (as batched kernels can, by an
    ulp) must still give an image the same tokens whatever the cache's history: a resumed run
    starts with an empty cache and must see the uninterrupted run's bits."""
    images = torch.randn(7, 3, 4, 4)
    rows = [0, 2, 3, 4, 6]  # the reference pool; groups of 2: (0, 2), (3, 4), (6,)
    calls = []

    def batch_mixing(pixels):
        calls.append(pixels.shape[0])
        tokens = pixels.flatten(2).transpose(1, 2)  # [n, 16, 3]
        return [tokens + pixels.mean(), tokens * pixels.std()]

    def direct(group, index):
        out = batch_mixing(images[list(group)])
        return [layer[group.index(index)] for layer in out]

    busy = ReferenceFeatureCache(batch_mixing, lambda i: images[i], torch.device("cpu"), max_images=2, batch_size=2, rows=rows)
    busy.banks(torch.tensor([[3, 0], [6, 2]]))
    busy.banks(torch.tensor([[4, 6]]))
    fresh = ReferenceFeatureCache(batch_mixing, lambda i: images[i], torch.device("cpu"), max_images=2, batch_size=2, rows=rows)
    query = torch.tensor([[2, 4, 1], [6, 0, 3]])  # 1 is outside the pool: computed alone
    calls.clear()
    fresh_banks = fresh.banks(query)
    assert sorted(calls) == [1, 1, 2, 2]  # groups (0, 2), (3, 4) and (6,), and row 1 alone
    for layer, (a, b) in enumerate(zip(busy.banks(query), fresh_banks)):
        assert torch.equal(a, b)  # bit for bit, whatever came before
        for sample, picked in enumerate(query.tolist()):
            groups = {0: (0, 2), 2: (0, 2), 3: (3, 4), 4: (3, 4), 6: (6,), 1: (1,)}
            expected = torch.cat([direct(groups[i], i)[layer] for i in picked])
            assert torch.equal(b[sample], expected)
    with pytest.raises(ValueError, match="batch_size"):
        ReferenceFeatureCache(batch_mixing, lambda i: images[i], torch.device("cpu"), batch_size=0)


def test_drawn_references_share_class_and_view_and_exclude_self(realiad_root):
    from adpretrain_hf.modeling.image_processing_adpretrain import ADPretrainImageProcessor
    from adpretrain_hf.training.data_pipeline import build_training_data, collate_views, draw_references

    processor = ADPretrainImageProcessor(size={"shortest_edge": 64}, crop_size={"height": 64, "width": 64})
    data = build_training_data(str(realiad_root), processor, seed=0)
    batch = collate_views([data.dataset[i] for i in range(4)])
    assert batch["view1"].shape == (4, 3, 64, 64) and batch["mask"].shape == (4, 64, 64)
    refs = draw_references(data, batch, np.random.default_rng(0), shot_choices=(4,))
    assert refs.shape == (4, 4)
    raw = data.raw
    for row, picked in zip(batch["row_index"].tolist(), refs.tolist()):
        assert row not in picked
        for index in picked:
            assert raw[index]["label"] == 0 and raw[index]["category"] == raw[row]["category"] and raw[index]["view"] == raw[row]["view"]


def test_push_to_hub_uploads_the_checkpoint_folder(tiny_clip_model, tmp_path, monkeypatch):
    from huggingface_hub import HfApi

    from adpretrain_hf.hub_publishing import push_checkpoint

    tiny_clip_model.save_pretrained(tmp_path)
    calls = {}
    monkeypatch.setattr(HfApi, "create_repo", lambda self, repo_id, **kw: calls.setdefault("repo", repo_id))
    monkeypatch.setattr(HfApi, "upload_folder", lambda self, **kw: calls.setdefault("upload", kw))
    push_checkpoint(tmp_path, "someone/adpretrain-tiny")
    assert calls["repo"] == "someone/adpretrain-tiny"
    assert calls["upload"]["folder_path"] == str(tmp_path) and "checkpoints/*" in calls["upload"]["ignore_patterns"]


def test_pretrain_cli_help_lists_flags():
    result = subprocess.run([sys.executable, str(PRETRAIN), "--help"], capture_output=True, text=True, check=True)
    for flag in ("--config", "--resume", "--max-steps", "--push-to-hub", "--set"):
        assert flag in result.stdout


def test_non_finite_loss_stops_with_a_diagnosis():
    from adpretrain_hf.training.loop import check_finite

    check_finite(torch.tensor(1.5), 1, "paper")
    with pytest.raises(FloatingPointError, match="norm_kind=release"):
        check_finite(torch.tensor(float("inf")), 7, "paper")
    with pytest.raises(FloatingPointError, match="learning rate"):
        check_finite(torch.tensor(float("nan")), 7, "release")

"""save_pretrained is atomic: a kill at any moment leaves the old checkpoint or the new one, never a mix.

The kill test starts ONE helper process (imports once), which forks a saver per trial: the saver
rewrites the folder with model A, B, A, ... until SIGKILL after a random delay. After each kill
this process loads the folder and compares every tensor, the config and the stored bank with A's
and B's (A and B share a structure, so a config of one with the weights of the other would load).
"""

import json
import os
import random
import subprocess
import sys
import textwrap

import pytest
import torch

from adpretrain_hf import ADPretrainConfig, ADPretrainModel
from adpretrain_hf.modeling import atomic_io_adpretrain

KILL_TRIALS = 20
SIGMA = {"A": 4.0, "B": 2.5}  # anomaly_map_sigma tells which config a folder holds


def _model(name, seed):
    torch.manual_seed(seed)
    model = ADPretrainModel(ADPretrainConfig.from_preset("tiny-clip", anomaly_map_sigma=SIGMA[name])).eval()
    if name == "B":  # only B carries a bank: a stale bank under A's config is detectable
        model.set_references(torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(seed)))
    return model


def _identify(folder, references):
    """'A' / 'B' when the folder loads as exactly that model, 'failed clearly' for an interrupted
    swap (two-rename fallback only); raises on any mix and on any other load error."""
    try:
        loaded = ADPretrainModel.from_pretrained(folder)
    except ValueError as err:
        if "interrupted" in str(err) and str(folder) in str(err):
            return "failed clearly"
        raise
    name = {v: k for k, v in SIGMA.items()}[loaded.config.anomaly_map_sigma]
    expected = references[name]
    state, want = loaded.state_dict(), expected.state_dict()
    assert state.keys() == want.keys()
    assert all(torch.equal(state[k], want[k]) for k in want), f"config of {name} with other weights"
    if name == "A":
        assert loaded.reference_bank is None, "A's folder holds B's stale reference bank"
    else:
        assert all(torch.equal(a, b) for a, b in zip(loaded.reference_bank.layers, expected.reference_bank.layers, strict=True))
    return name


SERVER = textwrap.dedent(
    """
    import os, signal, sys, time
    import torch
    torch.set_num_threads(1)
    from adpretrain_hf import ADPretrainModel
    target, ref_a, ref_b = sys.argv[1:4]
    models = [ADPretrainModel.from_pretrained(ref_a), ADPretrainModel.from_pretrained(ref_b)]
    print("ready", flush=True)
    for line in sys.stdin:
        delay, first = line.split()
        pid = os.fork()
        if pid == 0:  # the saver: rewrite the folder until killed
            try:
                i = int(first)
                while True:
                    models[i % 2].save_pretrained(target)
                    i += 1
            finally:
                os._exit(1)
        time.sleep(float(delay))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        print("killed", flush=True)
    """
)


def test_random_kills_leave_old_or_new_checkpoint_never_a_mix(tmp_path):
    references = {"A": _model("A", 0), "B": _model("B", 1)}
    references["A"].save_pretrained(tmp_path / "ref_a")
    references["B"].save_pretrained(tmp_path / "ref_b", save_references=True)
    target = tmp_path / "ckpt"
    references["A"].save_pretrained(target)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TQDM_DISABLE": "1", "HF_HUB_DISABLE_PROGRESS_BARS": "1"}
    server = subprocess.Popen(
        [sys.executable, "-c", SERVER, str(target), str(tmp_path / "ref_a"), str(tmp_path / "ref_b")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True, env=env,
    )
    rng = random.Random(0)
    seen = []
    try:
        assert server.stdout.readline().strip() == "ready"
        for trial in range(KILL_TRIALS):
            server.stdin.write(f"{rng.uniform(0.05, 0.6):.3f} {trial % 2}\n")
            server.stdin.flush()
            assert server.stdout.readline().strip() == "killed"
            seen.append(_identify(target, references))
            hidden = [p for p in os.listdir(tmp_path) if p.startswith(".ckpt.")]
            assert len(hidden) <= 1, f"leftovers accumulate: {hidden}"  # the next save removes them
    finally:
        server.stdin.close()
        server.kill()
        server.wait()
    assert set(seen) == {"A", "B"}, f"every kill hit one side only ({seen}): the delays do not span a save"
    assert not [p for p in os.listdir(target) if "tmp" in p or p.startswith(".")]
    references["A"].save_pretrained(target)  # the next save cleans what the last kill left
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_resave_drops_files_the_new_model_does_not_write_and_keeps_foreign_ones(tmp_path):
    clip = _model("B", 1)
    clip.save_pretrained(tmp_path, save_references=True)
    (tmp_path / "README.md").write_text("card of the CLIP model")
    (tmp_path / "logs").mkdir()
    (tmp_path / "logs" / "events").write_text("training log")
    (tmp_path / "results.json").write_text("{}")
    torch.manual_seed(0)
    cnn = ADPretrainModel(ADPretrainConfig.from_preset("tiny-cnn")).eval()
    cnn.save_pretrained(tmp_path)
    files = set(os.listdir(tmp_path))
    assert "reference_bank.safetensors" not in files and "README.md" not in files
    assert (tmp_path / "logs" / "events").read_text() == "training log" and (tmp_path / "results.json").is_file()
    processor = json.loads((tmp_path / "preprocessor_config.json").read_text())
    assert processor["image_mean"] == pytest.approx(list(cnn.config.image_mean))
    assert processor["image_mean"] != pytest.approx(list(clip.config.image_mean))
    loaded = ADPretrainModel.from_pretrained(tmp_path)
    assert loaded.reference_bank is None and loaded.config.backbone_family == cnn.config.backbone_family


def test_two_rename_fallback_and_its_window_fail_clearly(tmp_path, monkeypatch):
    monkeypatch.setattr(atomic_io_adpretrain, "exchange", lambda a, b: False)
    a, b = _model("A", 0), _model("B", 1)
    target = tmp_path / "ckpt"
    a.save_pretrained(target)
    b.save_pretrained(target, save_references=True)
    assert _identify(target, {"A": a, "B": b}) == "B"
    # A kill between the two renames: the old folder sits aside, the target is absent.
    os.rename(target, tmp_path / f".ckpt.{atomic_io_adpretrain.OLD_TAG}-999999999-deadbeef")
    with pytest.raises(ValueError, match="interrupted.*save the model again"):
        ADPretrainModel.from_pretrained(target)
    a.save_pretrained(target)
    assert _identify(target, {"A": a, "B": b}) == "A"
    assert [p for p in os.listdir(tmp_path) if p.startswith(".")] == []


def test_leftovers_of_a_live_saver_are_left_alone(tmp_path):
    target = tmp_path / "ckpt"
    live = tmp_path / f".ckpt.{atomic_io_adpretrain.TEMP_TAG}-{os.getppid()}-0000"
    dead = tmp_path / f".ckpt.{atomic_io_adpretrain.TEMP_TAG}-999999999-0000"
    live.mkdir()
    dead.mkdir()
    _model("A", 0).save_pretrained(target)
    assert live.is_dir() and not dead.exists()

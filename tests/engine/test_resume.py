"""Continuing runs (fastcl.engine.resume): resume auto / yes / no, refusal of a checkpoint of other
settings, step and timed checkpoints kept K deep, a save killed half-way, finished runs."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch

from fastcl.engine import checkpoint, resume
from fastcl.simclr import SimCLRConfig, SimCLRTrainer
from helpers import logged_records

pytest.importorskip("torchvision")


def _config(tmp_path, name="run", **kw):
    base = dict(data="fake", out=str(tmp_path / name), arch="small_cnn", batch_size=128, epochs=2, proj_hidden=64,
                proj_dim=32, optimizer="sgd", lr=0.05, log_every=1, device="cpu", knn_k=20, progress=False)
    base.update(kw)
    return SimCLRConfig(**base)


def _losses(out):
    return [r["loss"] for r in logged_records(out)]


def test_resume_modes(monkeypatch):
    monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    monkeypatch.delenv("WORLD_SIZE", raising=False)
    assert resume.resume_mode(None) == "no" and resume.resume_mode(True) == "yes" and resume.resume_mode(False) == "no"
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "abc")  # under torchrun: a restarted group continues
    assert resume.resume_mode(None) == "auto" and resume.resume_mode("no") == "no"
    with pytest.raises(ValueError, match="resume must be one of"):
        resume.resume_mode("sometimes")


def test_step_checkpoints_kept_k_deep_and_auto_resume_is_exact(tmp_path):
    """16 steps a run (8 an epoch); saves every 3 steps and at each epoch end; a run that stopped
    at step 5 continues under resume="auto" exactly as the run that never stopped."""
    full = SimCLRTrainer(_config(tmp_path, "full")).train()
    SimCLRTrainer(_config(tmp_path, "cut", save_every_steps=3, keep_checkpoints=3, max_steps=5)).train()
    history = tmp_path / "cut" / "checkpoints"
    assert sorted(os.listdir(history)) == ["step-00000003.pt", "step-00000005.pt"]
    assert os.path.samefile(history / "step-00000005.pt", tmp_path / "cut" / "last.pt")  # a link, not a copy
    resumed = SimCLRTrainer(_config(tmp_path, "cut", save_every_steps=3, keep_checkpoints=3, resume="auto")).train()
    assert _losses(tmp_path / "cut") == pytest.approx(_losses(tmp_path / "full"), rel=1e-6)
    assert resumed["knn_top1"] == full["knn_top1"]
    assert sorted(os.listdir(history)) == ["step-00000012.pt", "step-00000015.pt", "step-00000016.pt"]
    assert len(checkpoint.load(tmp_path / "cut" / "last.pt")["rng"]) == 1  # every rank's random state
    # auto again: the run is finished; it reports, trains nothing, keeps its log
    again = SimCLRTrainer(_config(tmp_path, "cut", resume="auto")).train()
    assert again["steps"] == 16 and again["knn_top1"] == full["knn_top1"]
    assert len(_losses(tmp_path / "cut")) == 16


def test_a_checkpoint_of_other_settings_is_refused_by_name(tmp_path):
    SimCLRTrainer(_config(tmp_path, max_steps=2)).train()
    with pytest.raises(ValueError, match=r"other settings \(lr: 0.05 there, 0.1 here; temperature: 0.5 there, 0.2"):
        SimCLRTrainer(_config(tmp_path, resume="auto", lr=0.1, temperature=0.2))
    # what only changes where or when it reports, stops or saves may differ
    SimCLRTrainer(_config(tmp_path, resume="auto", max_steps=3, log_every=2, save_every_steps=1, knn_k=5)).train()
    # and --no-resume starts over in the same folder, its step checkpoints with it
    SimCLRTrainer(_config(tmp_path, resume="no", lr=0.1, max_steps=1)).train()
    assert checkpoint.load(tmp_path / "run" / "last.pt")["global_step"] == 1
    assert os.listdir(tmp_path / "run" / "checkpoints") == ["step-00000001.pt"]


def test_a_run_resumed_where_max_steps_stopped_it_trains_nothing(tmp_path):
    """A torchrun restart after the last save of a max_steps run must not add a step."""
    SimCLRTrainer(_config(tmp_path, max_steps=3)).train()
    again = SimCLRTrainer(_config(tmp_path, max_steps=3, resume="auto")).train()
    assert again["steps"] == 3 and len(_losses(tmp_path / "run")) == 3
    assert checkpoint.load(tmp_path / "run" / "last.pt")["global_step"] == 3


def test_resume_yes_needs_a_checkpoint(tmp_path):
    with pytest.raises(FileNotFoundError, match="no checkpoint"):
        SimCLRTrainer(_config(tmp_path, resume="yes"))


def test_timed_saves(tmp_path, monkeypatch):
    clock = [1000.0]
    monkeypatch.setattr(resume.time, "monotonic", lambda: clock[0])
    trainer = SimCLRTrainer(_config(tmp_path, save_every_minutes=0.5, keep_checkpoints=5, max_steps=6))
    real_step = trainer.train_step

    def slow_step(*args):
        clock[0] += 11.0  # three steps pass 30 s
        return real_step(*args)

    trainer.train_step = slow_step
    trainer.train()
    assert sorted(os.listdir(tmp_path / "run" / "checkpoints")) == ["step-00000003.pt", "step-00000006.pt"]


_DIES_WHILE_SAVING = """
import os, sys, torch
from fastcl.simclr import SimCLRConfig, SimCLRTrainer
saves = [0]
real = torch.save
def dying_save(obj, f, *a, **k):
    saves[0] += 1
    if saves[0] == 2:  # the second step checkpoint: half a file, then the process is gone
        f.write(b"PK\\x03\\x04" + b"x" * 1000)
        f.flush()
        os._exit(9)
    return real(obj, f, *a, **k)
torch.save = dying_save
SimCLRTrainer(SimCLRConfig(data="fake", out=sys.argv[1], arch="small_cnn", batch_size=128, epochs=2,
                           proj_hidden=64, proj_dim=32, optimizer="sgd", lr=0.05, device="cpu", knn_k=20,
                           progress=False, save_every_steps=2)).train()
"""


def test_a_save_killed_half_way_is_never_loaded(tmp_path):
    out = tmp_path / "run"
    died = subprocess.run([sys.executable, "-c", _DIES_WHILE_SAVING, str(out)], capture_output=True, text=True,
                          timeout=300)
    assert died.returncode == 9, died.stderr[-2000:]
    assert any(p.startswith(".tmp-") for p in os.listdir(out))  # the half-written file
    assert checkpoint.load(out / "last.pt")["global_step"] == 2  # the previous save is intact
    trainer = SimCLRTrainer(_config(tmp_path, resume="auto"))
    assert trainer.global_step == 2
    assert not any(p.startswith(".tmp-") for p in os.listdir(out))  # cleaned up
    assert torch.equal(trainer.generator.get_state(), checkpoint.load(out / "last.pt")["generator"])


@pytest.mark.parametrize("kw,match", [
    (dict(save_every_steps=0), "save_every_steps must be >= 1"),
    (dict(save_every_minutes=0.0), "save_every_minutes must be > 0"),
    (dict(keep_checkpoints=0), "keep_checkpoints must be >= 1"),
    (dict(resume="sometimes"), "resume must be one of"),
])
def test_bad_save_and_resume_options(tmp_path, kw, match):
    with pytest.raises(ValueError, match=match):
        SimCLRTrainer(_config(tmp_path, **kw))
    from fastcl.simcse import SimCSEConfig
    with pytest.raises(ValueError, match=match):
        SimCSEConfig(model="tiny", out=str(tmp_path / "s"), **kw).validate()

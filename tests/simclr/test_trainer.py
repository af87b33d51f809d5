"""The SimCLR trainer on tiny settings: learning, exact resume, safe checkpoints, divergence, bad arguments."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastcl.engine import TrainingDiverged, checkpoint
from fastcl.simclr import SimCLRConfig, SimCLRTrainer
from fastcl.simclr.config import augmentation

pytest.importorskip("torchvision")


def _config(tmp_path, name="run", **kw):
    base = dict(data="fake", out=str(tmp_path / name), arch="small_cnn", batch_size=128, epochs=2, proj_hidden=64,
                proj_dim=32, optimizer="sgd", lr=0.05, log_every=1, device="cpu", knn_k=20)
    base.update(kw)
    return SimCLRConfig(**base)


def _step_losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        records = [json.loads(line) for line in f]
    return [r["loss"] for r in records if r["kind"] == "step"], [r for r in records if r["kind"] == "epoch"]


def test_a_few_steps_reduce_the_loss(tmp_path):
    summary = SimCLRTrainer(_config(tmp_path, epochs=3, lr=0.1)).train()
    losses, epochs = _step_losses(summary["checkpoint"].rsplit("/", 1)[0])
    assert len(losses) == 24 and len(epochs) == 3
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    assert 0.0 <= summary["knn_top1"] <= 1.0
    assert os.path.exists(tmp_path / "run" / "summary.json")


@pytest.mark.parametrize("chunk_size,queue_size", [(None, 0), (96, 0), (None, 300)],
                         ids=["one-shot", "grad-cache", "memory-bank"])
def test_resume_is_exact(tmp_path, chunk_size, queue_size):
    kw = dict(chunk_size=chunk_size, queue_size=queue_size)
    full = SimCLRTrainer(_config(tmp_path, "full", **kw)).train()
    # stops mid-epoch with a checkpoint (the memory bank's contents in it)
    SimCLRTrainer(_config(tmp_path, "split", max_steps=5, **kw)).train()
    if queue_size:
        saved = checkpoint.load(tmp_path / "split" / "last.pt")["criterion"]
        assert saved["queue.keys"].shape == (queue_size, 32) and int(saved["queue.ptr"]) == (5 * 128) % queue_size
    resumed = SimCLRTrainer(_config(tmp_path, "split", resume=True, **kw)).train()
    want, want_epochs = _step_losses(tmp_path / "full")
    got, got_epochs = _step_losses(tmp_path / "split")
    assert len(got) == len(want) == 16
    assert got == pytest.approx(want, rel=1e-5, abs=1e-6)
    assert [e["knn_top1"] for e in got_epochs] == pytest.approx([e["knn_top1"] for e in want_epochs])
    assert resumed["final_loss"] == pytest.approx(full["final_loss"], rel=1e-5)


def test_an_image_stored_twice_is_not_its_own_negative(tmp_path):
    trainer = SimCLRTrainer(_config(tmp_path, max_steps=1, epochs=1))
    images = trainer.train_data.images
    images[1::2] = images[0::2]  # every image twice
    trainer.train_data._sample_ids = None
    assert trainer.train_data.sample_ids()[:6].tolist() == [0, 0, 2, 2, 4, 4]
    seen = []
    forward = trainer.criterion.forward
    trainer.criterion.forward = lambda z1, z2, labels, sample_ids: seen.append(sample_ids) or forward(
        z1, z2, labels=labels, sample_ids=sample_ids)
    trainer.train()
    ids = seen[0]
    assert ids.shape == (128,) and len(set(ids.tolist())) < 128  # the batch holds copies, and they share ids
    trainer.cfg.mask_duplicates = False
    trainer.cfg.max_steps = 2
    trainer.train()
    assert seen[-1] is None


def test_a_failed_save_keeps_the_last_checkpoint(tmp_path, monkeypatch):
    path = str(tmp_path / "last.pt")
    checkpoint.save_atomic({"step": 1}, path)

    def dies_half_way(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt  # as if killed during the write

    monkeypatch.setattr(torch, "save", dies_half_way)
    with pytest.raises(KeyboardInterrupt):
        checkpoint.save_atomic({"step": 2}, path)
    monkeypatch.undo()
    assert checkpoint.load(path) == {"step": 1}
    assert os.listdir(tmp_path) == ["last.pt"]  # no temporary file left behind


def test_divergence_stops_with_the_last_good_checkpoint(tmp_path):
    trainer = SimCLRTrainer(_config(tmp_path, epochs=2, max_steps=8))
    trainer.train()
    saved = checkpoint.load(trainer.checkpoint_path)
    trainer.criterion.forward = lambda z1, z2, **kw: (z1.sum() + z2.sum()) * float("nan")  # the next step blows up
    trainer.cfg.max_steps = None
    with pytest.raises(TrainingDiverged, match="last good checkpoint"):
        trainer.train()
    kept = checkpoint.load(trainer.checkpoint_path)
    assert kept["global_step"] == saved["global_step"] == 8
    assert all(torch.isfinite(v).all() for v in kept["model"].values() if v.is_floating_point())


@pytest.mark.parametrize("kw,exc,match", [
    (dict(data="imagenet"), ValueError, "unknown dataset"),
    (dict(data="cifar10:/no/such/dir"), FileNotFoundError, "no directory"),
    (dict(data="folder:/no/such/dir"), FileNotFoundError, "no directory"),
    (dict(batch_size=1), ValueError, "batch_size must be >= 2"),
    (dict(size=0), ValueError, "size must be > 0"),
    (dict(temperature=0.0), ValueError, "temperature"),
    (dict(amp="fp8"), ValueError, "amp"),
    (dict(arch="vgg"), ValueError, "arch"),
    (dict(batch_size=4096), ValueError, "larger than"),
    (dict(crop_min=0.0), ValueError, "crop_min"),
    (dict(flip_p=1.5), ValueError, "flip_p"),
    (dict(queue_size=-1), ValueError, "queue_size must be >= 0"),
    (dict(rotate_p=1.5), ValueError, "rotate_p"),
    (dict(degrees=200.0), ValueError, "degrees"),
])
def test_bad_arguments(tmp_path, kw, exc, match):
    with pytest.raises(exc, match=match):
        SimCLRTrainer(_config(tmp_path, **kw))


def test_command_line(tmp_path):
    out = tmp_path / "cli"
    run = subprocess.run([sys.executable, "-m", "fastcl", "simclr", "--data", "fake", "--arch", "small_cnn",
                          "--batch-size", "128", "--epochs", "1", "--proj-hidden", "64", "--max-steps", "2",
                          "--queue-size", "300", "--no-mask-duplicates", "--rotate-p", "0.5", "--degrees", "20",
                          "--device", "cpu", "--out", str(out)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout[run.stdout.index("{"):])["steps"] == 2
    config = torch.load(out / "last.pt", weights_only=True)["config"]
    turned = augmentation(config)
    assert (config["rotate_p"], config["degrees"]) == (0.5, 20.0)
    assert turned.rotate_p == (0.5,) and turned.degrees == (-20.0, 20.0)
    older = {k: v for k, v in config.items() if k not in ("rotate_p", "degrees")}  # saved before rotation
    assert augmentation(older).rotate_p == (0.0,)
    knn = subprocess.run([sys.executable, "-m", "fastcl", "knn", "--checkpoint", str(out / "last.pt"), "--device",
                          "cpu"], capture_output=True, text=True, timeout=300)
    assert knn.returncode == 0 and "kNN top-1" in knn.stdout
    bad = subprocess.run([sys.executable, "-m", "fastcl", "simclr", "--data", "nope", "--out", str(out)],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "unknown dataset" in bad.stderr and "Traceback" not in bad.stderr


def test_plot_writes_the_curves(tmp_path):
    pytest.importorskip("matplotlib")
    from fastcl.engine.plot import plot_run

    SimCLRTrainer(_config(tmp_path, epochs=1)).train()
    image = plot_run(str(tmp_path / "run"))
    assert image.endswith("curves.png") and os.path.getsize(image) > 1000
    with pytest.raises(FileNotFoundError, match="metrics.jsonl"):
        plot_run(str(tmp_path / "nowhere"))


def test_plot_says_when_a_panel_has_no_data(tmp_path):
    """A run stopped before its first epoch ended has no kNN point: the panel says so instead of
    being an empty frame (a SimCSE run without dev evaluations likewise)."""
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from fastcl.engine.plot import curves_figure

    simclr = [dict(kind="step", step=s, epoch=0, loss=5.0 - s, lr=0.1, images_per_s=100.0) for s in (1, 2)]
    simcse = [dict(kind="step", step=1, epoch=0, loss=2.0, lr=3e-5, sentences_per_s=50.0)]
    for records, note in ((simclr, "no kNN evaluation yet"), (simcse, "no dev evaluation yet")):
        fig = curves_figure(records, str(tmp_path / "curves.png"))
        loss_panel, eval_panel = fig.axes
        assert not loss_panel.texts and note in eval_panel.texts[0].get_text()
        plt.close(fig)
    done = simclr + [dict(kind="epoch", epoch=0, loss=3.0, knn_top1=0.5)]
    fig = curves_figure(done, str(tmp_path / "curves.png"))
    assert not fig.axes[1].texts
    plt.close(fig)


@pytest.mark.parametrize("chunk_size", [None, 64], ids=["one-shot", "grad-cache"])
def test_digits_recipe_trains(tmp_path, chunk_size):
    """The built-in digits with the settings `make demo` uses: one epoch lowers the loss, also with
    gradient caching (where batch norm normalises each chunk of 64 views on its own)."""
    pytest.importorskip("sklearn")
    from fastcl.simclr import RECIPES, config_for

    cfg = config_for("digits", out=str(tmp_path / "digits"), epochs=1, log_every=1, device="cpu", seed=1,
                     chunk_size=chunk_size)
    assert cfg.optimizer == RECIPES["digits"]["optimizer"] and cfg.flip_p == 0.0 and cfg.batch_size == 128
    assert config_for("digits", batch_size=64).batch_size == 64  # explicit settings win over the recipe
    summary = SimCLRTrainer(cfg).train()
    losses, _ = _step_losses(tmp_path / "digits")
    assert len(losses) == 5032 // 128
    assert sum(losses[-5:]) / 5 < sum(losses[:5]) / 5 - 0.1  # about 5.0 -> 4.8 here
    assert 0.0 <= summary["knn_top1"] <= 1.0


def test_demo_command(tmp_path):
    """`fastcl demo` end to end on one epoch: the three kNN numbers, printed and in demo.json."""
    pytest.importorskip("sklearn")
    out = tmp_path / "demo"
    run = subprocess.run([sys.executable, "-m", "fastcl", "demo", "--epochs", "1", "--device", "cpu", "--out",
                          str(out), "--label-steps", "5"], capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    for label in ("raw pixels", "random-init encoder", "SimCLR-trained"):
        assert label in run.stdout
    result = json.loads((out / "demo.json").read_text())
    assert result["raw_pixels"] < 0.25 and result["random_init"] < 0.25
    assert set(result) == {"raw_pixels", "random_init", "trained", "train_minutes", "label_efficiency_10"}
    assert set(result["label_efficiency_10"]) == {"supervised", "linear_probe", "fine_tune"}
    assert (out / "neighbours.png").exists() and "linear probe" in run.stdout


def test_a_run_that_fails_to_start_keeps_the_old_metrics(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text('{"kind": "step", "step": 1, "epoch": 0, "loss": 1.0}\n')
    with pytest.raises(FileNotFoundError):
        SimCLRTrainer(_config(tmp_path, data="cifar10:/no/such/folder"))
    assert (out / "metrics.jsonl").exists()

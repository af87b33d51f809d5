"""Semi-supervised SimCLR (labelled_per_class): which images keep their label, the labels vector that
lets one fused NT-Xent call cover labelled and unlabelled images, the trainer's use of it, and the
refusals (no second class, a memory bank, a budget larger than a class)."""

from __future__ import annotations

import json
import os

import pytest
import torch

from fastcl import functional
from fastcl.simclr import SimCLRConfig, SimCLRTrainer, label_efficiency, labelled

pytest.importorskip("torchvision")


def _config(tmp_path, name="run", **kw):
    base = dict(data="fake", out=str(tmp_path / name), arch="small_cnn", batch_size=128, epochs=1, proj_hidden=64,
                proj_dim=32, optimizer="sgd", lr=0.05, log_every=1, device="cpu", knn_k=20, max_steps=2)
    base.update(kw)
    return SimCLRConfig(**base)


def _step_losses(out):
    with open(os.path.join(out, "metrics.jsonl")) as f:
        return [r["loss"] for r in map(json.loads, f) if r["kind"] == "step"]


def test_k_images_per_class_keep_their_label_and_the_rest_get_their_own():
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0, 1, 2, 0, 1, 2, 2])
    out = labelled.semi_supervised_labels(labels, 2, draw=1)
    kept = torch.nonzero(out < 3).flatten()
    # the very images fastcl label-efficiency labels in its draw 1
    want = labelled.draw_subset(labels, 2, labelled.draw_generator(1))
    assert sorted(kept.tolist()) == sorted(want.tolist())
    assert torch.equal(out[kept], labels[kept])
    assert torch.bincount(out[kept], minlength=3).tolist() == [2, 2, 2]
    rest = torch.nonzero(out >= 3).flatten()
    assert torch.equal(out[rest], 3 + rest)  # unique, and never a class
    assert torch.equal(out, labelled.semi_supervised_labels(labels, 2, draw=1))  # deterministic
    assert not torch.equal(out, labelled.semi_supervised_labels(labels, 2, draw=0))
    assert label_efficiency.draw_subset is labelled.draw_subset


def test_refusals():
    with pytest.raises(ValueError, match="at least two classes"):
        labelled.semi_supervised_labels(torch.zeros(10, dtype=torch.int64), 2, 0)
    with pytest.raises(ValueError, match="more than the smallest class has"):
        labelled.semi_supervised_labels(torch.tensor([0, 0, 0, 1]), 2, 0)
    with pytest.raises(ValueError, match="labelled_per_class must be >= 0"):
        SimCLRConfig(labelled_per_class=-1).validate()
    with pytest.raises(ValueError, match="do not combine"):
        SimCLRConfig(labelled_per_class=2, queue_size=256).validate()


def test_the_trainer_passes_the_labels_to_the_fused_loss(tmp_path, monkeypatch):
    """The loss of each step is NT-Xent with the semi-supervised labels of the batch's images: the
    labelled ones positives of their class, the others of their own view only."""
    seen = []
    real = functional.nt_xent

    def spy(z1, z2=None, **kw):
        seen.append(kw.get("labels"))
        return real(z1, z2, **kw)

    monkeypatch.setattr(functional, "nt_xent", spy)
    trainer = SimCLRTrainer(_config(tmp_path, labelled_per_class=3, max_steps=2))
    batches = list(trainer.batches())[:2]
    trainer.train()
    assert len(seen) == 2
    classes = trainer.train_data.num_classes
    for got, (_, batch_labels, _) in zip(seen, batches):
        assert torch.equal(got.cpu(), batch_labels)
        labelled_rows = got < classes
        assert torch.equal(got[~labelled_rows].unique(), got[~labelled_rows].sort().values)  # one each
    everything = trainer.loss_labels
    assert int((everything < classes).sum()) == 3 * classes


def test_unique_labels_are_plain_simclr(tmp_path, monkeypatch):
    """With no two images sharing a label the semi-supervised loss is SimCLR's, step for step."""
    plain = _step_losses(SimCLRTrainer(_config(tmp_path, "plain")).train()["checkpoint"].rsplit("/", 1)[0])
    monkeypatch.setattr(labelled, "semi_supervised_labels", lambda labels, k, d: torch.arange(labels.shape[0]))
    semi = _step_losses(SimCLRTrainer(_config(tmp_path, "semi", labelled_per_class=1)).train()["checkpoint"]
                        .rsplit("/", 1)[0])
    assert semi == pytest.approx(plain, rel=1e-5)

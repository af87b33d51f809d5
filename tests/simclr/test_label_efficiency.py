"""`fastcl label-efficiency` on a tiny run: the table, its JSON and plot, the subsets it draws,
and the errors for a budget larger than the smallest class."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from fastcl.simclr import SimCLRConfig, SimCLRTrainer
from fastcl.simclr import label_efficiency as le

pytest.importorskip("torchvision")


def test_subsets_and_holdout():
    labels = torch.tensor([0] * 5 + [1] * 3 + [2] * 2)
    g = torch.Generator().manual_seed(0)
    subset = le.draw_subset(labels, 2, g)
    assert sorted(labels[subset].tolist()) == [0, 0, 1, 1, 2, 2]
    fit, held = le.split_holdout(subset, labels, g)
    assert held.numel() == 3 and fit.numel() == 3 and set(fit.tolist()).isdisjoint(held.tolist())
    one = le.draw_subset(labels, 1, g)
    assert le.split_holdout(one, labels, g)[1].numel() == 0  # one label per class: nothing to hold out
    assert le.draw_subset(labels, "all", g).numel() == 10
    with pytest.raises(ValueError, match="more than the smallest class has \\(2 images of class 2\\)"):
        le.draw_subset(labels, 3, g)
    assert le.parse_budgets("1, 5,all") == [1, 5, "all"]
    with pytest.raises(ValueError, match="integers >= 1 or 'all'"):
        le.parse_budgets("0,5")


def test_command_line_table_json_and_plot(tmp_path):
    out = tmp_path / "run"
    SimCLRTrainer(SimCLRConfig(data="fake", out=str(out), arch="small_cnn", batch_size=64, epochs=1, max_steps=2,
                               proj_hidden=64, proj_dim=32, device="cpu", log_every=1, progress=False)).train()
    run = subprocess.run([sys.executable, "-m", "fastcl", "label-efficiency", "--checkpoint", str(out / "last.pt"),
                          "--labels-per-class", "1,2", "--draws", "2", "--steps", "4", "--device", "cpu"],
                         capture_output=True, text=True, timeout=600)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "linear probe" in run.stdout and "fine tune" in run.stdout
    result = json.loads((out / "label_efficiency.json").read_text())
    assert [r["labels_per_class"] for r in result["rows"]] == [1, 2]
    for row in result["rows"]:
        assert len(row["draws"]) == 2
        for method in le.METHODS:
            assert 0.0 <= row[method]["mean"] <= 1.0 and row[method]["std"] >= 0.0
    plot = subprocess.run([sys.executable, "-m", "fastcl", "plot", str(out)], capture_output=True, text=True,
                          timeout=300)
    assert plot.returncode == 0 and (out / "label_efficiency.png").exists()
    bad = subprocess.run([sys.executable, "-m", "fastcl", "label-efficiency", "--checkpoint", str(out / "last.pt"),
                          "--labels-per-class", "100000", "--device", "cpu"], capture_output=True, text=True,
                         timeout=300)
    assert bad.returncode == 2 and "more than the smallest class" in bad.stderr and "Traceback" not in bad.stderr


def test_the_semi_supervised_column(tmp_path):
    """--semi-supervised: one pre-training per budget and draw with that draw's labels in its loss,
    probed with the same labels; "all" has no such column."""
    out = tmp_path / "run"
    SimCLRTrainer(SimCLRConfig(data="fake", out=str(out), arch="small_cnn", batch_size=64, epochs=1, max_steps=2,
                               proj_hidden=64, proj_dim=32, device="cpu", log_every=1, progress=False)).train()
    run = subprocess.run([sys.executable, "-m", "fastcl", "label-efficiency", "--checkpoint", str(out / "last.pt"),
                          "--labels-per-class", "2,all", "--draws", "1", "--steps", "2", "--device", "cpu",
                          "--semi-supervised"], capture_output=True, text=True, timeout=900)
    assert run.returncode == 0, run.stderr[-2000:]
    assert "semi supervised" in run.stdout
    rows = json.loads((out / "label_efficiency.json").read_text())["rows"]
    assert 0.0 <= rows[0]["semi_supervised"]["mean"] <= 1.0 and rows[1]["semi_supervised"] is None
    semi = json.loads((out / "semi-2-draw1" / "summary.json").read_text())
    assert semi["steps"] == 2  # the run's own settings (max_steps 2 here) but for the labels
    saved = torch.load(out / "semi-2-draw1" / "last.pt", weights_only=True)["config"]
    assert saved["labelled_per_class"] == 2 and saved["labelled_draw"] == 0
    from fastcl.engine.plot import plot_label_efficiency

    assert os.path.getsize(plot_label_efficiency(str(out / "label_efficiency.json"), str(tmp_path / "le.png"))) > 0

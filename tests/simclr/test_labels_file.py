"""A labels file for your own images (`--data folder:DIR --labels FILE`): the labels vector it gives
the semi-supervised loss, every refusal of bad input (naming the argument and what was expected),
class imbalance, the image cache keeping each image's path, a resume with a changed file, and the
simclr and label-efficiency commands."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastcl.simclr import SimCLRConfig, SimCLRTrainer, data, image_cache, labelled, labels_file

pytest.importorskip("torchvision")

CLASSES = ("cat", "dog", "owl")


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    """DIR/train/<class>/<i>.png (6 per class) and DIR/val/<class>/<i>.png (2 per class), 8 x 8."""
    from PIL import Image

    root = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for split, count in (("train", 6), ("val", 2)):
        for c, name in enumerate(CLASSES):
            (root / split / name).mkdir(parents=True)
            for i in range(count):
                pixels = (rng.integers(0, 64, (8, 8, 3)) + 80 * c).astype(np.uint8)
                Image.fromarray(pixels).save(root / split / name / f"{i}.png")
    return root


@pytest.fixture(scope="module")
def train(folder):
    return data.load(f"folder:{folder}", train=True, size=8)


def _csv(tmp_path, text, name="labels.csv"):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def _index(train, rel):
    return image_cache.read_paths(train.folder["cache"], train.folder["meta"]).index(rel)


def test_the_file_gives_the_labels_vector(tmp_path, train):
    path = _csv(tmp_path, "path,label\ncat/0.png,cat\n dog/3.png , dog\n\nowl/1.png,2\n./cat/5.png,owl\n")
    named = labels_file.read(path, train)
    rows = [_index(train, p) for p in ("cat/0.png", "dog/3.png", "owl/1.png", "cat/5.png")]
    assert named.indices.tolist() == rows and named.classes.tolist() == [0, 1, 2, 2]  # "2": owl's index
    vector = named.loss_labels(train)
    expected = labelled.with_own_labels(len(train), torch.tensor(rows), torch.tensor([0, 1, 2, 2]), 3)
    assert torch.equal(vector, expected)
    rest = torch.ones(len(train), dtype=torch.bool)
    rest[rows] = False
    assert torch.equal(vector[rest], 3 + torch.arange(len(train))[rest])  # unique, never a class
    # the file is what the user labelled: cat/5.png counts as an owl, the rest keep their folder's class
    fixed = named.dataset_labels(train)
    assert fixed[rows[3]] == 2 and torch.equal(fixed[rest], train.labels[rest])
    assert len(named.sha256) == 64 and named.fingerprint()["labels_file"] == path


def test_columns_in_any_order_and_extra_ones(tmp_path, train):
    path = _csv(tmp_path, "\ufeffLabel,note,Path\ndog,x,dog/0.png\ncat,y,cat/1.png\n")  # a spreadsheet's BOM
    assert labels_file.read(path, train).classes.tolist() == [1, 0]


@pytest.mark.parametrize("text,message", [
    ("", r"is empty: expected a CSV with the header 'path,label'"),
    ("cat/0.png,cat\ndog/0.png,dog\n", r"line 1: expected the header 'path,label'.*without path and label"),
    ("path,class\ncat/0.png,cat\n", r"line 1: expected the header 'path,label'.*without label"),
    ("path,label\ncat/0.png\n", r"line 2: expected 2 columns \(path and label\), found 1"),
    ("path,label\ncat/0.png,\ndog/0.png,dog\n", r"line 2: empty label"),
    ("path,label\ncat/0.png,cat\ncat/99.png,cat\ndog/0.png,dog\n",
     r"not in the folder .*train.*line 3: 'cat/99.png'\. Paths are relative to that folder"),
    ("path,label\ntrain/cat/0.png,cat\ndog/0.png,dog\n", r"not in the folder .*line 2: 'train/cat/0.png'"),
    ("path,label\ncat/0.png,cat\ndog/0.png,dog\ncat/0.png,cat\n", r"line 4: 'cat/0.png' is labelled twice \(line 2"),
    ("path,label\ncat/0.png,cat\ndog/0.png,wolf\n",
     r"line 3: label 'wolf' names no class of the folder; expected one of its class folders: 'cat', 'dog', 'owl', "
     r"or an index 0 to 2"),
    ("path,label\ncat/0.png,cat\ndog/0.png,3\n", r"label '3' names no class"),
    ("path,label\ncat/0.png,cat\ncat/1.png,cat\n", r"labels images of one class only \('cat'\).*at least two classes"),
    ("path,label\n", r"labels no image \(only its header\).*for unlabelled data train without --labels"),
])
def test_bad_files_are_refused_naming_the_file_and_line(tmp_path, train, text, message):
    path = _csv(tmp_path, text)
    with pytest.raises(ValueError, match=message) as caught:
        labels_file.read(path, train)
    assert str(caught.value).startswith(f"--labels {path!r}")


def test_a_missing_file_or_a_folder(tmp_path, train):
    with pytest.raises(FileNotFoundError, match=r"--labels '.*nope\.csv' does not exist"):
        labels_file.read(str(tmp_path / "nope.csv"), train)
    with pytest.raises(ValueError, match="is a folder, not a file"):
        labels_file.read(str(tmp_path), train)
    (tmp_path / "latin1.csv").write_bytes(b"path,label\ncat/0.png,caf\xe9\n")
    with pytest.raises(ValueError, match="is not UTF-8 text"):
        labels_file.read(str(tmp_path / "latin1.csv"), train)


def test_numeric_class_folders_take_names_only(tmp_path, train):
    import dataclasses

    numeric = dataclasses.replace(train, classes=("0", "1", "7"))
    named = labels_file.read(_csv(tmp_path, "path,label\ncat/0.png,7\ndog/0.png,0\n"), numeric)
    assert named.classes.tolist() == [2, 0]  # names, not indices
    with pytest.raises(ValueError, match=r"label '2' names no class.*'0', '1', '7'$"):
        labels_file.read(_csv(tmp_path, "path,label\ncat/0.png,2\ndog/0.png,0\n"), numeric)


def test_class_imbalance_is_fine(tmp_path, train):
    """Five labelled cats and one dog (and no owl) train: nothing asks for K of every class."""
    lines = [f"cat/{i}.png,cat" for i in range(5)] + ["dog/2.png,dog"]
    named = labels_file.read(_csv(tmp_path, "path,label\n" + "\n".join(lines) + "\n"), train)
    assert torch.bincount(named.classes, minlength=3).tolist() == [5, 1, 0]
    vector = named.loss_labels(train)
    assert int((vector < 3).sum()) == 6 and vector.unique().numel() == len(train) - 4


def test_the_config_refusals(tmp_path):
    with pytest.raises(ValueError, match=r"--labels l.csv\) and labelled_per_class \(--labelled-per-class 2\) both"):
        SimCLRConfig(data="folder:x", labels="l.csv", labelled_per_class=2).validate()
    with pytest.raises(ValueError, match=r"needs --data folder:DIR, got --data digits"):
        SimCLRConfig(data="digits", labels="l.csv").validate()
    with pytest.raises(ValueError, match="labels \\(semi-supervised\\) and queue_size.*do not combine"):
        SimCLRConfig(data="folder:x", labels="l.csv", queue_size=256).validate()
    with pytest.raises(ValueError, match="labelled_draw picks a draw of labelled_per_class"):
        SimCLRConfig(data="folder:x", labels="l.csv", labelled_draw=1).validate()
    with pytest.raises(ValueError, match="needs --data folder:DIR"):
        labels_file.read("l.csv", data.load("fake", size=8))


def test_an_older_cache_without_paths_is_rebuilt(tmp_path, capsys):
    from PIL import Image

    for name in CLASSES[:2]:
        (tmp_path / name).mkdir()
        for i in range(2):
            Image.fromarray(np.full((8, 8, 3), 30 * i, dtype=np.uint8)).save(tmp_path / name / f"{i}.png")
    first = data.load(f"folder:{tmp_path}", size=8)
    assert image_cache.read_paths(first.folder["cache"], first.folder["meta"]) == \
        ["cat/0.png", "cat/1.png", "dog/0.png", "dog/1.png"]
    cache = tmp_path / ".fastcl-cache" / "all-8"
    meta = json.loads((cache / "meta.json").read_text())
    del meta["paths"]  # as an older fastcl wrote it
    (cache / "meta.json").write_text(json.dumps(meta))
    (cache / "paths.json").unlink()
    capsys.readouterr()
    again = data.load(f"folder:{tmp_path}", size=8)
    assert "records no image paths (built by an older fastcl); rebuilding it" in capsys.readouterr().out
    assert (cache / "paths.json").exists() and torch.equal(again.images, first.images)
    assert not [p for p in os.listdir(cache) if p.endswith(".tmp")]
    (cache / "paths.json").write_text("[]")  # damaged: named
    with pytest.raises(image_cache.CacheDamaged, match="paths.json does not list its 4 images"):
        image_cache.read_paths(str(cache), json.loads((cache / "meta.json").read_text()))


def _config(folder, out, **kw):
    base = dict(data=f"folder:{folder}", out=str(out), arch="small_cnn", size=8, batch_size=8, epochs=1,
                proj_hidden=32, proj_dim=16, optimizer="sgd", lr=0.05, log_every=1, device="cpu", knn_k=5,
                max_steps=1, progress=False)
    base.update(kw)
    return SimCLRConfig(**base)


def test_the_trainer_uses_the_file_and_resume_checks_it(tmp_path, folder):
    path = _csv(tmp_path, "path,label\ncat/0.png,cat\ncat/1.png,cat\ndog/0.png,dog\n")
    trainer = SimCLRTrainer(_config(folder, tmp_path / "run", labels=path))
    assert int((trainer.loss_labels < 3).sum()) == 3
    assert trainer.data_fingerprint["labels_sha256"] == labels_file.read(path, trainer.train_data).sha256
    trainer.train()
    saved = torch.load(tmp_path / "run" / "last.pt", weights_only=True)
    assert saved["config"]["labels"] == path and saved["data"]["labels_file"] == path
    _csv(tmp_path, "path,label\ncat/0.png,cat\ncat/1.png,dog\ndog/0.png,dog\n")  # relabelled since
    with pytest.raises(ValueError, match=r"trained on other data than --data folder:.* --labels .*labels_sha256"):
        SimCLRTrainer(_config(folder, tmp_path / "run", labels=path, max_steps=2, resume="yes"))


def test_the_simclr_command(tmp_path, folder):
    path = _csv(tmp_path, "path,label\n" + "\n".join(f"cat/{i}.png,cat" for i in range(5)) + "\nowl/0.png,owl\n")
    common = [sys.executable, "-m", "fastcl", "simclr", "--data", f"folder:{folder}", "--arch", "small_cnn",
              "--size", "8", "--batch-size", "8", "--proj-hidden", "32", "--proj-dim", "16", "--device", "cpu",
              "--no-progress", "--knn-k", "5"]
    run = subprocess.run(common + ["--labels", path, "--max-steps", "2", "--out", str(tmp_path / "run")],
                         capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    assert json.loads(run.stdout[run.stdout.index("{"):])["steps"] == 2
    bad = subprocess.run(common + ["--labels", path, "--labelled-per-class", "2", "--out", str(tmp_path / "bad")],
                         capture_output=True, text=True, timeout=300)
    assert bad.returncode == 2 and "both pick the labelled images" in bad.stderr and "Traceback" not in bad.stderr


def test_label_efficiency_with_the_file(tmp_path, folder):
    out = tmp_path / "run"
    SimCLRTrainer(_config(folder, out)).train()
    path = _csv(tmp_path, "path,label\n" + "\n".join(f"cat/{i}.png,cat" for i in range(4)) +
                "\ndog/0.png,dog\nowl/0.png,owl\nowl/1.png,owl\n", name="mine.csv")
    base = [sys.executable, "-m", "fastcl", "label-efficiency", "--checkpoint", str(out / "last.pt"), "--draws", "2",
            "--steps", "2", "--device", "cpu", "--no-progress"]
    run = subprocess.run(base + ["--labels", path, "--semi-supervised"], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr[-2000:]
    # the semi-supervised column: the run's pre-training with the file's labels, once for every draw
    assert torch.load(out / "semi-file" / "last.pt", weights_only=True)["config"]["labels"] == path
    result = json.loads((out / "label_efficiency-labels_mine.json").read_text())
    assert result["labels_file"] == path and len(result["labels_sha256"]) == 64
    (row,) = result["rows"]
    assert row["labels_per_class"] == "file" and row["labelled_images"] == 7 and len(row["draws"]) == 2
    assert 0.0 <= row["linear_probe"]["mean"] <= 1.0 and row["semi_supervised"]["std"] == 0.0
    both = subprocess.run(base + ["--labels", path, "--labels-per-class", "1"], capture_output=True, text=True,
                          timeout=300)
    assert both.returncode == 2 and "give one" in both.stderr
    other = subprocess.run(base + ["--labels", path, "--data", "fake"], capture_output=True, text=True, timeout=300)
    assert other.returncode == 2 and "needs --data folder:DIR" in other.stderr and "Traceback" not in other.stderr

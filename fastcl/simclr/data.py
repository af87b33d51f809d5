"""Datasets for the trainers, held in memory (or memory-mapped) as uint8 (N, C, H, W) tensors with int64 labels,
so that batches go to the device as uint8 and are augmented there.

Specs: ``digits`` (built in: scikit-learn's handwritten digits in noisy scenes, see
fastcl.simclr.digits), ``fake`` (torchvision FakeData, for smoke tests), ``cifar10:DIR`` (a local copy of the
python CIFAR-10 batches; never downloads), ``folder:DIR`` (an ImageFolder, decoded, resized and
cached once as a memory-mapped uint8 array)."""

from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass, field, replace
from typing import Optional

import torch
from torch import Tensor

from . import digits, image_cache

DATASETS = ("digits", "fake", "cifar10:DIR", "folder:DIR")


@dataclass
class ImageData:
    images: Tensor  # uint8 (N, C, H, W)
    labels: Tensor  # int64 (N,)
    num_classes: int
    _sample_ids: Optional[Tensor] = field(default=None, repr=False)
    # What the images were made from, for resume to check (name and version of a built-in set; the
    # files' count, bytes and listing hash of a folder or CIFAR copy)
    fingerprint: dict = field(default_factory=dict, repr=False)
    classes: tuple = ()  # class names in label order (a folder's class subfolders)
    # A folder's: source (the split's folder), cache and meta, where each image's relative path is
    # kept (image_cache.read_paths; what a labels file names)
    folder: Optional[dict] = field(default=None, repr=False)

    def __len__(self) -> int:
        return self.images.shape[0]

    def sample_ids(self) -> Tensor:
        """int64 (N,): for each image, the index of its first byte-identical copy, so that one
        image stored twice has one id (and is not its own negative when a batch holds both)."""
        if self._sample_ids is None:
            first: dict = {}
            ids = [first.setdefault(hashlib.blake2b(image.numpy().tobytes(), digest_size=16).digest(), i)
                   for i, image in enumerate(self.images)]
            self._sample_ids = torch.tensor(ids, dtype=torch.int64)
        return self._sample_ids


def _from_pil(items) -> tuple[Tensor, Tensor]:
    import numpy as np

    items = list(items)
    images = torch.stack([torch.from_numpy(np.asarray(img.convert("RGB"), dtype=np.uint8).copy()).permute(2, 0, 1)
                          for img, _ in items])
    labels = torch.tensor([int(label) for _, label in items], dtype=torch.int64)
    return images, labels


def _fake(train: bool, size: int) -> ImageData:
    from torchvision.datasets import FakeData

    count = 1024 if train else 256
    data = FakeData(size=count, image_size=(3, size, size), num_classes=10, random_offset=0 if train else 10**6)
    images, labels = _from_pil(data[i] for i in range(count))
    return ImageData(images, labels, 10)


def _cifar10(root: str, train: bool) -> ImageData:
    from torchvision.datasets import CIFAR10

    if not os.path.isdir(root):
        raise FileNotFoundError(f"cifar10: no directory {root!r}; pass the folder that holds cifar-10-batches-py "
                                "(fastcl never downloads)")
    try:
        data = CIFAR10(root=root, train=train, download=False)
    except RuntimeError as exc:
        raise FileNotFoundError(f"cifar10: {root!r} holds no CIFAR-10 python batches (cifar-10-batches-py): {exc}") \
            from exc
    images = torch.from_numpy(data.data).permute(0, 3, 1, 2).contiguous()
    batches_dir = os.path.join(root, CIFAR10.base_folder)
    return ImageData(images, torch.tensor(data.targets, dtype=torch.int64), 10,
                     fingerprint=dict(data="cifar10", **_stats(batches_dir, sorted(os.listdir(batches_dir)))))


def _stats(folder: str, names: list) -> dict:
    """Count, bytes and a sha256 of the (name, size, mtime) lines of `names` in `folder`."""
    lines = [(name, os.stat(os.path.join(folder, name))) for name in names]
    digest = hashlib.sha256("\n".join(f"{n}\t{st.st_size}\t{st.st_mtime_ns}" for n, st in lines).encode())
    return dict(files=len(lines), bytes=sum(st.st_size for _, st in lines), sha256=digest.hexdigest())


def _folder(root: str, train: bool, size: int) -> ImageData:
    """An ImageFolder, decoded once into a memory-mapped uint8 cache (see fastcl.simclr.image_cache):
    DIR/train and DIR/val, or DIR itself for both splits (then kNN is measured on training images)."""
    if not os.path.isdir(root):
        raise FileNotFoundError(f"folder: no directory {root!r}")
    split = "train" if train else "val"
    if os.path.isdir(os.path.join(root, split)):
        source = os.path.join(root, split)
    elif os.path.isdir(os.path.join(root, "train")):
        raise FileNotFoundError(f"folder: {root!r} has train/ but no val/; the kNN monitor and the probes need "
                                "the held-out split")
    else:
        source, split = root, "all"  # one flat ImageFolder: train and evaluation both use it
    target = image_cache.cache_dir(root, split, size)
    images, labels, meta = _cached_folder(source, target, size)
    return ImageData(images, labels, len(meta["classes"]), fingerprint=dict(data="folder", **meta.get("listing", {})),
                     classes=tuple(meta["classes"]), folder=dict(source=source, cache=target, meta=meta))


def _cached_folder(source: str, target: str, size: int) -> tuple:
    """The cache of `source`: as found when its folder has not changed since it was built (or holds
    no images any more: the cache is all there is), else built again (so is a cache from before
    the image paths were kept)."""
    files = image_cache.listing(source)
    try:
        cached = image_cache.open_cache(target)
    except image_cache.CacheDamaged as exc:
        if files["files"] == 0:
            raise ValueError(f"{exc}, and {source!r} holds no images to rebuild it from: restore them, or "
                             f"delete {target!r} and give a folder of images") from None
        cached, why = None, f"folder: {exc}; rebuilding it"
    else:
        why = f"folder: decoding {source} into {target} (once)"
    if cached is not None:
        changed = image_cache.changes(cached[2].get("listing"), files)
        if changed and files["files"]:
            why = f"folder: {source} changed since its cache was built ({changed}); rebuilding {target}"
        elif "paths" not in cached[2] and files["files"]:
            # a labels file names images by path: an older cache without them is decoded again, once
            why = f"folder: the cache {target} records no image paths (built by an older fastcl); rebuilding it"
        else:
            if changed:
                print(f"folder: {source} holds no images any more; using its cache {target}", flush=True)
            return cached
    print(why, flush=True)
    image_cache.build(source, target, size, files=files)
    return image_cache.open_cache(target)


def load(spec: str, train: bool = True, size: int = 32) -> ImageData:
    """The dataset a spec names (see DATASETS), train or held-out split."""
    kind, _, path = spec.partition(":")
    if kind == "digits" and not path:
        return ImageData(*digits.load(train, size), num_classes=10,
                         fingerprint=dict(data="digits", version=digits.VERSION))
    if kind == "fake" and not path:
        from torchvision import __version__ as version

        return replace(_fake(train, size), fingerprint=dict(data="fake", version=f"torchvision {version}"))
    if kind == "cifar10" and path:
        return _cifar10(path, train)
    if kind == "folder" and path:
        return _folder(path, train, size)
    raise ValueError(f"unknown dataset {spec!r}; expected one of {', '.join(DATASETS)}")


def batches(data: ImageData, batch_size: int, seed: int, epoch: int, drop_last: bool = True,
            shard: tuple = (0, 1)):
    """Shuffled (uint8 images, labels, sample ids) batches (images pinned when CUDA is available,
    for non_blocking copies); the order depends only on (seed, epoch), so a resumed run sees the
    same batches. With shard=(rank, world), batch_size is the global batch and this rank gets its
    contiguous share of each (the DistributedSampler split with a per-epoch seed, without padding)."""
    rank, world = shard
    g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
    order = torch.randperm(len(data), generator=g)
    stop = len(order) - (len(order) % batch_size if drop_last else 0)
    pin = torch.cuda.is_available()
    ids = data.sample_ids()
    for start in range(0, stop, batch_size):
        idx = order[start:start + batch_size]
        share = len(idx) // world
        idx = idx[rank * share:(rank + 1) * share]
        images = data.images[idx]
        yield (images.pin_memory() if pin else images), data.labels[idx], ids[idx]

"""Checkpoints that are never half-written: save to a temporary file in the same folder, flush
it to disk, then rename over the old one (atomic on POSIX)."""

from __future__ import annotations

import os
import tempfile

import torch


def save_atomic(obj, path: str) -> None:
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".pt", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            torch.save(obj, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def load(path: str, map_location="cpu"):
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    return torch.load(path, map_location=map_location, weights_only=False)

"""Checkpoints that are never half-written and never run code when read.

Saving writes a temporary file in the same folder, flushes it to disk, then renames it over the
old one (atomic on POSIX, fastcl.engine.files), so a crash or a full disk mid-save leaves the
previous checkpoint. Loading uses torch.load(weights_only=True): a checkpoint holds tensors and
plain data (configs are stored as dicts), and a file that would need arbitrary unpickling is
refused instead of executed."""

from __future__ import annotations

import os
import pickle

import torch

from . import files


class UnsafeCheckpoint(ValueError):
    """The file is not a plain-data checkpoint: loading it would run code from the file."""


def save_atomic(obj, path: str) -> None:
    """torch.save(obj) to `path` in one rename, with the default file mode; on a full disk (or any
    failed write) files.WriteFailed, and the previous checkpoint stays."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.replace(path, lambda f: torch.save(obj, f), suffix=".pt",
                  note="; the previous checkpoint there is kept")


def load(path: str, map_location="cpu"):
    """Tensors and plain data from `path`; raises UnsafeCheckpoint for a file holding anything
    else, and ValueError for a file that is no checkpoint at all."""
    if not os.path.exists(path):
        raise FileNotFoundError(f"no checkpoint at {path!r}")
    if os.path.isdir(path):
        raise ValueError(f"{path!r} is a folder, not a checkpoint file")
    with open(path, "rb") as f:
        head = f.read(2)
    # torch.save writes a zip archive (PK...), older torch a bare pickle (protocol byte 0x80)
    if not (head == b"PK" or head[:1] == b"\x80"):
        raise ValueError(f"{path!r} is not a checkpoint fastcl can read (not a file torch.save wrote)")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        raise UnsafeCheckpoint(
            f"{path!r} holds objects outside torch's weights-only allow-list (tensors, numbers, strings, lists, "
            "dicts): unpickling them could execute code stored in the file, so fastcl refuses to. Load a file "
            f"you trust yourself with torch.load(weights_only=False). ({str(exc).splitlines()[0]})") from None
    except (RuntimeError, KeyError, EOFError, ValueError, OSError) as exc:
        raise ValueError(f"{path!r} is not a checkpoint fastcl can read ({type(exc).__name__}: "
                         f"{str(exc).splitlines()[0] if str(exc) else 'truncated or corrupt'})") from None

"""Embeddings out of fastcl: a float32 .npy of (N, D) rows and a JSON-lines ids file beside it,
written atomically with the user's umask, in the form FAISS, Milvus or any vector index ingests directly."""

from __future__ import annotations

import json
import os
from typing import Sequence

import numpy as np
from torch import Tensor

from . import files


def ids_path(path: str) -> str:
    """The ids file that goes with an embeddings file: emb.npy -> emb.ids.jsonl."""
    stem = path[:-4] if path.endswith(".npy") else path
    return stem + ".ids.jsonl"


def check_folder(path: str) -> None:
    """A clear error before any work when `path` (an --out file) lies in a folder that does not exist."""
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"--out {path!r}: the folder {folder!r} does not exist")


def check_output(path: str) -> None:
    """A clear error before any work when the embeddings could not be written."""
    if not path.endswith(".npy"):
        raise ValueError(f"--out must name a .npy file, got {path!r}")
    check_folder(path)


def write_embeddings(path: str, embeddings: Tensor, ids: Sequence[dict]) -> tuple[str, str]:
    """Writes embeddings (N, D) as float32 to `path` and one JSON object per row (its id and what
    else identifies it) to ids_path(path); returns both paths."""
    check_output(path)
    if embeddings.dim() != 2 or embeddings.shape[0] != len(ids):
        raise ValueError(f"{len(ids)} ids for embeddings of shape {tuple(embeddings.shape)}")
    array = embeddings.detach().float().cpu().numpy()
    files.replace(path, lambda f: np.save(f, array))
    lines = "".join(json.dumps(row, ensure_ascii=False) + "\n" for row in ids)
    files.replace(ids_path(path), lambda f: f.write(lines.encode("utf-8")))
    return path, ids_path(path)

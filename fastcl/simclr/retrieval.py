"""What training changed, as retrieval: a SimCLR encoder's embeddings of a dataset (`fastcl
embed`), precision@k of same-class neighbours for held-out queries against the training images
(`fastcl knn`), before and after training."""

from __future__ import annotations

import os
import re
from typing import Sequence

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import progress as heartbeat
from ..engine import runtime
from . import data, evaluate, restore

SPACES = ("encoder", "projection")


def derived_output(checkpoint_path: str, name: str, run_spec: str, spec: str | None) -> str:
    """Where a derived output of a run goes by default: `name` next to its checkpoint for the run's
    own dataset, and for another (--data) `stem-<data name>.ext` beside it, so that the run's own
    picture or table is never overwritten unless its path is given."""
    folder = os.path.dirname(os.path.abspath(checkpoint_path))
    if not spec or spec == run_spec:
        return os.path.join(folder, name)
    kind, _, where = spec.partition(":")
    label = kind + ("-" + os.path.basename(os.path.normpath(where)) if where else "")
    label = re.sub(r"[^A-Za-z0-9._-]+", "_", label).strip("._") or "data"
    stem, ext = os.path.splitext(name)
    return os.path.join(folder, f"{stem}-{label}{ext}")


@torch.no_grad()
def embed(model: torch.nn.Module, images: Tensor, device: torch.device, space: str = "encoder",
          normalize: bool = True, batch_size: int = 512, progress: bool = False) -> Tensor:
    """(N, D) float32 embeddings of uint8 images: the encoder's representation, or the projection
    the loss saw (`space`), L2-normalised as the loss normalises them (cosine = dot product)."""
    if space not in SPACES:
        raise ValueError(f"space must be one of {SPACES}, got {space!r}")
    net = (model.encoder if space == "encoder" else model).to(device)
    z = evaluate.encode(net, images, device, batch_size, progress)
    return F.normalize(z, dim=1) if normalize else z


def embed_checkpoint(path: str, spec: str | None = None, split: str = "test", space: str = "encoder",
                     device: str = "auto", progress: bool = False) -> tuple[Tensor, data.ImageData]:
    """Embeddings of a dataset (default: the run's, held-out split) under a checkpoint's model."""
    if split not in ("train", "test"):
        raise ValueError(f"split must be 'train' or 'test', got {split!r}")
    state = restore.load_run(path)
    config = state["config"]
    images = data.load(spec or config["data"], split == "train", config["size"])
    model = restore.build_model(config, state, images.images.shape[1])
    return embed(model, images.images, runtime.device(device), space, progress=progress), images


def precision_at_k(queries: Tensor, query_labels: Tensor, bank: Tensor, bank_labels: Tensor,
                   ks: Sequence[int] = (1, 5, 10), chunk: int = 1024) -> dict:
    """{k: mean fraction of each query's k most cosine-similar bank entries that share its class}."""
    top = max(ks)
    if top > bank.shape[0]:
        raise ValueError(f"k={top} is larger than the bank of {bank.shape[0]} entries")
    bank = F.normalize(bank.float(), dim=1)
    hits = []
    for start in range(0, queries.shape[0], chunk):
        sim = F.normalize(queries[start:start + chunk].float(), dim=1) @ bank.T
        idx = sim.topk(top, dim=1).indices
        hits.append(bank_labels[idx] == query_labels[start:start + chunk, None])
    same = torch.cat(hits).float()
    return {k: float(same[:, :k].mean()) for k in ks}


def retrieval_report(path: str, spec: str | None = None, device: str = "auto", ks: Sequence[int] = (1, 5, 10)) -> dict:
    """precision@k of held-out queries against the training images, for the random-init and the
    trained encoder of a checkpoint, and the trained encoder's kNN top-1 (the run's k and t) from
    the same features: {"random_init": {k: p}, "trained": {k: p}, "knn_top1": float}."""
    heartbeat.note("loading the checkpoint and its data")
    state, train, test = restore.load_run_data(path, spec)
    config = state["config"]
    dev = runtime.device(device)
    report, features = {}, {}
    channels = train.images.shape[1]
    for name, model in (("random_init", restore.build_model(config, in_channels=channels)),
                        ("trained", restore.build_model(config, state, channels))):
        encoder = model.encoder.to(dev)
        bank = evaluate.encode(encoder, train.images, dev, what=f"the training images ({name} encoder)")
        queries = evaluate.encode(encoder, test.images, dev, what=f"the held-out images ({name} encoder)")
        heartbeat.note(f"precision@k ({name} encoder)")
        report[name] = precision_at_k(queries, test.labels, bank, train.labels, ks)
        features[name] = bank, queries
    bank, queries = features["trained"]
    heartbeat.note("kNN classification")
    report["knn_top1"] = evaluate.knn_accuracy(bank, train.labels, queries, test.labels, config["knn_k"],
                                               config["knn_t"])
    return report

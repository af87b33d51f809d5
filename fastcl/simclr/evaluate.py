"""Evaluation of frozen representations: the weighted kNN monitor (InstDisc; k=200, t=0.1,
cosine, as the lightly benchmarks use it), a linear probe on cached features, and both applied
to a saved SimCLR checkpoint (`fastcl knn`, `fastcl linear-probe`)."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from ..engine import progress as heartbeat
from ..engine import runtime
from ..engine.metrics import progress_bar
from . import data, restore


@torch.no_grad()
def knn_predict(features: Tensor, bank: Tensor, bank_labels: Tensor, num_classes: int, k: int = 200,
                temperature: float = 0.1, chunk: int = 1024) -> Tensor:
    """Class predictions for `features` (N, D) from a memory bank (M, D) with labels (M,): the k
    most cosine-similar bank entries vote with weight exp(similarity / temperature)."""
    if features.shape[-1] != bank.shape[-1]:
        raise ValueError(f"features have D={features.shape[-1]} but the bank has D={bank.shape[-1]}")
    if bank.shape[0] != bank_labels.shape[0]:
        raise ValueError("bank and bank_labels must have the same length")
    k = min(k, bank.shape[0])
    bank = F.normalize(bank.float(), dim=1)
    preds = []
    for start in range(0, features.shape[0], chunk):
        sim = F.normalize(features[start:start + chunk].float(), dim=1) @ bank.T
        top_sim, top_idx = sim.topk(k, dim=1)
        weights = (top_sim / temperature).exp()
        votes = torch.zeros(sim.shape[0], num_classes, device=sim.device)
        votes.scatter_add_(1, bank_labels[top_idx], weights)
        preds.append(votes.argmax(dim=1))
    return torch.cat(preds)


def knn_accuracy(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 k: int = 200, temperature: float = 0.1) -> float:
    """Top-1 accuracy (in [0, 1]) of the weighted kNN classifier."""
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    pred = knn_predict(test_features, train_features, train_labels, num_classes, k, temperature)
    return float((pred == test_labels).float().mean())


def linear_probe(train_features: Tensor, train_labels: Tensor, test_features: Tensor, test_labels: Tensor,
                 weight_decay: float = 1e-4, max_iter: int = 200) -> float:
    """Top-1 accuracy of multinomial logistic regression fitted with L-BFGS on standardised frozen
    features (the features are cached: the encoder never runs here)."""
    mean, std = train_features.mean(0), train_features.std(0).clamp_min(1e-6)
    x_train, x_test = (train_features - mean) / std, (test_features - mean) / std
    num_classes = int(max(train_labels.max(), test_labels.max())) + 1
    linear = torch.nn.Linear(x_train.shape[1], num_classes).to(x_train.device)
    optimizer = torch.optim.LBFGS(linear.parameters(), lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        optimizer.zero_grad()
        loss = F.cross_entropy(linear(x_train), train_labels)
        loss = loss + weight_decay * linear.weight.pow(2).sum()
        loss.backward()
        return loss

    optimizer.step(closure)
    with torch.no_grad():
        return float((linear(x_test).argmax(1) == test_labels).float().mean())


@torch.no_grad()
def encode(encoder: torch.nn.Module, images: Tensor, device: torch.device, batch_size: int = 512,
           progress: bool = False, what: str = "images") -> Tensor:
    """Encoder features of uint8 images scaled to [0, 1], in eval mode (float32, on the CPU);
    `what` names them in the command's progress lines."""
    was_training = encoder.training
    encoder.eval()
    feats = []
    heartbeat.note(f"encoding {what}")
    with progress_bar(-(-images.shape[0] // batch_size), progress, desc="embedding") as bar:
        for i in range(0, images.shape[0], batch_size):
            feats.append(encoder(images[i:i + batch_size].to(device).float().div_(255)).float().cpu())
            heartbeat.count(min(i + batch_size, images.shape[0]), images.shape[0])
            bar.update()
    encoder.train(was_training)
    return torch.cat(feats)


def load_encoder(path: str, device: str = "auto") -> tuple[torch.nn.Module, dict]:
    """The encoder of a SimCLR checkpoint (checked and loaded without unpickling code, as every
    command on a run reads it: fastcl.simclr.restore) and its config dict."""
    state = restore.load_run(path)
    model = restore.build_model(state["config"], state)
    return model.encoder.to(runtime.device(device)), state["config"]


def evaluate_checkpoint(path: str, spec: Optional[str] = None, method: str = "knn", device: str = "auto") -> float:
    """kNN (the run's k and t) or linear-probe top-1 of a checkpoint's frozen encoder on `spec`
    (default: the dataset it was trained on)."""
    if method not in ("knn", "linear"):
        raise ValueError(f"method must be 'knn' or 'linear', got {method!r}")
    heartbeat.note("loading the checkpoint and its data")
    encoder, config = load_encoder(path, device)
    spec = spec or config["data"]
    train, test = data.load(spec, True, config["size"]), data.load(spec, False, config["size"])
    dev = next(encoder.parameters()).device
    f_train, f_test = encode(encoder, train.images, dev, what="the training images"), \
        encode(encoder, test.images, dev, what="the held-out images")
    heartbeat.note("kNN classification" if method == "knn" else "fitting the linear probe")
    if method == "knn":
        return knn_accuracy(f_train, train.labels, f_test, test.labels, config["knn_k"], config["knn_t"])
    return linear_probe(f_train, train.labels, f_test, test.labels)

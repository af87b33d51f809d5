"""The baselines fastcl is measured against: each loss as users write it in plain PyTorch, with
its full logit matrix materialised (exactly what the fused kernels avoid). `fastcl speed` and
benchmarks/ time them next to fastcl; the tests use them as oracles too (tests/reference.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["nt_xent_naive", "clip_loss", "moco_loss", "nt_xent_deduplicated"]


def nt_xent_naive(z1: Tensor, z2: Tensor, temperature: float = 0.5) -> Tensor:
    """The NT-Xent loss as users write it: normalize, matmul, mask the diagonal, cross-entropy."""
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    n = z1.shape[0]
    logits = (z @ z.T) / temperature
    logits = logits.masked_fill(torch.eye(2 * n, dtype=torch.bool, device=z.device), float("-inf"))
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    return F.cross_entropy(logits, targets)


def clip_loss(image: Tensor, text: Tensor, temperature: float = 0.07) -> Tensor:
    """CLIP's symmetric loss: cross-entropy over texts for each image and over images for each text."""
    logits = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / temperature
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


def moco_loss(q: Tensor, k: Tensor, queue: Tensor, temperature: float = 0.2) -> Tensor:
    """MoCo v2 (moco/builder.py): normalised q against its key (l_pos) and the queue (l_neg),
    cross-entropy with the positive at index 0; the queue is (K, D) here (MoCo stores it (D, K))."""
    q, k = F.normalize(q, dim=1), F.normalize(k, dim=1)
    l_pos = torch.einsum("nc,nc->n", q, k).unsqueeze(-1)
    l_neg = torch.einsum("nc,kc->nk", q, queue.detach())
    logits = torch.cat([l_pos, l_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(q.shape[0], dtype=torch.long, device=q.device))


def nt_xent_deduplicated(z1: Tensor, z2: Tensor, sample_ids: Tensor, temperature: float = 0.5) -> Tensor:
    """NT-Xent whose rows with equal sample ids (>= 0) are not each other's negatives: the logit
    matrix with those pairs (and the diagonal) masked, each row's positive (its other view) kept."""
    n = z1.shape[0]
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T) / temperature
    ids = sample_ids.repeat(2)
    targets = torch.cat([torch.arange(n, 2 * n), torch.arange(0, n)]).to(z.device)
    masked = (ids[:, None] == ids[None, :]) & (ids[:, None] >= 0)
    masked |= torch.eye(2 * n, dtype=torch.bool, device=z.device)
    masked[torch.arange(2 * n), targets] = False
    return F.cross_entropy(logits.masked_fill(masked, float("-inf")), targets)

"""Test oracles: the losses as their papers' code writes them, and the augmentation one sample
at a time with torchvision. It lives with the tests (importable as `reference`), outside the package.

The oracle of the fused core itself is its pure-PyTorch path (fastcl._torch_impl), and the naive
losses the benchmarks time are fastcl.bench.baselines; both are re-exported here so that tests
name one module."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from fastcl import augment as A
from fastcl._torch_impl import contrastive, contrastive_pair
from fastcl._torch_impl import siglip as siglip_chunked
from fastcl.bench.baselines import clip_loss, moco_loss, nt_xent_deduplicated, nt_xent_naive

__all__ = ["contrastive", "contrastive_pair", "nt_xent_naive", "simcse_loss", "supcon_loss", "clip_loss",
           "nt_xent_deduplicated", "info_nce_deduplicated", "memory_bank_loss", "memory_bank_push", "moco_loss", "augment",
           "siglip_loss", "siglip_chunked"]


def simcse_loss(z1: Tensor, z2: Tensor, z3: Optional[Tensor] = None, temperature: float = 0.05,
                hard_negative_weight: float = 0.0) -> Tensor:
    """The SimCSE code's formulation: cosine matrix / temperature, hard negatives appended,
    their weight added on each query's own hard negative, cross-entropy over keys."""
    cos_sim = F.cosine_similarity(z1.unsqueeze(1), z2.unsqueeze(0), dim=-1) / temperature
    if z3 is not None:
        z1_z3_cos = F.cosine_similarity(z1.unsqueeze(1), z3.unsqueeze(0), dim=-1) / temperature
        cos_sim = torch.cat([cos_sim, z1_z3_cos], 1)
        weights = torch.zeros_like(cos_sim)
        m = z1_z3_cos.shape[1]
        weights[:, z2.shape[0]:] = torch.eye(z1.shape[0], m, device=z1.device) * hard_negative_weight
        cos_sim = cos_sim + weights
    labels = torch.arange(cos_sim.shape[0], device=z1.device)
    return F.cross_entropy(cos_sim, labels)


def supcon_loss(features: Tensor, labels: Tensor, temperature: float = 0.1) -> Tensor:
    """SupCon L_out (Khosla et al.) on rows `features` (M, D) with labels (M,): mean over
    anchors of the mean over positives of -log softmax, the anchor itself excluded."""
    z = F.normalize(features, dim=1)
    logits = (z @ z.T) / temperature
    eye = torch.eye(z.shape[0], dtype=torch.bool, device=z.device)
    logits = logits.masked_fill(eye, float("-inf"))
    log_prob = logits - torch.logsumexp(logits, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & ~eye
    per_anchor = -torch.where(positive, log_prob, 0.0).sum(1) / positive.sum(1)
    return per_anchor.mean()


def info_nce_deduplicated(query: Tensor, key: Tensor, negatives: Tensor, sample_ids: Tensor, negative_ids: Tensor,
                          temperature: float = 0.05) -> Tensor:
    """SimCSE's loss over keys [key; negatives] with the keys that carry query i's sample id,
    other than its own positive, taken out of its softmax."""
    keys = F.normalize(torch.cat([key, negatives]), dim=1)
    logits = F.normalize(query, dim=1) @ keys.T / temperature
    key_ids = torch.cat([sample_ids, negative_ids])
    masked = (sample_ids[:, None] == key_ids[None, :]) & (sample_ids[:, None] >= 0)
    rows = torch.arange(query.shape[0], device=query.device)
    masked[rows, rows] = False
    return F.cross_entropy(logits.masked_fill(masked, float("-inf")), rows)


def siglip_loss(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, normalize: bool = True) -> Tensor:
    """SigLIP's sigmoid loss as open_clip's SigLipLoss writes it (the whole logit matrix, labels 2 I - 1,
    -sum logsigmoid / batch), in the inputs' dtype; normalize as fastcl.functional.siglip."""
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    logits = logit_scale.to(a.dtype) * a @ b.T + logit_bias.to(a.dtype)
    labels = 2 * torch.eye(a.shape[0], dtype=a.dtype, device=a.device) - 1
    return -F.logsigmoid(labels * logits).sum() / a.shape[0]


def memory_bank_loss(out0: Tensor, out1: Tensor, bank: Tensor, temperature: float = 0.5) -> Tensor:
    """lightly's NTXentLoss with a memory bank (lightly/loss/ntx_ent_loss.py): each out0 row
    against its positive out1 row and the bank (size, D) of normalised keys, no in-batch negatives."""
    out0, out1 = F.normalize(out0, dim=1), F.normalize(out1, dim=1)
    sim_pos = torch.einsum("nc,nc->n", out0, out1).unsqueeze(-1)
    sim_neg = torch.einsum("nc,kc->nk", out0, bank)
    logits = torch.cat([sim_pos, sim_neg], dim=1) / temperature
    return F.cross_entropy(logits, torch.zeros(out0.shape[0], dtype=torch.long, device=out0.device))


def memory_bank_push(bank: Tensor, ptr: int, batch: Tensor) -> int:
    """lightly's MemoryBankModule._dequeue_and_enqueue on `bank` in place; returns the new pointer.
    A batch that runs past the end is cut there and the next one starts at the front."""
    size = bank.shape[0]
    if ptr + batch.shape[0] >= size:
        bank[ptr:] = batch[:size - ptr].detach()
        return 0
    bank[ptr:ptr + batch.shape[0]] = batch.detach()
    return ptr + batch.shape[0]


def augment(images, params, *, mean=None, std=None, dtype=torch.float32) -> Tensor:
    """fastcl.augment.apply done one sample at a time with torchvision.transforms.v2.functional:
    the oracle the fused augmentation kernels are tested against."""
    from torchvision.transforms.v2 import functional as TF

    out = []
    for p in range(params.table.shape[0]):
        row = params.table[p].tolist()
        src = int(params.source_index[p])
        img = images[src]
        if img.dtype.is_floating_point:
            img = img.float()
        u8 = img.dtype == torch.uint8
        x = TF.resized_crop(img, int(row[A.TOP]), int(row[A.LEFT]), int(row[A.HEIGHT]), int(row[A.WIDTH]),
                            [params.size, params.size], antialias=True)
        if row[A.FLIP]:
            x = TF.horizontal_flip(x)
        if row[A.ANGLE] != 0:
            bound = 255.0 if u8 else 1.0
            fill = [v * bound for v in row[A.FILL][:x.shape[0]]]
            x = TF.rotate(x, row[A.ANGLE], interpolation=TF.InterpolationMode.BILINEAR, expand=False, fill=fill)
        if row[A.JITTER]:
            for op in row[A.ORDER]:
                name = A.JITTER_OPS[int(op)]
                factor = row[{"brightness": A.BRIGHTNESS, "contrast": A.CONTRAST, "saturation": A.SATURATION,
                              "hue": A.HUE}[name]]
                x = getattr(TF, f"adjust_{name}")(x, factor)
        if row[A.GRAY] and x.shape[0] == 3:
            x = TF.rgb_to_grayscale(x, num_output_channels=3)
        if row[A.BLUR_SIGMA] > 0:
            x = TF.gaussian_blur(x, [params.blur_kernel] * 2, [row[A.BLUR_SIGMA]] * 2)
        if row[A.SOLARIZE]:
            x = TF.solarize(x, 128 if u8 else 0.5)
        x = TF.to_dtype(x, torch.float32, scale=True)
        if mean is not None:
            x = TF.normalize(x, list(mean), list(std))
        out.append(x.to(dtype))
    return torch.stack(out)

"""Test oracles: the losses as their papers' code writes them, and the augmentation one sample
at a time with torchvision. Nothing in fastcl's product path imports this module.

The oracle of the fused core itself is its pure-PyTorch path (fastcl._torch_impl), re-exported
here so that tests name one module."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from . import augment as A
from ._torch_impl import contrastive, nt_xent_naive

__all__ = ["contrastive", "nt_xent_naive", "simcse_loss", "supcon_loss", "clip_loss", "augment"]


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


def clip_loss(image: Tensor, text: Tensor, temperature: float = 0.07) -> Tensor:
    """CLIP's symmetric loss: cross-entropy over texts for each image and over images for each text."""
    logits = F.normalize(image, dim=1) @ F.normalize(text, dim=1).T / temperature
    labels = torch.arange(image.shape[0], device=image.device)
    return (F.cross_entropy(logits, labels) + F.cross_entropy(logits.T, labels)) / 2


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

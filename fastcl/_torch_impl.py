"""The pure-PyTorch path of the contrastive core: the fallback when no compiled kernel is
available (or impl="torch"), and the tests' oracle of the fused op. It materialises the full
logit matrix, which is exactly what the fused kernels avoid. (The losses as users write them,
which the benchmarks and `fastcl speed` compare with, are fastcl.bench.baselines.)"""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .problem import NORM_EPS, POSITIVE_ONLY, ContrastiveProblem, PairProblem


def contrastive(problem: ContrastiveProblem, compute_dtype: Optional[torch.dtype] = None) -> tuple[Tensor, Tensor]:
    """(per-row loss, positive count) of the contrastive core, computed in the loss dtype
    (or in compute_dtype: the tests use the input's low-precision dtype as plain PyTorch would)."""
    (q, k, row_labels, col_labels, logit_scale, col_bias, col_bias_owner, row_ids, col_ids, row_offset, exclude_self,
     normalize, constant_cols, hardness, hardness_mode) = problem
    acc = compute_dtype or (torch.float64 if q.dtype == torch.float64 else torch.float32)
    if constant_cols:
        k = torch.cat([k[:k.shape[0] - constant_cols], k[k.shape[0] - constant_cols:].detach()])
    qn, kn = q.to(acc), k.to(acc)
    if normalize:
        qn, kn = F.normalize(qn, dim=1, eps=NORM_EPS), F.normalize(kn, dim=1, eps=NORM_EPS)
    dots = qn @ kn.T
    logits = logit_scale.to(acc) * dots
    if hardness_mode:
        logits = logits + torch.where(_penalised(hardness_mode, col_bias_owner, row_labels, col_labels),
                                      hardness * dots.detach(), 0.0)
    rows = torch.arange(q.shape[0], device=q.device)
    cols = torch.arange(k.shape[0], device=q.device)
    if col_bias is not None:
        applies = torch.ones_like(logits, dtype=torch.bool)
        if col_bias_owner is not None:
            applies = col_bias_owner[None, :] == row_labels[:, None]
        logits = logits + torch.where(applies, col_bias.to(acc)[None, :], 0.0)
    excluded = (cols[None, :] == rows[:, None] + row_offset) if exclude_self else torch.zeros_like(
        logits, dtype=torch.bool)
    positive = (col_labels[None, :] == row_labels[:, None]) & (col_labels[None, :] >= 0) & ~excluded
    if row_ids is not None:
        duplicate = (col_ids[None, :] == POSITIVE_ONLY) | ((col_ids[None, :] == row_ids[:, None]) & (row_ids[:, None] >= 0))
        excluded = excluded | (duplicate & ~positive)
    logits = logits.masked_fill(excluded, float("-inf"))
    num_pos = positive.sum(1).to(acc)
    lse = torch.logsumexp(logits, dim=1)
    pos_mean = torch.where(positive, logits, 0.0).sum(1) / num_pos.clamp_min(1)
    loss = torch.where(num_pos > 0, lse - pos_mean, 0.0)
    return loss, num_pos


def contrastive_pair(problem: PairProblem) -> tuple[Tensor, Tensor]:
    """Both directions' per-row losses of paired rows (the fallback of ops.contrastive_pair)."""
    a, b, logit_scale, normalize = problem
    rows = torch.arange(a.shape[0], device=a.device)
    forward, _ = contrastive(ContrastiveProblem(a, b, rows, rows, logit_scale, normalize=normalize))
    backward, _ = contrastive(ContrastiveProblem(b, a, rows, rows, logit_scale, normalize=normalize))
    return forward, backward


SIGLIP_CHUNK = 1024  # rows of the sigmoid loss's logits formed at a time by the pure-PyTorch path


def siglip(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, normalize: bool,
           a_ids: Optional[Tensor] = None, b_ids: Optional[Tensor] = None, offset: int = 0) -> Tensor:
    """The sigmoid loss (SigLIP; ops.siglip) in the loss dtype, SIGLIP_CHUNK rows of logits at a
    time: the forward keeps no logits and the backward recomputes them, so memory is
    O(SIGLIP_CHUNK x L), not M x L (the path CUDA inputs take until the CUDA kernel lands)."""
    return _SigmoidLoss.apply(a, b, logit_scale, logit_bias, normalize, a_ids, b_ids, offset)


def _siglip_rows(a: Tensor, b: Tensor, normalize: bool) -> tuple[Tensor, Tensor]:
    an, bn = a.to(_acc(a)), b.to(_acc(a))
    if normalize:
        an, bn = F.normalize(an, dim=1, eps=NORM_EPS), F.normalize(bn, dim=1, eps=NORM_EPS)
    return an, bn


def _siglip_chunk(an: Tensor, bn: Tensor, scale: Tensor, bias: Tensor, i0: int, a_ids: Optional[Tensor],
                  b_ids: Optional[Tensor], offset: int) -> tuple[Tensor, Tensor, Tensor]:
    """(dots, logits, positive mask) of rows [i0, i0 + SIGLIP_CHUNK) against every column."""
    dots = an[i0:i0 + SIGLIP_CHUNK] @ bn.T
    rows = torch.arange(i0, i0 + dots.shape[0], device=an.device)
    positive = (rows[:, None] + offset) == torch.arange(bn.shape[0], device=an.device)[None, :]
    if a_ids is not None:
        row_ids = a_ids[i0:i0 + SIGLIP_CHUNK, None]
        positive = positive | ((row_ids == b_ids[None, :]) & (row_ids >= 0))
    return dots, scale * dots + bias, positive


def siglip_forward(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, normalize: bool,
                   a_ids: Optional[Tensor] = None, b_ids: Optional[Tensor] = None, offset: int = 0) -> Tensor:
    """The loss of ops.siglip, without autograd (torch.ops.fastcl.siglip_forward's twin)."""
    with torch.no_grad():
        an, bn = _siglip_rows(a, b, normalize)
        total = an.new_zeros(())
        for i0 in range(0, an.shape[0], SIGLIP_CHUNK):
            _, z, positive = _siglip_chunk(an, bn, logit_scale, logit_bias, i0, a_ids, b_ids, offset)
            total = total - F.logsigmoid(torch.where(positive, z, -z)).sum()
        return total / an.shape[0]


def siglip_backward(grad: Tensor, a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, normalize: bool,
                    a_ids: Optional[Tensor] = None, b_ids: Optional[Tensor] = None,
                    offset: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(grad_a, grad_b, grad_logit_scale, grad_logit_bias) of siglip_forward, each chunk's logits
    recomputed (torch.ops.fastcl.siglip_backward's twin)."""
    with torch.enable_grad():
        a_leaf, b_leaf = a.detach().requires_grad_(), b.detach().requires_grad_()
        an, bn = _siglip_rows(a_leaf, b_leaf, normalize)
    scale, bias = logit_scale.detach(), logit_bias.detach()
    with torch.no_grad():
        grad_an, grad_bn = torch.empty_like(an), torch.zeros_like(bn)
        grad_scale, grad_bias = scale.new_zeros(()), bias.new_zeros(())
        g = grad / an.shape[0]
        for i0 in range(0, an.shape[0], SIGLIP_CHUNK):
            dots, z, positive = _siglip_chunk(an, bn, scale, bias, i0, a_ids, b_ids, offset)
            G = g * (torch.sigmoid(z) - positive.to(z.dtype))
            grad_an[i0:i0 + SIGLIP_CHUNK] = scale * (G @ bn)
            grad_bn += scale * (G.T @ an[i0:i0 + SIGLIP_CHUNK])
            grad_scale += (G * dots).sum()
            grad_bias += G.sum()
    grad_a, grad_b = torch.autograd.grad((an, bn), (a_leaf, b_leaf), (grad_an, grad_bn))
    return grad_a, grad_b, grad_scale, grad_bias


class _SigmoidLoss(torch.autograd.Function):
    @staticmethod
    def forward(ctx, a, b, scale, bias, normalize, a_ids, b_ids, offset):
        ctx.save_for_backward(a, b, scale, bias, a_ids, b_ids)
        ctx.normalize, ctx.offset = normalize, offset
        return siglip_forward(a, b, scale.to(_acc(a)), bias.to(_acc(a)), normalize, a_ids, b_ids, offset)

    @staticmethod
    def backward(ctx, grad: Tensor):
        a, b, scale, bias, a_ids, b_ids = ctx.saved_tensors
        grads = siglip_backward(grad, a, b, scale.to(_acc(a)), bias.to(_acc(a)), ctx.normalize, a_ids, b_ids,
                                ctx.offset)
        return (*grads, None, None, None, None)


def _acc(a: Tensor) -> torch.dtype:
    return torch.float64 if a.dtype == torch.float64 else torch.float32


def _penalised(mode: int, owner: Tensor, row_labels: Tensor, col_labels: Tensor) -> Tensor:
    """(M, L) pairs that get the hardness penalty (csrc/common/contrastive_math.h, penalty_applies)."""
    has_owner = owner[None, :] >= 0
    own = owner[None, :] == row_labels[:, None]
    positive = (col_labels[None, :] == row_labels[:, None]) & (col_labels[None, :] >= 0)
    return has_owner & ((bool(mode & 1) & ~own) | (bool(mode & 2) & own & ~positive))

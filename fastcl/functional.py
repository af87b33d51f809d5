"""Functional contrastive losses: NT-Xent (SimCLR), SupCon, InfoNCE (SimCSE, CLIP), SigLIP.

Each checks its arguments, has fastcl.translate turn them into the fused core's problem,
runs it (fastcl.ops.solve) and reduces the per-row losses. The losses are returned in float32
(float64 for float64 inputs)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import _validate, distributed, ops, siglip_ring, translate
from .problem import LossProblem
from .translate import Temperature
from .queue import MemoryQueue


def _reduce(loss: Tensor, num_pos: Tensor, reduction: str, allow_no_positive: bool) -> Tensor:
    has_pos = num_pos > 0
    if not allow_no_positive:
        if torch.compiler.is_compiling():
            # No host sync inside a graph: an anchor without a positive poisons the loss instead.
            loss = torch.where(has_pos, loss, torch.full_like(loss, float("nan")))
        elif not bool(has_pos.all()):
            bad = int((~has_pos).sum())
            raise ValueError(
                f"{bad} anchor(s) have no positive (no other sample with the same label); "
                "pass allow_no_positive=True to skip them")
    if reduction == "none":
        return loss
    if reduction == "sum":
        return loss.sum()
    if allow_no_positive:
        return loss.sum() / has_pos.sum().clamp_min(1).to(loss.dtype)
    return loss.mean()


def _reduce_global(loss: Tensor, num_pos: Tensor, reduction: str, allow_no_positive: bool) -> Tensor:
    """This rank's share of the global-batch loss (see fastcl.distributed): scaled so that the
    mean over ranks is the global value and DDP's averaged gradients are its gradients."""
    world = torch.distributed.get_world_size()
    local = _reduce(loss, num_pos, "none" if reduction == "none" else "sum", allow_no_positive)
    if reduction == "none":
        return local
    if reduction == "sum":
        return local * world
    counted = (num_pos > 0).sum() if allow_no_positive else torch.tensor(loss.shape[0], device=loss.device)
    total = counted.to(torch.int64).reshape(1).clone()
    torch.distributed.all_reduce(total)
    return local * world / total.clamp_min(1).to(local.dtype).squeeze(0)


def _reduce_problem(loss: Tensor, num_pos: Tensor, lp: LossProblem, reduction: str,
                    allow_no_positive: bool) -> Tensor:
    return (_reduce_global if lp.global_batch else _reduce)(loss, num_pos, reduction, allow_no_positive)


def nt_xent(
    z1: Tensor,
    z2: Optional[Tensor] = None,
    *,
    labels: Optional[Tensor] = None,
    temperature: Temperature = 0.5,
    normalize: bool = True,
    reduction: str = "mean",
    allow_no_positive: bool = False,
    gather_distributed: bool = False,
    impl: str = "auto",
    sample_ids: Optional[Tensor] = None,
    queue: Optional[MemoryQueue] = None,
) -> Tensor:
    """NT-Xent (SimCLR) and its supervised / multi-view form (SupCon L_out).

    - ``nt_xent(z1, z2)``: z1, z2 (N, D) are two views; each of the 2N rows is an anchor whose
      positive is the other view of its sample and whose negatives are the other 2N - 2 rows.
    - ``nt_xent(z)`` with z (N, V, D): V views per sample, every other view is a positive.
    - ``nt_xent(z, labels=y)`` with z (M, D) and y (M,), or z (N, V, D) and y (N,): positives
      are all other rows with the same label (SupCon); with z1, z2 and y (N,) as well.

    reduction "none" returns one loss per anchor, in the row order [z1; z2] (or view-major
    for (N, V, D) input, as torch.cat(torch.unbind(z, 1))).

    sample_ids (N,) int: samples with equal ids (>= 0; -1: no id) are never each other's
    negatives, as when one image is twice in a batch; each anchor keeps its positives. One id
    per sample (per row for (M, D) input with labels), shared by its views.

    queue: a fastcl.MemoryQueue; z1 and z2 only. lightly's NTXentLoss with a memory bank: row i
    of z1 against its positive z2[i] and the queued keys, without in-batch negatives (z1 rows
    only). Reading only: NTXentLoss(queue=...) pushes z2 after each training step.

    gather_distributed: under torch.distributed, every rank's rows are columns too (negatives
    and, with labels, positives from all ranks); this rank's loss is its share of the global
    loss, so that under DDP the gradients equal the single-process global batch's. Batch sizes
    may differ between ranks. "none" returns this rank's anchors' losses.

    Shapes and types: fp32/fp16/bf16 embeddings (fp64 on the CPU), any D >= 1; the loss is
    float32 (float64 for fp64 inputs). temperature: > 0, a float or a 0-dim tensor. normalize:
    cosine similarity (True) or raw dot products. impl: "auto", "fastcl" or "torch".

    Example::

        loss = fastcl.nt_xent(z1, z2, temperature=0.5)                # SimCLR, z1 and z2 (N, D)
        loss = fastcl.nt_xent(z, labels=y, temperature=0.1)           # SupCon, z (N, V, D), y (N,)"""
    _validate.reduction(reduction)
    if queue is not None:
        if z2 is None or labels is not None:
            raise ValueError("nt_xent with a queue takes two views z1, z2 (N, D) and no labels: z1[i] is compared "
                             "with its positive z2[i] and the queued keys")
        return info_nce(z1, z2, temperature=temperature, normalize=normalize, reduction=reduction,
                        gather_distributed=gather_distributed, impl=impl, sample_ids=sample_ids,
                        in_batch_negatives=False, queue=queue)
    lp = translate.nt_xent(z1, z2, labels, sample_ids, temperature, normalize, gather_distributed)
    loss, num_pos = ops.solve(lp, impl)
    return _reduce_problem(loss, num_pos, lp, reduction, allow_no_positive)


def info_nce(
    query: Tensor,
    positive_key: Tensor,
    negative_keys: Optional[Tensor] = None,
    *,
    temperature: Temperature = 0.1,
    symmetric: bool = False,
    hard_negative_weight: float = 0.0,
    normalize: bool = True,
    reduction: str = "mean",
    gather_distributed: bool = False,
    impl: str = "auto",
    sample_ids: Optional[Tensor] = None,
    negative_ids: Optional[Tensor] = None,
    in_batch_negatives: bool = True,
    queue: Optional[MemoryQueue] = None,
) -> Tensor:
    """InfoNCE: query i against keys [positive_key; negative_keys], its positive is key i.

    - SimCSE: ``info_nce(z1, z2)`` (unsupervised), ``info_nce(z1, z2, z3)`` (hard negatives
      z3 (M, D), one per query); ``hard_negative_weight`` adds that logit to each query's own
      hard negative, as in the SimCSE code.
    - CLIP: ``info_nce(img, txt, symmetric=True)`` averages image->text and text->image.
    - MoCo v2: ``info_nce(q, k, in_batch_negatives=False, queue=queue)``: query i against its
      key and the queued keys only (the other keys of the batch are not its negatives).

    gather_distributed: under torch.distributed, the keys (and negative keys) of every rank are
    keys of every query; see nt_xent.

    sample_ids (M,) int: the id of pair i (query i and positive key i; >= 0, -1: none). Keys
    that carry query i's id, other than its positive, are not its negatives: a sentence twice in
    a batch is not pushed away from itself. negative_ids (K,) gives negative_keys' ids (-1:
    none), so that a hard negative equal to another pair's sentence is masked for that pair.

    queue: a fastcl.MemoryQueue whose keys (and ids) are extra negative columns; read only here
    (InfoNCELoss(queue=...) pushes the positive keys after each training step).

    Shapes: query and positive_key (M, D), negative_keys (K, D); K = M when hard_negative_weight
    is not 0. Types, temperature, normalize, reduction and impl as nt_xent.

    Example::

        loss = fastcl.info_nce(z1, z2, temperature=0.05)                   # unsupervised SimCSE
        loss = fastcl.info_nce(img, txt, temperature=0.07, symmetric=True)  # CLIP"""
    _validate.reduction(reduction)
    if symmetric and (queue is not None or not in_batch_negatives):
        raise ValueError("symmetric=True takes its negatives from the batch: it does not combine with a queue or "
                         "in_batch_negatives=False")
    pairs = _pairs(query, positive_key, negative_keys, sample_ids, negative_ids, hard_negative_weight,
                   in_batch_negatives)
    lp = translate.info_nce(pairs, symmetric, queue, temperature, normalize, gather_distributed)
    loss, num_pos = ops.solve(lp, impl)
    return _reduce_problem(loss, num_pos, lp, reduction, allow_no_positive=False)


def siglip(a: Tensor, b: Tensor, logit_scale: Union[float, Tensor], logit_bias: Union[float, Tensor, None] = None,
           normalize: bool = True, *, sample_ids: Optional[Tensor] = None, gather_distributed: bool = False,
           impl: str = "auto") -> Tensor:
    """The sigmoid loss of SigLIP (Zhai et al. 2023) over paired rows a, b (M, D), as open_clip's
    SigLipLoss computes it on one process:

        z_ij = logit_scale * <a_i, b_j> + logit_bias,   y_ij = 1 if i == j else -1
        loss = (1 / M) * sum_ij softplus(-y_ij z_ij)     (= -sum logsigmoid(y * z) / M)

    Every pair is an independent binary problem (no softmax), so the CPU kernel streams 256 x 256
    logit tiles and never holds the M x M matrix; gradients reach a, b, logit_scale and logit_bias.

    logit_scale: > 0, a float or a 0-dim tensor: the scale itself, as open_clip passes it (its
    models learn log scale and pass ``logit_scale.exp()``; SigLIP initialises it to 10).
    logit_bias: a float or a 0-dim tensor (SigLIP initialises it to -10); None: 0.
    normalize: L2-normalise the rows first (open_clip's model does this before its loss; the
    open_clip drop-in passes False). impl: "auto", "fastcl" or "torch" as nt_xent. CUDA inputs run
    the chunked pure-PyTorch path for now (the CUDA kernel is issue 26's next increment).
    sample_ids: (M,) ints; rows i and j sharing an id >= 0 make a positive pair (duplicates of one
    sample: a second caption of the same image), not a negative (-1: no id).
    gather_distributed: under torch.distributed, every rank's rows against every rank's b rows (the
    global batch), the b rows and their gradients passed around the ranks in a ring, so no rank holds
    more than a few (M, D) blocks (fastcl.siglip_ring); each rank returns its rows' share scaled so
    that the mean over ranks is the global loss and DDP's averaged gradients are its gradients (batch
    sizes may differ between ranks; sample ids match across ranks).

    Types: fp32/fp16/bf16 (fp64 on CPU); the loss is float32 (float64 for fp64 inputs).

    Example::

        loss = fastcl.functional.siglip(img, txt, log_scale.exp(), bias)   # log_scale, bias: nn.Parameters"""
    a = _validate.embeddings("a", a)
    b = _validate.embeddings("b", b)
    _validate.same_kind("b", b, "a", a)
    if b.shape[0] != a.shape[0]:
        raise ValueError(f"a and b must have the same batch size (paired rows), got {a.shape[0]} and {b.shape[0]}")
    if a.shape[0] < 1:
        raise ValueError("a must hold at least one row")
    acc = ops.loss_dtype(a.dtype)
    scale = _validate.logit_parameter("logit_scale", logit_scale, a, acc, positive=True)
    bias = _validate.logit_parameter("logit_bias", 0.0 if logit_bias is None else logit_bias, a, acc, positive=False)
    ids = None if sample_ids is None else _validate.sample_ids("sample_ids", sample_ids, a.shape[0], a)
    if gather_distributed and distributed.active():
        return siglip_ring.siglip_ring(a, b, scale, bias, normalize, ids, impl=impl, global_mean=True)
    return ops.siglip(a, b, scale, bias, normalize, impl, ids, ids)


def _pairs(query: Tensor, positive_key: Tensor, negative_keys: Optional[Tensor], sample_ids: Optional[Tensor],
           negative_ids: Optional[Tensor], hard_negative_weight: float, in_batch_negatives: bool) -> translate.Pairs:
    """info_nce's inputs, checked."""
    _validate.finite_weight("hard_negative_weight", hard_negative_weight)
    query = _validate.embeddings("query", query)
    positive_key = _validate.embeddings("positive_key", positive_key)
    _validate.same_kind("positive_key", positive_key, "query", query)
    m = query.shape[0]
    if positive_key.shape[0] != m:
        raise ValueError(f"query and positive_key must have the same batch size, got {m} and "
                         f"{positive_key.shape[0]}")
    if m < 1:
        raise ValueError("query must hold at least one row")
    ids = None if sample_ids is None else _validate.sample_ids("sample_ids", sample_ids, m, query)
    if negative_ids is not None:
        if negative_keys is None or ids is None:
            raise ValueError("negative_ids needs negative_keys and sample_ids (they are matched against the pairs' ids)")
        negative_ids = _validate.sample_ids("negative_ids", negative_ids, negative_keys.shape[0], query)
    return translate.Pairs(query, positive_key, negative_keys, ids, negative_ids, hard_negative_weight,
                           in_batch_negatives)


"""Functional contrastive losses: NT-Xent (SimCLR), SupCon, InfoNCE (SimCSE, CLIP).

Each builds the row/column labels of the fused core (fastcl.ops.contrastive) and reduces
its per-row losses. The losses are returned in float32 (float64 for float64 inputs)."""

from __future__ import annotations

from typing import Optional, Union

import torch
from torch import Tensor

from . import _validate, distributed, ops
from .queue import MemoryQueue

Temperature = Union[float, Tensor]


def _logit_scale(temperature: Temperature, like: Tensor) -> Tensor:
    """1 / temperature as a 0-dim tensor on the embeddings' device, differentiable when the
    temperature is a tensor that requires grad."""
    _validate.temperature(temperature)
    dtype = ops.loss_dtype(like.dtype)
    if isinstance(temperature, Tensor):
        return (1.0 / temperature.to(device=like.device, dtype=dtype)).reshape(())
    return torch.full((), 1.0 / float(temperature), dtype=dtype, device=like.device)


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


def _gathering(gather_distributed: bool) -> bool:
    if gather_distributed:
        return distributed.active()
    distributed.warn_not_gathering()
    return False


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
    rows, row_labels, views, n = _stack_views(z1, z2, labels)
    row_ids = None if sample_ids is None else _validate.sample_ids("sample_ids", sample_ids, n, rows).repeat(views)
    columns, col_labels, col_ids, row_offset = rows, row_labels, row_ids, 0
    gathering = _gathering(gather_distributed)
    if gathering:
        samples = distributed.sizes(n, rows.device)
        if sum(samples) < 2:
            raise ValueError(f"NT-Xent needs a global batch of at least 2 samples, got {sum(samples)} over "
                             f"{len(samples)} ranks")
        if labels is None:  # sample ids (views without labels) must be unique across ranks
            row_labels = row_labels + distributed.offset(samples)
        counts = [s * views for s in samples]  # rows per rank
        columns, col_labels = distributed.gather(rows, counts), distributed.gather(row_labels, counts)
        if row_ids is not None:  # ids are not offset: a sample on two ranks is one sample
            col_ids = distributed.gather(row_ids, counts)
        row_offset = distributed.offset(counts)
    elif n < 2:
        raise ValueError(f"NT-Xent needs a batch of at least 2 samples so that every anchor has a negative, "
                         f"got N={n}")
    loss, num_pos = ops.contrastive(rows, columns, row_labels, col_labels, _logit_scale(temperature, rows),
                                    row_ids=row_ids, col_ids=col_ids, row_offset=row_offset,
                                    exclude_self=True, normalize=normalize, impl=impl)
    return (_reduce_global if gathering else _reduce)(loss, num_pos, reduction, allow_no_positive)


def _stack_views(z1: Tensor, z2: Optional[Tensor], labels: Optional[Tensor]) -> tuple[Tensor, Tensor, int, int]:
    """(rows, row labels, views, samples) of nt_xent's inputs: views stacked view-major (rows
    [view 0 of all samples; view 1; ...]); labels are the given ones per row, else sample ids."""
    z1 = _validate.embeddings("z1" if z2 is not None else "z", z1, (2,) if z2 is not None else (2, 3))
    if z2 is not None:
        z2 = _validate.embeddings("z2", z2)
        _validate.same_kind("z2", z2, "z1", z1)
        if z2.shape != z1.shape:
            raise ValueError(f"z1 and z2 must have the same shape (N, D), got {tuple(z1.shape)} and "
                             f"{tuple(z2.shape)}")
    n = z1.shape[0]  # samples (rows, for (M, D) input with labels)
    if z2 is None and z1.dim() == 2:
        if labels is None:
            raise ValueError("nt_xent(z) with z of shape (M, D) needs labels=...; pass z1, z2 for two views")
        return z1, _validate.labels("labels", labels, n, z1), 1, n
    views = 2 if z2 is not None else z1.shape[1]
    rows = torch.cat([z1, z2]) if z2 is not None else z1.transpose(0, 1).reshape(views * n, z1.shape[2])
    if labels is None:
        if views < 2:
            raise ValueError(f"z must have at least 2 views per sample without labels, got shape {tuple(z1.shape)}")
        labels = torch.arange(n, device=z1.device)
    else:
        labels = _validate.labels("labels", labels, n, z1)
    return rows, labels.repeat(views), views, n


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
    if symmetric and (queue is not None or not in_batch_negatives):
        raise ValueError("symmetric=True takes its negatives from the batch: it does not combine with a queue or "
                         "in_batch_negatives=False")
    ids = None if sample_ids is None else _validate.sample_ids("sample_ids", sample_ids, m, query)
    if negative_ids is not None:
        if negative_keys is None or ids is None:
            raise ValueError("negative_ids needs negative_keys and sample_ids (they are matched against the pairs' ids)")
        negative_ids = _validate.sample_ids("negative_ids", negative_ids, negative_keys.shape[0], query)
    gathering = _gathering(gather_distributed)
    local_positive, all_queries, key_ids = positive_key, query, ids
    if gathering:
        row_labels, positive_key, all_queries, negative_keys, key_ids, negative_ids = _gather_pairs(
            query, positive_key, negative_keys, symmetric, hard_negative_weight, ids, negative_ids)
    else:
        row_labels = torch.arange(m, device=query.device)
    keys, col_labels, col_bias, owner = _keys(query, positive_key, negative_keys, symmetric, hard_negative_weight,
                                             in_batch_negatives and queue is None)
    col_ids = _key_ids(ids, key_ids, negative_ids, positive_key.shape[0], keys.shape[0], in_batch_negatives,
                       query.device)
    queued = 0
    if queue is not None:
        keys, col_labels, col_ids, col_bias, owner = _with_queue(queue, query, keys, col_labels, col_ids, col_bias,
                                                                 owner)
        queued = len(queue)
    if not in_batch_negatives and keys.shape[0] == positive_key.shape[0]:
        raise ValueError("in_batch_negatives=False leaves no negatives: pass negative_keys or a non-empty queue")
    row_ids = None if col_ids is None else (ids if ids is not None else torch.full_like(row_labels, -1))
    scale = _logit_scale(temperature, query)
    if symmetric and not gathering and ids is None:  # paired rows: one pass serves both directions
        loss_q, loss_k = ops.contrastive_pair(query, positive_key, scale, normalize=normalize, impl=impl)
        return _reduce((loss_q + loss_k) / 2, torch.ones_like(loss_q), reduction, allow_no_positive=False)
    loss, num_pos = ops.contrastive(query, keys, row_labels, col_labels, scale, col_bias=col_bias,
                                    col_bias_owner=owner, row_ids=row_ids, col_ids=col_ids, normalize=normalize,
                                    constant_cols=queued, impl=impl)
    if symmetric:
        # The other direction: this rank's keys as rows against every rank's queries.
        loss_t, _ = ops.contrastive(local_positive, all_queries, row_labels, col_labels, scale, row_ids=ids,
                                    col_ids=key_ids, normalize=normalize, impl=impl)
        loss = (loss + loss_t) / 2
    return (_reduce_global if gathering else _reduce)(loss, num_pos, reduction, allow_no_positive=False)


def _gather_pairs(query: Tensor, positive_key: Tensor, negative_keys: Optional[Tensor], symmetric: bool,
                  hard_negative_weight: float, ids: Optional[Tensor], negative_ids: Optional[Tensor]) -> tuple:
    """Under torch.distributed: (this rank's query ids in the global batch, every rank's positive
    keys, every rank's queries (symmetric only, else this rank's), every rank's negative keys,
    and the sample ids of every rank's pairs and negative keys)."""
    m = query.shape[0]
    queries_per_rank = distributed.sizes(m, query.device)
    first = distributed.offset(queries_per_rank)
    row_labels = torch.arange(first, first + m, device=query.device)
    all_queries = distributed.gather(query, queries_per_rank) if symmetric else query
    positive_key = distributed.gather(positive_key, queries_per_rank)
    key_ids = None if ids is None else distributed.gather(ids, queries_per_rank)
    if negative_keys is not None:
        local = negative_keys.shape[0]
        negatives_per_rank = distributed.sizes(local, query.device)
        if hard_negative_weight != 0.0 and negatives_per_rank != queries_per_rank:
            raise ValueError("hard_negative_weight needs one hard negative per query on every rank: "
                             f"queries per rank {queries_per_rank}, negative_keys {negatives_per_rank}")
        negative_keys = distributed.gather(_validate.embeddings("negative_keys", negative_keys), negatives_per_rank)
        if ids is not None:
            if negative_ids is None:
                negative_ids = torch.full((local,), -1, dtype=torch.int64, device=query.device)
            negative_ids = distributed.gather(negative_ids, negatives_per_rank)
    return row_labels, positive_key, all_queries, negative_keys, key_ids, negative_ids


def _keys(query: Tensor, positive_key: Tensor, negative_keys: Optional[Tensor], symmetric: bool,
          hard_negative_weight: float, batch_negatives_only: bool) -> tuple:
    """(keys, their labels, the hard-negative bias and its owners) of info_nce: positive keys are
    labelled with their pair id, negative keys -1 (never a positive); the bias adds
    hard_negative_weight to query i's logit with its own hard negative i only."""
    positives = positive_key.shape[0]
    col_labels = torch.arange(positives, device=query.device)
    if negative_keys is None:
        if hard_negative_weight != 0.0:
            raise ValueError("hard_negative_weight needs negative_keys")
        if positives < 2 and batch_negatives_only:
            raise ValueError("InfoNCE without negative_keys needs at least 2 pairs so that a query has a negative")
        return positive_key, col_labels, None, None
    if symmetric:
        raise ValueError("symmetric=True is defined for paired data only; drop negative_keys")
    negative_keys = _validate.embeddings("negative_keys", negative_keys)
    _validate.same_kind("negative_keys", negative_keys, "query", query)
    extra = negative_keys.shape[0]
    keys = torch.cat([positive_key, negative_keys])
    col_labels = torch.cat([col_labels, torch.full((extra,), -1, device=query.device, dtype=torch.int64)])
    if hard_negative_weight == 0.0:
        return keys, col_labels, None, None
    if extra != positives:
        raise ValueError("hard_negative_weight needs one hard negative per query: negative_keys must "
                         f"have {query.shape[0]} rows, got {extra}")
    dtype = ops.loss_dtype(query.dtype)
    col_bias = torch.cat([torch.zeros(positives, dtype=dtype, device=query.device),
                          torch.full((extra,), float(hard_negative_weight), dtype=dtype, device=query.device)])
    own = torch.arange(positives, device=query.device)
    return keys, col_labels, col_bias, torch.cat([own, own])


def _key_ids(ids: Optional[Tensor], key_ids: Optional[Tensor], negative_ids: Optional[Tensor], positives: int,
             total: int, in_batch_negatives: bool, device: torch.device) -> Optional[Tensor]:
    """Sample ids of info_nce's key columns, or None when nothing is masked: the pairs' ids on
    positive keys (POSITIVE_ONLY without in-batch negatives), negative_ids (else -1) on the rest."""
    if ids is None and in_batch_negatives:
        return None
    if not in_batch_negatives:
        key_ids = torch.full((positives,), ops.POSITIVE_ONLY, dtype=torch.int64, device=device)
    rest = total - positives
    if rest == 0:
        return key_ids
    if negative_ids is None:
        negative_ids = torch.full((rest,), -1, dtype=torch.int64, device=device)
    return torch.cat([key_ids, negative_ids])


def _with_queue(queue: MemoryQueue, query: Tensor, keys: Tensor, col_labels: Tensor, col_ids: Optional[Tensor],
                col_bias: Optional[Tensor], owner: Optional[Tensor]) -> tuple:
    """The queued keys appended as negative columns (label -1, their sample ids, no bias)."""
    if not isinstance(queue, MemoryQueue):
        raise TypeError(f"queue must be a fastcl.MemoryQueue, got {type(queue).__name__}")
    queued, queued_ids = queue.negatives(query)
    q = queued.shape[0]
    device = query.device
    keys = torch.cat([keys, queued])
    col_labels = torch.cat([col_labels, torch.full((q,), -1, dtype=torch.int64, device=device)])
    if col_ids is not None:
        col_ids = torch.cat([col_ids, queued_ids])
    if col_bias is not None:
        col_bias = torch.cat([col_bias, col_bias.new_zeros(q)])
        owner = torch.cat([owner, torch.full((q,), -1, dtype=torch.int64, device=device)])
    return keys, col_labels, col_ids, col_bias, owner

"""How each loss maps onto the contrastive core: the one place a loss becomes a problem.

NT-Xent and its multi-view / SupCon forms, InfoNCE with hard negatives, queues and CLIP's two
directions, open_clip's cross-entropy rows and sentence-transformers' ranking directions are each
translated here into fastcl.problem's objects (checking what only the translation can check);
fastcl.functional and the integrations run them with fastcl.ops."""

from __future__ import annotations

from typing import NamedTuple, Optional, Union

import torch
from torch import Tensor

from . import _validate, distributed
from .problem import POSITIVE_ONLY, ContrastiveProblem, LossProblem, PairProblem, loss_dtype
from .queue import MemoryQueue

Temperature = Union[float, Tensor]


def logit_scale(temperature: Temperature, like: Tensor) -> Tensor:
    """1 / temperature as a 0-dim tensor on the embeddings' device, differentiable when the
    temperature is a tensor that requires grad."""
    _validate.temperature(temperature)
    dtype = loss_dtype(like.dtype)
    if isinstance(temperature, Tensor):
        return (1.0 / temperature.to(device=like.device, dtype=dtype)).reshape(())
    return torch.full((), 1.0 / float(temperature), dtype=dtype, device=like.device)


def gathering(gather_distributed: bool) -> bool:
    if gather_distributed:
        return distributed.active()
    distributed.warn_not_gathering()
    return False


def nt_xent(z1: Tensor, z2: Optional[Tensor], labels: Optional[Tensor], sample_ids: Optional[Tensor],
            temperature: Temperature, normalize: bool, gather_distributed: bool) -> LossProblem:
    """NT-Xent / multi-view / SupCon (fastcl.functional.nt_xent): the stacked views against
    themselves (every rank's, when gathering), the self pair excluded."""
    rows, row_labels, views, n = _stack_views(z1, z2, labels)
    row_ids = None if sample_ids is None else _validate.sample_ids("sample_ids", sample_ids, n, rows).repeat(views)
    columns, col_labels, col_ids, row_offset = rows, row_labels, row_ids, 0
    global_batch = gathering(gather_distributed)
    if global_batch:
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
    else:
        if n < 2:
            raise ValueError(f"NT-Xent needs a batch of at least 2 samples so that every anchor has a negative, "
                             f"got N={n}")
        if sample_ids is not None:
            _validate.some_sample_apart("sample_ids", row_ids)
    problem = ContrastiveProblem(rows, columns, row_labels, col_labels, logit_scale(temperature, rows),
                                 row_ids=row_ids, col_ids=col_ids, row_offset=row_offset, exclude_self=True,
                                 normalize=normalize)
    return LossProblem((problem,), global_batch)


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


class Pairs(NamedTuple):
    """info_nce's inputs, checked: queries, their positive keys (row i's is key i) and what else
    becomes a column."""

    query: Tensor
    positive_key: Tensor
    negative_keys: Optional[Tensor] = None
    ids: Optional[Tensor] = None            # the pairs' sample ids
    negative_ids: Optional[Tensor] = None
    hard_negative_weight: float = 0.0
    in_batch_negatives: bool = True


def info_nce(pairs: Pairs, symmetric: bool, queue: Optional[MemoryQueue], temperature: Temperature,
             normalize: bool, gather_distributed: bool) -> LossProblem:
    """InfoNCE (fastcl.functional.info_nce): query i against keys [positive keys; negative keys;
    queue], its positive key i; with symmetric, the keys against the queries as well."""
    query, positive_key, ids = pairs.query, pairs.positive_key, pairs.ids
    scale = logit_scale(temperature, query)
    global_batch = gathering(gather_distributed)
    local_positive, all_queries, key_ids, negative_keys, negative_ids = positive_key, query, ids, \
        pairs.negative_keys, pairs.negative_ids
    if global_batch:
        row_labels, positive_key, all_queries, negative_keys, key_ids, negative_ids = _gather_pairs(
            pairs, symmetric)
    else:
        row_labels = torch.arange(query.shape[0], device=query.device)
    keys, col_labels, col_bias, owner = _keys(query, positive_key, negative_keys, symmetric,
                                             pairs.hard_negative_weight, pairs.in_batch_negatives and queue is None)
    col_ids = _key_ids(ids, key_ids, negative_ids, positive_key.shape[0], keys.shape[0], pairs.in_batch_negatives,
                       query.device)
    queued = 0
    if queue is not None:
        keys, col_labels, col_ids, col_bias, owner = _with_queue(queue, query, keys, col_labels, col_ids, col_bias,
                                                                 owner)
        queued = len(queue)
    if ids is not None and not global_batch and keys.shape[0] == positive_key.shape[0]:  # negatives: the batch
        _validate.some_sample_apart("sample_ids", ids)
    if not pairs.in_batch_negatives and keys.shape[0] == positive_key.shape[0]:
        raise ValueError("in_batch_negatives=False leaves no negatives: pass negative_keys or a non-empty queue")
    if symmetric and not global_batch and ids is None:  # paired rows: one pass serves both directions
        return LossProblem((PairProblem(query, positive_key, scale, normalize),))
    row_ids = None if col_ids is None else (ids if ids is not None else torch.full_like(row_labels, -1))
    parts = (ContrastiveProblem(query, keys, row_labels, col_labels, scale, col_bias=col_bias, col_bias_owner=owner,
                                row_ids=row_ids, col_ids=col_ids, normalize=normalize, constant_cols=queued),)
    if symmetric:  # the other direction: this rank's keys as rows against every rank's queries
        parts += (ContrastiveProblem(local_positive, all_queries, row_labels, col_labels, scale, row_ids=ids,
                                     col_ids=key_ids, normalize=normalize),)
    return LossProblem(parts, global_batch)


def _gather_pairs(pairs: Pairs, symmetric: bool) -> tuple:
    """Under torch.distributed: (this rank's query ids in the global batch, every rank's positive
    keys, every rank's queries (symmetric only, else this rank's), every rank's negative keys,
    and the sample ids of every rank's pairs and negative keys)."""
    query, negative_keys, ids, negative_ids = pairs.query, pairs.negative_keys, pairs.ids, pairs.negative_ids
    m = query.shape[0]
    queries_per_rank = distributed.sizes(m, query.device)
    first = distributed.offset(queries_per_rank)
    row_labels = torch.arange(first, first + m, device=query.device)
    all_queries = distributed.gather(query, queries_per_rank) if symmetric else query
    positive_key = distributed.gather(pairs.positive_key, queries_per_rank)
    key_ids = None if ids is None else distributed.gather(ids, queries_per_rank)
    if negative_keys is not None:
        local = negative_keys.shape[0]
        negatives_per_rank = distributed.sizes(local, query.device)
        if pairs.hard_negative_weight != 0.0 and negatives_per_rank != queries_per_rank:
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
    dtype = loss_dtype(query.dtype)
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
        key_ids = torch.full((positives,), POSITIVE_ONLY, dtype=torch.int64, device=device)
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


def cross_entropy_rows(rows: Tensor, cols: Tensor, first_row: int, scale: Tensor) -> ContrastiveProblem:
    """open_clip's cross-entropy of rows against cols with targets first_row + i, on the features
    as given (the model normalises them)."""
    labels = torch.arange(first_row, first_row + rows.shape[0], device=rows.device)
    return ContrastiveProblem(rows, cols, labels, torch.arange(cols.shape[0], device=rows.device), scale,
                              normalize=False)


class Ranking(NamedTuple):
    """sentence-transformers' MultipleNegativesRankingLoss batch (fastcl.integrations.sentence_transformers):
    this rank's queries and positive docs, every rank's queries and docs (positives first, then
    each hard-negative column), this rank's query ids in the global batch."""

    queries: Tensor
    local_docs: Tensor
    all_queries: Tensor
    all_docs: Tensor
    offset: int  # this rank's first query in the global batch
    scale: Tensor
    normalize: bool

    @property
    def rows(self) -> Tensor:
        return torch.arange(self.offset, self.offset + self.queries.shape[0], device=self.queries.device)


def ranking_queries(batch: Ranking, query_to_query: bool, hardness_mode: int, hardness: float) -> ContrastiveProblem:
    """Each local query against [all docs (+ all queries)], its positive doc i; with query_to_query
    the queries follow the docs so that q_i's own column is the excluded self."""
    total, docs = batch.all_queries.shape[0], batch.all_docs.shape[0]
    device = batch.queries.device
    doc_labels = torch.cat([torch.arange(total, device=device), torch.full((docs - total,), -1, device=device)])
    penalty = {}
    if hardness_mode:
        penalty = dict(hardness=hardness, hardness_mode=hardness_mode, col_bias_owner=_doc_owner(batch))
    if not query_to_query:
        return ContrastiveProblem(batch.queries, batch.all_docs, batch.rows, doc_labels, batch.scale,
                                  normalize=batch.normalize, **penalty)
    none = torch.full((total,), -1, device=device)
    if penalty:
        penalty["col_bias_owner"] = torch.cat([penalty["col_bias_owner"], none])
    return ContrastiveProblem(batch.queries, torch.cat([batch.all_docs, batch.all_queries]), batch.rows,
                              torch.cat([doc_labels, none]), batch.scale, row_offset=docs + batch.offset,
                              exclude_self=True, normalize=batch.normalize, **penalty)


def _doc_owner(batch: Ranking) -> Tensor:
    """The query each doc column belongs to (its positive and its hard negatives)."""
    total = batch.all_queries.shape[0]
    return torch.arange(total, device=batch.queries.device).repeat(batch.all_docs.shape[0] // total)


def ranking_docs(batch: Ranking, doc_to_query: bool, doc_to_doc: bool) -> tuple[ContrastiveProblem, Tensor]:
    """(the positive docs as rows, the row each takes as its designated positive): columns [all
    queries] (doc_to_query) and [all docs] (doc_to_doc, the row's query's own docs masked by
    sample ids). The positive is query i; without doc_to_query it is the positive doc of query
    i + 1, a column of the softmax like any other (the log-partition needs one)."""
    device, total, rows = batch.queries.device, batch.all_queries.shape[0], batch.rows
    none = torch.full((total,), -1, device=device)
    cols, labels, ids = [], [], []
    if doc_to_query:
        cols.append(batch.all_queries)
        labels.append(torch.arange(total, device=device))
        ids.append(none)
        anchor = batch.all_queries[rows]
    if doc_to_doc:
        if total < 2:
            raise ValueError("doc_to_doc needs a batch of at least 2 queries")
        doc_labels = torch.full((batch.all_docs.shape[0],), -1, device=device)
        if not doc_to_query:  # positive doc j is the anchor of row j - 1
            doc_labels[:total] = (torch.arange(total, device=device) - 1) % total
            anchor = batch.all_docs[(rows + 1) % total]
        cols.append(batch.all_docs)
        labels.append(doc_labels)
        ids.append(_doc_owner(batch))
    problem = ContrastiveProblem(batch.local_docs, torch.cat(cols), rows, torch.cat(labels), batch.scale,
                                 row_ids=rows, col_ids=torch.cat(ids), normalize=batch.normalize)
    return problem, anchor

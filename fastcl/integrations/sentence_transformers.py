"""sentence-transformers' ranking losses on fastcl's fused kernels: the same classes (subclassed,
so constructor, validation, get_config_dict and citation are sentence-transformers' own) with
the loss computed without the (batch x candidates) similarity matrices.

    # from sentence_transformers.sentence_transformer.losses import MultipleNegativesRankingLoss
    from fastcl.integrations.sentence_transformers import MultipleNegativesRankingLoss
    loss = MultipleNegativesRankingLoss(model, scale=20.0)      # the `loss` of a SentenceTransformerTrainer
"""

from __future__ import annotations

import warnings
from typing import Iterable, Optional

import torch
import torch.nn.functional as F
from torch import Tensor

from .. import distributed, ops
from ..engine.grad_cache import GradCache

try:
    from sentence_transformers import util as _st_util
    from sentence_transformers.sentence_transformer import losses as _st_losses
except ImportError as exc:  # pragma: no cover - exercised only without the library
    raise ImportError("fastcl.integrations.sentence_transformers needs sentence-transformers >= 6: "
                      "pip install fastcl[sentence-transformers]") from exc

Q2D, D2Q = "query_to_doc", "doc_to_query"
# sentence-transformers' hardness modes as the kernels' penalty modes (csrc/common/contrastive_math.h).
HARDNESS_MODES = {"in_batch_negatives": 1, "hard_negatives": 2, "all_negatives": 3}


def _normalizes(similarity_fct) -> bool:
    """Whether a similarity function is cosine (True) or a dot product (False): the two fused."""
    if similarity_fct is _st_util.cos_sim:
        return True
    if similarity_fct is _st_util.dot_score:
        return False
    name = getattr(similarity_fct, "__name__", type(similarity_fct).__name__)
    raise ValueError(f"fastcl's fused ranking losses support similarity_fct=util.cos_sim or util.dot_score, got "
                     f"{name}; use the sentence-transformers class for other similarity functions")


def _row_sim(a: Tensor, b: Tensor, normalize: bool) -> Tensor:
    a, b = a.float(), b.float()
    if normalize:
        a, b = F.normalize(a, p=2, dim=1), F.normalize(b, p=2, dim=1)
    return (a * b).sum(1)


def ranking_loss(embeddings: list, scale: float, normalize: bool, gather: bool, directions: tuple,
                 partition_mode: str, hardness_mode: Optional[str], hardness_strength: float) -> Tensor:
    """MultipleNegativesRankingLoss.compute_loss_from_embeddings of sentence-transformers 6, fused.

    Each local query i is a kernel row against [all docs (+ all queries)] (its positive: doc i);
    with doc_to_query / doc_to_doc its positive doc is a second row against [all queries (+ all
    docs but its query's own)]. A row's log-partition is its kernel loss plus the logit of its
    designated positive, so the joint softmax is logaddexp of the two rows' and per_direction
    their mean; gradients flow through both, as through sentence-transformers' matrices."""
    queries, docs = embeddings[0], list(embeddings[1:])
    n, device = queries.shape[0], queries.device
    offset = 0
    if gather and distributed.active():
        counts = [n] * torch.distributed.get_world_size()
        offset = distributed.offset(counts)
        all_queries, docs = distributed.gather(queries, counts), [distributed.gather(d, counts) for d in docs]
    else:
        all_queries = queries
    total = all_queries.shape[0]
    all_docs = torch.cat(docs)
    local_docs = docs[0][offset:offset + n]
    rows = torch.arange(offset, offset + n, device=device)
    doc_owner = torch.arange(total, device=device).repeat(len(docs))
    doc_labels = torch.cat([torch.arange(total, device=device),
                            torch.full((all_docs.shape[0] - total,), -1, device=device)])
    none = torch.full((total,), -1, device=device)
    scale_t = torch.tensor(float(scale), dtype=ops.loss_dtype(queries.dtype), device=device)
    penalty = dict(hardness=float(hardness_strength), hardness_mode=HARDNESS_MODES[hardness_mode]) \
        if hardness_mode is not None and hardness_strength > 0 else {}
    owner = dict(col_bias_owner=doc_owner) if penalty else {}

    if set(directions) == {Q2D, D2Q} and len(docs) == 1 and total == n and not penalty:
        # Pairs only, one process: both directions from one pass over the logit tiles.
        loss_q, loss_d = ops.contrastive_pair(queries, all_docs, scale_t, normalize=normalize)
        both = torch.logaddexp(loss_q, loss_d) if partition_mode == "joint" else (loss_q + loss_d) / 2
        return both.mean()
    if "query_to_query" in directions:  # queries after the docs: q_i's own column is the excluded self
        cols = torch.cat([all_docs, all_queries])
        labels = torch.cat([doc_labels, none])
        if penalty:
            owner = dict(col_bias_owner=torch.cat([doc_owner, none]))
        loss_a, _ = ops.contrastive(queries, cols, rows, labels, scale_t, row_offset=all_docs.shape[0] + offset,
                                    exclude_self=True, normalize=normalize, **owner, **penalty)
    else:
        loss_a, _ = ops.contrastive(queries, all_docs, rows, doc_labels, scale_t, normalize=normalize, **owner,
                                    **penalty)
    with_docs_as_rows = {"doc_to_query", "doc_to_doc"} & set(directions)
    if not with_docs_as_rows:
        return loss_a.mean()
    positive = scale * _row_sim(queries, local_docs, normalize)
    loss_b, anchor = _doc_rows(local_docs, all_queries, all_docs, rows, doc_owner, total, directions, scale_t,
                               normalize)
    lse_a, lse_b = loss_a + positive, loss_b + scale * _row_sim(local_docs, anchor, normalize)
    log_z = torch.logaddexp(lse_a, lse_b) if partition_mode == "joint" else (lse_a + lse_b) / 2
    return (log_z - positive).mean()


def _doc_rows(local_docs: Tensor, all_queries: Tensor, all_docs: Tensor, rows: Tensor, doc_owner: Tensor, total: int,
              directions: tuple, scale_t: Tensor, normalize: bool) -> tuple:
    """(kernel loss of the positive docs as rows, the column each takes as its designated positive):
    columns [all queries] (doc_to_query) and [all docs] (doc_to_doc, the row's query's own docs
    masked by sample ids). The positive is query i; without doc_to_query it is the positive doc of
    query i + 1, a column of the softmax like any other (the log-partition needs one)."""
    device = local_docs.device
    none = torch.full((total,), -1, device=device)
    cols, labels, ids = [], [], []
    if "doc_to_query" in directions:
        cols.append(all_queries)
        labels.append(torch.arange(total, device=device))
        ids.append(none)
        anchor = all_queries[rows]
    if "doc_to_doc" in directions:
        if total < 2:
            raise ValueError("doc_to_doc needs a batch of at least 2 queries")
        doc_labels = torch.full((all_docs.shape[0],), -1, device=device)
        if "doc_to_query" not in directions:  # positive doc j is the anchor of row j - 1
            doc_labels[:total] = (torch.arange(total, device=device) - 1) % total
            anchor = all_docs[(rows + 1) % total]
        cols.append(all_docs)
        labels.append(doc_labels)
        ids.append(doc_owner)
    loss, _ = ops.contrastive(local_docs, torch.cat(cols), rows, torch.cat(labels), scale_t, row_ids=rows,
                              col_ids=torch.cat(ids), normalize=normalize)
    return loss, anchor


class _Fused:
    """Replaces sentence-transformers' loss computation with the fused one; everything else is theirs."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        _normalizes(self.similarity_fct)

    def compute_loss_from_embeddings(self, embeddings: list, labels: Optional[Tensor] = None) -> Tensor:
        if len(embeddings) < 2:
            raise ValueError(f"Expected at least 2 embeddings, got {len(embeddings)}")
        return ranking_loss(list(embeddings), self.scale, _normalizes(self.similarity_fct), self.gather_across_devices,
                            self.directions, self.partition_mode, self.hardness_mode, self.hardness_strength)


class MultipleNegativesRankingLoss(_Fused, _st_losses.MultipleNegativesRankingLoss):
    """sentence-transformers' MultipleNegativesRankingLoss (all arguments), fused."""


with warnings.catch_warnings():  # subclassing warns as using does; only using should (as upstream)
    warnings.simplefilter("ignore", DeprecationWarning)

    class MultipleNegativesSymmetricRankingLoss(_Fused, _st_losses.MultipleNegativesSymmetricRankingLoss):
        """sentence-transformers' MultipleNegativesSymmetricRankingLoss (all arguments, deprecated
        there in favour of MultipleNegativesRankingLoss(directions=(query_to_doc, doc_to_query),
        partition_mode="per_direction")), fused."""


class CachedMultipleNegativesRankingLoss(_st_losses.CachedMultipleNegativesRankingLoss):
    """sentence-transformers' CachedMultipleNegativesRankingLoss (all arguments), on fastcl's
    gradient caching (fastcl.GradCache, mini_batch_size rows per encoder call) and the fused loss:
    the whole batch's loss at once, no chunking of the similarity matrix needed."""

    def __init__(self, model, *args, **kwargs):
        super().__init__(model, *args, **kwargs)
        if self.mini_batch_num_tokens is not None:
            raise ValueError("fastcl's CachedMultipleNegativesRankingLoss cuts mini-batches by rows: leave "
                             "mini_batch_num_tokens unset")
        inner = self.loss
        self.loss = MultipleNegativesRankingLoss(
            model, scale=inner.scale, similarity_fct=inner.similarity_fct,
            gather_across_devices=inner.gather_across_devices, directions=inner.directions,
            partition_mode=inner.partition_mode, hardness_mode=inner.hardness_mode,
            hardness_strength=inner.hardness_strength)

    def forward(self, sentence_features: Iterable[dict], labels: Optional[Tensor] = None) -> Tensor:
        features = list(sentence_features)
        if len(features) < 2:
            raise ValueError(f"Expected at least 2 inputs, got {len(features)}")
        caches, reps = [], []
        for feature in features:
            tensors = {k: v for k, v in feature.items() if isinstance(v, Tensor)}
            extras = {k: v for k, v in feature.items() if not isinstance(v, Tensor)}
            cache = GradCache(self.model, self.mini_batch_size,
                              forward=lambda extras=extras, **chunk: self.model({**extras, **chunk})["sentence_embedding"])
            caches.append(cache)
            reps.append(cache.embed(tensors))
        loss = self.loss.compute_loss_from_embeddings(reps, labels)
        if not torch.is_grad_enabled():
            return loss.detach()
        grads = torch.autograd.grad(loss, reps)
        out = loss.detach().requires_grad_()

        def replay(grad_output: Tensor) -> None:
            # The trainer's backward reaches the loss: each column's chunks again, with the graph
            # (autograd runs hooks with grad mode off).
            with torch.enable_grad():
                for cache, grad in zip(caches, grads):
                    cache.replay(grad * grad_output)

        out.register_hook(replay)
        return out

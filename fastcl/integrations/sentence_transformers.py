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

from .. import distributed, ops, translate
from ..problem import PairProblem
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
    n = queries.shape[0]
    offset = 0
    if gather and distributed.active():
        counts = [n] * torch.distributed.get_world_size()
        offset = distributed.offset(counts)
        all_queries, docs = distributed.gather(queries, counts), [distributed.gather(d, counts) for d in docs]
    else:
        all_queries = queries
    scale_t = torch.tensor(float(scale), dtype=ops.loss_dtype(queries.dtype), device=queries.device)
    batch = translate.Ranking(queries, docs[0][offset:offset + n], all_queries, torch.cat(docs), offset, scale_t,
                              normalize)
    penalised = hardness_mode is not None and hardness_strength > 0
    if set(directions) == {Q2D, D2Q} and len(docs) == 1 and batch.all_queries.shape[0] == n \
            and not penalised:
        # Pairs only, one process: both directions from one pass over the logit tiles.
        loss_q, loss_d = ops.contrastive_pair(PairProblem(queries, batch.all_docs, scale_t, normalize))
        both = torch.logaddexp(loss_q, loss_d) if partition_mode == "joint" else (loss_q + loss_d) / 2
        return both.mean()
    rows_problem = translate.ranking_queries(batch, "query_to_query" in directions,
                                             HARDNESS_MODES[hardness_mode] if penalised else 0, float(hardness_strength))
    loss_a, _ = ops.contrastive(rows_problem)
    if not {D2Q, "doc_to_doc"} & set(directions):
        return loss_a.mean()
    positive = scale * _row_sim(queries, batch.local_docs, normalize)
    docs_problem, anchor = translate.ranking_docs(batch, D2Q in directions, "doc_to_doc" in directions)
    loss_b, _ = ops.contrastive(docs_problem)
    lse_a, lse_b = loss_a + positive, loss_b + scale * _row_sim(batch.local_docs, anchor, normalize)
    log_z = torch.logaddexp(lse_a, lse_b) if partition_mode == "joint" else (lse_a + lse_b) / 2
    return (log_z - positive).mean()


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

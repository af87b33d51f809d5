"""nn.Module forms of the contrastive losses, drop-in replacements for hand-written ones."""

from __future__ import annotations

import math
from typing import Optional, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import _validate, functional
from .queue import MemoryQueue


def _push(queue: Optional[MemoryQueue], query: Tensor, keys: Tensor, ids: Optional[Tensor], normalize: bool) -> None:
    """Enqueues a training step's keys after its loss (lightly's rule: when the queries require
    grad), normalised as the loss saw them."""
    if queue is not None and query.requires_grad and torch.is_grad_enabled():
        keys = keys.detach().to(queue.keys.dtype)  # normalised in the storage dtype: unit norm as stored
        queue.push(F.normalize(keys, dim=1) if normalize else keys, ids)


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR) loss; with ``labels`` the supervised contrastive loss (SupCon L_out).

    Fused: cosine similarity, temperature, self-mask and log-softmax run tiled in one kernel,
    so memory is O(N * D), never the (2N)x(2N) logit matrix.

    Args:
        temperature: > 0; a float, or a 0-dim tensor (learnable when it requires grad).
        normalize: L2-normalise the rows first (cosine similarity); False uses them as given.
        reduction: "mean" over anchors, "sum", or "none" (one loss per anchor, rows [z1; z2]).
        allow_no_positive: with labels, skip anchors that have no positive instead of raising.
        gather_distributed: under torch.distributed (DDP), negatives come from every rank and the
            gradients equal those of one process holding the global batch (fastcl.distributed).
        impl: "auto" (fused kernel when built), "fastcl" (fused, error if missing), "torch".
        queue: a fastcl.MemoryQueue: lightly's NTXentLoss(memory_bank_size=...): z1[i] against
            its positive z2[i] and the queued keys (no in-batch negatives); z2 is queued after
            each training call.

    Call: ``criterion(z1, z2)`` with two views (N, D); ``criterion(z)`` with z (N, V, D) views;
    ``criterion(z, labels=y)`` with z (M, D) and y (M,) (or z (N, V, D) and y (N,));
    ``sample_ids=ids`` (N,) masks duplicates: samples with one id are not each other's
    negatives. Inputs fp32/fp16/bf16 (fp64 on the CPU); returns a float32 scalar (float64 for
    fp64 inputs).

    Example::

        criterion = fastcl.NTXentLoss(temperature=0.5)
        z1, z2 = model(view1), model(view2)       # (N, D) each
        loss = criterion(z1, z2)                  # replaces cat -> normalise -> matmul -> mask -> CE
        loss.backward()
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.5, *, normalize: bool = True,
                 reduction: str = "mean", allow_no_positive: bool = False, gather_distributed: bool = False,
                 impl: str = "auto", queue: Optional[MemoryQueue] = None):
        super().__init__()
        _validate.temperature(temperature)
        _validate.reduction(reduction)
        self.temperature = temperature
        self.normalize = normalize
        self.reduction = reduction
        self.allow_no_positive = allow_no_positive
        self.gather_distributed = gather_distributed
        self.impl = impl
        self.queue = queue

    def forward(self, z1: Tensor, z2: Optional[Tensor] = None, labels: Optional[Tensor] = None,
                sample_ids: Optional[Tensor] = None) -> Tensor:
        loss = functional.nt_xent(z1, z2, labels=labels, temperature=self.temperature, normalize=self.normalize,
                                  reduction=self.reduction, allow_no_positive=self.allow_no_positive,
                                  gather_distributed=self.gather_distributed, impl=self.impl, sample_ids=sample_ids,
                                  queue=self.queue)
        _push(self.queue, z1, z2 if z2 is not None else z1, sample_ids, self.normalize)
        return loss

    def extra_repr(self) -> str:
        return f"temperature={self.temperature}, normalize={self.normalize}, reduction={self.reduction!r}"


class InfoNCELoss(nn.Module):
    """InfoNCE loss of queries against their positive keys (SimCSE; CLIP with symmetric=True).

    Query i's positive is positive_key i; every other positive key and every negative key is a
    negative. Fused like NTXentLoss: O(M * D) memory.

    Args:
        temperature: > 0; a float or a 0-dim tensor (CLIP's learnable logit scale is 1 / temperature).
        symmetric: average query->key and key->query (CLIP); paired data only.
        hard_negative_weight: added to query i's logit with its own hard negative (negative_keys
            row i), as in the SimCSE code; needs one negative key per query.
        in_batch_negatives: False leaves only negative_keys and the queue as negatives (MoCo).
        queue: a fastcl.MemoryQueue of extra negative keys; the positive keys are queued after
            each training call (MoCo v2: in_batch_negatives=False and a queue of 65536).
        normalize, reduction, gather_distributed, impl: as NTXentLoss.

    Call: ``criterion(query, positive_key, negative_keys=None, sample_ids=None,
    negative_ids=None)`` with query and positive_key (M, D), negative_keys (K, D), and the
    pairs' and negative keys' sample ids (fastcl.info_nce); returns a float32 scalar (float64
    for fp64 inputs).

    Example::

        criterion = fastcl.InfoNCELoss(temperature=0.05, hard_negative_weight=0.0)
        loss = criterion(encoder(sent0), encoder(sent1), negative_keys=encoder(hard_neg))
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.1, *, symmetric: bool = False,
                 hard_negative_weight: float = 0.0, normalize: bool = True, reduction: str = "mean",
                 gather_distributed: bool = False, impl: str = "auto", in_batch_negatives: bool = True,
                 queue: Optional[MemoryQueue] = None):
        super().__init__()
        _validate.temperature(temperature)
        _validate.reduction(reduction)
        _validate.finite_weight("hard_negative_weight", hard_negative_weight)
        self.in_batch_negatives = in_batch_negatives
        self.queue = queue
        self.temperature = temperature
        self.symmetric = symmetric
        self.hard_negative_weight = hard_negative_weight
        self.normalize = normalize
        self.reduction = reduction
        self.gather_distributed = gather_distributed
        self.impl = impl

    def forward(self, query: Tensor, positive_key: Tensor, negative_keys: Optional[Tensor] = None,
                sample_ids: Optional[Tensor] = None, negative_ids: Optional[Tensor] = None) -> Tensor:
        loss = functional.info_nce(query, positive_key, negative_keys, temperature=self.temperature,
                                   symmetric=self.symmetric, hard_negative_weight=self.hard_negative_weight,
                                   normalize=self.normalize, reduction=self.reduction,
                                   gather_distributed=self.gather_distributed, impl=self.impl, sample_ids=sample_ids,
                                   negative_ids=negative_ids, in_batch_negatives=self.in_batch_negatives,
                                   queue=self.queue)
        _push(self.queue, query, positive_key, sample_ids, self.normalize)
        return loss

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, symmetric={self.symmetric}, "
                f"hard_negative_weight={self.hard_negative_weight}, in_batch_negatives={self.in_batch_negatives}, "
                f"reduction={self.reduction!r}")


class SigLIPLoss(nn.Module):
    """The sigmoid loss of SigLIP (fastcl.functional.siglip): every image-text pair is its own
    binary problem, the diagonal positive; fused on the CPU (256 x 256 tiles, never the M x M matrix).

    The module owns SigLIP's two learnable scalars in open_clip's parametrisation: ``logit_scale``
    holds the log of the scale (the loss uses ``logit_scale.exp()``) and ``logit_bias`` the bias,
    initialised to log(10) and -10 as in the paper and open_clip's SigLIP models.

    Args:
        init_logit_scale: initial log scale (default log 10).
        init_logit_bias: initial bias (default -10).
        learnable: hold both as nn.Parameters (True) or as buffers.
        normalize: L2-normalise the rows first (False: the features are used as given, as open_clip's
            SigLipLoss does after its model normalised them).
        gather_distributed: under torch.distributed, every rank's rows against the global batch, the
            b rows passed around the ranks in a ring (memory O(M x D) per rank whatever the world size;
            fastcl.functional.siglip).
        impl: "auto", "fastcl" or "torch".

    Call: ``criterion(a, b)`` with paired rows (M, D); ``criterion(a, b, logit_scale, logit_bias)``
    uses the given scale (already exponentiated, as open_clip's models pass it) and bias instead of
    the module's; ``sample_ids=`` (M,) makes rows sharing an id positives. Returns a float32 scalar
    (float64 for fp64 inputs).

    Example::

        criterion = fastcl.SigLIPLoss()
        loss = criterion(image_encoder(images), text_encoder(texts))   # also trains scale and bias
    """

    def __init__(self, init_logit_scale: float = math.log(10.0), init_logit_bias: float = -10.0, *,
                 learnable: bool = True, normalize: bool = True, gather_distributed: bool = False,
                 impl: str = "auto"):
        super().__init__()
        _validate.finite_weight("init_logit_scale", init_logit_scale)
        _validate.finite_weight("init_logit_bias", init_logit_bias)
        for name, value in (("logit_scale", init_logit_scale), ("logit_bias", init_logit_bias)):
            tensor = torch.tensor(float(value))
            if learnable:
                setattr(self, name, nn.Parameter(tensor))
            else:
                self.register_buffer(name, tensor)
        self.normalize, self.gather_distributed, self.impl = normalize, gather_distributed, impl

    def forward(self, a: Tensor, b: Tensor, logit_scale: Optional[Tensor] = None,
                logit_bias: Optional[Tensor] = None, sample_ids: Optional[Tensor] = None) -> Tensor:
        scale = self.logit_scale.exp() if logit_scale is None else logit_scale
        bias = self.logit_bias if logit_bias is None else logit_bias
        return functional.siglip(a, b, scale, bias, self.normalize, sample_ids=sample_ids,
                                 gather_distributed=self.gather_distributed, impl=self.impl)

    def extra_repr(self) -> str:
        return f"normalize={self.normalize}, gather_distributed={self.gather_distributed}"

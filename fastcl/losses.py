"""nn.Module forms of the contrastive losses, drop-in replacements for hand-written ones."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from . import _validate, functional


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

    Call: ``criterion(z1, z2)`` with two views (N, D); ``criterion(z)`` with z (N, V, D) views;
    ``criterion(z, labels=y)`` with z (M, D) and y (M,) (or z (N, V, D) and y (N,)). Inputs
    fp32/fp16/bf16 (fp64 on the CPU); returns a float32 scalar (float64 for fp64 inputs).

    Example::

        criterion = fastcl.NTXentLoss(temperature=0.5)
        z1, z2 = model(view1), model(view2)       # (N, D) each
        loss = criterion(z1, z2)                  # replaces cat -> normalise -> matmul -> mask -> CE
        loss.backward()
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.5, *, normalize: bool = True,
                 reduction: str = "mean", allow_no_positive: bool = False, gather_distributed: bool = False,
                 impl: str = "auto"):
        super().__init__()
        _validate.temperature(temperature)
        _validate.reduction(reduction)
        self.temperature = temperature
        self.normalize = normalize
        self.reduction = reduction
        self.allow_no_positive = allow_no_positive
        self.gather_distributed = gather_distributed
        self.impl = impl

    def forward(self, z1: Tensor, z2: Optional[Tensor] = None, labels: Optional[Tensor] = None) -> Tensor:
        return functional.nt_xent(z1, z2, labels=labels, temperature=self.temperature, normalize=self.normalize,
                                  reduction=self.reduction, allow_no_positive=self.allow_no_positive,
                                  gather_distributed=self.gather_distributed, impl=self.impl)

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
        normalize, reduction, gather_distributed, impl: as NTXentLoss.

    Call: ``criterion(query, positive_key, negative_keys=None)`` with query and positive_key
    (M, D) and negative_keys (K, D); returns a float32 scalar (float64 for fp64 inputs).

    Example::

        criterion = fastcl.InfoNCELoss(temperature=0.05, hard_negative_weight=0.0)
        loss = criterion(encoder(sent0), encoder(sent1), negative_keys=encoder(hard_neg))
    """

    def __init__(self, temperature: Union[float, Tensor] = 0.1, *, symmetric: bool = False,
                 hard_negative_weight: float = 0.0, normalize: bool = True, reduction: str = "mean",
                 gather_distributed: bool = False, impl: str = "auto"):
        super().__init__()
        _validate.temperature(temperature)
        _validate.reduction(reduction)
        _validate.finite_weight("hard_negative_weight", hard_negative_weight)
        self.temperature = temperature
        self.symmetric = symmetric
        self.hard_negative_weight = hard_negative_weight
        self.normalize = normalize
        self.reduction = reduction
        self.gather_distributed = gather_distributed
        self.impl = impl

    def forward(self, query: Tensor, positive_key: Tensor, negative_keys: Optional[Tensor] = None) -> Tensor:
        return functional.info_nce(query, positive_key, negative_keys, temperature=self.temperature,
                                   symmetric=self.symmetric, hard_negative_weight=self.hard_negative_weight,
                                   normalize=self.normalize, reduction=self.reduction,
                                   gather_distributed=self.gather_distributed, impl=self.impl)

    def extra_repr(self) -> str:
        return (f"temperature={self.temperature}, symmetric={self.symmetric}, "
                f"hard_negative_weight={self.hard_negative_weight}, reduction={self.reduction!r}")

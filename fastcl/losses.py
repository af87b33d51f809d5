"""nn.Module forms of the contrastive losses, drop-in replacements for hand-written ones."""

from __future__ import annotations

from typing import Optional, Union

from torch import Tensor, nn

from . import _validate, functional


class NTXentLoss(nn.Module):
    """NT-Xent (SimCLR) loss; with ``labels`` the supervised contrastive loss (SupCon L_out).

    >>> criterion = NTXentLoss(temperature=0.5)
    >>> loss = criterion(z1, z2)              # two views (N, D)
    >>> loss = criterion(z, labels=y)         # SupCon, z (M, D) or (N, V, D)

    gather_distributed=True: under torch.distributed (DDP), negatives come from every rank and the
    gradients equal those of one process holding the global batch (fastcl.distributed).
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

    >>> InfoNCELoss(temperature=0.05)(query, positive_key, negative_keys=hard_negatives)
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

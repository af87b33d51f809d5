"""lightly's NTXentLoss on fastcl's fused kernels: the same arguments and numbers, memory bank
included, without the (2N)x(2N) logit matrix.

    # from lightly.loss import NTXentLoss
    from fastcl.integrations.lightly import NTXentLoss
    criterion = NTXentLoss(temperature=0.5, memory_bank_size=(4096, 128))
"""

from __future__ import annotations

from typing import Sequence, Union

from torch import Tensor, nn

from .. import distributed, functional
from ..losses import _push
from ..queue import MemoryQueue


def _bank_size(memory_bank_size: Union[int, Sequence[int]]) -> tuple:
    """lightly 1.6's rule: 0 (no bank) or (size, dim); a bare int > 0 lacks the dimension."""
    size = (memory_bank_size,) if isinstance(memory_bank_size, int) else tuple(memory_bank_size)
    if any(x < 0 for x in size):
        raise ValueError(f"Illegal memory bank size {memory_bank_size}, all entries must be non-negative.")
    if isinstance(memory_bank_size, int) and memory_bank_size > 0:
        raise ValueError(f"Memory bank size 'size={memory_bank_size}' does not specify the feature dimension. "
                         f"Set it with 'size=({memory_bank_size}, dim)', or pass 'size=0' to disable the memory bank.")
    if size != (0,) and len(size) != 2:
        raise ValueError(f"Illegal memory bank size {memory_bank_size}, expected a (num_features, dim) tuple, or "
                         "'size=0' to disable the memory bank.")
    return size


class NTXentLoss(nn.Module):
    """lightly.loss.NTXentLoss (lightly 1.6), fused.

    Args:
        temperature: as lightly (its absolute value must exceed 1e-8).
        memory_bank_size: 0, or (size, dim): out0 against out1 and a bank of past out1 (lightly's
            memory bank: random unit vectors at first, out1 enqueued when out0 requires grad, a
            batch that runs past the end cut there).
        gather_distributed: negatives from every rank (without a bank); with a bank, the bank
            takes every rank's out1.

    Call: ``criterion(out0, out1)`` with out0, out1 (N, D); returns the mean loss (0 for a batch of
    one without a bank or other ranks, as lightly).
    """

    def __init__(self, temperature: float = 0.5, memory_bank_size: Union[int, Sequence[int]] = 0,
                 gather_distributed: bool = False):
        super().__init__()
        self.temperature = temperature
        self.gather_distributed = gather_distributed
        if abs(self.temperature) < 1e-8:
            raise ValueError(f"Illegal temperature: abs({self.temperature}) < 1e-8")
        size = _bank_size(memory_bank_size)
        self.memory_bank = None if size == (0,) else MemoryQueue(
            size[0], size[1], wrap=False, gather_distributed=gather_distributed)

    def forward(self, out0: Tensor, out1: Tensor) -> Tensor:
        alone = out0.shape[0] == 1 and not (self.gather_distributed and distributed.active())
        if self.memory_bank is None and alone:
            # lightly's logits are then each view's positive alone: a cross-entropy of exactly 0 (a
            # loader with drop_last=False meets a last batch of one); the fused loss has no negatives
            return (out0.sum() + out1.sum()) * 0.0
        if self.memory_bank is None:
            return functional.nt_xent(out0, out1, temperature=self.temperature,
                                      gather_distributed=self.gather_distributed)
        self.memory_bank.to(out0.device)
        loss = functional.nt_xent(out0, out1, temperature=self.temperature, gather_distributed=self.gather_distributed,
                                  queue=self.memory_bank)
        _push(self.memory_bank, out0, out1, None, normalize=True)
        return loss

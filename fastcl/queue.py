"""A FIFO queue of past keys, used as extra negatives (MoCo's queue, lightly's memory bank).

The queue's keys become columns of the fused kernels next to the batch's keys, so a query is
compared with every queued key tile by tile: no (N, size) matrix is built."""

from __future__ import annotations

from typing import Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from . import distributed

STARTS = ("random", "empty")


class MemoryQueue(nn.Module):
    """A queue of `size` keys of dimension `dim`, with the sample id of each (-1: none).

    Args:
        size: number of keys kept (MoCo v2: 65536); >= 1.
        dim: key dimension; must equal the embeddings' D.
        start: "random" fills the queue with unit-norm Gaussian keys, as MoCo and lightly do, so
            that it supplies negatives from the first step; "empty" starts with none.
        wrap: a batch that runs past the end continues at the front (a true FIFO). False is
            lightly's memory bank: the rows past the end are dropped and the next batch starts
            at the front.
        gather_distributed: under torch.distributed, push() takes the keys of every rank in rank
            order, so that every rank holds the same queue.
        dtype: storage dtype of the keys (the loss casts them to the embeddings' dtype).

    The contents are buffers (keys, ids, ptr, filled): saved in a state_dict and in the trainers'
    checkpoints, moved by ``.to(device)``.

    Example (MoCo v2)::

        criterion = fastcl.InfoNCELoss(temperature=0.2, in_batch_negatives=False,
                                       queue=fastcl.MemoryQueue(65536, 128))
        loss = criterion(q, k)      # k from the momentum encoder; k is queued after the loss
    """

    def __init__(self, size: int, dim: int, *, start: str = "random", wrap: bool = True,
                 gather_distributed: bool = True, dtype: torch.dtype = torch.float32,
                 device: Optional[torch.device] = None):
        super().__init__()
        for name, value in (("size", size), ("dim", dim)):
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"MemoryQueue {name} must be an int >= 1, got {value!r}")
        if start not in STARTS:
            raise ValueError(f"MemoryQueue start must be one of {STARTS}, got {start!r}")
        if dtype not in (torch.float32, torch.float16, torch.bfloat16, torch.float64):
            raise TypeError(f"MemoryQueue dtype must be a floating dtype, got {dtype}")
        self.size, self.dim, self.wrap, self.gather_distributed = size, dim, wrap, gather_distributed
        keys = torch.zeros(size, dim, dtype=dtype, device=device)
        if start == "random":
            keys = F.normalize(torch.randn(size, dim, device=device).to(dtype), dim=1)  # unit norm as stored
        self.register_buffer("keys", keys)
        self.register_buffer("ids", torch.full((size,), -1, dtype=torch.int64, device=device))
        self.register_buffer("ptr", torch.zeros((), dtype=torch.int64, device=device))
        self.register_buffer("filled", torch.tensor(size if start == "random" else 0, device=device))

    def __len__(self) -> int:
        return int(self.filled)

    def negatives(self, like: Tensor) -> tuple[Tensor, Tensor]:
        """(keys, ids) held now, detached, as columns for embeddings `like` (N, D): cast to its
        dtype; a clear error when the dimension or device differs."""
        if like.shape[-1] != self.dim:
            raise ValueError(f"the queue holds keys of dim {self.dim} but the embeddings have D={like.shape[-1]}")
        if self.keys.device != like.device:
            raise ValueError(f"the queue is on {self.keys.device} but the embeddings are on {like.device}; "
                             "move the loss (or the queue) with .to(device)")
        n = len(self)
        return self.keys[:n].detach().to(like.dtype), self.ids[:n]

    @torch.no_grad()
    def push(self, keys: Tensor, ids: Optional[Tensor] = None) -> None:
        """Enqueues keys (B, dim) (detached) with their sample ids (B,) (-1 when None), dropping
        the oldest; under torch.distributed, every rank's keys in rank order."""
        if keys.dim() != 2 or keys.shape[1] != self.dim:
            raise ValueError(f"queue keys must have shape (B, {self.dim}), got {tuple(keys.shape)}")
        if ids is None:
            ids = torch.full((keys.shape[0],), -1, dtype=torch.int64, device=keys.device)
        elif ids.shape != (keys.shape[0],):
            raise ValueError(f"queue ids must have shape ({keys.shape[0]},), got {tuple(ids.shape)}")
        keys, ids = keys.detach(), ids.to(torch.int64)
        if self.gather_distributed and distributed.active():
            counts = distributed.sizes(keys.shape[0], keys.device)
            keys, ids = distributed.gather(keys, counts), distributed.gather(ids, counts)
        keys, ids = keys.to(device=self.keys.device, dtype=self.keys.dtype), ids.to(self.ids.device)
        if self.wrap:
            self._push_wrapping(keys, ids)
        else:
            self._push_restarting(keys, ids)

    def _push_wrapping(self, keys: Tensor, ids: Tensor) -> None:
        keys, ids = keys[-self.size:], ids[-self.size:]  # a batch longer than the queue keeps its newest rows
        b, ptr = keys.shape[0], int(self.ptr)
        first = min(b, self.size - ptr)
        self.keys[ptr:ptr + first], self.ids[ptr:ptr + first] = keys[:first], ids[:first]
        self.keys[:b - first], self.ids[:b - first] = keys[first:], ids[first:]
        self.ptr.fill_((ptr + b) % self.size)
        self.filled.fill_(min(self.size, int(self.filled) + b))

    def _push_restarting(self, keys: Tensor, ids: Tensor) -> None:
        b, ptr = keys.shape[0], int(self.ptr)
        end = min(self.size, ptr + b)
        self.keys[ptr:end], self.ids[ptr:end] = keys[:end - ptr], ids[:end - ptr]
        self.ptr.fill_(0 if ptr + b >= self.size else ptr + b)
        self.filled.fill_(max(int(self.filled), end))

    def extra_repr(self) -> str:
        return f"size={self.size}, dim={self.dim}, filled={len(self)}, wrap={self.wrap}"

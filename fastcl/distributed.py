"""Global negatives across processes: a differentiable all-gather that takes uneven batch sizes,
and the bookkeeping (this rank's offset into the gathered rows, the global row count) that makes
each rank's loss the right share of the single-process global-batch loss.

Why the gradient is right by construction: rank r's loss uses its own rows and everyone's
columns. The all-gather's backward sums, over all ranks, the gradients that reach rank r's rows
through the columns, and adds them to the gradients through r's own rows; DDP then averages the
parameter gradients over ranks. With each rank's loss scaled to (sum of its row losses) *
world_size / (global row count), the mean over ranks of the losses is the global mean and the
averaged gradient is its gradient, for any world size and uneven batches.
"""

from __future__ import annotations

import warnings

import torch
import torch.distributed as dist
from torch import Tensor

_warned = False


def active() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def warn_not_gathering() -> None:
    """One warning per process when a process group exists but the loss sees only local rows."""
    global _warned
    if not _warned and active():
        _warned = True
        warnings.warn("fastcl: a torch.distributed process group is initialised but the loss was built without "
                      "gather_distributed=True, so each rank contrasts only its own batch; pass "
                      "gather_distributed=True for negatives from every rank", stacklevel=3)


def sizes(n: int, device: torch.device) -> list:
    """Every rank's row count, in rank order."""
    local = torch.tensor([n], dtype=torch.int64, device=device)
    everyone = [torch.zeros_like(local) for _ in range(dist.get_world_size())]
    dist.all_gather(everyone, local)
    return [int(s) for s in everyone]


def _gather_padded(x: Tensor, counts: list) -> Tensor:
    """Concatenation over ranks of x (rows counts[r] on rank r), via equal-size all_gather."""
    longest = max(counts)
    padded = x.new_zeros((longest,) + tuple(x.shape[1:]))
    padded[:x.shape[0]] = x
    pieces = [torch.empty_like(padded) for _ in counts]
    dist.all_gather(pieces, padded.contiguous())
    return torch.cat([p[:c] for p, c in zip(pieces, counts)])


class _AllGather(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x: Tensor, counts: list, rank: int) -> Tensor:
        ctx.counts, ctx.rank = counts, rank
        return _gather_padded(x.detach(), counts)

    @staticmethod
    def backward(ctx, grad: Tensor):
        # Every rank holds a gradient for every rank's rows; this rank's is the sum of them all.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = sum(ctx.counts[:ctx.rank])
        return grad[start:start + ctx.counts[ctx.rank]], None, None


def gather(x: Tensor, counts: list) -> Tensor:
    """All ranks' x concatenated in rank order; differentiable when x requires grad."""
    if x.requires_grad:
        return _AllGather.apply(x, counts, dist.get_rank())
    return _gather_padded(x, counts)


def offset(counts: list) -> int:
    """Where this rank's rows start in the gathered tensor."""
    return sum(counts[:dist.get_rank()])


def mean_over_ranks(x: Tensor) -> Tensor:
    """The mean of a (detached) value over ranks; x itself without a process group. Each rank's
    loss is its share of the global loss, so this is the global loss, the same on every rank."""
    x = x.detach().clone()
    if active():
        dist.all_reduce(x)
        x /= dist.get_world_size()
    return x


def rank_world() -> tuple[int, int]:
    """(rank, world size); (0, 1) without an initialised process group."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1

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


def device(name: str = "auto") -> torch.device:
    """The device a trainer runs on: "auto" is CUDA when visible; under torchrun, CUDA means this
    process's GPU (set from LOCAL_RANK by init_from_env)."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    try:
        chosen = torch.device(name)
    except (RuntimeError, TypeError) as exc:
        raise ValueError(f"device must be auto, cpu, cuda or cuda:N, got {name!r}") from exc
    if chosen.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {name!r}: no CUDA GPU is visible to this process (use cpu or auto)")
    if name == "cuda" and active():
        return torch.device("cuda", torch.cuda.current_device())
    return chosen


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT
    in the environment): NCCL when CUDA is visible, else gloo. A collective that waits longer
    than FASTCL_DIST_TIMEOUT seconds (default 600) fails instead of hanging. True when running
    distributed."""
    import os
    from datetime import timedelta

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return active()
    if torch.cuda.is_available():
        torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
    timeout = timedelta(seconds=float(os.environ.get("FASTCL_DIST_TIMEOUT", "600")))
    store, rank, world = next(dist.rendezvous("env://", timeout=timeout))
    if os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == "True" and os.environ.get("GROUP_WORLD_SIZE", "1") == "1":
        # One node, torchrun's shared store: a restarted group meets in the store of the failed
        # attempt, where the dead processes' addresses are still published, so each attempt's keys
        # get their own prefix. (Several nodes: their agents count restarts differently, so there
        # torchrun must give each attempt a new store: TORCH_DISABLE_SHARE_RDZV_TCP_STORE=1.)
        store = dist.PrefixStore(f"fastcl/attempt-{os.environ.get('TORCHELASTIC_RESTART_COUNT', '0')}/", store)
    dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo", timeout=timeout, store=store, rank=rank,
                            world_size=world)
    return active()


def leave(wait: bool = True) -> None:
    """Leaves the process group init_from_env joined. wait: a barrier first, so that no rank tears
    down its connections while another still uses them (a process that exits with the group alive
    can abort in its C++ destructors: "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        if wait and active():
            dist.barrier()
        dist.destroy_process_group()


class GlobalBatchNorm(torch.nn.modules.batchnorm._BatchNorm):
    """Batch norm over the global batch (SimCLR's global BN) on any device and backend: the batch
    statistics are summed over ranks with a differentiable all_reduce. (torch's SyncBatchNorm
    runs on GPUs only; `to_global_batch_norm` uses it there.)"""

    def _check_input_dim(self, x: Tensor) -> None:
        if x.dim() < 2:
            raise ValueError(f"expected at least 2D input, got {x.dim()}D")

    def forward(self, x: Tensor) -> Tensor:
        if not (self.training and active()):
            return super().forward(x)
        from torch.distributed.nn.functional import all_reduce

        dims = [0] + list(range(2, x.dim()))
        shape = [1, -1] + [1] * (x.dim() - 2)
        count = torch.tensor([x.numel() / x.shape[1]], dtype=x.dtype, device=x.device)
        sums = all_reduce(torch.cat([x.sum(dims), count]))
        n = sums[-1]
        mean = sums[:-1] / n
        var = all_reduce(((x - mean.reshape(shape)) ** 2).sum(dims)) / n  # two passes: no cancellation
        if self.track_running_stats:
            with torch.no_grad():
                momentum = self.momentum if self.momentum is not None else 1.0 / float(self.num_batches_tracked + 1)
                self.running_mean.lerp_(mean.detach().to(self.running_mean.dtype), momentum)
                unbiased = var.detach() * n / (n - 1).clamp_min(1)
                self.running_var.lerp_(unbiased.to(self.running_var.dtype), momentum)
                self.num_batches_tracked.add_(1)
        y = (x - mean.reshape(shape)) * torch.rsqrt(var.reshape(shape) + self.eps)
        if self.affine:
            y = y * self.weight.reshape(shape) + self.bias.reshape(shape)
        return y


def to_global_batch_norm(module: torch.nn.Module, cuda: bool) -> torch.nn.Module:
    """Every BatchNorm*d in `module` turned into a global one: torch's SyncBatchNorm on CUDA,
    GlobalBatchNorm elsewhere (weights and running statistics kept)."""
    if cuda:
        return torch.nn.SyncBatchNorm.convert_sync_batchnorm(module)
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) and not isinstance(module, GlobalBatchNorm):
        new = GlobalBatchNorm(module.num_features, module.eps, module.momentum, module.affine,
                              module.track_running_stats)
        like = next(module.parameters(), None)
        like = like if like is not None else next(module.buffers(), torch.empty(0))
        new.to(device=like.device, dtype=like.dtype if like.is_floating_point() else None)
        new.load_state_dict(module.state_dict())
        new.train(module.training)
        return new
    for name, child in module.named_children():
        setattr(module, name, to_global_batch_norm(child, cuda))
    return module

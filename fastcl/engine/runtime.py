"""The process a trainer runs in: its device ("auto", or this rank's GPU under torchrun), joining
and leaving the process group torchrun describes, and batch norm over the global batch
(`--sync-bn`). The loss's side of several processes (the differentiable all-gather, row counts
and offsets, each rank's loss share) is fastcl.distributed; this module stands on it."""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist
from torch import Tensor

from .. import distributed


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
    if name == "cuda" and distributed.active():
        return torch.device("cuda", torch.cuda.current_device())
    return chosen


def init_from_env() -> bool:
    """Join the process group torchrun describes (WORLD_SIZE, RANK, LOCAL_RANK, MASTER_ADDR/PORT
    in the environment): NCCL when CUDA is visible, else gloo. A collective that waits longer
    than FASTCL_DIST_TIMEOUT seconds (default 600) fails instead of hanging. True when running
    distributed."""
    if int(os.environ.get("WORLD_SIZE", "1")) <= 1 or (dist.is_available() and dist.is_initialized()):
        return distributed.active()
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
    return distributed.active()


def leave(wait: bool = True) -> None:
    """Leaves the process group init_from_env joined. wait: a barrier first, so that no rank tears
    down its connections while another still uses them (a process that exits with the group alive
    can abort in its C++ destructors: "terminate called without an active exception")."""
    if dist.is_available() and dist.is_initialized():
        if wait and distributed.active():
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
        if not (self.training and distributed.active()):
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

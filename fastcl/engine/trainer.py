"""The loop pieces every fastcl trainer stands on (solo-learn's base method, without a framework):
the process's rank and device, seeding, the output folder and its metrics log, DDP around the
model, autocast and the fp16 gradient scaler, the optimiser-step tail (unscale, clip, step,
update, schedule), the divergence stop and the summary file. A method's trainer subclasses
`Trainer` and adds its data, model, loss and loop."""

from __future__ import annotations

import os
from typing import Callable, Iterable, Optional

import torch

from .. import distributed
from . import amp as amp_lib
from .metrics import MetricsLog, write_summary


class TrainingDiverged(RuntimeError):
    """The loss became NaN or infinite; training stopped and the last good checkpoint is kept."""


class Trainer:
    """Shared set-up: call `super().__init__` where the trainer would seed its run, so that
    what it draws afterwards (initial weights, data order) depends on `seed` alone.

    fresh_metrics: False when resuming (the log is then trimmed to the checkpoint by the caller)."""

    def __init__(self, *, out: str, device: str, seed: int, amp: str, fresh_metrics: bool = True):
        amp_lib.check(amp)
        self.rank, self.world = distributed.rank_world()
        self.is_main = self.rank == 0
        self.device = distributed.device(device)
        torch.manual_seed(seed)
        self.amp = amp
        self.scaler = amp_lib.grad_scaler(self.device, amp)
        self.out = out
        os.makedirs(out, exist_ok=True)
        self.metrics = MetricsLog(out, enabled=self.is_main, fresh=fresh_metrics)

    def wrap(self, model: torch.nn.Module) -> torch.nn.Module:
        """What the training step calls: the model itself, or DDP around it under torchrun."""
        if self.world == 1:
            return model
        return torch.nn.parallel.DistributedDataParallel(
            model, device_ids=[self.device.index] if self.device.type == "cuda" else None)

    def autocast(self):
        return amp_lib.autocast(self.device, self.amp)

    def mean_loss(self, loss: torch.Tensor, diverged: Callable[[float], str]) -> float:
        """The loss averaged over ranks (what is logged); raises TrainingDiverged with the message
        `diverged(value)` when it is not finite, before any parameter changes."""
        value = distributed.mean_over_ranks(loss)
        if not torch.isfinite(value):
            raise TrainingDiverged(diverged(float(value)))
        return float(value)

    def optimizer_step(self, loss: torch.Tensor, optimizer: torch.optim.Optimizer, scheduler,
                       clip: Optional[Iterable[torch.nn.Parameter]] = None, max_grad_norm: float = 0.0) -> None:
        """Backward through the scaler, optional gradient clipping of `clip` to `max_grad_norm`,
        the optimiser step and one scheduler step."""
        optimizer.zero_grad(set_to_none=True)
        self.scaler.scale(loss).backward()
        if clip is not None and max_grad_norm > 0:
            self.scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(clip, max_grad_norm)
        self.scaler.step(optimizer)
        self.scaler.update()
        scheduler.step()

    def write_summary(self, summary: dict) -> dict:
        write_summary(self.out, summary, self.is_main)
        return summary

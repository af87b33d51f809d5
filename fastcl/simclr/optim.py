"""Optimisation for contrastive pre-training: LARS as in the SimCLR code, parameter groups that
keep biases and normalisation weights out of weight decay and adaptation, learning-rate scaling
with the batch size, and linear warm-up followed by cosine decay."""

from __future__ import annotations

import math
import torch
from torch import nn


class LARS(torch.optim.Optimizer):
    """Layer-wise adaptive rate scaling (You et al. 2017) as google-research/simclr applies it:

        g = grad + weight_decay * w                                    (unless the group excludes it)
        trust = trust_coefficient * |w| / |g|  if |w| > 0 and |g| > 0, else 1   (unless excluded)
        v = momentum * v + lr * trust * g
        w = w - v

    Param groups with ``lars_exclude=True`` (biases, normalisation weights; see
    `lars_param_groups`) get neither weight decay nor the trust ratio."""

    def __init__(self, params, lr: float, momentum: float = 0.9, weight_decay: float = 1e-6,
                 trust_coefficient: float = 0.001):
        if lr <= 0 or not math.isfinite(lr):
            raise ValueError(f"lr must be finite and > 0, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        if weight_decay < 0:
            raise ValueError(f"weight_decay must be >= 0, got {weight_decay}")
        if trust_coefficient <= 0:
            raise ValueError(f"trust_coefficient must be > 0, got {trust_coefficient}")
        defaults = dict(lr=lr, momentum=momentum, weight_decay=weight_decay, trust_coefficient=trust_coefficient,
                        lars_exclude=False)
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            exclude = group["lars_exclude"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if not exclude and group["weight_decay"] != 0:
                    grad = grad.add(p, alpha=group["weight_decay"])
                lr = group["lr"]
                if not exclude:
                    w_norm, g_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(grad)
                    trust = torch.where((w_norm > 0) & (g_norm > 0),
                                        group["trust_coefficient"] * w_norm / g_norm, torch.ones_like(w_norm))
                    step = grad * (trust * lr)
                else:
                    step = grad * lr
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = torch.zeros_like(p)
                buf = state["momentum_buffer"]
                buf.mul_(group["momentum"]).add_(step)
                p.sub_(buf)
        return loss


def lars_param_groups(model: nn.Module, weight_decay: float) -> list[dict]:
    """Two groups: weights of linear and convolution layers (decayed and adapted), and biases
    plus normalisation parameters (neither), as the SimCLR code excludes them."""
    adapted, excluded = [], []
    for _, param in model.named_parameters():
        if not param.requires_grad:
            continue
        (excluded if param.ndim <= 1 else adapted).append(param)
    return [dict(params=adapted, weight_decay=weight_decay, lars_exclude=False),
            dict(params=excluded, weight_decay=0.0, lars_exclude=True)]


def scaled_learning_rate(batch_size: int, scaling: str = "linear", base: float | None = None) -> float:
    """SimCLR's rules: linear 0.3 x B / 256, or sqrt 0.075 x sqrt(B) (base overrides the constant)."""
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if scaling == "linear":
        return (0.3 if base is None else base) * batch_size / 256
    if scaling == "sqrt":
        return (0.075 if base is None else base) * math.sqrt(batch_size)
    raise ValueError(f"scaling must be 'linear' or 'sqrt', got {scaling!r}")


def warmup_cosine(optimizer: torch.optim.Optimizer, warmup_steps: int, total_steps: int,
                  final_fraction: float = 0.0) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up from 0 over warmup_steps, then cosine decay to final_fraction of the peak
    at total_steps (per optimiser step)."""
    if total_steps < 1 or not 0 <= warmup_steps <= total_steps:
        raise ValueError(f"need 0 <= warmup_steps <= total_steps and total_steps >= 1, got {warmup_steps}, "
                         f"{total_steps}")

    def factor(step: int) -> float:
        if step < warmup_steps:
            return (step + 1) / warmup_steps
        progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
        return final_fraction + (1 - final_fraction) * 0.5 * (1 + math.cos(math.pi * progress))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def build_optimizer(name: str, model: nn.Module, lr: float, weight_decay: float,
                    momentum: float = 0.9) -> torch.optim.Optimizer:
    """'lars' (SimCLR), 'sgd' (momentum, same parameter groups) or 'adamw'."""
    groups = lars_param_groups(model, weight_decay)
    if name == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    plain = [{k: v for k, v in g.items() if k != "lars_exclude"} for g in groups]
    if name == "sgd":
        return torch.optim.SGD(plain, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if name == "adamw":
        return torch.optim.AdamW(plain, lr=lr, weight_decay=weight_decay)
    raise ValueError(f"optimizer must be 'lars', 'sgd' or 'adamw', got {name!r}")


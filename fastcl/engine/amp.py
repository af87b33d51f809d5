"""Mixed precision for the trainers: the --amp choices, autocast around the forward, and a
gradient scaler that is active for fp16 only (bf16 has fp32's range)."""

from __future__ import annotations

import contextlib

import torch

AMP_DTYPES = {"none": None, "bf16": torch.bfloat16, "fp16": torch.float16}


def check(amp: str) -> None:
    if amp not in AMP_DTYPES:
        raise ValueError(f"amp must be one of {tuple(AMP_DTYPES)}, got {amp!r}")


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    dtype = AMP_DTYPES[amp]
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


def grad_scaler(device: torch.device, amp: str) -> torch.amp.GradScaler:
    return torch.amp.GradScaler(device.type, enabled=amp == "fp16")

"""Input checks for the public loss API: clear ValueError/TypeError naming the argument."""

from __future__ import annotations

import math
from typing import Union

import torch
from torch import Tensor

FLOAT_DTYPES = (torch.float32, torch.float16, torch.bfloat16, torch.float64)
REDUCTIONS = ("mean", "sum", "none")


def _compiling() -> bool:
    return torch.compiler.is_compiling()


def embeddings(name: str, x, ndims: tuple[int, ...] = (2,)) -> Tensor:
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if x.dim() not in ndims:
        shapes = " or ".join({2: "(N, D)", 3: "(N, V, D)"}[n] for n in ndims)
        raise ValueError(f"{name} must have shape {shapes}, got {tuple(x.shape)}")
    if x.dtype not in FLOAT_DTYPES:
        raise TypeError(f"{name} must be float32, float16, bfloat16 or float64, got {x.dtype}")
    if x.dtype == torch.float64 and x.device.type == "cuda":
        raise TypeError(f"{name}: float64 is supported on CPU only (for gradcheck); use float32 on CUDA")
    if x.shape[-1] < 1:
        raise ValueError(f"{name} must have at least one feature (D >= 1), got shape {tuple(x.shape)}")
    return x.contiguous()


def same_kind(name: str, x: Tensor, ref_name: str, ref: Tensor) -> None:
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but {ref_name} is on {ref.device}; move them to one device")
    if x.dtype != ref.dtype:
        raise TypeError(f"{name} has dtype {x.dtype} but {ref_name} has {ref.dtype}; cast them to one dtype")
    if x.shape[-1] != ref.shape[-1]:
        raise ValueError(f"{name} has feature size D={x.shape[-1]} but {ref_name} has D={ref.shape[-1]}")


def _integer_vector(name: str, x, n: int, ref: Tensor, what: str, one: str, lowest: int, too_low: str) -> Tensor:
    """x as int64 (n,) on ref's device, each value >= lowest; `what` and `one` name its values."""
    if not isinstance(x, Tensor):
        raise TypeError(f"{name} must be a torch.Tensor of integer {what}, got {type(x).__name__}")
    if x.dtype.is_floating_point or x.dtype.is_complex or x.dtype == torch.bool:
        raise TypeError(f"{name} must hold integer {what}, got {x.dtype}")
    if x.dim() != 1 or x.shape[0] != n:
        raise ValueError(f"{name} must have shape ({n},), one {one} per sample, got {tuple(x.shape)}")
    if x.device != ref.device:
        raise ValueError(f"{name} is on {x.device} but the embeddings are on {ref.device}")
    if not _compiling() and n > 0 and bool((x < lowest).any()):
        raise ValueError(f"{name} must be {too_low}")
    return x.to(torch.int64)


def labels(name: str, y, n: int, ref: Tensor) -> Tensor:
    return _integer_vector(name, y, n, ref, "class labels", "label", 0, "non-negative class labels")


def temperature(t: Union[float, Tensor]) -> None:
    if isinstance(t, Tensor):
        if t.dim() != 0 or not t.dtype.is_floating_point:
            raise ValueError(f"temperature must be a float or a 0-dim floating tensor, got {t.dtype} {tuple(t.shape)}")
        if _compiling():
            return
        value = float(t.detach())
    elif isinstance(t, (int, float)) and not isinstance(t, bool):
        value = float(t)
    else:
        raise TypeError(f"temperature must be a float or a 0-dim tensor, got {type(t).__name__}")
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"temperature must be finite and > 0, got {value}")


def logit_parameter(name: str, x, ref: Tensor, dtype: torch.dtype, positive: bool) -> Tensor:
    """A float, or a one-element floating tensor (learnable when it requires grad), as a 0-dim tensor
    of dtype on ref's device (the gradient flows back through the cast); finite, and > 0 when
    positive. The value is not read while compiling."""
    if isinstance(x, Tensor):
        if x.numel() != 1 or not x.dtype.is_floating_point:
            raise ValueError(f"{name} must be a float or a one-element floating tensor, got {x.dtype} "
                             f"{tuple(x.shape)}")
        t = x.to(device=ref.device, dtype=dtype).reshape(())
    elif isinstance(x, (int, float)) and not isinstance(x, bool):
        t = torch.tensor(float(x), device=ref.device, dtype=dtype)
    else:
        raise TypeError(f"{name} must be a float or a 0-dim tensor, got {type(x).__name__}")
    if not _compiling():
        value = float(t.detach())
        if not math.isfinite(value) or (positive and value <= 0):
            raise ValueError(f"{name} must be finite{' and > 0' if positive else ''}, got {value}")
    return t


def reduction(r: str) -> None:
    if r not in REDUCTIONS:
        raise ValueError(f"reduction must be one of {REDUCTIONS}, got {r!r}")


def finite_weight(name: str, w: float) -> None:
    if not isinstance(w, (int, float)) or isinstance(w, bool) or not math.isfinite(w):
        raise ValueError(f"{name} must be a finite float, got {w!r}")


def sample_ids(name: str, ids, n: int, ref: Tensor) -> Tensor:
    """Per-sample ids (n,) for duplicate masking: integers >= 0, or -1 for a sample without one."""
    return _integer_vector(name, ids, n, ref, "sample ids", "id", -1, ">= 0 (or -1 for a sample without an id)")


def some_sample_apart(name: str, ids: Tensor) -> None:
    """Sample ids that leave every sample a negative-free batch (all >= 0 and equal: each sample is
    a duplicate of every other) are refused rather than giving a loss of 0. Skipped while compiling
    (it reads the values)."""
    if torch.compiler.is_compiling() or ids.numel() < 2:
        return
    if bool((ids[0] >= 0) & (ids == ids[0]).all()):
        raise ValueError(f"{name}: every sample carries the id {int(ids[0])}, so every other sample is a duplicate "
                         "and no anchor has a negative; give distinct samples distinct ids (-1: no id)")


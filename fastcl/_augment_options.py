"""Checks of SimCLRAugment's constructor arguments: probabilities, (min, max) ranges, rotation
degrees and fill, each raising a ValueError that names the argument."""

from __future__ import annotations

import math
from typing import Optional


def check_probability(name: str, p) -> tuple[float, ...]:
    values = tuple(p) if isinstance(p, (tuple, list)) else (p,)
    for v in values:
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not 0.0 <= v <= 1.0:
            raise ValueError(f"{name} must be a probability in [0, 1] (or one per view), got {p!r}")
    return tuple(float(v) for v in values)


def check_degrees(degrees) -> tuple[float, float]:
    """RandomRotation's degrees: d (the range (-d, d)) or a (min, max) pair within [-180, 180]."""
    if isinstance(degrees, (int, float)) and not isinstance(degrees, bool):
        if not 0 <= degrees <= 180:
            raise ValueError(f"degrees must be in [0, 180] when one number (the range (-d, d)), got {degrees!r}")
        return -float(degrees), float(degrees)
    return check_range("degrees", degrees, -180.0, 180.0)


def check_fill(fill) -> tuple[float, ...]:
    values = tuple(fill) if isinstance(fill, (tuple, list)) else (fill,)
    if len(values) not in (1, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                            and 0.0 <= v <= 1.0 for v in values):
        raise ValueError(f"fill must be one value or one per channel (3), each in [0, 1] of full scale, got {fill!r}")
    return tuple(float(v) for v in values) * (3 if len(values) == 1 else 1)


def check_range(name: str, r, low: float, high: float) -> tuple[float, float]:
    if not isinstance(r, (tuple, list)) or len(r) != 2:
        raise ValueError(f"{name} must be a (min, max) pair, got {r!r}")
    a, b = float(r[0]), float(r[1])
    if not (low <= a <= b <= high) or not (math.isfinite(a) and math.isfinite(b)):
        raise ValueError(f"{name} must satisfy {low} <= min <= max <= {high}, got {r!r}")
    return a, b


def check_mean_std(mean, std) -> tuple[Optional[tuple[float, ...]], Optional[tuple[float, ...]]]:
    """Per-channel normalisation: both or neither, each one number or one per channel (images have 1
    or 3), of equal lengths, finite, std > 0; returned as tuples of floats (None, None for neither)."""
    if (mean is None) != (std is None):
        raise ValueError("mean and std go together: pass both or neither")
    if mean is None:
        return None, None
    values = {}
    for name, given in (("mean", mean), ("std", std)):
        seq = given.reshape(-1).tolist() if hasattr(given, "reshape") else given
        seq = tuple(seq) if isinstance(seq, (tuple, list)) else (seq,)
        if len(seq) not in (1, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool)
                                             and math.isfinite(v) for v in seq):
            raise ValueError(f"{name} must be one finite number or one per channel (1 or 3), got {given!r}")
        values[name] = tuple(float(v) for v in seq)
    if len(values["mean"]) != len(values["std"]):
        raise ValueError(f"mean and std need the same length (one per channel), got {len(values['mean'])} and "
                         f"{len(values['std'])}")
    if any(s <= 0 for s in values["std"]):
        raise ValueError(f"std must be positive, got {std!r}")
    return values["mean"], values["std"]

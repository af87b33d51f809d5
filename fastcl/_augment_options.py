"""Checks of SimCLRAugment's constructor arguments: probabilities, (min, max) ranges, rotation
degrees and fill, each raising a ValueError that names the argument."""

from __future__ import annotations

import math


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

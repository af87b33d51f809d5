"""What the SASS report must know of each loss kernel that the machine code does not say: which
pass it belongs to, the logit tile one trip of its main loop covers, how often its D-chunk loop
runs, and its dynamic shared memory. One entry per kernel template in fastcl/csrc/cuda; the values
mirror the kernels' constants (tile_math.cuh, contrastive_device.cuh), so a change there is a
change here."""

from __future__ import annotations

import math
import re
from collections.abc import Callable
from dataclasses import dataclass

_ELEMENT_BYTES = {"float": 4, "__half": 2, "__nv_bfloat16": 2}
DTYPE_NAMES = {"float": "float32", "__half": "float16", "__nv_bfloat16": "bfloat16"}


def chunk(dtype: str) -> int:
    """BK: the D columns one staged chunk holds (WmmaMath::kBK = 64, SimtMath::kBK = 32)."""
    return 32 if dtype == "float" else 64


def _stage_bytes(dtype: str) -> int:
    return 64 * (chunk(dtype) + (4 if dtype == "float" else 8)) * _ELEMENT_BYTES[dtype]


def _smem_forward(dtype: str, name: str = "") -> int:
    meta = 64 * (8 + 8 + 8 + 16)  # MetaSlot: label, owner, id, info
    return 4 * _stage_bytes(dtype) + 64 * 68 * 4 + 3 * meta


def _smem_backward(dtype: str, name: str = "") -> int:
    g = 0 if dtype == "float" else 2 * 64 * 72 * 2  # G high and low parts in the input type
    base = 4 * _stage_bytes(dtype) + 64 * 68 * 4 + g
    return (base + 127) // 128 * 128 + 3 * 64 * 40


@dataclass(frozen=True)
class KernelTraits:
    pattern: str  # regex on the demangled name
    pass_: str  # "forward" or "backward"
    threads: int
    tile_rows: int  # logits one main-loop trip covers: tile_rows x tile_cols
    tile_cols: int
    d_chunk: Callable[[str], int]  # D columns per trip of an inner loop that holds the math
    slices: Callable[[int, str], int]  # how often the whole tile is redone per D (backward D slices)
    dynamic_smem: Callable[[str, str], int]  # (dtype, demangled name) -> bytes
    # Whether the op dispatches to this instantiation for feature size D (plain problems, aligned rows).
    used_for: Callable[[int, str, str], bool] = lambda D, dtype, name: True
    priority: int = 0  # of the kernels of one pass used for a D, the op runs those of the highest

    def matches(self, demangled: str) -> bool:
        return re.search(self.pattern, demangled) is not None

    def inner_trips(self, D: int, dtype: str) -> int:
        return max(1, math.ceil(D / self.d_chunk(dtype)))


def _template_int(name: str) -> int:
    """The integer template argument after the element type (kD)."""
    m = re.search(r"<[^,<>]+, (\d+)[,>]", name)
    return int(m.group(1)) if m else 0


SAMPLE_IDS = 1 << 2  # kSampleIds of csrc/contrastive_args.h


def _features(name: str) -> int:
    """The feature flags (csrc/contrastive_args.h) of an mma kernel, its last template argument."""
    m = re.search(r"_(?:mma|wide)_kernel<[^<>]*, (\d+)u?>", name)
    return int(m.group(1)) if m else 0


def _smem_forward_mma(dtype: str, name: str) -> int:
    """MmaLayout<kD, kIds>: q (128 x kD), two k stages (64 x kD), per stage 64 norms and 64 labels
    (and 64 ids)."""
    d = _template_int(name)
    ids = 2 * 64 * 8 if _features(name) & SAMPLE_IDS else 0
    return 128 * d * 2 + 2 * 64 * d * 2 + 2 * 64 * 4 + 2 * 64 * 8 + ids


WIDE_MAX_D = 768  # kMaxWideD of contrastive_host.cuh


def _smem_forward_wide(dtype: str, name: str, D: int = 512) -> int:
    """WideLayout: q as D / 64 chunk tiles of 128 x 64, three 64 x 64 k stages, three tiles' norms and
    labels (and ids); it grows with D, shown at D = 512 (CLIP's width)."""
    ids = 3 * 64 * 8 if _features(name) & SAMPLE_IDS else 0
    return 128 * D * 2 + 3 * 64 * 64 * 2 + 3 * 64 * 4 + 3 * 64 * 8 + ids


def _mma_width(D: int) -> int:
    """The kD instantiation forward_mma_impl picks (0: none, the wmma kernel runs)."""
    return next((w for w in (64, 128, 256) if D <= w), 0)


def _smem_grad_mma(dtype: str, name: str) -> int:
    """GradLayout<kD, kIds>: owner rows (128 x kD), two stream stages (64 x kD), per stage 64 float4 + 64
    labels (+ 64 ids)."""
    d = _template_int(name)
    ids = 2 * 64 * 8 if _features(name) & SAMPLE_IDS else 0
    return 128 * d * 2 + 2 * 64 * d * 2 + 2 * 64 * 16 + 2 * 64 * 8 + ids


def _grad_mma_used(D: int, dtype: str, name: str) -> bool:
    return _template_int(name) == next((w for w in (64, 128, 256) if D <= w), 0) and _features(name) == 0


def _grad_mma_slices(D: int, dtype: str) -> int:
    """Blocks per owner tile: kD = 256 splits the gradient's columns into two slices of 128, each
    recomputing the logits (kMaxSlice, contrastive_backward_mma.cu)."""
    return max(1, math.ceil(D / 128))


def _wide_groups(D: int) -> int:
    """The kGroups instantiation launch_grad_wide picks: 16-column groups of D per warp (2, 3, 4 or 6)."""
    g = max(2, math.ceil(D / 128))
    return g if g <= 4 else 6


def _smem_grad_wide(dtype: str, name: str) -> int:
    """GradWideLayout(kGroups) (contrastive_backward_wide.cu): owner rows (32 x 128 kGroups), two stream
    stages (32 x 128 kGroups), eight warps' partial 32 x 32 logits (fp32), G' and its low part (32 x 40),
    per stage 32 float4 + 32 labels + 32 ids."""
    d = 128 * _template_int(name)
    return 32 * d * 2 + 2 * 32 * d * 2 + 8 * 32 * 32 * 4 + 2 * 32 * 40 * 2 + 2 * 32 * (16 + 8 + 8)


def _grad_wide_used(D: int, dtype: str, name: str) -> bool:
    return 256 < D <= WIDE_MAX_D and _template_int(name) == _wide_groups(D)


def _smem_siglip(dtype: str, name: str) -> int:
    """SiglipLayout<kD> (siglip_mma.cu): owner rows (128 x kD), two stream stages (64 x kD), per stage 64
    inverse norms."""
    d = _template_int(name)
    return 128 * d * 2 + 2 * 64 * d * 2 + 2 * 64 * 4


def _smem_siglip_wide(dtype: str, name: str) -> int:
    """SiglipWideLayout(kGroups) (siglip_wide.cu): GradWideLayout's tiles, per stage 32 inverse norms."""
    d = 128 * _template_int(name)
    return 32 * d * 2 + 2 * 32 * d * 2 + 8 * 32 * 32 * 4 + 2 * 32 * 40 * 2 + 2 * 32 * 4


def _siglip_slices(D: int, dtype: str) -> int:
    """siglip_grad_kernel's gradient slices: kD = 256 splits the columns into two of 128 (kSlice)."""
    return max(1, math.ceil(D / 128))


LOSS_KERNELS = [
    # forward_mma_kernel<T, kD, kFeatures>: 128 rows x 64 columns a trip, all of kD unrolled (no D loop);
    # the report's problem is plain NT-Xent, so the instantiation without features runs it.
    KernelTraits(
        r"\bforward_mma_kernel<",
        "forward",
        256,
        128,
        64,
        lambda t: 1 << 30,
        lambda D, t: 1,
        _smem_forward_mma,
        lambda D, t, name: _template_int(name) == _mma_width(D) and _features(name) == 0,
        priority=1,
    ),
    # forward_wide_kernel<T, kFeatures>: the same tile for 256 < D <= 768, its q from shared memory,
    # k streamed in 64-column D chunks (the inner loop).
    KernelTraits(
        r"\bforward_wide_kernel<",
        "forward",
        256,
        128,
        64,
        lambda t: 64,
        lambda D, t: 1,
        _smem_forward_wide,
        lambda D, t, name: 256 < D <= WIDE_MAX_D and _features(name) == 0,
        priority=1,
    ),
    KernelTraits(r"\bforward_kernel<", "forward", 256, 64, 64, chunk, lambda D, t: 1, _smem_forward),
    # grad_mma_kernel<T, kD, true, true, kFeatures>: q = k (NT-Xent, SupCon), the whole gradient from
    # one pass, which the op prefers; <T, kD, true, false, .> (dq) and <T, kD, false, false, .> (dk)
    # otherwise. 128 owner rows x 64 stream rows a trip.
    KernelTraits(
        r"\bgrad_mma_kernel<[^>]*, true, true, \d+u?>",
        "backward",
        256,
        128,
        64,
        lambda t: 1 << 30,
        _grad_mma_slices,
        _smem_grad_mma,
        _grad_mma_used,
        priority=2,
    ),
    KernelTraits(
        r"\bgrad_mma_kernel<",
        "backward",
        256,
        128,
        64,
        lambda t: 1 << 30,
        _grad_mma_slices,
        _smem_grad_mma,
        _grad_mma_used,
        priority=1,
    ),
    # grad_wide_kernel<T, kGroups, kRowOwner, kBoth> (256 < D <= 768): 32 owner rows x 32 stream rows a
    # trip, all of D unrolled over each warp's kGroups 16-column groups; q = k (<.., true, true>) first.
    KernelTraits(r"\bgrad_wide_kernel<[^>]*, true, true>", "backward", 256, 32, 32, lambda t: 1 << 30,
                 lambda D, t: 1, _smem_grad_wide, _grad_wide_used, priority=2),
    KernelTraits(r"\bgrad_wide_kernel<", "backward", 256, 32, 32, lambda t: 1 << 30, lambda D, t: 1,
                 _smem_grad_wide, _grad_wide_used, priority=1),
    # The sigmoid loss past D = 256 (siglip_wide.cu) on the same tiles: siglip_wide_forward_kernel<T,
    # kGroups, kIds> and siglip_wide_grad_kernel<T, kGroups, kRowOwner, kIds>; reported, not priced.
    KernelTraits(r"\bsiglip_wide_forward_kernel<", "forward", 256, 32, 32, lambda t: 1 << 30, lambda D, t: 1,
                 _smem_siglip_wide, lambda D, t, name: False),
    KernelTraits(r"\bsiglip_wide_grad_kernel<", "backward", 256, 32, 32, lambda t: 1 << 30, lambda D, t: 1,
                 _smem_siglip_wide, lambda D, t, name: False),
    # The sigmoid loss (siglip_mma.cu): siglip_forward_kernel<T, kD, kIds> and siglip_grad_kernel<T, kD,
    # kRowOwner, kIds>, 128 owner rows x 64 stream rows a trip, all of kD unrolled. Reported, never part
    # of the contrastive problem the cost model prices (used_for False).
    KernelTraits(r"\bsiglip_forward_kernel<", "forward", 256, 128, 64, lambda t: 1 << 30, lambda D, t: 1,
                 _smem_siglip, lambda D, t, name: False),
    KernelTraits(r"\bsiglip_grad_kernel<", "backward", 256, 128, 64, lambda t: 1 << 30, _siglip_slices,
                 _smem_siglip, lambda D, t, name: False),
    # grad_kernel<T, true> (dq, the scale partials) and <T, false> (dk): each covers every logit;
    # a block owns 256 D columns (128 for fp32) and recomputes the logits per slice.
    KernelTraits(
        r"\bgrad_kernel<",
        "backward",
        256,
        64,
        64,
        chunk,
        lambda D, t: max(1, math.ceil(D / (128 if t == "float" else 256))),
        _smem_backward,
    ),
]


def traits_of(demangled: str) -> KernelTraits | None:
    """The traits of a loss kernel; forward_mma before forward (the patterns are searched in order)."""
    for t in LOSS_KERNELS:
        if t.matches(demangled):
            return t
    return None


def dtype_of(demangled: str) -> str:
    """The element type a kernel template was instantiated for (float, __half, __nv_bfloat16)."""
    m = re.search(r"<(float|__half|__nv_bfloat16)\b", demangled)
    return m.group(1) if m else "float"

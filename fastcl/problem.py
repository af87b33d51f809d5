"""The contrastive core's problem: what the fused ops take, as one object.

A `ContrastiveProblem` is everything the general op takes (rows q against columns k, which pairs
are positives, which are masked, bias, hardness, ...), in the order of the op's schema
(csrc/schemas.h); C++ receives the same problem as `ContrastiveArgs` (csrc/contrastive_args.h).
fastcl.translate is the one place where a loss becomes a problem; fastcl.ops runs it."""

from __future__ import annotations

from typing import NamedTuple, Optional

import torch
from torch import Tensor

NORM_EPS = 1e-12  # as F.normalize; csrc/common/contrastive_math.h uses the same
POSITIVE_ONLY = -2  # a column id: never a negative (as kPositiveOnly in contrastive_math.h)


def loss_dtype(dtype: torch.dtype) -> torch.dtype:
    """The loss, log-sum-exp, counts and logit scale are fp64 for fp64 inputs, else fp32."""
    return torch.float64 if dtype == torch.float64 else torch.float32


class ContrastiveProblem(NamedTuple):
    """Per-row loss lse_i - mean over positives j of logit_ij (semantics: csrc/README.md).

    row_ids (M,) / col_ids (L,) int64, both or neither: a pair that is not a positive leaves the
    denominator when the column id is POSITIVE_ONLY or equals the row's id >= 0.
    constant_cols: the last columns of k are constants (a queue): no gradient flows to them and
    the backward spends no work on theirs.
    hardness, hardness_mode: sentence-transformers' hardness penalty, hardness * dot (a constant in
    the backward) on the pairs the mode selects: 1 other rows' columns, 2 a row's own non-positive
    columns, 3 both; a column's row is col_bias_owner (-1: none), which then needs no col_bias."""

    q: Tensor
    k: Tensor
    row_labels: Tensor
    col_labels: Tensor
    logit_scale: Tensor
    col_bias: Optional[Tensor] = None
    col_bias_owner: Optional[Tensor] = None
    row_ids: Optional[Tensor] = None
    col_ids: Optional[Tensor] = None
    row_offset: int = 0
    exclude_self: bool = False
    normalize: bool = True
    constant_cols: int = 0
    hardness: float = 0.0
    hardness_mode: int = 0

    def op_tensors(self) -> tuple:
        """The op's tensor arguments, in schema order."""
        return tuple(getattr(self, name) for name in OP_TENSORS)

    def op_scalars(self) -> tuple:
        """The op's scalar arguments, in schema order (after the tensors; the backward puts lse and
        num_pos between the two)."""
        return tuple(getattr(self, name) for name in OP_SCALARS)

    @classmethod
    def from_op(cls, tensors: tuple, scalars: tuple) -> ContrastiveProblem:
        return cls(**dict(zip(OP_TENSORS, tensors)), **dict(zip(OP_SCALARS, scalars)))


# The fields in the order of the op's schema (csrc/schemas.h; tests/core/test_problem.py holds them equal).
OP_TENSORS = ("q", "k", "row_labels", "col_labels", "col_bias", "col_bias_owner", "row_ids", "col_ids", "logit_scale")
OP_SCALARS = ("row_offset", "exclude_self", "normalize", "constant_cols", "hardness", "hardness_mode")


class PairProblem(NamedTuple):
    """Paired rows a, b (M, D), both directions (CLIP): a_i against every b_j and b_j against
    every a_i, the positive on the diagonal; one pass over the logit tiles serves both."""

    a: Tensor
    b: Tensor
    logit_scale: Tensor
    normalize: bool = True


class LossProblem(NamedTuple):
    """What one loss asks of the core: the per-row loss is the mean of its parts' (a pair counts
    its two directions), the positive counts the first part's. global_batch: the columns span
    every rank (fastcl.distributed), so the loss is reduced as this rank's share."""

    parts: tuple
    global_batch: bool = False


def check_meta(problem: ContrastiveProblem) -> None:
    """The checks of csrc/checks.cpp that need no values (ranks, sizes, dtypes), as torch._check, so
    that the ops' fake kernels refuse under torch.compile and FakeTensorMode what the kernels refuse."""
    q, k = problem.q, problem.k
    torch._check(q.dim() == 2 and k.dim() == 2, lambda: f"fastcl: q and k must be 2-D, got {q.shape} and {k.shape}")
    m, length = q.shape[0], k.shape[0]
    torch._check(q.shape[1] == k.shape[1], lambda: f"fastcl: q and k must have the same D, got {q.shape}, {k.shape}")
    torch._check(q.dtype == k.dtype, lambda: f"fastcl: q and k must have the same dtype, got {q.dtype}, {k.dtype}")
    torch._check(problem.logit_scale.dim() == 0 and problem.logit_scale.dtype == loss_dtype(q.dtype),
                 lambda: f"fastcl: logit_scale must be a 0-dim {loss_dtype(q.dtype)} tensor")
    for name, n in (("row_labels", m), ("col_labels", length), ("col_bias", length), ("col_bias_owner", length),
                    ("row_ids", m), ("col_ids", length)):
        t = getattr(problem, name)
        if t is not None:
            torch._check(t.dim() == 1 and t.shape[0] == n, lambda: f"fastcl: {name} must have shape ({n},)")


def check_pair_meta(problem: PairProblem) -> None:
    """check_meta for the paired op: a and b (M, D) alike, one dtype, a 0-dim logit scale."""
    a, b = problem.a, problem.b
    torch._check(a.dim() == 2 and a.shape == b.shape,
                 lambda: f"fastcl: a and b must be (M, D) alike, got {a.shape}, {b.shape}")
    torch._check(a.dtype == b.dtype, lambda: f"fastcl: a and b must have the same dtype, got {a.dtype}, {b.dtype}")
    torch._check(problem.logit_scale.dim() == 0 and problem.logit_scale.dtype == loss_dtype(a.dtype),
                 lambda: f"fastcl: logit_scale must be a 0-dim {loss_dtype(a.dtype)} tensor")


def check_siglip_meta(a: Tensor, b: Tensor, logit_scale: Tensor, logit_bias: Tensor, a_ids: Optional[Tensor] = None,
                      b_ids: Optional[Tensor] = None) -> None:
    """The sigmoid loss's op arguments (shapes and dtypes): a (M, D) and b (L, D) of one dtype, a 0-dim
    logit scale and bias, sample ids a_ids (M,) and b_ids (L,), both or neither."""
    torch._check(a.dim() == 2 and b.dim() == 2 and a.shape[1] == b.shape[1],
                 lambda: f"fastcl: a and b must be (M, D) and (L, D), got {a.shape}, {b.shape}")
    torch._check(a.dtype == b.dtype, lambda: f"fastcl: a and b must have the same dtype, got {a.dtype}, {b.dtype}")
    for name, t in (("logit_scale", logit_scale), ("logit_bias", logit_bias)):
        torch._check(t.dim() == 0 and t.dtype == loss_dtype(a.dtype),
                     lambda: f"fastcl: {name} must be a 0-dim {loss_dtype(a.dtype)} tensor")
    torch._check((a_ids is None) == (b_ids is None), lambda: "fastcl: a_ids and b_ids come together (both or neither)")
    if a_ids is not None:
        torch._check(a_ids.shape == (a.shape[0],) and b_ids.shape == (b.shape[0],),
                     lambda: "fastcl: sample ids must be 1-D of their rows' count")
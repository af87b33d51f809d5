"""Every public entry point rejects bad input with a clear error naming the argument."""

from __future__ import annotations

import math

import pytest
import torch

import fastcl
from fastcl import functional


def z(*shape, **kw):
    return torch.randn(*shape, **kw)


@pytest.mark.parametrize("call,exc,match", [
    (lambda: functional.nt_xent(z(8), z(8)), ValueError, r"z1 must have shape \(N, D\)"),
    (lambda: functional.nt_xent(z(4, 8), z(5, 8)), ValueError, "same shape"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 7)), ValueError, "feature size"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8, dtype=torch.float64)), TypeError, "dtype"),
    (lambda: functional.nt_xent(torch.ones(4, 8, dtype=torch.int64), z(4, 8)), TypeError, "z1 must be float"),
    (lambda: functional.nt_xent(z(1, 8), z(1, 8)), ValueError, "at least 2 samples"),
    # One id on every sample: each is a duplicate of every other, so no anchor keeps a negative.
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), sample_ids=torch.full((4,), 7)), ValueError,
     "no anchor has a negative"),
    (lambda: functional.info_nce(z(4, 8), z(4, 8), sample_ids=torch.zeros(4, dtype=torch.long)), ValueError,
     "no anchor has a negative"),
    (lambda: functional.nt_xent(z(4, 8)), ValueError, "needs labels"),
    (lambda: functional.nt_xent(z(4, 1, 8)), ValueError, "at least 2 views"),
    (lambda: functional.nt_xent(z(4, 8), labels=torch.zeros(5, dtype=torch.long)), ValueError,
     r"labels must have shape \(4,\)"),
    (lambda: functional.nt_xent(z(4, 8), labels=torch.zeros(4)), TypeError, "integer class labels"),
    (lambda: functional.nt_xent(z(4, 8), labels=torch.tensor([0, 0, -1, -1])), ValueError, "non-negative"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), temperature=0.0), ValueError, "temperature must be finite and > 0"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), temperature=-1.0), ValueError, "temperature"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), temperature=math.nan), ValueError, "temperature"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), temperature=torch.tensor(math.inf)), ValueError, "temperature"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), temperature=torch.ones(2)), ValueError, "0-dim"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), temperature="hot"), TypeError, "temperature"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), reduction="avg"), ValueError, "reduction"),
    (lambda: functional.nt_xent(z(4, 0), z(4, 0)), ValueError, "at least one feature"),
    (lambda: functional.nt_xent([[1.0]], z(4, 8)), TypeError, "torch.Tensor"),
    (lambda: functional.nt_xent(z(4, 8), z(4, 8), impl="cuda"), ValueError, "impl"),
    (lambda: functional.info_nce(z(4, 8), z(5, 8)), ValueError, "same batch size"),
    (lambda: functional.info_nce(z(4, 8), z(4, 9)), ValueError, "feature size"),
    (lambda: functional.info_nce(z(1, 8), z(1, 8)), ValueError, "at least 2 pairs"),
    (lambda: functional.info_nce(z(4, 8), z(4, 8), z(3, 8), hard_negative_weight=1.0), ValueError,
     "one hard negative per query"),
    (lambda: functional.info_nce(z(4, 8), z(4, 8), hard_negative_weight=1.0), ValueError, "needs negative_keys"),
    (lambda: functional.info_nce(z(4, 8), z(4, 8), z(4, 8), symmetric=True), ValueError, "symmetric"),
    (lambda: functional.info_nce(z(4, 8), z(4, 8), z(4, 8, dtype=torch.float16)), TypeError, "negative_keys"),
    (lambda: functional.info_nce(z(4, 8), z(4, 8), hard_negative_weight=math.inf), ValueError,
     "hard_negative_weight"),
    (lambda: fastcl.NTXentLoss(temperature=0), ValueError, "temperature"),
    (lambda: fastcl.InfoNCELoss(reduction="max"), ValueError, "reduction"),
])
def test_rejected_with_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_ops_reject_bad_arguments_without_crashing():
    """Direct torch.ops calls are checked in C++ too."""
    q, rows, scale = z(4, 8), torch.arange(4), torch.tensor(2.0)
    op = torch.ops.fastcl.contrastive_forward
    with pytest.raises(ValueError, match="q must be 2-D"):
        op(z(4), q, rows, rows, None, None, None, None, scale, 0, False, True)
    with pytest.raises(ValueError, match="row_labels must have shape"):
        op(q, q, rows[:3], rows, None, None, None, None, scale, 0, False, True)
    with pytest.raises(TypeError, match="logit_scale must be"):
        op(q, q, rows, rows, None, None, None, None, scale.double(), 0, False, True)
    with pytest.raises(ValueError, match="must lie inside"):
        op(q, q, rows, rows, None, None, None, None, scale, 2, True, True)
    with pytest.raises(TypeError, match="int64"):
        op(q, q, rows.int(), rows, None, None, None, None, scale, 0, False, True)
    with pytest.raises(ValueError, match="given together"):
        op(q, q, rows, rows, None, None, rows, None, scale, 0, False, True)
    with pytest.raises(ValueError, match="col_ids must have shape"):
        op(q, q, rows, rows, None, None, rows, rows[:2], scale, 0, False, True)
    with pytest.raises(TypeError, match="row_ids and col_ids must be int64"):
        op(q, q, rows, rows, None, None, rows.int(), rows.int(), scale, 0, False, True)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.cuda
def test_device_mix_is_rejected():
    with pytest.raises(ValueError, match="device"):
        functional.nt_xent(z(4, 8), z(4, 8, device="cuda"))


def test_ids_that_leave_negatives_are_accepted():
    """Only a batch whose every sample shares one id is refused: -1 (no id), a partial duplicate, or
    hard negatives with the same id keep negatives."""
    a, b = z(4, 8), z(4, 8)
    assert torch.isfinite(functional.nt_xent(a, b, sample_ids=torch.full((4,), -1)))
    assert functional.nt_xent(a, b, sample_ids=torch.tensor([3, 3, 3, 5])) > 0
    same = torch.zeros(4, dtype=torch.long)
    assert functional.info_nce(a, b, z(4, 8), sample_ids=same) > 0

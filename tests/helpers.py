"""What the tests share: the devices every device test runs on (CPU, GPU, and the CUDA kernels
through the CPU simulator), the per-dtype accuracy criterion, the argument sets of the contrastive
core (make_case), and a run's logged records. Test modules import it; conftest.py holds only fixtures."""

from __future__ import annotations

import os

import pytest
import torch

import fastcl
from fastcl.engine.metrics import read_records
from fastcl.ops import POSITIVE_ONLY

HAS_CUDA = torch.cuda.is_available() and fastcl.has_cuda_ops()
cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU and fastcl's CUDA kernels")


def logged_records(out, kind: str = "step") -> list:
    """The records of one kind in OUT/metrics.jsonl, read as resume and `fastcl plot` read them."""
    return [r for r in read_records(os.path.join(out, "metrics.jsonl")) if r["kind"] == kind]


class SimDevice(str):
    """"cpu" for the tensors, while fastcl's ops run the CUDA kernels' code through the CPU
    simulator of fastcl/csrc/sim (tests/sim/sim_ops.py)."""

    sim = True


# Every test that takes `device` runs on the CPU and, marked `cuda`, twice more: on the GPU, and
# through the simulator (id "sim", marked `sim` too), so the CUDA kernels run on every CI machine.
DEVICES = ["cpu", pytest.param("cuda", marks=[pytest.mark.cuda, cuda]),
           pytest.param(SimDevice("cpu"), id="sim", marks=[pytest.mark.cuda, pytest.mark.sim])]


U8_TOL = 1.0 / 255 + 1e-6  # one uint8 level: the augmentation's tolerance against torchvision
FLOAT_TOL = 1e-4


def random_images(dtype, b, c, h, w, device, seed=0):
    """A seeded (b, c, h, w) batch: uint8 levels, or floats in [0, 1)."""
    g = torch.Generator().manual_seed(seed)
    if dtype == torch.uint8:
        return torch.randint(0, 256, (b, c, h, w), dtype=torch.uint8, generator=g).to(device)
    return torch.rand(b, c, h, w, generator=g).to(device)


def is_sim(device) -> bool:
    return getattr(device, "sim", False)


# Absolute slack on top of twice plain PyTorch's own error (the apple/ml-cross-entropy criterion).
TOL = {torch.float64: 1e-10, torch.float32: 1e-5, torch.float16: 1e-3, torch.bfloat16: 1e-2}
LOW_PRECISION = (torch.float16, torch.bfloat16)


def dtypes_for(device: str):
    return [torch.float64, torch.float32, torch.float16, torch.bfloat16] if device == "cpu" and not is_sim(device) else [
        torch.float32, torch.float16, torch.bfloat16]


def assert_close_to_truth(actual, truth, baseline, dtype, what="value"):
    """|actual - truth| <= 2 |baseline - truth| + tol[dtype], elementwise; truth is fp64 and
    baseline is plain PyTorch run in the test dtype. Reports how many elements fail and where."""
    actual, truth, baseline = (t.detach().double().cpu() for t in (actual, truth, baseline))
    assert actual.shape == truth.shape, f"{what}: shape {tuple(actual.shape)} != {tuple(truth.shape)}"
    assert torch.isfinite(actual).all(), f"{what}: non-finite values"
    err = (actual - truth).abs()
    allowed = 2 * (baseline - truth).abs() + TOL[dtype] * (1 + truth.abs())
    bad = err > allowed
    if bad.any():
        idx = bad.nonzero()[0].tolist()
        raise AssertionError(
            f"{what} ({dtype}): {int(bad.sum())}/{bad.numel()} elements off; worst error {err.max():.3g}; "
            f"first at {idx}: got {actual[tuple(idx)]:.6g}, truth {truth[tuple(idx)]:.6g}, "
            f"plain PyTorch {baseline[tuple(idx)]:.6g}")


def make_case(mode: str, n: int, d: int, dtype, device, temperature: float = 0.3):
    """Returns (q, k, kwargs) for fastcl.ops.contrastive / reference.contrastive; q and k are
    leaf tensors that require grad (the same tensor where the loss compares a set with itself)."""
    g = torch.Generator().manual_seed(n * 1000 + d)

    def rand(*shape):
        return torch.randn(*shape, generator=g, dtype=torch.float64).to(device=device, dtype=dtype)

    scale = torch.tensor(1.0 / temperature, dtype=torch.float64 if dtype == torch.float64 else torch.float32,
                         device=device)
    kw = dict(exclude_self=False, row_offset=0, normalize=True, col_bias=None, col_bias_owner=None, row_ids=None,
              col_ids=None)
    if mode == "duplicates":
        # NT-Xent whose samples repeat (ids drawn from fewer values than samples; -1: no id), so
        # that rows lose some negatives to the duplicate mask and keep their positive.
        z = rand(2 * n, d).requires_grad_()
        labels = torch.arange(n).repeat(2).to(device)
        ids = torch.randint(-1, max(1, n // 2), (n,), generator=g).repeat(2).to(device)
        kw.update(exclude_self=True, row_ids=ids, col_ids=ids)
        return z, z, labels, labels, scale, kw
    if mode == "queue":
        # MoCo: query i against its own key and a queue; the in-batch keys are positive-only, and
        # queue entries that carry a query's sample id are not its negatives.
        q = rand(n, d).requires_grad_()
        k = rand(3 * n, d).requires_grad_()
        rows = torch.arange(n)
        cols = torch.cat([rows, torch.full((2 * n,), -1)])
        row_ids = torch.randint(-1, n, (n,), generator=g)
        queue_ids = torch.randint(-1, n, (2 * n,), generator=g)
        col_ids = torch.cat([torch.full((n,), POSITIVE_ONLY), queue_ids])
        kw.update(row_ids=row_ids.to(device), col_ids=col_ids.to(device))
        return q, k, rows.to(device), cols.to(device), scale, kw
    if mode in ("ntxent", "supcon", "unnormalized"):
        z = rand(2 * n, d).requires_grad_()
        labels = torch.arange(n).repeat(2) if mode != "supcon" else torch.randint(0, 3, (2 * n,), generator=g)
        labels = labels.to(device)
        kw.update(exclude_self=True, normalize=mode != "unnormalized")
        return z, z, labels, labels, scale, kw
    if mode == "row_offset":
        k = rand(3 * n, d).requires_grad_()
        labels = torch.arange(n).repeat(3).to(device)
        q = rand(n, d).requires_grad_()
        kw.update(exclude_self=True, row_offset=n)
        return q, k, labels[n:2 * n], labels, scale, kw
    q = rand(n, d).requires_grad_()
    rows = torch.arange(n, device=device)
    if mode == "infonce":
        return q, rand(n, d).requires_grad_(), rows, rows, scale, kw
    if mode in ("hard_negative", "column_bias"):
        k = rand(2 * n, d).requires_grad_()
        cols = torch.cat([rows, torch.full((n,), -1, device=device)])
        loss_dtype = scale.dtype
        bias = torch.cat([torch.zeros(n), torch.full((n,), 0.7)]).to(device=device, dtype=loss_dtype)
        kw.update(col_bias=bias if mode == "hard_negative" else torch.linspace(-1, 1, 2 * n, dtype=loss_dtype,
                                                                                  device=device))
        if mode == "hard_negative":
            kw.update(col_bias_owner=torch.cat([rows, rows]))
        return q, k, rows, cols, scale, kw
    raise ValueError(mode)


MODES = ["ntxent", "supcon", "unnormalized", "row_offset", "infonce", "hard_negative", "column_bias", "duplicates",
         "queue"]

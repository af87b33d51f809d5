"""The hardness penalty of the fused core (sentence-transformers' hardness_mode): hardness * dot,
constant in the backward, on the pairs each mode selects, against the pure-PyTorch reference in
every dtype, on the CPU and through the CUDA kernels (simulated without a GPU)."""

from __future__ import annotations

import pytest
import torch

from fastcl import ops
from fastcl.problem import ContrastiveProblem

import reference
from helpers import DEVICES, assert_close_to_truth, dtypes_for


def _case(n, d, dtype, device, mode):
    g = torch.Generator().manual_seed(n * 31 + d + mode)
    q = torch.randn(n, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    k = torch.randn(3 * n, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
    rows = torch.arange(n, device=device)
    labels = torch.cat([rows, torch.full((2 * n,), -1, device=device)])  # positives, then two hard negatives each
    owner = torch.cat([rows, rows, rows])
    owner[-1] = -1  # a column without an owner never takes the penalty
    loss_dtype = torch.float64 if dtype == torch.float64 else torch.float32
    scale = torch.tensor(5.0, dtype=loss_dtype, device=device)
    return q, k, rows, labels, scale, dict(col_bias_owner=owner, hardness=3.0, hardness_mode=mode)


def _loss_and_grads(fn, q, k, rows, labels, scale, kw, **extra):
    scale = scale.clone().requires_grad_()
    loss, _ = fn(ContrastiveProblem(q, k, rows, labels, scale, **kw), **extra)
    weights = torch.linspace(0.5, 1.5, loss.shape[0], dtype=loss.dtype, device=loss.device)
    return (loss, *torch.autograd.grad((loss * weights).sum(), (q, k, scale)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", [1, 2, 3], ids=["in-batch", "hard", "all"])
@pytest.mark.parametrize("n,d", [(2, 3), (37, 20), (70, 64)])
def test_matches_reference(device, mode, n, d):
    for dtype in dtypes_for(device):
        q, k, rows, labels, scale, kw = _case(n, d, dtype, device, mode)
        got = _loss_and_grads(ops.contrastive, q, k, rows, labels, scale, kw, impl="fastcl")
        q64, k64 = (x.detach().double().requires_grad_() for x in (q, k))
        truth = _loss_and_grads(reference.contrastive, q64, k64, rows, labels, scale.double(), kw)
        compute = dtype if dtype in (torch.float16, torch.bfloat16) else None
        plain = _loss_and_grads(reference.contrastive, q, k, rows, labels, scale, kw, compute_dtype=compute)
        for name, a, t, p in zip(["loss", "grad_q", "grad_k", "grad_scale"], got, truth, plain):
            assert_close_to_truth(a, t, p, dtype, f"mode {mode} {name}")


def test_the_penalty_moves_the_loss_and_only_where_the_mode_says():
    q, k, rows, labels, scale, kw = _case(5, 8, torch.float64, "cpu", 2)
    plain, _ = ops.contrastive(ContrastiveProblem(q, k, rows, labels, scale))
    for mode in (1, 2, 3):
        penalised, _ = ops.contrastive(ContrastiveProblem(q, k, rows, labels, scale, **{**kw, "hardness_mode": mode}))
        assert not torch.allclose(penalised, plain)
    with torch.no_grad():  # a penalty of 0 is no penalty
        zero, _ = ops.contrastive(ContrastiveProblem(q, k, rows, labels, scale, **{**kw, "hardness": 0.0}))
    torch.testing.assert_close(zero, plain, rtol=0, atol=0)


@pytest.mark.parametrize("kw,match", [
    (dict(hardness_mode=4, col_bias_owner=torch.zeros(6, dtype=torch.int64)), "hardness_mode must be in"),
    (dict(hardness_mode=1), "needs col_bias_owner"),
    (dict(hardness=float("nan"), hardness_mode=1, col_bias_owner=torch.zeros(6, dtype=torch.int64)), "finite"),
])
def test_bad_arguments(kw, match):
    q, rows = torch.randn(3, 4), torch.arange(3)
    with pytest.raises(ValueError, match=match):
        ops.contrastive(ContrastiveProblem(q, torch.randn(6, 4), rows, torch.arange(6), torch.tensor(2.0), **kw), impl="fastcl")

"""The fused contrastive core against the pure-PyTorch reference: values and gradients for
every mode, dtype and odd shape, on CPU (and on CUDA when present)."""

from __future__ import annotations

import pytest
import torch

from fastcl import ops
from fastcl.problem import ContrastiveProblem

import reference
from helpers import DEVICES, MODES, assert_close_to_truth, dtypes_for, make_case

SHAPES = [(2, 1), (2, 3), (37, 3), (37, 127), (300, 16)]  # 2N = 600 crosses the 256-wide tiles


def _loss_and_grads(fn, q, k, labels_r, labels_c, scale, kw, weights, **extra):
    leaves = [q] if q is k else [q, k]
    scale = scale.clone().requires_grad_()
    loss, num_pos = fn(ContrastiveProblem(q, k, labels_r, labels_c, scale, **kw), **extra)
    total = (loss * weights.to(loss.dtype)).sum()
    grads = torch.autograd.grad(total, leaves + [scale])
    return loss, num_pos, grads


def _check(mode, n, d, dtype, device, temperature=0.3):
    q, k, lr, lc, scale, kw = make_case(mode, n, d, dtype, device, temperature)
    weights = torch.rand(q.shape[0], dtype=torch.float64, device=device)
    got = _loss_and_grads(ops.contrastive, q, k, lr, lc, scale, kw, weights, impl="fastcl")
    # Ground truth: the reference in fp64 on the same (rounded) inputs.
    q64 = q.detach().double().requires_grad_()
    k64 = q64 if q is k else k.detach().double().requires_grad_()
    kw64 = {key: (v.double() if isinstance(v, torch.Tensor) and v.is_floating_point() else v)
            for key, v in kw.items()}
    truth = _loss_and_grads(reference.contrastive, q64, k64, lr, lc, scale.double(), kw64, weights)
    # Plain PyTorch in the test dtype: the error budget fastcl is held to.
    compute = dtype if dtype in (torch.float16, torch.bfloat16) else None
    plain = _loss_and_grads(reference.contrastive, q, k, lr, lc, scale, kw, weights, compute_dtype=compute)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    assert torch.equal(got[1].cpu().double(), truth[1].cpu().double()), "positive counts differ"
    assert_close_to_truth(got[0], truth[0], plain[0], dtype, f"{mode} loss")
    names = ["grad_q", "grad_k"] if q is not k else ["grad_z"]
    for name, g_got, g_truth, g_plain in zip(names + ["grad_logit_scale"], got[2], truth[2], plain[2]):
        assert g_got.dtype == (q.dtype if name != "grad_logit_scale" else scale.dtype)
        assert_close_to_truth(g_got, g_truth, g_plain, dtype, f"{mode} {name}")


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("n,d", SHAPES)
def test_matches_reference(device, mode, n, d):
    for dtype in dtypes_for(device):
        _check(mode, n, d, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, torch.float32])
@pytest.mark.parametrize("mode", ["ntxent", "supcon", "hard_negative"])
def test_temperature_001_is_finite_and_correct(device, dtype, mode):
    _check(mode, 64, 32, dtype, device, temperature=0.01)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_vectors(device):
    q, k, lr, lc, scale, kw = make_case("ntxent", 5, 8, torch.float32, device)
    with torch.no_grad():
        q[2].zero_()
    loss, _ = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")
    ref, _ = reference.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw))
    assert torch.isfinite(loss).all()
    torch.testing.assert_close(loss, ref, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_many_column_groups(device, monkeypatch):
    """A tiny partial budget forces the backward through many column groups."""
    monkeypatch.setenv("FASTCL_CPU_PARTIAL_BYTES", "4096")
    _check("supcon", 300, 8, torch.float32, device)


@pytest.mark.parametrize("device", DEVICES)
def test_non_contiguous_inputs(device):
    base = torch.randn(40, 2, 16, device=device)
    q = base[:, 0].requires_grad_()  # a strided view; made a leaf by requires_grad_
    k = base[:, 1].clone().requires_grad_()
    rows = torch.arange(40, device=device)
    scale = torch.tensor(5.0, device=device)
    loss, _ = ops.contrastive(ContrastiveProblem(q, k, rows, rows, scale), impl="fastcl")
    ref, _ = reference.contrastive(ContrastiveProblem(q, k, rows, rows, scale))
    torch.testing.assert_close(loss, ref)


@pytest.mark.parametrize("device", DEVICES)
def test_no_columns(device):
    """L == 0: every row has an empty sum and no positive, so loss 0, lse -inf and no count. (The
    CUDA kernel used to issue asynchronous copies for its rows and exit without waiting.)"""
    q = torch.randn(70, 8, device=device)
    k = torch.empty(0, 8, device=device)
    rows, cols = torch.arange(70, device=device), torch.empty(0, dtype=torch.int64, device=device)
    scale = torch.tensor(2.0, device=device)
    loss, lse, num_pos = torch.ops.fastcl.contrastive_forward(q, k, rows, cols, None, None, None, None, scale, 0, False, True)
    assert torch.equal(loss, torch.zeros_like(loss)) and torch.equal(num_pos, torch.zeros_like(num_pos))
    assert bool((lse == float("-inf")).all())


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
def test_rows_without_positives_ignore_a_foreign_lse(device, dtype):
    """A row without positives has loss 0 and no gradient, whatever lse the backward is handed:
    with one far below the row's logits exp overflows, and forming G = 0 * inf gave NaN."""
    q, k, lr, lc, scale, kw = make_case("supcon", 40, 24, dtype, device)
    lr = lr.clone()
    lr[::3] = 99  # no column carries label 99: these rows have no positives
    args = (q.detach(), k.detach(), lr, lc, kw["col_bias"], kw["col_bias_owner"], kw["row_ids"], kw["col_ids"], scale)
    tail = (kw["row_offset"], kw["exclude_self"], kw["normalize"])
    loss, lse, num_pos = torch.ops.fastcl.contrastive_forward(*args, *tail)
    assert bool((num_pos[::3] == 0).all())
    grad = torch.rand_like(loss)
    want = torch.ops.fastcl.contrastive_backward(grad, *args, lse, num_pos, *tail)
    foreign = lse.clone()
    foreign[::3] = -1e4
    got = torch.ops.fastcl.contrastive_backward(grad, *args, foreign, num_pos, *tail)
    for g, w in zip(got, want):
        assert bool(torch.isfinite(g).all())
        torch.testing.assert_close(g, w, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["ntxent", "hard_negative"])
@pytest.mark.parametrize("d", [264, 300])
def test_wide_features(device, mode, d):
    """D past one backward block's slice (256 columns for fp16/bf16, 128 for fp32), so the CUDA
    backward splits D over gridDim.y and only slice 0 counts the scale gradient; 264 keeps every
    row 16-byte aligned (vectorised copies), 300 does so for fp32 only."""
    for dtype in dtypes_for(device):
        _check(mode, 40, d, dtype, device)


@pytest.mark.parametrize("device", DEVICES)
def test_zero_columns_leave_the_other_gradients_intact(device):
    """An all-zero column of k has inverse norm 1/eps. Its own gradient is ill-defined, but it must
    not spoil the others: the fp16 CUDA backward stages G at a block-wide power-of-two scale, and
    the ~1e12 of that column, left in, would set the scale and flush every other G entry to zero."""
    for dtype in dtypes_for(device):
        q, k, lr, lc, scale, kw = make_case("infonce", 40, 16, dtype, device)
        with torch.no_grad():
            k[7].zero_()
        q64, k64 = q.detach().double().requires_grad_(), k.detach().double().requires_grad_()
        ref, _ = reference.contrastive(ContrastiveProblem(q64, k64, lr, lc, scale.double(), **kw))
        want = torch.autograd.grad(ref.sum(), q64)[0]
        loss, _ = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")
        got = torch.autograd.grad(loss.sum(), q)[0]
        tol = {torch.float64: 1e-9, torch.float32: 1e-4, torch.float16: 2e-2, torch.bfloat16: 5e-2}[dtype]
        torch.testing.assert_close(got.double(), want, rtol=tol, atol=tol, msg=f"grad_q ({dtype})")

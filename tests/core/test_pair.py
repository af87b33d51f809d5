"""The paired two-direction op (CLIP's symmetric loss in one pass): both directions' losses and
all gradients against the general core run twice in fp64, every dtype, odd shapes and shapes that
cross the 256-wide tiles, on the CPU and through the CUDA kernels; gradcheck, opcheck, compile."""

from __future__ import annotations

import pytest
import torch

from fastcl import functional, ops
from fastcl.problem import ContrastiveProblem, PairProblem

import reference
from helpers import DEVICES, assert_close_to_truth, dtypes_for, is_sim


def _case(m, d, dtype, device):
    g = torch.Generator().manual_seed(m * 7 + d)
    a, b = (torch.randn(m, d, generator=g, dtype=torch.float64).to(device=device, dtype=dtype).requires_grad_()
            for _ in range(2))
    scale = torch.tensor(1 / 0.07, dtype=torch.float64 if dtype == torch.float64 else torch.float32, device=device)
    return a, b, scale


def _both(fn, a, b, scale, normalize, **extra):
    scale = scale.clone().requires_grad_()
    loss_a, loss_b = fn(PairProblem(a, b, scale, normalize), **extra)
    w = torch.linspace(0.5, 1.5, a.shape[0], dtype=loss_a.dtype, device=loss_a.device)
    total = (loss_a * w).sum() + (loss_b * w.flip(0)).sum()
    return (loss_a, loss_b, *torch.autograd.grad(total, (a, b, scale)))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("m,d", [(1, 3), (2, 1), (37, 33), (300, 16)])
@pytest.mark.parametrize("normalize", [True, False], ids=["cosine", "dot"])
def test_matches_the_general_core_twice(device, m, d, normalize):
    for dtype in dtypes_for(device):
        a, b, scale = _case(m, d, dtype, device)
        if not normalize:
            scale = scale / 40
        got = _both(ops.contrastive_pair, a, b, scale, normalize=normalize, impl="fastcl")
        a64, b64 = (x.detach().double().requires_grad_() for x in (a, b))
        truth = _both(reference.contrastive_pair, a64, b64, scale.double(), normalize=normalize)
        compute = dtype if dtype in (torch.float16, torch.bfloat16) else None
        plain = _both(lambda p: _plain(p.a, p.b, p.logit_scale, compute, p.normalize), a, b, scale, normalize=normalize)
        for name, x, t, p in zip(["loss_a", "loss_b", "grad_a", "grad_b", "grad_scale"], got, truth, plain):
            assert_close_to_truth(x, t, p, dtype, name)


def _plain(a, b, scale, compute, normalize):
    rows = torch.arange(a.shape[0], device=a.device)
    one, _ = reference.contrastive(ContrastiveProblem(a, b, rows, rows, scale, normalize=normalize), compute_dtype=compute)
    two, _ = reference.contrastive(ContrastiveProblem(b, a, rows, rows, scale, normalize=normalize), compute_dtype=compute)
    return one, two


def test_gradcheck_opcheck_and_compile():
    a, b, scale = _case(5, 4, torch.float64, "cpu")
    scale = scale.clone().requires_grad_()
    assert torch.autograd.gradcheck(lambda x, y, s: ops.contrastive_pair(PairProblem(x, y, s), impl="fastcl"), (a, b, scale))
    torch.library.opcheck(torch.ops.fastcl.contrastive_pair_forward.default, (a, b, scale, True))
    loss_a, lse_a, loss_b, lse_b = torch.ops.fastcl.contrastive_pair_forward(a, b, scale, True)
    torch.library.opcheck(torch.ops.fastcl.contrastive_pair_backward.default,
                          (torch.rand_like(loss_a), torch.rand_like(loss_b), a.detach(), b.detach(), scale.detach(),
                           lse_a, lse_b, True))
    x, y = a.detach().float(), b.detach().float()
    compiled = torch.compile(lambda p, q: functional.info_nce(p, q, symmetric=True, temperature=0.1), fullgraph=True)
    torch.testing.assert_close(compiled(x, y), functional.info_nce(x, y, symmetric=True, temperature=0.1))


@pytest.mark.parametrize("device", DEVICES)
def test_symmetric_info_nce_takes_the_pair_op(device):
    a, b, _ = _case(9, 6, torch.float32, device)
    want = reference.clip_loss(a, b, temperature=0.1)
    got = functional.info_nce(a, b, symmetric=True, temperature=0.1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    if is_sim(device):
        import sim_ops

        assert sim_ops.CALLS["contrastive_pair_forward"] > 0


def test_bad_arguments():
    op = torch.ops.fastcl.contrastive_pair_forward
    scale = torch.tensor(2.0)
    with pytest.raises(ValueError, match="b must have the shape of a"):
        op(torch.randn(3, 4), torch.randn(2, 4), scale, True)
    with pytest.raises(ValueError, match="M >= 1"):
        op(torch.randn(0, 4), torch.randn(0, 4), scale, True)
    with pytest.raises(TypeError, match="logit_scale must be"):
        op(torch.randn(3, 4), torch.randn(3, 4), scale.double(), True)

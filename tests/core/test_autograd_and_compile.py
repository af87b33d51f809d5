"""gradcheck in fp64, torch.library.opcheck, torch.compile(fullgraph=True), determinism."""

from __future__ import annotations

import pytest
import torch

import fastcl
from fastcl import functional, ops
from fastcl.problem import ContrastiveProblem

from helpers import DEVICES, MODES, is_sim, make_case


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck_fp64(mode):
    q, k, lr, lc, scale, kw = make_case(mode, 5, 4, torch.float64, "cpu")
    scale = scale.clone().requires_grad_()
    if q is k:
        fn = lambda z, s: ops.contrastive(ContrastiveProblem(z, z, lr, lc, s, **kw), impl="fastcl")[0]  # noqa: E731
        inputs = (q, scale)
    else:
        fn = lambda a, b, s: ops.contrastive(ContrastiveProblem(a, b, lr, lc, s, **kw), impl="fastcl")[0]  # noqa: E731
        inputs = (q, k, scale)
    assert torch.autograd.gradcheck(fn, inputs, eps=1e-6, atol=1e-7)


def test_gradcheck_losses_fp64():
    z1 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    z2 = torch.randn(4, 3, dtype=torch.float64, requires_grad=True)
    t = torch.tensor(0.4, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b, s: functional.nt_xent(a, b, temperature=s), (z1, z2, t))
    assert torch.autograd.gradcheck(
        lambda a, b, s: functional.info_nce(a, b, temperature=s, symmetric=True), (z1, z2, t))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("mode", ["ntxent", "row_offset", "hard_negative", "queue"])
def test_opcheck(device, mode):
    dtype = torch.float64 if device == "cpu" and not is_sim(device) else torch.float32
    q, k, lr, lc, scale, kw = make_case(mode, 6, 5, dtype, device)
    args = (q, k, lr, lc, kw["col_bias"], kw["col_bias_owner"], kw["row_ids"], kw["col_ids"],
            scale.clone().requires_grad_(), kw["row_offset"], kw["exclude_self"], kw["normalize"])
    torch.library.opcheck(torch.ops.fastcl.contrastive_forward.default, args)
    loss, lse, num_pos = torch.ops.fastcl.contrastive_forward(*args)
    grad = torch.rand_like(loss)
    bwd_args = (grad, q.detach(), k.detach(), *args[2:8], args[8].detach(), lse, num_pos, *args[9:])
    torch.library.opcheck(torch.ops.fastcl.contrastive_backward.default, bwd_args)


@pytest.mark.parametrize("device", DEVICES)
def test_compile_fullgraph(device):
    torch._dynamo.reset()
    criterion = fastcl.NTXentLoss(temperature=0.2)
    supervised = fastcl.NTXentLoss(temperature=0.2)
    infonce = fastcl.InfoNCELoss(temperature=0.05, symmetric=True)

    def step(z1, z2, y):
        return criterion(z1, z2) + supervised(z1, labels=y) + infonce(z1, z2)

    z1 = torch.randn(32, 16, device=device, requires_grad=True)
    z2 = torch.randn(32, 16, device=device, requires_grad=True)
    y = torch.arange(32, device=device) % 8
    compiled = torch.compile(step, fullgraph=True, backend="aot_eager")
    got = compiled(z1, z2, y)
    want = step(z1, z2, y)
    torch.testing.assert_close(got, want)
    g_got = torch.autograd.grad(got, (z1, z2))
    g_want = torch.autograd.grad(want, (z1, z2))
    for a, b in zip(g_got, g_want):
        torch.testing.assert_close(a, b)


def test_backend_query_traces_in_fullgraph():
    """ops.contrastive asks has_cuda_ops() for CUDA inputs inside compiled code; the first GPU run
    (H200, torch 2.11) failed fullgraph there because the answer came from a call into the pybind
    module. CPU inputs never ask, so this checks the query itself."""
    torch._dynamo.reset()

    def pick(x):
        return x * 2 if fastcl._extension.has_cuda_ops() else x + 1

    x = torch.full((), 3.0)
    assert float(torch.compile(pick, fullgraph=True, backend="eager")(x)) == float(pick(x))


@pytest.mark.parametrize("device", DEVICES)
def test_bitwise_deterministic(device):
    q, k, lr, lc, scale, kw = make_case("supcon", 700, 64, torch.float32, device)

    def run():
        loss, _ = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")
        grad = torch.autograd.grad(loss.sum(), q)[0]
        return loss, grad

    first, second = run(), run()
    assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])


@pytest.mark.slow
@pytest.mark.parametrize("device", DEVICES)
def test_compile_inductor(device):
    """The default backend too: the custom op stays opaque inside an inductor graph."""
    torch._dynamo.reset()
    criterion = fastcl.NTXentLoss(temperature=0.3)
    compiled = torch.compile(lambda a, b: criterion(a, b) * 2, fullgraph=True)
    z1 = torch.randn(40, 24, device=device, requires_grad=True)
    z2 = torch.randn(40, 24, device=device, requires_grad=True)
    got = compiled(z1, z2)
    want = criterion(z1, z2) * 2
    torch.testing.assert_close(got, want)
    torch.testing.assert_close(torch.autograd.grad(got, z1)[0], torch.autograd.grad(want, z1)[0])

"""The sigmoid loss (SigLIP, issue 26): fastcl.functional.siglip and fastcl.SigLIPLoss against an
fp64 oracle written as open_clip writes it, and against open_clip's SigLipLoss itself: values and
gradients (features, logit scale, logit bias) in fp64/fp32/fp16/bf16, odd shapes and shapes across the
256-wide tiles, the chunked pure-PyTorch path, gradcheck, opcheck, torch.compile, bad input."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

import fastcl
from fastcl import _torch_impl, functional, ops

import reference
from helpers import assert_close_to_truth

SHAPES = [(1, 1), (3, 33), (37, 64), (37, 1), (300, 33)]


def _case(m, d, dtype, seed=0, scale=10.0, bias=-10.0):
    g = torch.Generator().manual_seed(1000 * m + d + seed)
    a, b = (torch.randn(m, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(2))
    acc = torch.float64 if dtype == torch.float64 else torch.float32
    s = torch.tensor(scale, dtype=acc, requires_grad=True)
    t = torch.tensor(bias, dtype=acc, requires_grad=True)
    return a, b, s, t


def _value_and_grads(fn, a, b, s, t):
    loss = fn(a, b, s, t)
    return (loss, *torch.autograd.grad(loss * 1.5, (a, b, s, t)))


def _fp64(a, b, s, t):
    return [x.detach().double().requires_grad_() for x in (a, b, s, t)]


NAMES = ["loss", "grad_a", "grad_b", "grad_scale", "grad_bias"]


@pytest.mark.parametrize("m,d", SHAPES)
@pytest.mark.parametrize("normalize", [True, False], ids=["cosine", "dot"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.float16, torch.bfloat16])
def test_matches_the_fp64_reference(m, d, normalize, dtype):
    """err(fastcl) <= 2 err(plain PyTorch in the test dtype) + tol[dtype] for the loss and every gradient."""
    a, b, s, t = _case(m, d, dtype, scale=10.0 if normalize else 0.5)
    got = _value_and_grads(lambda *x: functional.siglip(*x, normalize=normalize, impl="fastcl"), a, b, s, t)
    truth = _value_and_grads(lambda *x: reference.siglip_loss(*x, normalize=normalize), *_fp64(a, b, s, t))
    plain = _value_and_grads(lambda *x: reference.siglip_loss(*x, normalize=normalize), a, b, s, t)
    assert got[0].dtype == (torch.float64 if dtype == torch.float64 else torch.float32)
    for name, x, want, p in zip(NAMES, got, truth, plain):
        assert_close_to_truth(x, want, p, dtype, name)


@pytest.mark.parametrize("m,d", [(1, 4), (3, 33), (37, 64), (300, 33)])
def test_matches_open_clip(m, d):
    """open_clip's SigLipLoss takes features normalised by the model: normalize=False on normalised rows."""
    open_clip = pytest.importorskip("open_clip")
    a, b, s, t = _case(m, d, torch.float32)
    a, b = (F.normalize(x.detach(), dim=1).requires_grad_() for x in (a, b))
    got = _value_and_grads(lambda *x: functional.siglip(*x, normalize=False), a, b, s, t)
    want = _value_and_grads(open_clip.loss.SigLipLoss(), *_fp64(a, b, s, t))
    for name, x, w in zip(NAMES, got, want):
        torch.testing.assert_close(x.double(), w, rtol=1e-5, atol=1e-5, msg=name)


def test_the_chunked_torch_path_matches(monkeypatch):
    """The path CUDA inputs take (and impl="torch"), with chunks smaller than the batch."""
    monkeypatch.setattr(_torch_impl, "SIGLIP_CHUNK", 16)
    for normalize in (True, False):
        a, b, s, t = _case(37, 9, torch.float64)
        got = _value_and_grads(lambda *x: functional.siglip(*x, normalize=normalize, impl="torch"), a, b, s, t)
        want = _value_and_grads(lambda *x: reference.siglip_loss(*x, normalize=normalize), a, b, s, t)
        for name, x, w in zip(NAMES, got, want):
            torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-12, msg=name)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_cuda_inputs_run_the_chunked_torch_path():
    """No CUDA kernel yet: CUDA inputs get the pure-PyTorch path's numbers; impl="fastcl" says so."""
    a, b, s, t = _case(300, 33, torch.float32)
    got = _value_and_grads(functional.siglip, *(x.detach().cuda().requires_grad_() for x in (a, b, s, t)))
    truth = _value_and_grads(reference.siglip_loss, *_fp64(a, b, s, t))
    for name, x, w in zip(NAMES, got, truth):
        torch.testing.assert_close(x.double().cpu(), w, rtol=1e-4, atol=1e-5, msg=name)
    with pytest.raises(NotImplementedError, match="next increment"):
        functional.siglip(a.detach().cuda(), b.detach().cuda(), 10.0, -10.0, impl="fastcl")


def test_extreme_logits_stay_finite_and_exact():
    """Scale 100 and bias -10 on dot products push logits far past exp's range in both directions."""
    a, b, s, t = _case(40, 8, torch.float32, scale=100.0, bias=-10.0)
    a2, b2 = (x.detach().clone().requires_grad_() for x in (a, b))
    with torch.no_grad():
        b2[:5] = a2[:5]  # positives at logit +90, negatives down to about -100 x |a||b|
    got = _value_and_grads(lambda *x: functional.siglip(*x, normalize=False), a2, b2, s, t)
    truth = _value_and_grads(lambda *x: reference.siglip_loss(*x, normalize=False), *_fp64(a2, b2, s, t))
    for name, x, w in zip(NAMES, got, truth):
        assert torch.isfinite(x).all(), name
        torch.testing.assert_close(x.double(), w, rtol=1e-5, atol=1e-4, msg=name)


def test_batch_of_one_is_its_own_positive():
    """open_clip gives softplus(-(scale <a, b> + bias)) for one pair; so does fastcl."""
    a, b, s, t = _case(1, 5, torch.float64)
    z = s * (F.normalize(a, dim=1) @ F.normalize(b, dim=1).T).squeeze() + t
    torch.testing.assert_close(functional.siglip(a, b, s, t), F.softplus(-z))


def test_deterministic_across_calls():
    a, b, s, t = _case(300, 40, torch.float32)
    first = _value_and_grads(functional.siglip, a, b, s, t)
    second = _value_and_grads(functional.siglip, a, b, s, t)
    for x, y in zip(first, second):
        assert torch.equal(x, y)


def test_gradcheck_opcheck_and_compile():
    a, b, s, t = _case(5, 4, torch.float64, scale=2.0, bias=-1.0)
    for normalize in (True, False):
        assert torch.autograd.gradcheck(lambda *x: functional.siglip(*x, normalize=normalize, impl="fastcl"),
                                        (a, b, s, t))
        args = (a.detach(), b.detach(), s.detach(), t.detach(), normalize)
        torch.library.opcheck(torch.ops.fastcl.siglip_forward.default, args)
        torch.library.opcheck(torch.ops.fastcl.siglip_forward.default, (a, b, s, t, normalize))
        torch.library.opcheck(torch.ops.fastcl.siglip_backward.default, (torch.tensor(0.7, dtype=torch.float64),
                                                                          *args))
    x, y = a.detach().float(), b.detach().float()
    compiled = torch.compile(lambda p, q, sc, bi: functional.siglip(p, q, sc, bi), fullgraph=True)
    scale, bias = torch.tensor(10.0), torch.tensor(-10.0)
    torch.testing.assert_close(compiled(x, y, scale, bias), functional.siglip(x, y, scale, bias))


def test_module_learns_scale_and_bias_in_open_clips_parametrisation():
    criterion = fastcl.SigLIPLoss()
    assert criterion.logit_scale.item() == pytest.approx(math.log(10)) and criterion.logit_bias.item() == -10
    a, b, _, _ = _case(6, 8, torch.float32)
    loss = criterion(a, b)
    torch.testing.assert_close(loss, functional.siglip(a, b, torch.tensor(10.0), torch.tensor(-10.0)))
    loss.backward()
    assert criterion.logit_scale.grad is not None and criterion.logit_bias.grad is not None
    given = criterion(a, b, torch.tensor(3.0), torch.tensor(1.0))  # open_clip's call: the scale as given
    torch.testing.assert_close(given, functional.siglip(a, b, 3.0, 1.0))
    frozen = fastcl.SigLIPLoss(learnable=False, normalize=False)
    assert not list(frozen.parameters()) and set(dict(frozen.named_buffers())) == {"logit_scale", "logit_bias"}


def _x(*shape, dtype=torch.float32):
    return torch.randn(*shape, dtype=dtype)


BAD = [
    (lambda: functional.siglip(_x(4), _x(4), 1.0, 0.0), ValueError, "a must have shape"),
    (lambda: functional.siglip(_x(4, 8), _x(5, 8), 1.0, 0.0), ValueError, "same batch size"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 7), 1.0, 0.0), ValueError, "feature size"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8, dtype=torch.float64), 1.0, 0.0), TypeError, "dtype"),
    (lambda: functional.siglip(_x(4, 8).int(), _x(4, 8), 1.0, 0.0), TypeError, "float32"),
    (lambda: functional.siglip(_x(0, 8), _x(0, 8), 1.0, 0.0), ValueError, "at least one row"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), 0.0, 0.0), ValueError, "logit_scale must be finite and > 0"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), -1.0, 0.0), ValueError, "logit_scale must be finite and > 0"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), float("inf"), 0.0), ValueError, "logit_scale"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), 1.0, float("nan")), ValueError, "logit_bias must be finite"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), torch.ones(2), 0.0), ValueError, "one-element"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), "1", 0.0), TypeError, "logit_scale"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), 1.0, 0.0, impl="cuda"), ValueError, "impl"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), 1.0, 0.0, sample_ids=torch.arange(3)), ValueError, "sample_ids"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), 1.0, 0.0, sample_ids=torch.ones(4)), TypeError, "sample_ids"),
    (lambda: functional.siglip(_x(4, 8), _x(4, 8), 1.0, 0.0, sample_ids=torch.full((4,), -2)), ValueError,
     "sample_ids"),
]


@pytest.mark.parametrize("call,exc,match", BAD, ids=[m for _, _, m in BAD])
def test_rejected_with_clear_error(call, exc, match):
    with pytest.raises(exc, match=match):
        call()


def test_ops_reject_bad_arguments_without_crashing():
    a, s, t = _x(4, 8), torch.tensor(2.0), torch.tensor(0.0)
    fwd, bwd = torch.ops.fastcl.siglip_forward, torch.ops.fastcl.siglip_backward
    with pytest.raises(ValueError, match="a must be 2-D"):
        fwd(_x(4), _x(4), s, t, True)
    with pytest.raises(ValueError, match="b must be 2-D"):
        fwd(a, _x(3, 7), s, t, True)
    with pytest.raises(ValueError, match="b must be 2-D"):
        fwd(a, _x(0, 8), s, t, True)
    ids = torch.arange(4)
    with pytest.raises(ValueError, match="both or neither"):
        fwd(a, a, s, t, True, ids, None)
    with pytest.raises(TypeError, match="sample ids must be int64"):
        fwd(a, a, s, t, True, ids, ids.int())
    with pytest.raises(ValueError, match="sample ids must be 1-D"):
        fwd(a, _x(3, 8), s, t, True, ids, ids)
    with pytest.raises(ValueError, match="sample ids must be 1-D"):
        bwd(torch.tensor(1.0), a, a, s, t, True, ids[None], ids)
    with pytest.raises(TypeError, match="logit_bias must be"):
        fwd(a, a, s, t.double(), True)
    with pytest.raises(ValueError, match="logit_bias must be a 0-dim"):
        fwd(a, a, s, torch.zeros(2), True)
    with pytest.raises(ValueError, match="grad_loss must be a 0-dim"):
        bwd(torch.ones(2), a, a, s, t, True)


# Sample ids and the diagonal offset (the arguments the distributed ring's chunks need): rows a (M)
# against columns b (L), positives j == i + offset (none when out of range) and shared ids >= 0.

def _oracle(a, b, s, t, normalize=True, a_ids=None, b_ids=None, offset=0):
    """The whole M x L logit matrix in the inputs' dtype, labels +1 on the positives, -1 elsewhere."""
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    z = s.to(a.dtype) * a @ b.T + t.to(a.dtype)
    rows, cols = torch.arange(a.shape[0])[:, None], torch.arange(b.shape[0])[None, :]
    positive = cols == rows + offset
    if a_ids is not None:
        positive = positive | ((a_ids[:, None] == b_ids[None, :]) & (a_ids[:, None] >= 0))
    return -F.logsigmoid(torch.where(positive, z, -z)).sum() / a.shape[0]


def _chunk_case(m, l, d, dtype, with_ids, seed=0):
    a, _, s, t = _case(m, d, dtype, seed=seed, scale=4.0, bias=-2.0)
    b = torch.randn(l, d, generator=torch.Generator().manual_seed(seed + 1), dtype=torch.float64).to(dtype)
    g = torch.Generator().manual_seed(seed + 2)
    ids = [torch.randint(-1, 4, (n,), generator=g) if with_ids else None for n in (m, l)]
    return a, b.requires_grad_(), s, t, ids


CHUNKS = [(37, 300, 0), (300, 37, -5), (5, 7, 7), (5, 7, -5), (300, 300, 10), (1, 1, 1), (260, 9, -256)]


@pytest.mark.parametrize("m,l,offset", CHUNKS)
@pytest.mark.parametrize("with_ids", [False, True], ids=["no-ids", "ids"])
@pytest.mark.parametrize("impl", ["fastcl", "torch"])
def test_ids_and_offset_match_the_oracle(m, l, offset, with_ids, impl, monkeypatch):
    monkeypatch.setattr(_torch_impl, "SIGLIP_CHUNK", 16)
    for dtype, tol in ((torch.float64, dict(rtol=1e-10, atol=1e-12)), (torch.float32, dict(rtol=1e-4, atol=1e-5))):
        a, b, s, t, (ia, ib) = _chunk_case(m, l, 9, dtype, with_ids)
        for normalize in (True, False):
            got = _value_and_grads(lambda *x: ops.siglip(*x, normalize, impl, ia, ib, offset), a, b, s, t)
            want = _value_and_grads(lambda *x: _oracle(*x, normalize, ia, ib, offset), *_fp64(a, b, s, t))
            for name, x, w in zip(NAMES, got, want):
                torch.testing.assert_close(x.double(), w, **tol, msg=f"{name} {dtype} normalize={normalize}")


def test_the_kernels_without_autograd_match_the_op():
    """ops.siglip_kernels: the (forward, backward) pair the ring calls, compiled and pure PyTorch."""
    a, b, s, t, (ia, ib) = _chunk_case(40, 23, 6, torch.float64, True)
    g = torch.tensor(1.5, dtype=torch.float64)
    want = _value_and_grads(lambda *x: _oracle(*x, True, ia, ib, 3), a, b, s, t)
    for impl in ("fastcl", "torch"):
        forward, backward = ops.siglip_kernels(a, impl)
        args = (a.detach(), b.detach(), s.detach(), t.detach(), True, ia, ib, 3)
        got = (forward(*args), *backward(g, *args))
        for name, x, w in zip(NAMES, got, want):
            torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-12, msg=f"{impl}: {name}")


def test_sample_ids_make_duplicates_positives():
    """functional.siglip(sample_ids=): rows sharing an id are positives (-1: none); the diagonal stays
    positive; distinct ids change nothing."""
    a, b, s, t = _case(30, 8, torch.float64)
    ids = torch.arange(30) % 7 - 1  # -1 (no id) on some rows, duplicates elsewhere
    for impl in ("fastcl", "torch"):
        got = _value_and_grads(lambda *x: functional.siglip(*x, sample_ids=ids, impl=impl), a, b, s, t)
        want = _value_and_grads(lambda *x: _oracle(*x, True, ids, ids), a, b, s, t)
        for name, x, w in zip(NAMES, got, want):
            torch.testing.assert_close(x, w, rtol=1e-10, atol=1e-12, msg=name)
    distinct = functional.siglip(a, b, s, t, sample_ids=torch.arange(30))
    torch.testing.assert_close(distinct, functional.siglip(a, b, s, t))
    criterion = fastcl.SigLIPLoss(learnable=False)
    torch.testing.assert_close(criterion(a, b, s, t, sample_ids=ids), functional.siglip(a, b, s, t, sample_ids=ids))


def test_gradcheck_opcheck_and_compile_with_ids_and_offset():
    a, b, s, t, (ia, ib) = _chunk_case(5, 7, 4, torch.float64, True)
    for offset in (0, -2, 9):
        assert torch.autograd.gradcheck(lambda *x: ops.siglip(*x, True, "fastcl", ia, ib, offset), (a, b, s, t))
        args = (a, b, s, t, False, ia, ib, offset)
        torch.library.opcheck(torch.ops.fastcl.siglip_forward.default, args)
        torch.library.opcheck(torch.ops.fastcl.siglip_backward.default,
                              (torch.tensor(0.7, dtype=torch.float64), *(x.detach() for x in args[:4]), *args[4:]))
    x, y = a.detach().float(), b.detach().float()
    scale, bias = torch.tensor(4.0), torch.tensor(-2.0)
    compiled = torch.compile(lambda p, q, sc, bi, i, j: ops.siglip(p, q, sc, bi, True, "fastcl", i, j, 2),
                             fullgraph=True)
    torch.testing.assert_close(compiled(x, y, scale, bias, ia, ib), ops.siglip(x, y, scale, bias, True, "fastcl", ia,
                                                                                ib, 2))


# The fused forward + backward (siglip_forward_backward): what training on the CPU calls.

@pytest.mark.parametrize("dtype", [torch.float64, torch.float32, torch.bfloat16])
@pytest.mark.parametrize("with_ids", [False, True], ids=["no-ids", "ids"])
def test_the_fused_pass_equals_the_forward_and_the_backward_bit_for_bit(dtype, with_ids):
    """The loss and the gradients for grad_loss = 1 are the forward's and the backward's, bitwise (the
    same tiles in the same order, both from one exp per logit)."""
    for m, l, offset in ((300, 37, -5), (37, 300, 3), (5, 5, 0)):
        a, b, s, t, (ia, ib) = _chunk_case(m, l, 11, dtype, with_ids)
        for normalize in (True, False):
            args = (a.detach(), b.detach(), s.detach(), t.detach(), normalize, ia, ib, offset)
            loss, ga, gb, gs, gt = torch.ops.fastcl.siglip_forward_backward(*args)
            assert torch.equal(loss, torch.ops.fastcl.siglip_forward(*args))
            want = torch.ops.fastcl.siglip_backward(torch.ones((), dtype=s.dtype), *args)
            acc = s.dtype
            assert ga.dtype == acc and gb.dtype == acc
            assert torch.equal(ga.to(a.dtype), want[0]) and torch.equal(gb.to(b.dtype), want[1])
            assert torch.equal(gs, want[2]) and torch.equal(gt, want[3])


def test_training_takes_the_fused_pass_and_its_gradients_scale():
    """ops.siglip with a gradient wanted runs siglip_forward_backward once (no backward op), and the
    gradients of grad_loss * loss are those of the backward op for that grad_loss."""
    a, b, s, t, (ia, ib) = _chunk_case(40, 23, 6, torch.float64, True)
    profile = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU])
    with profile:
        loss = ops.siglip(a, b, s, t, True, "fastcl", ia, ib, 2)
        grads = torch.autograd.grad(loss * 0.7, (a, b, s, t))
    calls = {e.name for e in profile.events()}
    assert "fastcl::siglip_forward_backward" in calls
    assert "fastcl::siglip_backward" not in calls and "fastcl::siglip_forward" not in calls
    args = (a.detach(), b.detach(), s.detach(), t.detach(), True, ia, ib, 2)
    want = torch.ops.fastcl.siglip_backward(torch.tensor(0.7, dtype=torch.float64), *args)
    for name, x, w in zip(NAMES[1:], grads, want):
        torch.testing.assert_close(x, w, rtol=1e-13, atol=1e-15, msg=name)
    with torch.no_grad():  # no gradient wanted: the forward alone
        with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as quiet:
            ops.siglip(a, b, s, t, True, "fastcl", ia, ib, 2)
    assert "fastcl::siglip_forward" in {e.name for e in quiet.events()}


def test_the_fused_op_passes_opcheck():
    a, b, s, t, (ia, ib) = _chunk_case(7, 9, 4, torch.float64, True)
    for args in ((a, b, s, t, True, ia, ib, -1), (a.float(), b.float(), s.float(), t.float(), False, None, None, 0)):
        torch.library.opcheck(torch.ops.fastcl.siglip_forward_backward.default,
                              tuple(x.detach() if isinstance(x, torch.Tensor) else x for x in args))

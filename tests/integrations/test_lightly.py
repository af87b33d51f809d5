"""fastcl.integrations.lightly.NTXentLoss against lightly's own class: values, gradients and the
memory bank over several steps, fp32 and bf16 inputs, odd shapes, and lightly's argument errors."""

from __future__ import annotations

import pytest
import torch

lightly_loss = pytest.importorskip("lightly.loss")

from fastcl.integrations.lightly import NTXentLoss  # noqa: E402


def _inputs(n, d, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(n, d, generator=g).to(dtype).requires_grad_() for _ in range(2)]


def _run(criterion, out0, out1):
    loss = criterion(out0, out1)
    return loss, torch.autograd.grad(loss, (out0, out1))


@pytest.mark.parametrize("bank", [0, (10, 6), (64, 6)], ids=["no-bank", "bank-10", "bank-64"])
@pytest.mark.parametrize("n", [3, 17])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_matches_lightly(bank, n, dtype):
    torch.manual_seed(0)
    original = lightly_loss.NTXentLoss(temperature=0.3, memory_bank_size=bank)
    torch.manual_seed(0)
    fused = NTXentLoss(temperature=0.3, memory_bank_size=bank)
    for step in range(4):  # 4 x 17 rows run past a bank of 10 and 64: lightly's cut at the end
        out0, out1 = _inputs(n, 6, dtype, step)
        # lightly on the same values in fp32: the truth a bf16 input should reach with fp32 accumulation
        want, want_grads = _run(original, *(x.detach().float().requires_grad_() for x in (out0, out1)))
        got, got_grads = _run(fused, out0, out1)
        # bf16 queries meet the bank in bf16 (the kernel takes one dtype; lightly under autocast does the same)
        exact = dtype == torch.float32 or not bank
        torch.testing.assert_close(got, want, **(dict(rtol=1e-5, atol=1e-6) if exact else dict(rtol=2e-3, atol=1e-4)))
        tol = dict(rtol=1e-5, atol=1e-6) if dtype == torch.float32 else dict(rtol=2e-2, atol=2e-3)
        for g, w in zip(got_grads, want_grads):
            assert g.dtype == dtype
            torch.testing.assert_close(g.float(), w, **tol)
        if bank:
            torch.testing.assert_close(fused.memory_bank.keys, original.memory_bank.bank, rtol=0, atol=1e-7)


def test_evaluation_leaves_the_bank_alone():
    fused = NTXentLoss(memory_bank_size=(8, 4))
    before = fused.memory_bank.keys.clone()
    with torch.no_grad():
        fused(torch.randn(3, 4), torch.randn(3, 4))
    assert torch.equal(fused.memory_bank.keys, before)


@pytest.mark.parametrize("kw,match", [
    (dict(memory_bank_size=5), "does not specify the feature dimension"),
    (dict(memory_bank_size=(5, 3, 2)), "expected a \\(num_features, dim\\) tuple"),
    (dict(memory_bank_size=(-1, 3)), "non-negative"),
    (dict(temperature=0.0), "Illegal temperature"),
])
def test_lightly_argument_errors(kw, match):
    with pytest.raises(ValueError, match=match):
        NTXentLoss(**kw)


@pytest.mark.parametrize("bank", [0, (10, 6)], ids=["no-bank", "bank-10"])
def test_a_batch_of_one_matches_lightly(bank):
    """A loader with drop_last=False meets a last batch of one: lightly's loss is then 0 (each view
    against its positive alone) without a bank, and an ordinary loss against the bank with one."""
    torch.manual_seed(0)
    original = lightly_loss.NTXentLoss(temperature=0.3, memory_bank_size=bank)
    torch.manual_seed(0)
    fused = NTXentLoss(temperature=0.3, memory_bank_size=bank)
    out0, out1 = _inputs(1, 6, torch.float32, 0)
    want, want_grads = _run(original, *(x.detach().clone().requires_grad_() for x in (out0, out1)))
    got, got_grads = _run(fused, out0, out1)
    if not bank:
        assert want.item() == 0.0
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6)
    for g, w in zip(got_grads, want_grads):
        torch.testing.assert_close(g, w, rtol=1e-5, atol=1e-6)

"""The public losses against the formulations users copy today (SimCLR, SupCon, SimCSE, CLIP)."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

import fastcl
from fastcl import functional
from fastcl.problem import ContrastiveProblem

import reference
from helpers import DEVICES


def _grads(loss, *leaves):
    return torch.autograd.grad(loss, leaves)


def _pair(n, d, device, dtype=torch.float32):
    return (torch.randn(n, d, device=device, dtype=dtype, requires_grad=True),
            torch.randn(n, d, device=device, dtype=dtype, requires_grad=True))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,d", [(2, 4), (33, 128), (257, 7)])
def test_ntxent_equals_simclr_loss(device, n, d):
    z1, z2 = _pair(n, d, device)
    got = fastcl.NTXentLoss(temperature=0.5)(z1, z2)
    want = reference.nt_xent_naive(z1, z2, 0.5)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(got, z1, z2), _grads(want, z1, z2)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_ntxent_reductions(device):
    z1, z2 = _pair(10, 8, device)
    per_anchor = functional.nt_xent(z1, z2, temperature=0.2, reduction="none")
    assert per_anchor.shape == (20,) and per_anchor.dtype == torch.float32
    torch.testing.assert_close(functional.nt_xent(z1, z2, temperature=0.2, reduction="sum"), per_anchor.sum())
    torch.testing.assert_close(functional.nt_xent(z1, z2, temperature=0.2), per_anchor.mean())
    # Anchor i (view 1) against its own row of the SimCLR logits: -log softmax at the positive.
    z = F.normalize(torch.cat([z1, z2]), dim=1)
    logits = (z @ z.T / 0.2).fill_diagonal_(float("-inf"))
    want = -(logits.log_softmax(1)[torch.arange(20), torch.arange(20).roll(10)])
    torch.testing.assert_close(per_anchor, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_supcon_equals_reference(device):
    z = torch.randn(48, 16, device=device, requires_grad=True)
    y = torch.randint(0, 5, (48,), device=device)
    y[:5] = torch.arange(5, device=device)
    y[5:10] = torch.arange(5, device=device)  # every class has at least two members
    got = fastcl.NTXentLoss(temperature=0.1)(z, labels=y)
    want = reference.supcon_loss(z, y, 0.1)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grads(got, z)[0], _grads(want, z)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_multiview_layouts_agree(device):
    """(N, V, D) input equals SupCon on the view-major rows with labels repeated, and V=2
    equals the two-view call."""
    z = torch.randn(12, 3, 8, device=device)
    rows = torch.cat(torch.unbind(z, 1))
    labels = torch.arange(12, device=device).repeat(3)
    torch.testing.assert_close(functional.nt_xent(z, temperature=0.3), reference.supcon_loss(rows, labels, 0.3))
    y = torch.randint(0, 4, (12,), device=device)
    torch.testing.assert_close(functional.nt_xent(z, labels=y, temperature=0.3),
                               reference.supcon_loss(rows, y.repeat(3), 0.3))
    torch.testing.assert_close(functional.nt_xent(z[:, :2], temperature=0.3),
                               functional.nt_xent(z[:, 0], z[:, 1], temperature=0.3))


@pytest.mark.parametrize("device", DEVICES)
def test_supcon_without_positive(device):
    z = torch.randn(6, 4, device=device)
    y = torch.tensor([0, 0, 1, 1, 2, 3], device=device)  # labels 2 and 3 have no partner
    with pytest.raises(ValueError, match="no positive"):
        functional.nt_xent(z, labels=y)
    per = functional.nt_xent(z, labels=y, allow_no_positive=True, reduction="none")
    assert per[4] == 0 and per[5] == 0
    mean = functional.nt_xent(z, labels=y, allow_no_positive=True)
    torch.testing.assert_close(mean, per[:4].mean())
    want, _ = reference.contrastive(ContrastiveProblem(z, z, y, y, torch.tensor(2.0, device=device), exclude_self=True))
    torch.testing.assert_close(per, want)  # the partnerless anchors still sit in the denominators


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("weight", [0.0, 0.8])
def test_infonce_equals_simcse_code(device, weight):
    z1, z2 = _pair(20, 32, device)
    z3 = torch.randn(20, 32, device=device, requires_grad=True)
    got = fastcl.InfoNCELoss(temperature=0.05, hard_negative_weight=weight)(z1, z2, negative_keys=z3)
    want = reference.simcse_loss(z1, z2, z3, 0.05, weight)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(got, z1, z2, z3), _grads(want, z1, z2, z3)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)
    unsup = fastcl.InfoNCELoss(temperature=0.05)(z1, z2)
    torch.testing.assert_close(unsup, reference.simcse_loss(z1, z2, None, 0.05), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("device", DEVICES)
def test_symmetric_equals_clip(device):
    img, txt = _pair(24, 16, device)
    got = fastcl.InfoNCELoss(temperature=0.07, symmetric=True)(img, txt)
    want = reference.clip_loss(img, txt, 0.07)
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    for a, b in zip(_grads(got, img, txt), _grads(want, img, txt)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_learnable_temperature(device):
    """A learnable temperature (and CLIP's log logit scale) gets the reference gradient."""
    img, txt = _pair(16, 8, device)
    log_scale = torch.tensor(2.0, device=device, requires_grad=True)
    got = functional.info_nce(img, txt, temperature=torch.exp(-log_scale), symmetric=True)
    want = reference.clip_loss(img, txt, torch.exp(-log_scale))
    torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(_grads(got, log_scale)[0], _grads(want, log_scale)[0], rtol=1e-4, atol=1e-6)
    t = torch.tensor(0.3, device=device, requires_grad=True)
    loss = fastcl.NTXentLoss(temperature=t)(img, txt)
    ref = reference.nt_xent_naive(img, txt, t)
    torch.testing.assert_close(_grads(loss, t)[0], _grads(ref, t)[0], rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("device", DEVICES)
def test_low_precision_inputs_give_fp32_loss(device):
    for dtype in (torch.float16, torch.bfloat16):
        z1, z2 = _pair(64, 32, device, dtype)
        loss = fastcl.NTXentLoss(temperature=0.1)(z1, z2)
        assert loss.dtype == torch.float32
        want = reference.nt_xent_naive(z1.float(), z2.float(), 0.1)
        torch.testing.assert_close(loss, want, rtol=1e-4, atol=1e-4)
        g1, g2 = _grads(loss, z1, z2)
        assert g1.dtype == dtype and torch.isfinite(g1).all()


def test_pure_torch_path_matches_kernels():
    z1, z2 = _pair(30, 16, "cpu")
    y = torch.randint(0, 3, (30,))
    for kwargs in ({}, {"labels": y, "allow_no_positive": True}):
        torch.testing.assert_close(functional.nt_xent(z1, z2, impl="torch", **kwargs),
                                   functional.nt_xent(z1, z2, impl="fastcl", **kwargs))

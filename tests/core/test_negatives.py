"""Negatives beyond the batch and no false ones: duplicate masking by sample ids, MoCo's queue
and lightly's memory bank, each against the formula as its paper's code (or lightly) writes it."""

from __future__ import annotations

import pytest
import torch

import fastcl
from fastcl.problem import ContrastiveProblem

import reference
from helpers import DEVICES, is_sim


def _rand(*shape, device="cpu", dtype=torch.float64, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=g, dtype=dtype).to(device).requires_grad_()


def _exact_dtype(device):
    """fp64 where the kernels take it (the CPU), else fp32."""
    return torch.float64 if device == "cpu" and not is_sim(device) else torch.float32


def _tol(dtype):
    return dict(rtol=1e-9, atol=1e-11) if dtype == torch.float64 else dict(rtol=1e-5, atol=1e-6)


def _grads(loss, *leaves):
    return torch.autograd.grad(loss, leaves)


def _assert_same(got, want, leaves, rtol=1e-9, atol=1e-11):
    torch.testing.assert_close(got, want.to(got.dtype), rtol=rtol, atol=atol)
    for a, b in zip(_grads(got, *leaves), _grads(want, *leaves)):
        torch.testing.assert_close(a, b, rtol=rtol * 10, atol=atol * 10)


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("n,d", [(5, 3), (67, 33), (300, 16)])
def test_ntxent_sample_ids_mask_duplicates(device, n, d):
    dtype = torch.float32 if n == 300 else _exact_dtype(device)
    z1, z2 = _rand(n, d, device=device, dtype=dtype), _rand(n, d, device=device, dtype=dtype, seed=1)
    ids = torch.randint(-1, max(2, n // 3), (n,), generator=torch.Generator().manual_seed(n)).to(device)
    got = fastcl.NTXentLoss(0.3)(z1, z2, sample_ids=ids)
    want = reference.nt_xent_deduplicated(z1, z2, ids, 0.3)
    tol = _tol(dtype)
    _assert_same(got, want, (z1, z2), **tol)
    # Unique ids mask nothing: the plain loss, bit for bit.
    unique = torch.arange(n, device=device)
    assert torch.equal(fastcl.NTXentLoss(0.3)(z1, z2, sample_ids=unique), fastcl.NTXentLoss(0.3)(z1, z2))


def test_duplicate_masking_changes_the_loss_only_where_ids_repeat():
    z1, z2 = _rand(6, 4), _rand(6, 4, seed=1)
    ids = torch.tensor([0, 1, 2, 0, 3, -1])  # samples 0 and 3 are one image
    per_row = fastcl.NTXentLoss(0.5, reduction="none")(z1, z2, sample_ids=ids)
    plain = fastcl.NTXentLoss(0.5, reduction="none")(z1, z2)
    changed = (per_row - plain).abs() > 1e-12
    assert changed.tolist() == [True, False, False, True, False, False] * 2
    assert bool((per_row[changed] < plain[changed]).all())  # fewer negatives, lower loss


def test_supcon_keeps_positives_with_equal_ids():
    z = _rand(8, 2, 5)
    labels = torch.tensor([0, 1, 0, 2, 1, 0, 2, 3])
    same = labels.clone()  # ids equal labels: every same-id row is a positive, nothing is masked
    loss = fastcl.NTXentLoss(0.2)(z, labels=labels, sample_ids=same)
    assert torch.equal(loss, fastcl.NTXentLoss(0.2)(z, labels=labels))


@pytest.mark.parametrize("device", DEVICES)
def test_info_nce_ids_and_negative_ids(device):
    dtype = _exact_dtype(device)
    n, d = 19, 7
    q, k, h = (_rand(n, d, device=device, dtype=dtype, seed=s) for s in range(3))
    ids = torch.tensor([0, 1, 2, 3, 0, 4, 5, 2, 6, 7, 8, 9, 1, -1, 10, 11, 12, 13, 14]).to(device)
    neg_ids = torch.tensor([2, -1, 0, 5, -1, 4, -1, -1, 3, -1, 1, -1, -1, 0, -1, 14, -1, -1, 9]).to(device)
    got = fastcl.InfoNCELoss(0.05)(q, k, negative_keys=h, sample_ids=ids, negative_ids=neg_ids)
    want = reference.info_nce_deduplicated(q, k, h, ids, neg_ids, 0.05)
    tol = _tol(dtype)
    _assert_same(got, want, (q, k, h), **tol)


@pytest.mark.parametrize("device", DEVICES)
def test_lightly_memory_bank_semantics(device):
    """lightly's NTXentLoss(memory_bank_size=(size, D)) step by step: the loss against the bank
    as it was, then out1 (normalised) enqueued, a batch that runs past the end cut there."""
    dtype = _exact_dtype(device)
    size, d, n = 10, 6, 4
    torch.manual_seed(3)
    queue = fastcl.MemoryQueue(size, d, wrap=False, dtype=dtype).to(device)
    bank, ptr = queue.keys.detach().clone(), 0
    criterion = fastcl.NTXentLoss(0.5, queue=queue)
    for step in range(5):  # 5 x 4 rows through a bank of 10: two cuts at the end
        out0, out1 = _rand(n, d, device=device, dtype=dtype, seed=2 * step), _rand(n, d, device=device, dtype=dtype,
                                                                                   seed=2 * step + 1)
        got = criterion(out0, out1)
        want = reference.memory_bank_loss(out0, out1, bank, 0.5)
        tol = _tol(dtype)
        _assert_same(got, want, (out0, out1), **tol)
        ptr = reference.memory_bank_push(bank, ptr, torch.nn.functional.normalize(out1.detach(), dim=1))
        torch.testing.assert_close(queue.keys, bank, rtol=0, atol=0)
        assert int(queue.ptr) == ptr
    # Evaluation (no grad) reads the bank without changing it, as lightly does.
    with torch.no_grad():
        criterion(out0.detach(), out1.detach())
    torch.testing.assert_close(queue.keys, bank, rtol=0, atol=0)


@pytest.mark.parametrize("device", DEVICES)
def test_moco_v2_queue(device):
    """MoCo v2's loss (moco/builder.py) over steps: query vs its key and the queue, then the keys
    enqueued FIFO; a queue that is not a multiple of the batch wraps around."""
    dtype = _exact_dtype(device)
    size, d, n = 11, 5, 4
    torch.manual_seed(0)
    queue = fastcl.MemoryQueue(size, d, dtype=dtype).to(device)
    mirror, ptr = queue.keys.detach().clone(), 0
    criterion = fastcl.InfoNCELoss(0.2, in_batch_negatives=False, queue=queue)
    for step in range(4):
        q, k = _rand(n, d, device=device, dtype=dtype, seed=step), _rand(n, d, device=device, dtype=dtype,
                                                                       seed=10 + step)
        got = criterion(q, k)
        want = reference.moco_loss(q, k, mirror, 0.2)
        tol = _tol(dtype)
        _assert_same(got, want, (q, k), **tol)
        for row in torch.nn.functional.normalize(k.detach(), dim=1):
            mirror[ptr] = row
            ptr = (ptr + 1) % size
        torch.testing.assert_close(queue.keys, mirror, rtol=0, atol=0)


def test_queue_with_in_batch_negatives_is_cross_entropy_over_batch_and_queue():
    q, k = _rand(6, 4), _rand(6, 4, seed=1)
    torch.manual_seed(0)
    queue = fastcl.MemoryQueue(9, 4, dtype=torch.float64)
    keys = torch.cat([k, queue.keys])
    want = reference.simcse_loss(q, keys, temperature=0.1)
    got = fastcl.InfoNCELoss(0.1, queue=queue)(q, k)
    _assert_same(got, want, (q, k))


def test_queue_ids_mask_a_queued_copy_of_the_query():
    q, k = _rand(3, 4), _rand(3, 4, seed=1)
    queue = fastcl.MemoryQueue(4, 4, start="empty", dtype=torch.float64)
    queue.push(_rand(4, 4, seed=2).detach(), torch.tensor([7, 1, 8, 9]))
    ids = torch.tensor([0, 1, 2])
    per_row = fastcl.info_nce(q, k, sample_ids=ids, queue=queue, reduction="none", temperature=0.1)
    plain = fastcl.info_nce(q, k, queue=queue, reduction="none", temperature=0.1)
    assert ((per_row - plain).abs() > 1e-12).tolist() == [False, True, False]


def test_empty_queue_fills_then_wraps_and_round_trips_through_state_dict():
    queue = fastcl.MemoryQueue(5, 2, start="empty")
    assert len(queue) == 0
    queue.push(torch.ones(3, 2), torch.tensor([0, 1, 2]))
    assert len(queue) == 3 and int(queue.ptr) == 3
    queue.push(2 * torch.ones(4, 2))
    assert len(queue) == 5 and int(queue.ptr) == 2
    assert queue.keys[:, 0].tolist() == [2, 2, 1, 2, 2] and queue.ids.tolist() == [-1, -1, 2, -1, -1]
    queue.push(torch.arange(14.0).reshape(7, 2))  # longer than the queue: the newest 5 rows stay
    assert sorted(queue.keys[:, 0].tolist()) == [4, 6, 8, 10, 12]
    restored = fastcl.MemoryQueue(5, 2, start="empty")
    restored.load_state_dict(queue.state_dict())
    assert torch.equal(restored.keys, queue.keys) and int(restored.ptr) == int(queue.ptr) and len(restored) == 5


def test_loss_module_state_dict_holds_its_queue():
    criterion = fastcl.InfoNCELoss(0.2, in_batch_negatives=False, queue=fastcl.MemoryQueue(8, 3))
    assert {"queue.keys", "queue.ids", "queue.ptr", "queue.filled"} <= set(criterion.state_dict())


def test_compiled_sample_ids_loss_matches_eager():
    z1, z2 = _rand(9, 6, dtype=torch.float32), _rand(9, 6, dtype=torch.float32, seed=1)
    ids = torch.tensor([0, 1, 0, 2, 3, 1, 4, -1, 5])
    criterion = fastcl.NTXentLoss(0.4)
    compiled = torch.compile(lambda a, b, i: criterion(a, b, sample_ids=i), fullgraph=True)
    torch.testing.assert_close(compiled(z1, z2, ids), criterion(z1, z2, sample_ids=ids), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("call, error, match", [
    (lambda z, q: fastcl.nt_xent(z, z, sample_ids=torch.arange(3)), ValueError, r"sample_ids must have shape \(6,\)"),
    (lambda z, q: fastcl.nt_xent(z, z, sample_ids=torch.zeros(6)), TypeError, "integer sample ids"),
    (lambda z, q: fastcl.nt_xent(z, z, sample_ids=torch.full((6,), -3)), ValueError, "-1 for a sample without"),
    (lambda z, q: fastcl.nt_xent(z, z, sample_ids=torch.arange(6, device="meta")), ValueError,
     "sample_ids is on meta"),
    (lambda z, q: fastcl.info_nce(z, z, negative_ids=torch.arange(6)), ValueError, "negative_ids needs"),
    (lambda z, q: fastcl.info_nce(z, z, queue=fastcl.MemoryQueue(4, 5)), ValueError,
     "queue holds keys of dim 5 but the embeddings have D=4"),
    (lambda z, q: fastcl.info_nce(z, z, in_batch_negatives=False), ValueError, "leaves no negatives"),
    (lambda z, q: fastcl.info_nce(z, z, symmetric=True, queue=q), ValueError, "does not combine with a queue"),
    (lambda z, q: fastcl.nt_xent(z, labels=torch.arange(6), queue=q), ValueError, "two views"),
    (lambda z, q: fastcl.info_nce(z, z, queue=torch.zeros(3, 4)), TypeError, "fastcl.MemoryQueue"),
    (lambda z, q: fastcl.MemoryQueue(0, 4), ValueError, "size must be an int >= 1"),
    (lambda z, q: fastcl.MemoryQueue(4, 4, start="zeros"), ValueError, "start must be one of"),
    (lambda z, q: q.push(torch.zeros(2, 3)), ValueError, r"queue keys must have shape \(B, 4\)"),
    (lambda z, q: q.push(torch.zeros(2, 4), torch.arange(3)), ValueError, r"queue ids must have shape \(2,\)"),
])
def test_bad_input(call, error, match):
    with pytest.raises(error, match=match):
        call(torch.randn(6, 4), fastcl.MemoryQueue(4, 4))


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("k_grad", [True, False], ids=["keys-learned", "keys-constant"])
def test_constant_columns_get_no_gradient_and_change_nothing_else(device, k_grad):
    """A queue's columns are constants: the backward skips their gradient (all of k's when k
    needs none) and returns the same loss and query gradient as when it computes them."""
    from fastcl import ops
    from helpers import make_case

    for dtype in ([torch.float64, torch.float32] if _exact_dtype(device) == torch.float64 else
                  [torch.float32, torch.bfloat16]):
        q, k, lr, lc, scale, kw = make_case("queue", 70, 33, dtype, device)
        k.requires_grad_(k_grad)
        leaves = (q, k) if k_grad else (q,)
        full, _ = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")
        want = torch.autograd.grad(full.sum(), leaves)
        cut, _ = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, constant_cols=140, **kw), impl="fastcl")
        got = torch.autograd.grad(cut.sum(), leaves)
        assert torch.equal(cut, full)
        torch.testing.assert_close(got[0], want[0], rtol=0, atol=0)
        if k_grad:
            torch.testing.assert_close(got[1][:70], want[1][:70], rtol=1e-6, atol=1e-6)
            assert not got[1][70:].any()
        if k_grad:  # the pure-PyTorch path treats them as constants too
            ref, _ = reference.contrastive(ContrastiveProblem(q, k, lr, lc, scale, constant_cols=140, **kw))
            assert not torch.autograd.grad(ref.sum(), k)[0][70:].any()

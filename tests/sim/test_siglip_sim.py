"""The sigmoid loss's CUDA kernels (csrc/cuda/siglip_mma.cu, issue 26) on the simulator, whose mma.sync
and ldmatrix follow the PTX fragment maps: the loss and its four gradients (a, b, the scale, the bias)
against the fp64 pure-PyTorch path in fp16 and bf16, cosine and dot logits, odd shapes (M != L, neither
a multiple of a tile, each kD instantiation: 64, 128 with two slices at 256), sample ids and a shifted
diagonal; the mma count the tiling implies, conflict-free ldmatrix, and bitwise repeatable results.
Shapes stay tiny: the simulator runs every CUDA thread."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch
import torch.nn.functional as F

from fastcl import _torch_impl, ops

import sim_ops
from helpers import assert_close_to_truth

pytestmark = [pytest.mark.cuda, pytest.mark.sim]

BM, BN = 128, 64
NAMES = ["loss", "grad_a", "grad_b", "grad_scale", "grad_bias"]

# (M, L, D, dtype, normalize, ids, offset): kD 64 over two row blocks and two partial column tiles; kD 256
# (D = 136) in two gradient slices, with ids and a shifted diagonal; D = 8 with more rows than columns and
# a diagonal that leaves the columns; kD 128 (D = 100, rows padded to 104); ids on whole tiles.
CASES = [
    (150, 70, 40, torch.bfloat16, True, False, 0),
    (150, 70, 40, torch.float16, False, False, 0),
    (37, 130, 136, torch.bfloat16, False, True, 3),
    (37, 130, 136, torch.float16, True, True, -5),
    (70, 20, 8, torch.float16, True, True, 0),
    (70, 20, 8, torch.bfloat16, False, False, 10),
    (20, 75, 100, torch.bfloat16, True, False, 0),
    (128, 192, 16, torch.float16, True, True, 0),  # whole tiles off the diagonal: only ids make them masked
]


def _case(m, l, d, dtype, normalize, with_ids, seed=0):
    g = torch.Generator().manual_seed(100 * m + l + d + seed)
    a = torch.randn(m, d, generator=g, dtype=torch.float64)
    b = torch.randn(l, d, generator=g, dtype=torch.float64)
    b[: min(m, l) // 2] += a[: min(m, l) // 2]  # some aligned pairs, so positives carry weight
    a, b = a.to(dtype).requires_grad_(), b.to(dtype).requires_grad_()
    s = torch.tensor(10.0 if normalize else 0.3, requires_grad=True)
    t = torch.tensor(-10.0 if normalize else -2.0, requires_grad=True)
    ids = [torch.randint(-1, 5, (n,), generator=g) if with_ids else None for n in (m, l)]
    return a, b, s, t, ids


def _plain(a, b, s, t, normalize, ia, ib, offset):
    """The loss as plain PyTorch writes it in the inputs' dtype (the whole logit matrix)."""
    if normalize:
        a, b = F.normalize(a, dim=1), F.normalize(b, dim=1)
    z = s.to(a.dtype) * (a @ b.T) + t.to(a.dtype)
    pos = torch.arange(a.shape[0])[:, None] + offset == torch.arange(b.shape[0])[None, :]
    if ia is not None:
        pos = pos | ((ia[:, None] == ib[None, :]) & (ia[:, None] >= 0))
    return -F.logsigmoid(torch.where(pos, z, -z)).float().sum() / a.shape[0]


def _value_and_grads(fn, a, b, s, t):
    loss = fn(a, b, s, t)
    return (loss, *torch.autograd.grad(loss * 1.5, (a, b, s, t)))


def _assert_close_to_fp64(got, a, b, s, t, normalize, ia, ib, offset, dtype):
    """err(got) <= 2 err(plain PyTorch in the test dtype) + tol[dtype] for the loss and every gradient."""
    fp64 = [x.detach().double().requires_grad_() for x in (a, b, s, t)]
    truth = _value_and_grads(lambda *x: _torch_impl.siglip(*x, normalize, ia, ib, offset), *fp64)
    plain = _value_and_grads(lambda *x: _plain(*x, normalize, ia, ib, offset), a, b, s, t)
    for name, x, want, p in zip(NAMES, got, truth, plain):
        assert_close_to_truth(x, want, p, dtype, name)


def _simulated(fn):
    mod = sim_ops.module()
    mod.reset_mma_counters()
    calls = sim_ops.CALLS["siglip_backward"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with sim_ops.cuda_kernels_on_cpu():
            out = fn()
    assert sim_ops.CALLS["siglip_backward"] > calls, "the simulated CUDA op did not run"
    return out, mod.mma_counters()


@pytest.mark.parametrize("m,l,d,dtype,normalize,with_ids,offset", CASES)
def test_loss_and_gradients_match_the_fp64_path(m, l, d, dtype, normalize, with_ids, offset):
    """err(kernels) <= 2 err(plain PyTorch in the test dtype) + tol[dtype] for the loss and every gradient."""
    a, b, s, t, (ia, ib) = _case(m, l, d, dtype, normalize, with_ids)
    got, counters = _simulated(lambda: _value_and_grads(
        lambda *x: ops.siglip(*x, normalize, "fastcl", ia, ib, offset), a, b, s, t))
    assert got[0].dtype == torch.float32 and got[1].dtype == dtype
    _assert_close_to_fp64(got, a, b, s, t, normalize, ia, ib, offset, dtype)

    kd = next(w for w in (64, 128, 256) if d <= w)
    forward = {n: c for n, c in counters.items() if "siglip_forward_kernel" in n}
    grads = {n: c for n, c in counters.items() if "siglip_grad_kernel" in n}
    assert len(forward) == 1 and len(grads) == 2, list(counters)
    ((name, c),) = forward.items()
    assert re.search(rf", {kd}, {'true' if with_ids else 'false'}>", name), name
    # Every block runs 8 warps x (kD / 16) x (64 / 8) mma per column tile.
    assert c["mma"] == math.ceil(m / BM) * math.ceil(l / BN) * 8 * (kd // 16) * (BN // 8)
    for name, c in counters.items():
        assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], f"bank conflicts in {name}"


def test_an_unmasked_tile_runs_no_low_product():
    """The backward's mma count: per (owner block, stream tile, slice) 8 warps x (kD / 16) x 8 for the
    logits and 8 x 4 x (kOut / 8) for G' . stream, twice on the masked tiles (the low part of G'). With
    M = 256, L = 192 and no ids only the diagonal tiles are masked."""
    m, l, d = 256, 192, 64
    a, b, s, t, _ = _case(m, l, d, torch.bfloat16, True, False)
    _, counters = _simulated(lambda: _value_and_grads(lambda *x: ops.siglip(*x, True, "fastcl"), a, b, s, t))
    logits, product = 8 * (d // 16) * 8, 8 * 4 * (d // 8)
    # Rows own: 2 blocks x 3 tiles, diagonal tiles (block 0: tiles 0, 1; block 1: tiles 2, 3 -> 2 exists).
    rows = next(c for n, c in counters.items() if re.search(r"grad_kernel<[^>]*, 64, true, false>", n))
    assert rows["mma"] == 6 * (logits + product) + 3 * product
    # Columns own: 2 blocks (128 + 64 columns) x 4 row tiles; masked: block 0's diagonal tiles 0 and 1, and
    # every tile of block 1, which is partial.
    cols = next(c for n, c in counters.items() if re.search(r"grad_kernel<[^>]*, 64, false, false>", n))
    assert cols["mma"] == 8 * (logits + product) + (2 + 4) * product


def test_bitwise_repeatable_and_padded_rows():
    """Two runs give the same bits (no atomics), and D = 5 (rows padded to 16 bytes) with an all-zero row on
    each side (inverse norm 0 in the kernels; the normalisation's gradient / eps) matches the fp64 path."""
    a, b, s, t, (ia, ib) = _case(90, 40, 5, torch.bfloat16, True, True, seed=1)
    with torch.no_grad():
        a[3], b[5] = 0, 0

    def run():
        return _value_and_grads(lambda *x: ops.siglip(*x, True, "fastcl", ia, ib, 2), a, b, s, t)

    first, _ = _simulated(run)
    second, _ = _simulated(run)
    for name, x, y in zip(NAMES, first, second):
        assert torch.equal(x, y), name
    _assert_close_to_fp64(first, a, b, s, t, True, ia, ib, 2, torch.bfloat16)


# (M, L, D, dtype, normalize, ids, offset) past D = 256: 3 groups (D = 320, two row blocks, partial
# stream tiles, ids and a shifted diagonal), 6 groups (D = 520 padded to 768, owner fragments from
# shared memory), 4 groups in fp16 without normalisation.
WIDE_CASES = [
    (40, 70, 320, torch.bfloat16, True, True, 3),
    (33, 20, 520, torch.float16, True, False, -2),
    (20, 40, 400, torch.float16, False, False, 0),
]


@pytest.mark.parametrize("m,l,d,dtype,normalize,with_ids,offset", WIDE_CASES)
def test_wide_rows_run_on_the_wide_tiles(m, l, d, dtype, normalize, with_ids, offset):
    """256 < D <= 768 (siglip_wide.cu): the wide backward's tiles, 32 owner rows and 32-row stream tiles;
    the loss and every gradient as close to fp64 as the narrow kernels, 2U a side (logits once)."""
    a, b, s, t, (ia, ib) = _case(m, l, d, dtype, normalize, with_ids)
    got, counters = _simulated(lambda: _value_and_grads(
        lambda *x: ops.siglip(*x, normalize, "fastcl", ia, ib, offset), a, b, s, t))
    _assert_close_to_fp64(got, a, b, s, t, normalize, ia, ib, offset, dtype)
    groups = 3 if d <= 384 else 4 if d <= 512 else 6
    forward = {n: c for n, c in counters.items() if "siglip_wide_forward_kernel" in n}
    grads = {n: c for n, c in counters.items() if "siglip_wide_grad_kernel" in n}
    assert len(forward) == 1 and len(grads) == 2, list(counters)
    assert not any(re.search(r"siglip_(forward|grad)_kernel", n) for n in counters), list(counters)
    ((name, c),) = forward.items()
    assert re.search(rf", {groups}, {'true' if with_ids else 'false'}>", name), name
    # Per block and stream tile: 8 warps x groups x 8 mma for the logits.
    assert c["mma"] == math.ceil(m / 32) * math.ceil(l / 32) * 8 * groups * 8
    for name, c in counters.items():
        assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], f"bank conflicts in {name}"


@pytest.mark.parametrize("d", [40, 320])
def test_every_tile_through_one_block_pipeline(d):
    """One SM: each block streams all its tiles through the cp.async stages (narrow and wide kernels)."""
    a, b, s, t, (ia, ib) = _case(70, 90, d, torch.bfloat16, True, True)
    with sim_ops.one_sm():
        got, _ = _simulated(lambda: _value_and_grads(lambda *x: ops.siglip(*x, True, "fastcl", ia, ib, 1), a, b, s, t))
    _assert_close_to_fp64(got, a, b, s, t, True, ia, ib, 1, torch.bfloat16)


def test_fp32_and_wide_rows_are_refused_by_the_cuda_op():
    """The CUDA op takes fp16/bf16 with D <= 768 only; ops.siglip keeps the others on the PyTorch path."""
    a = torch.randn(4, 8)
    s, t = torch.tensor(10.0), torch.tensor(-10.0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with sim_ops.cuda_kernels_on_cpu():
            with pytest.raises(RuntimeError, match="float16/bfloat16"):
                torch.ops.fastcl.siglip_forward(a, a, s, t, True)
            wide = torch.randn(4, 776, dtype=torch.bfloat16)
            with pytest.raises(RuntimeError, match="D <= 768"):
                torch.ops.fastcl.siglip_forward(wide, wide, s, t, True)

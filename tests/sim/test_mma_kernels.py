"""The FlashAttention-2 style fp16/bf16 kernels (csrc/cuda/contrastive_forward_mma.cu,
contrastive_forward_wide.cu, contrastive_backward_mma.cu) on the simulator, whose mma.sync and ldmatrix follow the PTX fragment
maps: they equal the CPU op on every plain problem shape (each kD instantiation, partial tiles,
several row blocks, masks on the diagonal and on label-overlap tiles), issue the mma count their
tiling implies with conflict-free ldmatrix, and are not taken for the problems they do not cover.
The accuracy against fp64 and plain PyTorch (temperature 0.01 included) is tests/core's, whose
[sim] cases run these kernels too."""

from __future__ import annotations

import math
import re
import warnings

import pytest
import torch

from fastcl import ops
from fastcl.problem import ContrastiveProblem, PairProblem

import sim_ops
from helpers import make_case

pytestmark = [pytest.mark.cuda, pytest.mark.sim]

BM, BN = 128, 64


def _run(fn):
    mod = sim_ops.module()
    mod.reset_mma_counters()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        with sim_ops.cuda_kernels_on_cpu():
            out = fn()
    return out, mod.mma_counters()


def _forward(mode, n, d, dtype):
    q, k, lr, lc, scale, kw = _case(mode, n, d, dtype)
    with torch.no_grad():
        want = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")[0]
        got, counters = _run(lambda: ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")[0])
    counts = {name: c for name, c in counters.items() if "forward_mma_kernel" in name}
    return got, want, counts, q.shape[0], k.shape[0]


def _loss_and_grads(mode, n, d, dtype):
    q, k, lr, lc, scale, kw = _case(mode, n, d, dtype)
    scale = scale.clone().requires_grad_()
    leaves = [q, scale] if q is k else [q, k, scale]

    def run():
        loss, _ = ops.contrastive(ContrastiveProblem(q, k, lr, lc, scale, **kw), impl="fastcl")
        weights = torch.linspace(0.5, 1.5, loss.numel(), dtype=loss.dtype)  # unequal grad_loss per row
        return torch.autograd.grad((loss * weights).sum(), leaves)

    return run, q.shape[0], k.shape[0]


# (n, d): kD 64 with three column tiles and two row blocks, kD 128 past one row block, kD 256.
SHAPES = [(150, 40), (130, 128), (70, 200)]


# The Feature flags of csrc/contrastive_args.h the mma kernels are instantiated for, by make_case mode.
COL_BIAS, SAMPLE_IDS = 1, 4
FEATURES = {"duplicates": SAMPLE_IDS, "queue": SAMPLE_IDS, "hard_negative": COL_BIAS,
            "hard_negative_ids": COL_BIAS | SAMPLE_IDS}


def _case(mode, n, d, dtype):
    """make_case, and "hard_negative_ids": SimCSE's hard negatives (an owned bias) with sample ids, some
    shared by a pair and a negative."""
    if mode != "hard_negative_ids":
        return make_case(mode, n, d, dtype, "cpu")
    q, k, lr, lc, scale, kw = make_case("hard_negative", n, d, dtype, "cpu")
    ids = torch.arange(n) % max(1, n - 3)  # the last pairs share ids with the first
    kw.update(row_ids=ids, col_ids=torch.cat([ids, ids.flip(0)]))
    return q, k, lr, lc, scale, kw


PLAIN_MODES = ["ntxent", "supcon", "row_offset", "infonce", "unnormalized"]


def _cases(shapes):
    """Every plain mode in both types and every shape; the feature modes (whose logic does not depend
    on the type) in bf16 on every shape and in fp16 on the first, which keeps the simulator's time."""
    out = []
    for mode in [*PLAIN_MODES, *FEATURES]:
        for dtype, name in ((torch.bfloat16, "bf16"), (torch.float16, "f16")):
            for i, (n, d) in enumerate(shapes):
                if mode in PLAIN_MODES or dtype == torch.bfloat16 or i == 0:
                    out.append(pytest.param(mode, dtype, n, d, id=f"{mode}-{name}-n{n}-d{d}"))
    return out


@pytest.mark.parametrize("mode,dtype,n,d", _cases(SHAPES))
def test_mma_forward_equals_the_cpu_op(mode, dtype, n, d):
    got, want, counts, rows, cols = _forward(mode, n, d, dtype)
    # Both sum the same fp32 products of the same inputs; they differ only in fp32 rounding order.
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
    assert len(counts) == 1, f"expected one forward_mma_kernel instantiation to run, got {list(counts)}"
    ((name, c),) = counts.items()
    kd = next(w for w in (64, 128, 256) if d <= w)
    assert re.search(rf", {kd}, {FEATURES.get(mode, 0)}u?>", name), name
    # Every block runs 8 warps x (kD / 16) x (64 / 8) mma per column tile it owns.
    blocks, tiles = math.ceil(rows / BM), math.ceil(cols / BN)
    assert c["mma"] == blocks * tiles * 8 * (kd // 16) * (BN // 8)
    assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], "bank conflicts in the swizzled tiles"


@pytest.mark.parametrize("mode,dtype,d", [("ntxent", torch.bfloat16, 320), ("infonce", torch.float16, 300),
                                          ("duplicates", torch.bfloat16, 384), ("hard_negative_ids", torch.bfloat16, 264)])
def test_wide_forward_streams_d_in_chunks(mode, dtype, d):
    """256 < D <= 768: q's 128 rows stay in shared memory, k's tiles stream in 64-column D chunks
    (the last one partial: D = 264, and D = 300 padded to 304), the same fold as the narrow kernel."""
    q, k, lr, lc, scale, kw = _case(mode, 70, d, dtype)
    problem = ContrastiveProblem(q, k, lr, lc, scale, **kw)
    want = ops.contrastive(problem, impl="fastcl")[0]
    got, counters = _run(lambda: ops.contrastive(problem, impl="fastcl")[0])
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
    counts = {name: c for name, c in counters.items() if "forward_wide_kernel" in name}
    assert len(counts) == 1 and not any("forward_mma_kernel" in n for n in counters), list(counters)
    ((name, c),) = counts.items()
    assert re.search(rf", {FEATURES.get(mode, 0)}u?>", name), name
    # Per block and column tile: 8 warps x D / 64 chunks x 4 k-steps x 8 fragments.
    blocks, tiles = math.ceil(q.shape[0] / BM), math.ceil(k.shape[0] / BN)
    assert c["mma"] == blocks * tiles * 8 * math.ceil(d / 64) * 4 * (BN // 8)
    assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], "bank conflicts in the swizzled tiles"


def test_a_duplicate_in_a_far_tile_is_masked():
    """Unique sample ids but one, shared by samples 3 and 140: only the id ranges of the tiles that
    hold them overlap (rows 3 and 153 against columns 140 and 290), so the mask must come from the
    ranges, not from the labels or the diagonal."""
    n, d = 150, 64
    z = torch.randn(2 * n, d, dtype=torch.float64).to(torch.bfloat16)
    labels = torch.arange(n).repeat(2)
    ids = torch.arange(n)
    ids[140] = 3
    problem = ContrastiveProblem(z, z, labels, labels, torch.tensor(5.0), row_ids=ids.repeat(2),
                                 col_ids=ids.repeat(2), exclude_self=True)
    want = ops.contrastive(problem, impl="fastcl")[0]
    got, counters = _run(lambda: ops.contrastive(problem, impl="fastcl")[0])
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
    unmasked = ops.contrastive(problem._replace(row_ids=None, col_ids=None), impl="fastcl")[0]
    assert not torch.allclose(unmasked[3], want[3]), "the duplicate must change row 3's loss"
    assert any("forward_mma_kernel" in name for name in counters)


@pytest.mark.parametrize("mode", ["column_bias"])  # a bias without owners applies to every row
def test_problems_the_mma_forward_does_not_cover_take_the_general_kernel(mode):
    got, want, counts, _, _ = _forward(mode, 70, 40, torch.bfloat16)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
    assert counts == {}


def test_unaligned_rows_are_padded_for_the_mma_kernels():
    """72-byte rows (D = 36), and rows whose base address is off 16 bytes, are copied once zero-padded
    to a multiple of 8 columns: the mma kernels take them, and the gradient keeps its width."""
    got, want, counts, _, _ = _forward("ntxent", 70, 36, torch.bfloat16)
    torch.testing.assert_close(got, want, rtol=2e-5, atol=2e-5 * float(want.abs().max()))
    assert len(counts) == 1 and re.search(r", 64, 0u?>", next(iter(counts)))
    storage = torch.randn(2 * 70 * 64 + 1, dtype=torch.float64).to(torch.bfloat16)
    z = storage[1:].view(2 * 70, 64).requires_grad_()  # 2 bytes past an aligned address
    labels = torch.arange(70).repeat(2)
    problem = ContrastiveProblem(z, z, labels, labels, torch.tensor(5.0), exclude_self=True)
    run = lambda: torch.autograd.grad(ops.contrastive(problem, impl="fastcl")[0].sum(), z)[0]  # noqa: E731
    want_grad = run()
    got_grad, counters = _run(run)
    assert got_grad.shape == z.shape
    _assert_grads_close([got_grad], [want_grad], torch.bfloat16, ["z"])
    assert any("forward_mma_kernel" in n for n in counters) and any("grad_mma_kernel" in n for n in counters)


# Relative to the largest entry: G' is rounded to the input type once (twice, hi + lo, on tiles
# with a positive); the CPU kernel keeps it in fp32.
GRAD_TOL = {torch.bfloat16: 2e-2, torch.float16: 3e-3}


def _assert_grads_close(got, want, dtype, names=None):
    names = names or (["q", "scale"] if len(want) == 2 else ["q", "k", "scale"])
    for name, a, b in zip(names, got, want):
        err = float((a.float() - b.float()).abs().max() / b.float().abs().max())
        assert err < GRAD_TOL[dtype], f"grad_{name}: {err:.2e} of its largest entry"


@pytest.mark.parametrize("mode,dtype,n,d", _cases([(150, 40), (70, 128)]))
def test_mma_backward_matches_the_cpu_op(mode, dtype, n, d):
    run, rows, cols = _loss_and_grads(mode, n, d, dtype)
    want = run()
    got, counters = _run(run)
    _assert_grads_close(got, want, dtype)
    kd = 64 if d <= 64 else 128
    grads = {name: c for name, c in counters.items() if "grad_mma_kernel" in name}
    features = FEATURES.get(mode, 0)
    # q = k, one label vector (one id vector): one pass, except with ids past kD = 64 (registers).
    symmetric = mode in ("ntxent", "supcon", "unnormalized") or (mode == "duplicates" and kd == 64)
    want_kernels = ["true, true"] if symmetric else ["true, false", "false, false"]
    patterns = [re.compile(rf", {kd}, {w}, {features}u?>") for w in want_kernels]
    assert len(grads) == len(patterns) and all(any(p.search(n) for n in grads) for p in patterns), list(grads)
    for c in grads.values():
        assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], (
            "bank conflicts in the swizzled tiles"
        )
    # The q-row kernel: per block and stream tile, 8 warps x (S: kD/16 x 8, G'.k: 4 x kD/8) mma, and
    # as many again for the low part of G' on the tiles that mask.
    per_tile = 8 * (kd // 16 * 8 + 4 * kd // 8)
    dq = next(c for name, c in grads.items() if ", true, " in name)
    tiles = math.ceil(rows / BM) * math.ceil(cols / BN)
    assert tiles * per_tile <= dq["mma"] <= tiles * per_tile * 3 // 2


@pytest.mark.parametrize("mode,dtype", [("ntxent", torch.bfloat16), ("infonce", torch.bfloat16),
                                        ("supcon", torch.float16)])
def test_wide_mma_backward_splits_the_gradient_into_slices(mode, dtype):
    """D in (128, 256]: kD = 256 blocks each accumulate one 128-column slice of the gradient (grid z)
    and recompute the logits over all of D, reading their owner rows' fragments from shared memory."""
    n, d = 70, 200
    run, rows, cols = _loss_and_grads(mode, n, d, dtype)
    want = run()
    got, counters = _run(run)
    _assert_grads_close(got, want, dtype)
    grads = {name: c for name, c in counters.items() if "grad_mma_kernel" in name}
    assert grads and all(", 256, " in name for name in grads), list(grads)
    # Per block, slice and stream tile: 8 warps x (S: 16 x 8 over all of kD, G'.k: 4 x 16 for its slice).
    per_tile = 8 * (256 // 16 * 8 + 4 * 128 // 8)
    dq = next(c for name, c in grads.items() if ", true, " in name)
    tiles = math.ceil(rows / BM) * math.ceil(cols / BN) * 2
    assert tiles * per_tile <= dq["mma"] <= tiles * per_tile * 3 // 2


# (mode, dtype, D): 16-column groups per warp 2 (128 < D <= 256 with features), 3 (D 264-384) and 6
# (D 520, zero-padded to 768); q = k with ids in one pass (the wide kernel reads them at run time);
# the dq/dk kernels with an owned bias and ids; CLIP-like InfoNCE (q != k).
WIDE_BACKWARD = [("ntxent", torch.bfloat16, 320), ("infonce", torch.float16, 300),
                 ("duplicates", torch.bfloat16, 384), ("hard_negative_ids", torch.bfloat16, 264),
                 ("supcon", torch.float16, 520), ("duplicates", torch.bfloat16, 200)]


@pytest.mark.parametrize("mode,dtype,d", WIDE_BACKWARD)
def test_wide_backward_takes_d_past_256_in_2u_a_side(mode, dtype, d):
    """256 < D <= 768 (and 128 < D <= 256 with features): 32-row blocks, 32-row stream tiles; each warp's share of the logits over its
    16-column groups of D, summed through shared memory, then G' . stream tile into its groups' columns
    of the gradient: the logits are formed once a side (not once per 128-column slice)."""
    n = 70
    q, k, lr, lc, scale, kw = _case(mode, n, d, dtype)
    run, rows, cols = _loss_and_grads(mode, n, d, dtype)
    want = run()
    got, counters = _run(run)
    _assert_grads_close(got, want, dtype)
    grads = {name: c for name, c in counters.items() if "grad_wide_kernel" in name}
    assert grads and not any("grad_mma_kernel" in name or "grad_kernel" in name for name in counters), list(counters)
    groups = 2 if d <= 256 else 3 if d <= 384 else 4 if d <= 512 else 6
    symmetric = mode in ("ntxent", "supcon", "duplicates")
    want_kernels = [f", {groups}, true, true>"] if symmetric else [f", {groups}, true, false>", f", {groups}, false, false>"]
    assert sorted(grads) == sorted(next(n for n in grads if w in n) for w in want_kernels), list(grads)
    for c in grads.values():
        assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"], "bank conflicts in the shared tiles"
    # Per block and stream tile: 8 warps x groups x (S: 2 x 2 x 2, G'.str: 2 x 2 x 2) mma, and the
    # low part of G' (8 warps x groups x 8) on the tiles that mask.
    per_tile = 8 * groups * 16
    dq = next(c for name, c in grads.items() if ", true, " in name)
    tiles = math.ceil(rows / 32) * math.ceil(cols / 32)
    assert tiles * per_tile <= dq["mma"] <= tiles * per_tile * 3 // 2


ONE_SM = [("ntxent", torch.bfloat16, 70, 320), ("hard_negative_ids", torch.bfloat16, 70, 264),
          ("supcon", torch.float16, 150, 40), ("infonce", torch.bfloat16, 130, 128)]


@pytest.mark.parametrize("mode,dtype,n,d", ONE_SM)
def test_every_tile_through_one_block_pipeline(mode, dtype, n, d):
    """One SM: no column splits, so each block streams all its tiles through the double-buffered (wide:
    chunked) pipelines, where the small shapes above give each split one tile. Forward and gradients
    equal the CPU op's as before."""
    q, k, lr, lc, scale, kw = _case(mode, n, d, dtype)
    problem = ContrastiveProblem(q, k, lr, lc, scale, **kw)
    with torch.no_grad():
        want_loss = ops.contrastive(problem, impl="fastcl")[0]
    run, *_ = _loss_and_grads(mode, n, d, dtype)
    want = run()
    with sim_ops.one_sm(), torch.no_grad():
        got_loss, _ = _run(lambda: ops.contrastive(problem, impl="fastcl")[0])
    with sim_ops.one_sm():
        got, counters = _run(run)
    torch.testing.assert_close(got_loss, want_loss, rtol=2e-5, atol=2e-5 * float(want_loss.abs().max()))
    _assert_grads_close(got, want, dtype)
    assert any("_mma_kernel" in name or "_wide_kernel" in name for name in counters), list(counters)


def test_mma_backward_is_bitwise_repeatable():
    run, *_ = _loss_and_grads("supcon", 150, 40, torch.bfloat16)
    first, _ = _run(run)
    second, _ = _run(run)
    assert all(torch.equal(a, b) for a, b in zip(first, second))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("n,d", [(150, 40), (70, 128)])
def test_clip_pair_backward_is_two_passes_of_the_transposed_kernel(dtype, n, d):
    """CLIP's two directions: grad_a from a's rows with both directions' G, grad_b the same with the
    sides swapped: two launches of the kernel that adds G's transposed term, no dk pass (4U, not 8U)."""
    g = torch.Generator().manual_seed(n + d)
    a, b = (torch.randn(n, d, generator=g, dtype=torch.float64).to(dtype).requires_grad_() for _ in range(2))
    scale = torch.tensor(1 / 0.07).requires_grad_()

    def run():
        loss_a, loss_b = ops.contrastive_pair(PairProblem(a, b, scale), impl="fastcl")
        w = torch.linspace(0.5, 1.5, n)
        return torch.autograd.grad((loss_a * w).sum() + (loss_b * w.flip(0)).sum(), (a, b, scale))

    want = run()
    got, counters = _run(run)
    _assert_grads_close(got, want, dtype, ["a", "b", "scale"])
    kd = 64 if d <= 64 else 128
    grads = {name: c for name, c in counters.items() if "grad_mma_kernel" in name}
    assert list(grads) == [next(n for n in grads if re.search(rf", {kd}, true, true, 0u?>", n))], list(grads)
    assert next(iter(grads.values()))["launches"] == 2

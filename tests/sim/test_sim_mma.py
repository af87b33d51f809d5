"""The simulator's ldmatrix and mma.sync (fastcl/csrc/sim/mma.cpp), driven through the device
wrappers of fastcl/csrc/cuda/mma.cuh by the kernels in tests/sim/sim_kernels/mma_kernels.cu: the
PTX ISA's fragment maps register for register, GEMMs that match torch, the shared-memory
wavefront counters, and broken kernels that must give wrong results or trip a check. Needs only
g++ and the CUDA headers, no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sim_build

pytestmark = pytest.mark.sim

HERE = Path(__file__).resolve().parent
KERNELS = HERE / "sim_kernels" / "mma_kernels.cu"
CSRC = HERE.parents[1] / "fastcl" / "csrc"

NAIVE, PADDED, SWIZZLED = 0, 1, 2
BUGS = {"swap_gt": 1, "no_trans": 2, "misaligned": 3, "global_row": 4, "row_out_of_bounds": 5,
        "no_barrier": 6, "unwritten": 7, "half_warp": 8}
DTYPES = [torch.bfloat16, torch.float16]


@pytest.fixture(scope="module")
def sim():
    return sim_build.build("sim_mma", [KERNELS], extra_include_paths=[CSRC])


@pytest.fixture(autouse=True)
def _defaults(sim):
    yield
    sim.set_race_check(True)


def p(t: torch.Tensor) -> int:
    return t.data_ptr()


def name(dtype: torch.dtype) -> str:
    return str(dtype).split(".")[1]


def gemm(sim, a, b, *, b_kn=False, b_x4=True, layout=PADDED, bug=None):
    """S = A B^T for b (N, K), or A B for b (K, N) with b_kn, computed by the simulated kernel."""
    m, k = a.shape
    n = b.shape[1] if b_kn else b.shape[0]
    s = torch.zeros(m, n)
    sim.gemm(name(a.dtype), p(a), p(b), p(s), m, n, k, b_kn, b_x4, layout, BUGS[bug] if bug else 0)
    return s


def reference(a, b, b_kn=False):
    """A B^T (or A B) in the simulator's documented order: fmaf over k ascending in fp32. Each
    bf16/f16 product and its sum with an fp32 value are exact in double, so rounding that sum
    to float is fmaf."""
    b_nk = b.t() if b_kn else b
    acc = torch.zeros(a.shape[0], b_nk.shape[0], dtype=torch.float32)
    for k in range(a.shape[1]):
        acc = (acc.double() + a[:, k, None].double() * b_nk[None, :, k].double()).float()
    return acc


def operands(dtype, m, n, k, *, integers, seed=0):
    g = torch.Generator().manual_seed(seed)
    if integers:  # every product and partial sum exact: the result must be bit-equal
        a, b = torch.randint(-8, 9, (m, k), generator=g), torch.randint(-8, 9, (n, k), generator=g)
        return a.to(dtype), b.to(dtype)
    return torch.randn(m, k, generator=g).to(dtype), torch.randn(n, k, generator=g).to(dtype)


def expect(call, check: str, kernel: str, *, contains=()):
    with pytest.raises(RuntimeError) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(f"fastcl.sim: {check}: kernel mmatest::{kernel}"), msg
    for c in contains:
        assert c in msg, msg
    return msg


# ---- fragment maps ------------------------------------------------------------------------------


@pytest.mark.parametrize("num", [1, 2, 4])
@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix_matches_the_ptx_fragment_map(sim, num, trans):
    out = torch.zeros(32, 4, dtype=torch.int32)
    sim.ldmatrix_probe(p(out), num, trans)
    regs = out.to(torch.int64) & 0xFFFFFFFF
    for lane in range(32):
        g, t = lane // 4, lane % 4
        for i in range(4):
            if i >= num:
                assert regs[lane, i] == 0
                continue
            # matrix i holds 64 i + 8 row + col; the lower-indexed element is the low half
            if trans:
                lo, hi = 64 * i + 8 * (2 * t) + g, 64 * i + 8 * (2 * t + 1) + g
            else:
                lo, hi = 64 * i + 8 * g + 2 * t, 64 * i + 8 * g + 2 * t + 1
            assert regs[lane, i] == lo | hi << 16, (lane, i)


# ---- GEMMs against torch -----------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b_x4", [False, True])
def test_gemm_16x16_is_exact(sim, dtype, b_x4):
    a, b = operands(dtype, 16, 16, 16, integers=True)
    assert torch.equal(gemm(sim, a, b, b_x4=b_x4), reference(a, b))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("b_x4", [False, True])
def test_gemm_16x16_trans_path_is_exact(sim, dtype, b_x4):
    a, b = operands(dtype, 16, 16, 16, integers=True, seed=1)
    b_kn = b.t().contiguous()  # B row-major (k, n): ldmatrix .trans
    assert torch.equal(gemm(sim, a, b_kn, b_kn=True, b_x4=b_x4), reference(a, b_kn, b_kn=True))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("layout", [NAIVE, PADDED, SWIZZLED])
def test_gemm_64x64_four_warps(sim, dtype, layout):
    a, b = operands(dtype, 64, 64, 64, integers=False, seed=2)
    s = gemm(sim, a, b, layout=layout)
    assert torch.equal(s, reference(a, b))
    torch.testing.assert_close(s, a.float() @ b.float().t(), rtol=1e-5, atol=1e-5)  # torch's own fp32 order
    b_kn = b.t().contiguous()
    assert torch.equal(gemm(sim, a, b_kn, b_kn=True, layout=layout), reference(a, b_kn, b_kn=True))


def test_mma_accumulates_in_fp32_in_k_order(sim):
    # Row and column: 1 at k = 0, then fifteen products of 2^-24. Added in k order each one is a
    # tie that rounds back to 1; any other order (or a wider accumulator) would reach 1 + 2^-20.
    a = torch.full((16, 16), 2.0**-12, dtype=torch.bfloat16)
    a[:, 0] = 1.0
    assert torch.equal(gemm(sim, a, a.clone()), torch.ones(16, 16))


# ---- wavefront counters -----------------------------------------------------------------------


@pytest.mark.parametrize("layout,conflicts", [(SWIZZLED, False), (PADDED, False), (NAIVE, True)])
def test_ldmatrix_wavefronts(sim, layout, conflicts):
    a, b = operands(torch.bfloat16, 64, 64, 64, integers=True)
    sim.reset_mma_counters()
    gemm(sim, a, b, layout=layout)
    c = sim.mma_counters()["mmatest::gemm<__nv_bfloat16>"]
    # 4 warps x 4 k-steps: one A x4 and four B x4 (two n-tiles each) per step; 8 mma per step
    assert (c["launches"], c["mma"], c["ldmatrix"], c["ldmatrix_ideal_wavefronts"]) == (1, 128, 80, 320)
    if conflicts:  # 128-byte rows: the 8 rows of each phase sit in the same 4 banks
        assert c["ldmatrix_wavefronts"] == 8 * c["ldmatrix_ideal_wavefronts"]
    else:
        assert c["ldmatrix_wavefronts"] == c["ldmatrix_ideal_wavefronts"]


def test_counters_per_launch_and_reset(sim):
    a, b = operands(torch.float16, 16, 16, 16, integers=True)
    sim.reset_mma_counters()
    gemm(sim, a, b, b_x4=False)
    gemm(sim, a, b, b_x4=True)
    c = sim.mma_counters()["mmatest::gemm<__half>"]
    assert c["launches"] == 2
    assert (c["last_mma"], c["last_ldmatrix"]) == (2, 2)  # A x4, B x4; two n-tiles
    assert (c["mma"], c["ldmatrix"]) == (4, 5)  # plus A x4 and two B x2
    sim.reset_mma_counters()
    assert sim.mma_counters() == {}


# ---- broken kernels ----------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", DTYPES)
def test_wrong_fragment_lane_map_gives_a_wrong_result(sim, dtype):
    a, b = operands(dtype, 16, 16, 16, integers=True)
    ref = reference(a, b)
    assert torch.equal(gemm(sim, a, b), ref)
    wrong = gemm(sim, a, b, bug="swap_gt")
    assert not torch.equal(wrong, ref)
    # the right values, misplaced
    assert torch.equal(wrong.flatten().sort().values, ref.flatten().sort().values)


@pytest.mark.parametrize("b_x4", [False, True])
def test_missing_trans_gives_a_wrong_result(sim, b_x4):
    a, b = operands(torch.bfloat16, 16, 16, 16, integers=True, seed=4)
    b_kn = b.t().contiguous()
    ref = reference(a, b_kn, b_kn=True)
    assert torch.equal(gemm(sim, a, b_kn, b_kn=True, b_x4=b_x4), ref)
    assert not torch.equal(gemm(sim, a, b_kn, b_kn=True, b_x4=b_x4, bug="no_trans"), ref)


def test_misaligned_row_address(sim):
    a, b = operands(torch.bfloat16, 16, 16, 16, integers=True)
    expect(lambda: gemm(sim, a, b, bug="misaligned"), "misaligned address", "gemm<__nv_bfloat16>",
           contains=["thread (0,0,0)", "ldmatrix.x4", "is not 16-byte aligned", "row 0 of matrix 0"])


def test_row_address_in_global_memory(sim):
    a, b = operands(torch.bfloat16, 16, 16, 16, integers=True)
    expect(lambda: gemm(sim, a, b, bug="global_row"), "invalid ldmatrix", "gemm<__nv_bfloat16>",
           contains=["is not shared memory"])


def test_row_out_of_bounds(sim):
    a, b = operands(torch.float16, 16, 16, 16, integers=True)
    expect(lambda: gemm(sim, a, b, bug="row_out_of_bounds"), "shared out of bounds", "gemm<__half>",
           contains=["ldmatrix row"])


# Lane 0's rows were written by other lanes of its warp, with no barrier or __syncwarp since.
@pytest.mark.parametrize("m", [16, 64])
def test_rows_read_without_a_barrier_race(sim, m):
    a, b = operands(torch.bfloat16, m, 16, 16, integers=True)
    expect(lambda: gemm(sim, a, b, bug="no_barrier"), "shared memory race", "gemm<__nv_bfloat16>",
           contains=["read-after-write", "reads 16 bytes", "ldmatrix row", "mma_kernels.cu"])


def test_unwritten_row_is_an_uninitialised_read(sim):
    a, b = operands(torch.bfloat16, 16, 16, 16, integers=True)
    expect(lambda: gemm(sim, a, b, bug="unwritten"), "uninitialised shared read", "gemm<__nv_bfloat16>",
           contains=["ldmatrix row"])


def test_ldmatrix_with_lanes_missing(sim):
    a, b = operands(torch.bfloat16, 16, 16, 16, integers=True)
    expect(lambda: gemm(sim, a, b, bug="half_warp"), "warp collective divergence", "gemm<__nv_bfloat16>",
           contains=["ldmatrix"])


def test_mma_in_a_partial_warp(sim):
    out = torch.zeros(48)
    expect(lambda: sim.mma_partial_warp(p(out)), "invalid warp collective", "mma_partial_warp",
           contains=["mma.sync", "in a partial warp"])


# ---- scalar helpers -----------------------------------------------------------------------------


def test_ex2_approx_and_packs(sim):
    g = torch.Generator().manual_seed(5)
    edges = torch.tensor([0.0, -1e-40, 1e-40, -126.5, -149.0, 128.0])  # subnormal in and out, overflow
    x = torch.cat([torch.randn(200, generator=g) * 30, edges])
    lo, hi = torch.randn(len(x), generator=g) * 100, torch.randn(len(x), generator=g)
    ex2 = torch.zeros_like(x)
    bf, hf = torch.zeros(len(x), dtype=torch.int32), torch.zeros(len(x), dtype=torch.int32)
    sim.scalar_helpers(p(x), p(lo), p(hi), p(ex2), p(bf), p(hf), len(x))
    ref = torch.exp2(x.double())
    ref = torch.where(ref < 2.0**-126, torch.zeros_like(ref), ref).float()  # .ftz: subnormal results flush
    ref[(x != 0) & (x.abs() < 2.0**-126)] = 1.0  # .ftz: subnormal inputs count as zero
    torch.testing.assert_close(ex2, ref, rtol=2.0**-22, atol=0)

    def bits(t):
        return t.view(torch.int16).to(torch.int32) & 0xFFFF

    assert torch.equal(bf, bits(lo.to(torch.bfloat16)) | bits(hi.to(torch.bfloat16)) << 16)
    assert torch.equal(hf, bits(lo.to(torch.float16)) | bits(hi.to(torch.float16)) << 16)

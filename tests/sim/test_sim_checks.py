"""The CPU simulator of CUDA kernels (fastcl/csrc/sim): each check catches its deliberately broken
kernel in tests/sim/sim_kernels/broken.cu and names the right kernel, block and thread, while the
correct kernels (barriers, shuffles, wmma, cp.async) pass and match CPU references. Runs in
the default test run: it needs only g++ and the CUDA headers, no GPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import sim_build

KERNELS = Path(__file__).resolve().parent / "sim_kernels" / "broken.cu"


@pytest.fixture(scope="module")
def sim():
    return sim_build.build("sim_broken", [KERNELS])


@pytest.fixture(autouse=True)
def _defaults(sim):
    yield
    sim.set_schedule(0)
    sim.set_race_check(True)
    sim.set_global_check(True)


def p(t: torch.Tensor) -> int:
    return t.data_ptr()


def expect(call, check: str, kernel: str, block: str | None = None, thread: str | None = None, *, contains=()):
    """Runs call(), which must raise the simulator's error for `check` in `kernel`, at
    `block`/`thread` when given (the thread the error is attributed to)."""
    with pytest.raises(RuntimeError) as info:
        call()
    msg = str(info.value)
    assert msg.startswith(f"fastcl.sim: {check}: kernel simtest::{kernel}"), msg
    if block is not None:
        assert f"block {block}" in msg, msg
    if thread is not None:
        assert f"block {block or '(0,0,0)'}, thread {thread}" in msg, msg
    for c in contains:
        assert c in msg, msg
    return msg


# ---- correct kernels pass -----------------------------------------------------------------------


def test_block_reduce(sim):
    x = torch.randn(1000)
    out = torch.zeros(4)
    sim.block_reduce(p(x), p(out), 1000)
    ref = torch.nn.functional.pad(x, (0, 24)).view(4, 256).sum(1)
    torch.testing.assert_close(out, ref, rtol=1e-5, atol=1e-5)


def test_warp_shuffle_reduce(sim):
    x = torch.arange(256, dtype=torch.float32)
    out = torch.zeros(8)
    ballots = torch.zeros(8, dtype=torch.int32)
    sim.warp_reduce(p(x), p(out), p(ballots), 2)
    assert torch.equal(out, x.view(8, 32).sum(1))
    assert (ballots == -1).all()  # every lane agreed: xor and down-shuffle sums are equal


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize("b_col_major", [False, True])
def test_wmma_matches_cpu(sim, dtype, b_col_major):
    g = torch.Generator().manual_seed(1)
    a = torch.randint(-4, 5, (16, 16), generator=g).to(dtype)
    b = torch.randint(-4, 5, (16, 16), generator=g).to(dtype)
    c0 = torch.randint(-8, 9, (16, 16), generator=g).float()
    c = torch.zeros(16, 16)
    bm = b.t().contiguous() if b_col_major else b
    sim.wmma_gemm(str(dtype).split(".")[1], b_col_major, p(a), p(bm), p(c0), p(c))
    assert torch.equal(c, 2 * (a.double() @ b.double() + c0.double()).float())  # exact for small integers


def test_cp_async_double_buffer(sim):
    x = torch.randn(8 * 256)
    out = torch.zeros_like(x)
    sim.cp_async_double_buffer(p(x), p(out), 8)
    assert torch.equal(out, 2 * x)


def test_shuffled_schedules_agree_on_correct_kernels(sim):
    x = torch.randn(1000)
    xs = torch.randn(8 * 256)
    results = []
    for seed in (0, 1, 2, 3):
        sim.set_schedule(seed)
        out, cp = torch.zeros(4), torch.zeros_like(xs)
        sim.block_reduce(p(x), p(out), 1000)
        sim.cp_async_double_buffer(p(xs), p(cp), 8)
        results.append((out, cp))
    for out, cp in results[1:]:
        assert torch.equal(out, results[0][0]) and torch.equal(cp, results[0][1])


def test_shuffled_schedules_expose_a_racy_kernel(sim):
    out = torch.zeros(1, dtype=torch.int32)
    sim.set_schedule(7)
    expect(lambda: sim.last_writer(p(out), 64), "shared memory race", "last_writer", contains=["write-after-write"])
    sim.set_race_check(False)  # without the check, the survivor is whichever thread ran last
    survivors = set()
    for seed in range(6):
        sim.set_schedule(seed)
        sim.last_writer(p(out), 64)
        survivors.add(int(out))
    assert 63 in survivors and len(survivors) > 1, survivors


def test_device_properties_and_occupancy(sim):
    d = sim.device_properties()
    assert (d["major"], d["minor"], d["multiProcessorCount"], d["warpSize"]) == (9, 0, 132, 32)
    assert (d["sharedMemPerBlock"], d["sharedMemPerBlockOptin"]) == (49152, 232448)
    assert d["maxThreadsPerBlock"] == 1024 and d["maxGridSize"] == [2**31 - 1, 65535, 65535]
    assert sim.occupancy(256, 0) == 8  # 2048 threads per SM
    assert sim.occupancy(256, 100_000) == 2  # 228 KiB per SM, 1 KiB reserved per block
    assert sim.occupancy(1024, 232448 - 1024) == 1  # block_reduce has 1 KiB of static shared memory
    assert sim.occupancy(1024, 232448) == 0


# ---- each check catches its broken kernel ---------------------------------------------------------


def test_shared_out_of_bounds_read(sim):
    out = torch.zeros(64)
    expect(lambda: sim.smem_oob_read(p(out)), "shared out of bounds", "smem_oob_read", "(0,0,0)", "(63,0,0)",
           contains=["read of 4 bytes at 0x", "dynamic shared offset 256", "256 bytes of dynamic shared memory", "broken.cu:"])


def test_shared_out_of_bounds_write(sim):
    out = torch.zeros(64)
    expect(lambda: sim.smem_oob_write(p(out)), "shared out of bounds", "smem_oob_write", "(0,0,0)", "(63,0,0)",
           contains=["write of 4 bytes at 0x", "dynamic shared offset 256"])


def test_global_out_of_bounds_read(sim):
    x, out = torch.zeros(192), torch.zeros(192)
    expect(lambda: sim.global_oob_read(p(x), p(out)), "global out of bounds", "global_oob_read", "(1,2,0)", "(7,3,0)",
           contains=["read of 4 bytes", "offset 768 of 'x' (768 bytes at 0x", "0 bytes past its end"])
    sim.set_global_check(False)
    sim.global_oob_read(p(x), p(out))


def test_global_out_of_bounds_write(sim):
    out = torch.zeros(40)
    expect(lambda: sim.global_oob_write(p(out), 40), "global out of bounds", "global_oob_write", "(1,0,0)", "(7,0,0)",
           contains=["write of 4 bytes", "offset 160 of 'out'", "past its end"])


def test_missing_syncthreads_is_a_race(sim):
    out = torch.zeros(32)
    expect(lambda: sim.cross_warp(False, p(out)), "shared memory race", "cross_warp<false>", "(0,0,0)", "(32,0,0)",
           contains=["read-after-write", "thread (0,0,0) [warp 0 lane 0] wrote", "cross_warp<false>(float*)::s'"])
    sim.cross_warp(True, p(out))
    assert torch.equal(out, torch.arange(32, dtype=torch.float32))


def test_intra_warp_race_without_syncwarp(sim):
    out = torch.zeros(32)
    expect(lambda: sim.intra_warp(False, p(out)), "shared memory race", "intra_warp<false>", "(0,0,0)", "(1,0,0)",
           contains=["read-after-write", "no __syncwarp"])
    sim.intra_warp(True, p(out))
    assert (out == 42).all()


def test_divergent_syncthreads(sim):
    out = torch.zeros(64)
    expect(lambda: sim.divergent_barrier(p(out)), "divergent __syncthreads", "divergent_barrier", "(0,0,0)", "(1,0,0)",
           contains=["exited while thread (0,0,0) waits at __syncthreads (", "broken.cu:"])
    expect(lambda: sim.barrier_sites(p(out)), "divergent __syncthreads", "barrier_sites", "(0,0,0)", "(32,0,0)",
           contains=["while thread (0,0,0) waits at the one at"])


def test_shuffle_caller_missing_from_mask(sim):
    out = torch.zeros(32)
    expect(lambda: sim.shfl_caller_not_in_mask(p(out)), "invalid warp collective", "shfl_caller_not_in_mask",
           "(0,0,0)", "(0,0,0)", contains=["__shfl_sync", "0xfffffffe", "does not include its own lane 0"])


def test_shuffle_lane_in_mask_never_arrives(sim):
    out = torch.zeros(32)
    expect(lambda: sim.shfl_lane_never_arrives(p(out)), "warp collective divergence", "shfl_lane_never_arrives",
           "(0,0,0)", "(5,0,0)", contains=["exited while", "__shfl_xor_sync", "(lane 5)"])
    expect(lambda: sim.shfl_lane_waits_elsewhere(p(out)), "warp collective divergence", "shfl_lane_waits_elsewhere",
           "(0,0,0)", "(3,0,0)", contains=["reached __syncthreads", "__shfl_xor_sync", "(lane 3)"])


def test_uninitialised_shared_reads(sim):
    out = torch.zeros(64)
    expect(lambda: sim.uninit_dynamic(p(out)), "uninitialised shared read", "uninit_dynamic", "(0,0,0)", "(0,0,0)",
           contains=["dynamic shared offset 0"])
    expect(lambda: sim.uninit_static(p(out)), "uninitialised shared read", "uninit_static", "(0,0,0)", "(32,0,0)",
           contains=["static shared 'simtest::uninit_static(float*)::tile' + 128"])


def test_cp_async_data_is_not_there_before_its_wait(sim):
    x, out = torch.randn(256), torch.zeros(64)
    expect(lambda: sim.cp_async_no_wait(p(x), p(out)), "shared memory race", "cp_async_no_wait", "(0,0,0)", "(0,0,0)",
           contains=["cp.async", "still in flight"])


def test_cp_async_issue_races_with_earlier_reads(sim):
    x, out = torch.randn(512), torch.zeros(64)
    expect(lambda: sim.cp_async_refill_without_barrier(p(x), p(out)), "shared memory race",
           "cp_async_refill_without_barrier", "(0,0,0)", "(32,0,0)",
           contains=["write-after-read", "cp.async issued here", "thread (0,0,0) [warp 0 lane 0] read"])


def test_misaligned_vector_access(sim):
    x, out = torch.zeros(64), torch.zeros(32, 4)
    expect(lambda: sim.misaligned_vector(p(x), p(out)), "misaligned address", "misaligned_vector", "(0,0,0)", "(0,0,0)",
           contains=["read of 16 bytes", "not a multiple of 16"])


def test_wmma_memory_is_checked(sim):
    c = torch.zeros(32)
    expect(lambda: sim.wmma_unwritten(p(c)), "uninitialised shared read", "wmma_unwritten", "(0,0,0)", "(0,0,0)",
           contains=["wmma::load_matrix_sync", "read of 2 bytes at 0x", "(dynamic shared offset 0)"])


def test_trap(sim):
    out = torch.zeros(32)
    expect(lambda: sim.traps(p(out)), "__trap", "traps", "(0,0,0)", "(3,0,0)")


@pytest.mark.parametrize(
    "grid, block, smem, limit, numbers",
    [
        ([1, 1, 1], [1025, 1, 1], 0, 0, ["1025 threads", "1024"]),
        ([1, 1, 1], [32, 1, 1], 64 * 1024, 0, ["65536 bytes", "limit of 49152"]),
        ([1, 1, 1], [32, 1, 1], 228 * 1024, 228 * 1024, ["233472", "232448"]),
        ([1, 65536, 1], [32, 1, 1], 0, 0, ["grid (1,65536,1)", "65535"]),
    ],
    ids=["1025-threads", "64KiB-default-limit", "228KiB-opt-in", "grid-y-65536"],
)
def test_launch_limits(sim, grid, block, smem, limit, numbers):
    expect(lambda: sim.launch_limits(grid, block, smem, limit), "launch out of limits", "empty_kernel", contains=numbers)


def test_raised_smem_limit_allows_the_launch(sim):
    sim.launch_limits([1, 1, 1], [32, 1, 1], 64 * 1024, 64 * 1024)
    sim.launch_limits([1, 1, 1], [32, 1, 1], 232448, 232448)


# ---- memcpy / memmove / memset, static arrays, warp ordering, alignment, exceptions ------------------


def test_memset_initialises_shared_memory(sim):
    out = torch.zeros(32)
    sim.memset_then_read(p(out))  # without the interception: an uninitialised shared read
    assert (out == 1).all()


def test_memcpy_and_std_copy_are_checked(sim):
    x, out = torch.randn(64), torch.zeros(32)
    expect(lambda: sim.memcpy_smem_overflow(p(x), p(out)), "shared out of bounds", "memcpy_smem_overflow",
           "(0,0,0)", "(0,0,0)", contains=["write of 132 bytes", "outside the launch's 128 bytes of dynamic shared memory", "memcpy/memmove", "broken.cu:"])
    expect(lambda: sim.std_copy_global_oob(p(x), p(out)), "global out of bounds", "std_copy_global_oob",
           "(0,0,0)", "(0,0,0)", contains=["read of 132 bytes", "runs past 'x'", "memcpy/memmove"])


def test_constant_size_memset_is_checked(sim):
    expect(lambda: sim.memset_constant_overflow(p(torch.zeros(32))), "shared out of bounds",
           "memset_constant_overflow", "(0,0,0)", "(0,0,0)", contains=["write of 132 bytes"])


def test_static_shared_arrays_have_their_own_bounds(sim):
    out = torch.zeros(32)
    msg = expect(lambda: sim.static_overflow(p(out)), "shared out of bounds", "static_overflow", "(0,0,0)",
                 "(31,0,0)", contains=["read of 4 bytes"])
    # where a[33] lands depends on the link: padding, another kernel's array or past the block
    assert any(w in msg for w in ("outside every __shared__ array", "array of another kernel", "past the end")), msg


def test_a_shuffle_orders_no_memory(sim):
    out = torch.zeros(32)
    expect(lambda: sim.shfl_is_not_a_fence(False, p(out)), "shared memory race", "shfl_is_not_a_fence<false>",
           "(0,0,0)", "(1,0,0)", contains=["read-after-write", "thread (0,0,0) [warp 0 lane 0] wrote"])
    sim.shfl_is_not_a_fence(True, p(out))
    assert (out == 42).all()


def test_an_older_read_stays_ordered_by_a_later_syncwarp(sim):
    out = torch.zeros(32)
    sim.older_read_then_syncwarp(p(out))  # one reader seq per byte reported lane 1's read as a race
    assert out[0] == 3 and out[1] == 3 and (out[2:] == 2).all()


def test_dynamic_shared_is_only_as_aligned_as_declared(sim):
    out = torch.zeros(32, 4)
    expect(lambda: sim.extern_alignment(4, p(out)), "misaligned address", "extern_alignment<4>", "(0,0,0)", "(0,0,0)",
           contains=["read of 16 bytes", "not a multiple of 16"])
    sim.extern_alignment(16, p(out))
    assert torch.equal(out, torch.arange(32, dtype=torch.float32)[:, None].expand(32, 4))


def test_an_exception_in_kernel_code_fails_the_launch(sim):
    out = torch.zeros(32)
    expect(lambda: sim.throws(p(out)), "uncaught exception", "throws", "(0,0,0)", "(5,0,0)",
           contains=["threw std::out_of_range: bitset::set"])
    x, total = torch.ones(256), torch.zeros(1)
    sim.block_reduce(p(x), p(total), 256)  # the simulator still works
    assert total.item() == 256


def test_static_shared_memory_counts_in_launch_limits(sim):
    out = torch.zeros(32)
    sim.big_static(p(out), 8 * 1024)  # 40 + 8 KiB: exactly the default 48 KiB
    assert torch.equal(out, torch.arange(10239, 10207, -1, dtype=torch.float32))
    expect(lambda: sim.big_static(p(out), 16 * 1024), "launch out of limits", "big_static",
           contains=["16384 bytes of dynamic shared memory", "limit of 8192", "40960 static bytes"])
    assert sim.big_static_occupancy(32, 8 * 1024) == 4  # (40 + 8 + 1) KiB per block in 228 KiB

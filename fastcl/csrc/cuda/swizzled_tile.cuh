// Shared-memory tiles of the mma kernels: rows of kD 16-bit elements whose 16-byte chunks are
// XOR-swizzled by row % 8, so the 8 rows an ldmatrix phase reads (and the 16-byte cp.async writes
// of a row) fall in 8 different bank groups; and the per-lane ldmatrix addresses into them,
// computed once per kernel so that the tile loops add only compile-time offsets.
#pragma once
#include <cstdint>

#include "cuda/mma.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

template <int kD>
struct SwizzledRows {
  static_assert(kD % 64 == 0, "rows of at least 8 16-byte chunks for the swizzle");
  static constexpr int kChunks = kD / 8;
  // Element offset of 16-byte chunk `chunk` of row `row`.
  __device__ static int at(int row, int chunk) { return row * kD + ((chunk ^ (row & 7)) << 3); }
};

// The byte offsets one lane hands to ldmatrix (16-bit elements): row lane_row + 8 i and chunk
// c + bit for even c. Every such row has the lane's row % 8, so the swizzle of chunk c + bit depends
// only on c % 8, four values a lane keeps in registers; i and c are compile-time in the kernels'
// unrolled loops, so at(tile, j) is computed once a tile and each ldmatrix adds an immediate.
template <int kD>
struct LaneRows {
  // (2 j + bit) ^ (row % 8) = 2 (j ^ y) + (bit ^ (row % 2)) with y = (row % 8) / 2: chunk 2 j + bit of
  // the lane's row lies 32 (j ^ y) bytes past `base`, two registers for every j.
  int base;  // lane_row * row bytes + 16 (bit ^ (lane_row % 2))
  int y32;   // 32 * ((lane_row % 8) / 2)

  __device__ LaneRows(int lane_row, int bit)
      : base(lane_row * kD * 2 + ((bit ^ (lane_row & 1)) << 4)), y32(((lane_row >> 1) & 3) << 5) {}
  // The address of (row lane_row + 8 i, chunk c + bit), c even, in the tile at `tile`.
  __device__ SmemAddr operator()(SmemAddr tile, int i, int c) const {
    return tile + base + ((((c & 7) >> 1) << 5) ^ y32) + (i * 8 * kD * 2 + (c >> 3) * 128);
  }
};

// Copies rows [row0, row0 + kRows) x all kD columns of the row-major (n, D) matrix x into a swizzled
// tile, zero past n and D (D a multiple of 8, x 16-byte aligned), with kThreads threads. Each thread
// copies the same chunk of rows r0, r0 + kStride, ..., which share one swizzle (kStride is a multiple
// of 8). Its offsets are recomputed from the thread index (opaque_tid, tile_math.cuh) at each call:
// a few shifts, where offsets kept live through the tile loop were spilled beside the accumulators.
//
// load_swizzled_chunk: the same for a kD-column chunk of wider rows: x points at the chunk's first
// column of a (n, ld) matrix, of which `cols` columns from x on exist (zero past them).
template <typename T, int kD, int kRows, int kThreads>
__device__ __forceinline__ void load_swizzled_chunk(T* tile, const T* __restrict__ x, int64_t n, int64_t ld,
                                                    int64_t cols, int64_t row0) {
  constexpr int kChunks = kD / 8, kStride = kThreads / kChunks, kCopies = kRows * kChunks / kThreads;
  static_assert(kThreads % kChunks == 0 && kStride % 8 == 0 && kRows % kStride == 0, "one swizzle per thread");
  const int tid = opaque_tid(), c = tid % kChunks, r0 = tid / kChunks;
  const bool col_ok = c * 8 < cols;
  const int64_t left = n - row0 - r0;  // rows of x from this thread's first one on
  const int rows_left = left > kRows ? kRows : static_cast<int>(left);
  T* dst = tile + SwizzledRows<kD>::at(r0, c);
  const T* src = x + (row0 + r0) * ld + c * 8;
  const int64_t stride = int64_t(kStride) * ld;
#pragma unroll
  for (int it = 0; it < kCopies; ++it) {
    const bool ok = col_ok && it * kStride < rows_left;
    cp_async16(dst + it * kStride * kD, ok ? src : x, ok);
    src += stride;
  }
}

template <typename T, int kD, int kRows, int kThreads>
__device__ __forceinline__ void load_swizzled(T* tile, const T* __restrict__ x, int64_t n, int64_t D, int64_t row0) {
  load_swizzled_chunk<T, kD, kRows, kThreads>(tile, x, n, D, D, row0);
}

}  // namespace fastcl::gpu

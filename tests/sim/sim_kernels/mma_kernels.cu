// Kernels for tests/sim/test_sim_mma.py: GEMMs through the ldmatrix / mma.sync wrappers of
// fastcl/csrc/cuda/mma.cuh, which the simulator runs with the PTX ISA's fragment layouts, and
// their broken variants (a runtime `bug` argument), each of which must give a wrong result or
// trip a check. The Python entry points launch them on buffers given as data pointers.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "cuda/mma.cuh"

using fastcl::sim::GlobalScope;
using fastcl::sim::launch;

namespace mmatest {

using namespace fastcl::gpu;

// Shared tile layouts: kNaive rows back to back (a 64-column b16 row is 128 bytes, so the eight
// rows of an ldmatrix phase share their banks), kPadded rows 16 bytes apart more, kSwizzled
// each 16-byte chunk c of row r stored at chunk c ^ (r % 8).
enum Layout { kNaive = 0, kPadded = 1, kSwizzled = 2 };
// Deliberate mistakes, one per run.
enum Bug {
  kNone = 0,
  kSwapGT = 1,          // the C fragment written out with g = l % 8, t = l / 8
  kNoTrans = 2,         // a (k, n) B loaded without .trans
  kMisaligned = 3,      // A's row addresses 2 bytes off
  kGlobalRow = 4,       // A's rows read straight from global memory
  kRowOutOfBounds = 5,  // A's rows past the end of the dynamic shared buffer
  kNoBarrier = 6,       // no __syncthreads between filling the tiles and reading them
  kUnwritten = 7,       // A's last element never written to shared memory
  kHalfWarp = 8,        // lanes 16..31 return before the ldmatrix
};

__device__ int tile_stride(int layout, int cols) { return layout == kPadded ? cols + 8 : cols; }

// Element offset of (row, col) in a tile of `cols` b16 columns (a multiple of 8).
__device__ int tile_offset(int layout, int row, int col, int cols) {
  if (layout == kSwizzled) {
    const int chunks = cols / 8, mask = (chunks < 8 ? chunks : 8) - 1;
    return row * cols + (((col >> 3) ^ (row & mask)) << 3) + (col & 7);
  }
  return row * tile_stride(layout, cols) + col;
}

// B's registers for one n-tile (x2: r[0..1]) or two (x4).
__device__ void load_b(uint32_t (&r)[4], const void* row, bool x4, bool trans) {
  if (x4) {
    if (trans) ldmatrix_x4_trans(r, row);
    else ldmatrix_x4(r, row);
    return;
  }
  uint32_t r2[2];
  if (trans) ldmatrix_x2_trans(r2, row);
  else ldmatrix_x2(r2, row);
  r[0] = r2[0];
  r[1] = r2[1];
}

// S = A B^T (B given as (N, K)) or S = A B (b_kn: B given as (K, N)), A (M, K); one warp per 16
// rows of S, N <= 64. A goes through ldmatrix.x4; B through .x2 or .x4, with .trans when (K, N).
template <typename T>
__global__ void gemm(const T* a, const T* b, float* s, int M, int N, int K, bool b_kn, bool b_x4, int layout,
                     int bug) {
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  const int brows = b_kn ? K : N, bcols = b_kn ? N : K;
  T* sa = reinterpret_cast<T*>(smem);
  T* sb = sa + M * tile_stride(layout, K);
  const int tid = threadIdx.x, nthreads = blockDim.x;
  for (int e = tid; e < M * K; e += nthreads)
    if (!(bug == kUnwritten && e == M * K - 1)) sa[tile_offset(layout, e / K, e % K, K)] = a[e];
  for (int e = tid; e < brows * bcols; e += nthreads) sb[tile_offset(layout, e / bcols, e % bcols, bcols)] = b[e];
  if (bug != kNoBarrier) __syncthreads();

  const int l = tid & 31, m0 = (tid >> 5) * 16;
  if (bug == kHalfWarp && l >= 16) return;
  float acc[8][4] = {};
  for (int k0 = 0; k0 < K; k0 += 16) {
    // A: lanes 0-15 rows m0 + 0..15 at k0, lanes 16-31 the same rows at k0 + 8: registers a0..a3.
    const int ar = m0 + (l & 15), ac = k0 + (l >> 4) * 8;
    const void* arow = sa + tile_offset(layout, ar, ac, K);
    if (bug == kMisaligned) arow = reinterpret_cast<const char*>(arow) + 2;
    if (bug == kGlobalRow) arow = a + ar * K + ac;
    if (bug == kRowOutOfBounds) arow = sb + brows * tile_stride(layout, bcols) + (l & 15) * 8;
    uint32_t ra[4];
    ldmatrix_x4(ra, arow);
    const int step = b_x4 ? 2 : 1;  // an x4 load serves this n-tile and the next
    for (int nt = 0; nt < N / 8; nt += step) {
      // Lane l supplies row l % 8 of matrix l / 8: matrices 0 and 1 are k 0..7 and 8..15 of this
      // n-tile, 2 and 3 (x4 only) the same of the next. (N, K): rows of B are n. (K, N): rows are
      // k, and .trans turns each matrix on its way into the registers.
      const int r = l & 7, mat_k = ((l >> 3) & 1) * 8, mat_n = (l >> 4) * 8;
      const void* brow = b_kn ? sb + tile_offset(layout, k0 + mat_k + r, nt * 8 + mat_n, bcols)
                              : sb + tile_offset(layout, nt * 8 + mat_n + r, k0 + mat_k, bcols);
      uint32_t rb[4];
      load_b(rb, brow, b_x4, b_kn && bug != kNoTrans);
      for (int j = 0; j < step; ++j) {
        const uint32_t bj[2] = {rb[2 * j], rb[2 * j + 1]};
        mma_m16n8k16<T>(acc[nt + j], ra, bj, acc[nt + j]);
      }
    }
  }
  const int g = bug == kSwapGT ? (l & 7) : (l >> 2), t = bug == kSwapGT ? (l >> 3) : (l & 3);
  for (int nt = 0; nt < N / 8; ++nt) {
    float* row0 = s + (m0 + g) * N + nt * 8 + 2 * t;
    float* row8 = row0 + 8 * N;
    row0[0] = acc[nt][0];
    row0[1] = acc[nt][1];
    row8[0] = acc[nt][2];
    row8[1] = acc[nt][3];
  }
}

// Four 8 x 8 b16 matrices holding their own indices (matrix i, row r, col c: 64 i + 8 r + c);
// lane l supplies row l % 8 of matrix l / 8, and lanes past 8 x num a misaligned address, which
// ldmatrix must ignore. Every lane writes its num registers to out[4 l ..].
__global__ void ldmatrix_probe(uint32_t* out, int num, bool trans) {
  __shared__ __align__(16) uint16_t m[4 * 64];
  const int l = threadIdx.x;
  for (int e = l; e < 4 * 64; e += 32) m[e] = static_cast<uint16_t>(e);
  __syncwarp();
  const void* row = l < 8 * num ? static_cast<const void*>(m + l * 8) : reinterpret_cast<const char*>(m) + 1;
  uint32_t r1[1], r2[2], r[4] = {};
  if (num == 1) {
    if (trans) ldmatrix_x1_trans(r1, row);
    else ldmatrix_x1(r1, row);
    r[0] = r1[0];
  } else if (num == 2) {
    if (trans) ldmatrix_x2_trans(r2, row);
    else ldmatrix_x2(r2, row);
    r[0] = r2[0];
    r[1] = r2[1];
  } else {
    if (trans) ldmatrix_x4_trans(r, row);
    else ldmatrix_x4(r, row);
  }
  for (int i = 0; i < 4; ++i) out[4 * l + i] = r[i];
}

// An mma.sync in a block of 48 threads: the second warp has 16 lanes.
__global__ void mma_partial_warp(float* out) {
  const uint32_t a[4] = {}, b[2] = {};
  float c[4] = {};
  mma_m16n8k16_bf16(c, a, b, c);
  out[threadIdx.x] = c[0];
}

// ex2_approx and the pack helpers, elementwise.
__global__ void scalar_helpers(const float* x, const float* lo, const float* hi, float* ex2, uint32_t* bf16x2,
                               uint32_t* half2, int n) {
  for (int i = threadIdx.x; i < n; i += blockDim.x) {
    ex2[i] = ex2_approx(x[i]);
    bf16x2[i] = pack_bf16x2(lo[i], hi[i]);
    half2[i] = pack_half2(lo[i], hi[i]);
  }
}

template <typename T> T* ptr(uintptr_t p) { return reinterpret_cast<T*>(p); }

// Registers each (pointer, bytes, name) for the launch it wraps.
struct Bufs {
  GlobalScope scope;
  Bufs(std::initializer_list<std::tuple<uintptr_t, size_t, const char*>> list) {
    for (auto& [p, n, name] : list) scope.add(reinterpret_cast<const void*>(p), n, name);
  }
};

template <typename T>
void run_gemm(uintptr_t a, uintptr_t b, uintptr_t s, int M, int N, int K, bool b_kn, bool b_x4, int layout, int bug) {
  if (M % 16 || N % (b_x4 ? 16 : 8) || N > 64 || K % 16 || M > 512)
    throw std::invalid_argument("gemm: unsupported shape");
  Bufs bufs{{a, size_t(M) * K * 2, "a"}, {b, size_t(N) * K * 2, "b"}, {s, size_t(M) * N * 4, "s"}};
  const int pad = layout == kPadded ? 8 : 0;
  const int brows = b_kn ? K : N, bcols = b_kn ? N : K;
  const size_t smem = 2 * (size_t(M) * (K + pad) + size_t(brows) * (bcols + pad));
  launch<gemm<T>>(1, M / 16 * 32, smem, ptr<const T>(a), ptr<const T>(b), ptr<float>(s), M, N, K, b_kn, b_x4, layout,
                  bug);
}

}  // namespace mmatest

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace mmatest;
  m.def("set_race_check", [](bool on) { fastcl::sim::set_race_check(on); });
  m.def("mma_counters", &fastcl::sim::mma_counters);
  m.def("reset_mma_counters", &fastcl::sim::reset_mma_counters);
  m.def("gemm", [](const std::string& dtype, uintptr_t a, uintptr_t b, uintptr_t s, int M, int N, int K, bool b_kn,
                   bool b_x4, int layout, int bug) {
    if (dtype == "bfloat16") run_gemm<__nv_bfloat16>(a, b, s, M, N, K, b_kn, b_x4, layout, bug);
    else if (dtype == "float16") run_gemm<__half>(a, b, s, M, N, K, b_kn, b_x4, layout, bug);
    else throw std::invalid_argument("gemm: bfloat16 or float16");
  });
  m.def("ldmatrix_probe", [](uintptr_t out, int num, bool trans) {
    Bufs bufs{{out, 32 * 4 * 4, "out"}};
    launch<ldmatrix_probe>(1, 32, 0, ptr<uint32_t>(out), num, trans);
  });
  m.def("mma_partial_warp", [](uintptr_t out) {
    Bufs bufs{{out, 48 * 4, "out"}};
    launch<mma_partial_warp>(1, 48, 0, ptr<float>(out));
  });
  m.def("scalar_helpers", [](uintptr_t x, uintptr_t lo, uintptr_t hi, uintptr_t ex2, uintptr_t bf, uintptr_t hf,
                             int n) {
    Bufs bufs{{x, size_t(n) * 4, "x"}, {lo, size_t(n) * 4, "lo"}, {hi, size_t(n) * 4, "hi"},
              {ex2, size_t(n) * 4, "ex2"}, {bf, size_t(n) * 4, "bf16x2"}, {hf, size_t(n) * 4, "half2"}};
    launch<scalar_helpers>(1, 32, 0, ptr<const float>(x), ptr<const float>(lo), ptr<const float>(hi), ptr<float>(ex2),
                           ptr<uint32_t>(bf), ptr<uint32_t>(hf), n);
  });
}

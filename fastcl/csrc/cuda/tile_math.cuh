// Block-level tile arithmetic for the contrastive kernels: shared-memory staging of operand
// chunks, and the two products every kernel is built from, on 64-row tiles with 256 threads:
//   S (64 x 64)  += A (64 x BK) . B (64 x BK)^T      (logit tile, one BK-wide slice of D)
//   P (64 x BK)  += G (64 x 64) . B (64 x BK)        (gradient rows, one BK-wide slice of D)
// fp16/bf16 run both on tensor cores (wmma 16x16x16, fp32 accumulate); fp32 runs them as SIMT
// FMA, because TF32 would lose too much at temperature 0.01 against an fp32 reference.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#include <cstdint>
#include <type_traits>

namespace fastcl::gpu {

constexpr int kThreads = 256;    // 8 warps
constexpr int kTile = 64;        // rows of every operand tile, and columns of every S tile
constexpr int kSLd = kTile + 4;  // fp32 S row stride: the epilogue's column-interleaved reads hit 32 banks

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
  return __float2bfloat16_rn(x);
}

// bf16 wmma and cp.async exist from sm_80; older device passes compile stubs so that a wider
// TORCH_CUDA_ARCH_LIST still builds (the launcher refuses such GPUs).
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define FASTCL_PRE_AMPERE 1
template <typename T> constexpr bool kWmmaOk = !std::is_same<T, __nv_bfloat16>::value;
#else
template <typename T> constexpr bool kWmmaOk = true;
#endif

// 16- and 8-byte global -> shared copies; a false predicate zero-fills without reading. These
// wrappers and opaque_tid are the kernels' only inline asm: the simulator (FASTCL_SIM) takes
// each through its own call instead.
__device__ __forceinline__ void cp_async16(void* smem, const void* gmem, bool pred) {
#if defined(FASTCL_SIM)
  sim::cp_async(smem, gmem, 16, pred ? 16 : 0);
#elif !defined(FASTCL_PRE_AMPERE)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;\n" ::"r"(dst), "l"(gmem), "r"(pred ? 16 : 0)
               : "memory");
#else
  *static_cast<uint4*>(smem) = pred ? *static_cast<const uint4*>(gmem) : make_uint4(0, 0, 0, 0);
#endif
}
__device__ __forceinline__ void cp_async8(void* smem, const void* gmem, bool pred) {
#if defined(FASTCL_SIM)
  sim::cp_async(smem, gmem, 8, pred ? 8 : 0);
#elif !defined(FASTCL_PRE_AMPERE)
  const unsigned dst = static_cast<unsigned>(__cvta_generic_to_shared(smem));
  asm volatile("cp.async.ca.shared.global [%0], [%1], 8, %2;\n" ::"r"(dst), "l"(gmem), "r"(pred ? 8 : 0)
               : "memory");
#else
  *static_cast<uint2*>(smem) = pred ? *static_cast<const uint2*>(gmem) : make_uint2(0, 0);
#endif
}
__device__ __forceinline__ void cp_async_commit() {
#if defined(FASTCL_SIM)
  sim::cp_async_commit();
#elif !defined(FASTCL_PRE_AMPERE)
  asm volatile("cp.async.commit_group;\n" ::: "memory");
#endif
}
// Waits until at most one group (the prefetch just issued) is still in flight.
__device__ __forceinline__ void cp_async_wait_prev() {
#if defined(FASTCL_SIM)
  sim::cp_async_wait_group(1);
#elif !defined(FASTCL_PRE_AMPERE)
  asm volatile("cp.async.wait_group 1;\n" ::: "memory");
#endif
}
__device__ __forceinline__ void cp_async_wait_all() {
#if defined(FASTCL_SIM)
  sim::cp_async_wait_all();
#elif !defined(FASTCL_PRE_AMPERE)
  asm volatile("cp.async.wait_all;\n" ::: "memory");
#endif
}

// The thread index through volatile asm: a kernel inlines the loader at several call sites,
// and this stops the compiler from hoisting each site's 64-bit addresses into registers that
// stay live (and spill) beside the accumulators; recomputing them costs a few integer ops.
__device__ __forceinline__ int opaque_tid() {
#if defined(FASTCL_SIM)
  return static_cast<int>(threadIdx.x);
#else
  int t;
  asm volatile("mov.u32 %0, %%tid.x;" : "=r"(t));
  return t;
#endif
}

// Copies rows [row0, row0 + 64) x columns [col0, col0 + BK) of the row-major (nrows, D) matrix x
// into dst (row stride LD), zero outside the matrix so partial tiles need no masking in the
// products. `vec` (D a multiple of 16 bytes, x 16-byte aligned) selects asynchronous 16-byte
// copies; otherwise elements go through registers.
template <typename T, int BK, int LD>
__device__ __forceinline__ void load_tile(T* dst, const T* __restrict__ x, int64_t nrows, int64_t D,
                                          int64_t row0, int64_t col0, bool vec) {
  const int tid = opaque_tid();
  if (vec) {
    constexpr int kVec = 16 / sizeof(T), kPerRow = BK / kVec;
#pragma unroll
    for (int it = 0; it < kTile * kPerRow / kThreads; ++it) {
      const int v = tid + it * kThreads, r = v / kPerRow, c = (v % kPerRow) * kVec;
      const int64_t gr = row0 + r, gc = col0 + c;
      const bool ok = gr < nrows && gc < D;
      cp_async16(dst + r * LD + c, ok ? x + gr * D + gc : x, ok);
    }
  } else {
#pragma unroll 4
    for (int it = 0; it < kTile * BK / kThreads; ++it) {  // sass: cold (rows not 16-byte aligned)
      const int e = tid + it * kThreads, r = e / BK, c = e % BK;
      const int64_t gr = row0 + r, gc = col0 + c;
      dst[r * LD + c] = (gr < nrows && gc < D) ? x[gr * D + gc] : from_float<T>(0.f);
    }
  }
}

// Tensor-core products. The 64 x 64 output is 4 x 4 fragments; warp w owns fragment row w / 2
// and fragment columns 2 (w % 2) + {0, 1}. BK = 64 keeps each staged row 128 bytes wide.
template <typename T>
struct WmmaMath {
  static constexpr int kBK = 64, kLd = kBK + 8, kGLd = kTile + 8;  // +16 bytes against bank conflicts
  static constexpr int kDC = 256;  // gradient columns per backward block: 4 slices x 2 fragments a warp
  static constexpr bool kRangeScale = std::is_same<T, __half>::value;  // G in fp16 needs a scale
  static constexpr bool kStageG = true;  // G is converted to the input type in its own buffer
  using G = T;
  using Frag = nvcuda::wmma::fragment<nvcuda::wmma::accumulator, 16, 16, 16, float>;
  struct Acc {
    Frag f[2];
  };
  using SAcc = Acc;
  using PAcc = Acc;  // BK == 64, so a P slice has the shape of an S tile

  __device__ static int frow() { return (threadIdx.x >> 5) >> 1; }
  __device__ static int fcol() { return ((threadIdx.x >> 5) & 1) * 2; }

  __device__ static void zero(Acc& a) {
    nvcuda::wmma::fill_fragment(a.f[0], 0.f);
    nvcuda::wmma::fill_fragment(a.f[1], 0.f);
  }
  // Elementwise, so valid whatever the fragment layout.
  __device__ static void scale(Acc& a, float s) {
#pragma unroll
    for (int n = 0; n < 2; ++n)
#pragma unroll
      for (int e = 0; e < a.f[n].num_elements; ++e) a.f[n].x[e] *= s;
  }
  __device__ static void mma_abt(Acc& acc, const T* sA, const T* sB) {
    using namespace nvcuda;
    if constexpr (kWmmaOk<T>) {
#pragma unroll
      for (int kk = 0; kk < kBK; kk += 16) {
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, sA + frow() * 16 * kLd + kk, kLd);
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          // B staged as (n, k) rows is B^T in column-major order.
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> b;
          wmma::load_matrix_sync(b, sB + (fcol() + n) * 16 * kLd + kk, kLd);
          wmma::mma_sync(acc.f[n], a, b, acc.f[n]);
        }
      }
    } else {
      __trap();
    }
  }
  __device__ static void mma_ab(Acc& acc, const G* sG, const T* sB) {
    using namespace nvcuda;
    if constexpr (kWmmaOk<T>) {
#pragma unroll 2
      for (int kk = 0; kk < kTile; kk += 16) {  // sass: trips=2
        wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
        wmma::load_matrix_sync(a, sG + frow() * 16 * kGLd + kk, kGLd);
#pragma unroll
        for (int n = 0; n < 2; ++n) {
          wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> b;
          wmma::load_matrix_sync(b, sB + kk * kLd + (fcol() + n) * 16, kLd);
          wmma::mma_sync(acc.f[n], a, b, acc.f[n]);
        }
      }
    } else {
      __trap();
    }
  }
  // To a 64 x 64 fp32 tile with row stride kSLd.
  __device__ static void store(const Acc& acc, float* out) {
#pragma unroll
    for (int n = 0; n < 2; ++n)
      nvcuda::wmma::store_matrix_sync(out + frow() * 16 * kSLd + (fcol() + n) * 16, acc.f[n], kSLd,
                                      nvcuda::wmma::mem_row_major);
  }
};

// fp32 products. Thread (ty, tx) = (t / 16, t % 16) owns rows ty + 16 i and columns tx + 16 j,
// so a quarter-warp reads 8 distinct 16-byte rows (conflict-free with the 36-float stride) and
// shares one A row. Each dot product runs over k in order, so it is the same in every kernel.
struct SimtMath {
  static constexpr int kBK = 32, kLd = kBK + 4, kGLd = kSLd;
  static constexpr int kDC = 128;  // 4 slices x 8 accumulators a thread: 256 would spill
  static constexpr bool kRangeScale = false;
  static constexpr bool kStageG = false;  // G is read in place from the fp32 S tile
  using G = float;
  template <int NJ>
  struct Acc {
    float v[4][NJ];
  };
  using SAcc = Acc<4>;  // 64 x 64
  using PAcc = Acc<2>;  // 64 x 32

  __device__ static int ty() { return threadIdx.x >> 4; }
  __device__ static int tx() { return threadIdx.x & 15; }
  __device__ static float4 ld4(const float* p) { return *reinterpret_cast<const float4*>(p); }

  template <int NJ>
  __device__ static void zero(Acc<NJ>& a) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) a.v[i][j] = 0.f;
  }
  template <int NJ>
  __device__ static void scale(Acc<NJ>& a, float s) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) a.v[i][j] *= s;
  }
  __device__ static void mma_abt(SAcc& acc, const float* sA, const float* sB) {
#pragma unroll
    for (int kk = 0; kk < kBK; kk += 4) {
      float4 a[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) a[i] = ld4(sA + (ty() + 16 * i) * kLd + kk);
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float4 b = ld4(sB + (tx() + 16 * j) * kLd + kk);
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float s = acc.v[i][j];
          s = fmaf(a[i].x, b.x, s);
          s = fmaf(a[i].y, b.y, s);
          s = fmaf(a[i].z, b.z, s);
          acc.v[i][j] = fmaf(a[i].w, b.w, s);
        }
      }
    }
  }
  __device__ static void mma_ab(PAcc& acc, const float* sG, const float* sB) {
#pragma unroll 4
    for (int s = 0; s < kTile; s += 4) {  // sass: trips=4
      float4 g[4];
#pragma unroll
      for (int i = 0; i < 4; ++i) g[i] = ld4(sG + (ty() + 16 * i) * kGLd + s);
#pragma unroll
      for (int j = 0; j < 2; ++j) {
        const float* b = sB + s * kLd + tx() + 16 * j;
        const float b0 = b[0], b1 = b[kLd], b2 = b[2 * kLd], b3 = b[3 * kLd];
#pragma unroll
        for (int i = 0; i < 4; ++i) {
          float v = acc.v[i][j];
          v = fmaf(g[i].x, b0, v);
          v = fmaf(g[i].y, b1, v);
          v = fmaf(g[i].z, b2, v);
          acc.v[i][j] = fmaf(g[i].w, b3, v);
        }
      }
    }
  }
  template <int NJ>
  __device__ static void store(const Acc<NJ>& acc, float* out) {
#pragma unroll
    for (int i = 0; i < 4; ++i)
#pragma unroll
      for (int j = 0; j < NJ; ++j) out[(ty() + 16 * i) * kSLd + tx() + 16 * j] = acc.v[i][j];
  }
};

template <typename T>
using Math = std::conditional_t<std::is_same<T, float>::value, SimtMath, WmmaMath<T>>;

// Sums this thread's `value` over the block in a fixed order into out[index].
__device__ __forceinline__ void block_sum_to(double value, double* s_red, double* out, int64_t index) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) value += __shfl_xor_sync(0xffffffffu, value, off);
  if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = value;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < static_cast<int>(blockDim.x >> 5); ++w) total += s_red[w];
    out[index] = total;
  }
  __syncthreads();
}

// The two-stage cp.async pipeline of the narrow mma kernels. start_two_stage: closes the group of the
// copies issued before it (the block's own rows), issues the first tile's (issue(tile, stage)) in a
// group of its own and waits for the first group only, so the warps take their row fragments while
// the tile is in flight. next_two_stage, at each tile: issues the next tile into the other stage
// (freed by the barrier that ended the last tile), waits for this tile's copies; returns its stage.
template <typename Issue>
__device__ __forceinline__ void start_two_stage(Issue&& issue, int t_begin, int t_end) {
  cp_async_commit();
  if (t_begin < t_end) issue(t_begin, 0);
  cp_async_commit();
  cp_async_wait_prev();
  __syncthreads();
}

template <typename Issue>
__device__ __forceinline__ int next_two_stage(Issue&& issue, int tile, int t_begin, int t_end) {
  const int stage = (tile - t_begin) & 1;
  if (tile + 1 < t_end) issue(tile + 1, stage ^ 1);
  cp_async_commit();
  cp_async_wait_prev();
  __syncthreads();
  return stage;
}

}  // namespace fastcl::gpu

// The tile engine of the wide mma backwards (contrastive_backward_wide.cu; 256 < D <= 768): a block of
// 8 warps owns 32 rows and streams 32-row tiles of the other side, whole D, each as D / 64 swizzled
// 32 x 64 chunk tiles (D rounded up to 128 x kGroups, zero-filled). Warp w owns the 16-column groups
// w, w + 8, ... of D for both products:
//   logits   its groups' share of the 32 x 32 tile S, summed over the eight warps through shared
//            memory; each warp keeps one 16 x 8 fragment of the sum (4 logits a thread), where the
//            kernel forms G' and stores it as T (store_g);
//   product  acc (32 rows x its groups' columns, fp32) += G' . stream tile, G' read as the A operand
//            by ldmatrix and the stream tile transposed by ldmatrix.trans;
//   store    acc into the gradient's partials.
// What G' is (a softmax's, a sigmoid's) is the kernel's: this file knows only the tiles.
#pragma once
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "cuda/mma.cuh"
#include "cuda/swizzled_tile.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

constexpr int kThreadsW = 256, kWarpsW = 8, kRowsW = 32, kColsW = 32, kChunkW = 64;
constexpr int kGStride = kColsW + 8;  // G' row pitch in elements: 80 bytes, conflict-free ldmatrix rows
static_assert(kRowsW == 32 && kColsW == 32, "the sum gives each of 8 warps one 16 x 8 fragment");

// The kGroups instantiation a wide kernel runs for D (and sizes its shared memory by): 16-column groups
// of D a warp, ceil(D / 128) but at least kMinGroups, rounded up to one of 2, 3, 4, 6 (D = 640 runs as
// 768: four widths keep the instantiations few).
template <int kMinGroups = 2>
int wide_instance_groups(int64_t D) {
  const int groups = std::max(kMinGroups, static_cast<int>((D + 127) / 128));
  return groups <= 4 ? groups : 6;
}

// f(std::integral_constant<int, kGroups>{}) with the instance for D (D <= 768).
template <int kMinGroups = 2, typename F>
void with_wide_groups(int64_t D, F&& f) {
  TORCH_INTERNAL_ASSERT(D <= 768, "fastcl: the wide kernels take D <= 768, got ", D);
  const int groups = wide_instance_groups<kMinGroups>(D);
  if constexpr (kMinGroups <= 2) {
    if (groups == 2) return f(std::integral_constant<int, 2>{});
  }
  if (groups == 3) return f(std::integral_constant<int, 3>{});
  if (groups == 4) return f(std::integral_constant<int, 4>{});
  f(std::integral_constant<int, 6>{});
}

// The byte offsets of the tiles in a wide kernel's dynamic shared memory for `groups` 16-column groups
// a warp (D rounded up to 128 groups): the owner rows, two stream stages (`stage` bytes each), the eight
// warps' partial logits (fp32, fragment-major), G' and its low part; the kernel's own values from `end`.
struct WideTiles {
  size_t own, str, stage, part, ghi, glo, end;
  __host__ __device__ explicit WideTiles(int groups)
      : own(0),
        str(own + size_t(kRowsW) * 128 * groups * 2),
        stage(size_t(kColsW) * 128 * groups * 2),
        part(str + 2 * stage),
        ghi(part + size_t(kWarpsW) * kRowsW * kColsW * sizeof(float)),
        glo(ghi + size_t(kRowsW) * kGStride * 2),
        end(glo + size_t(kRowsW) * kGStride * 2) {}
};

// Rows [row0, row0 + 32) of the (n, D) matrix x, all of its kChunks x 64 columns (zero past n and D),
// into kChunks swizzled 32 x 64 tiles: thread t copies 16-byte chunk t % 8 of row t / 8 of every tile,
// one row offset and one swizzle for all of them, so a tile costs a copy and a compare.
template <typename T, int kChunks>
__device__ __forceinline__ void load_row_chunks(T* tiles, const T* __restrict__ x, int64_t n, int64_t D,
                                                int64_t row0) {
  static_assert(kRowsW == kColsW && kRowsW * 8 == kThreadsW, "one 16-byte chunk a thread per chunk tile");
  const int tid = opaque_tid(), cc = tid & 7, r = tid >> 3;
  const bool row_ok = row0 + r < n;
  const T* src = x + (row_ok ? (row0 + r) * D + cc * 8 : 0);
  T* dst = tiles + SwizzledRows<kChunkW>::at(r, cc);
  const int left = static_cast<int>(D) - cc * 8;  // columns of the row from this thread's first on
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const bool ok = row_ok && c * kChunkW < left;
    cp_async16(dst + c * (kRowsW * kChunkW), ok ? src + c * kChunkW : x, ok);
  }
}

// A warp's view of the block's owner tiles (sOwn) and of the stream stages (sStr, `stage` bytes a
// stage apart: each call takes the stage's byte offset). Group w + 8 i is 16-byte chunks c0, c0 + 1
// (c0 = 2 (w % 4)) of chunk tile w / 4 + 2 i: the lane's swizzled offsets are the same for all of a
// warp's groups, so they are taken once and each ldmatrix adds an immediate (i, the row block, the
// k-step). Owner rows as A (and stream rows as the .trans B of the gradient): lanes 8j..8j+7 give rows
// 8 (j % 2) + l % 8, chunk c0 + j / 2; stream rows as the logits' B: rows 8 (j / 2) + l % 8, chunk
// c0 + j % 2. Up to 4 groups (D <= 512) the owner fragments stay in registers; at 6, beside 96
// accumulators, they spilled (make sass), so they are read from shared memory at each tile there.
template <typename T, int kGroups>
struct WideWarp {
  static constexpr int kChunkBytes = kRowsW * kChunkW * 2, kRowBlock = 8 * kChunkW * 2;
  static constexpr bool kOwnInRegisters = kGroups <= 4;
  using Acc = float[kGroups][2][2][4];

  int warp, lane;
  SmemAddr own_at, str_a_at, str_b_at;
  uint32_t oa[kOwnInRegisters ? kGroups : 1][2][4];

  __device__ __forceinline__ WideWarp(const T* sOwn, const T* sStr, int w, int l) : warp(w), lane(l) {
    const int c0 = 2 * (warp & 3), tile = (warp >> 2) * kChunkBytes;
    const LaneRows<kChunkW> arow((lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
    const LaneRows<kChunkW> srow((lane >> 4) * 8 + (lane & 7), (lane >> 3) & 1);
    own_at = arow(smem_addr(sOwn) + tile, 0, c0);
    str_a_at = arow(smem_addr(sStr) + tile, 0, c0);
    str_b_at = srow(smem_addr(sStr) + tile, 0, c0);
    if constexpr (kOwnInRegisters) {
#pragma unroll
      for (int i = 0; i < kGroups; ++i) {
#pragma unroll
        for (int m = 0; m < 2; ++m) owner_fragment(oa[i][m], i, m);
      }
    }
  }

  __device__ __forceinline__ void owner_fragment(uint32_t (&a)[4], int i, int m) const {
    ldmatrix_x4(a, own_at + (2 * i * kChunkBytes + 2 * m * kRowBlock));
  }

  // x = the thread's 4 logits of the block's 32 x 32 tile S = own . (stream stage at byte offset sa)^T:
  // fragment `warp` (rows 16 (warp / 4) + l / 4 (+ 8), stream rows 8 (warp % 4) + 2 (l % 4) (+ 1)) of
  // the sum over the eight warps' shares, through sPart (8 x 8 x 32 float4). Ends past a barrier
  // after which sPart is read: the caller's next barrier frees it.
  __device__ __forceinline__ void logits(float (&x)[4], int sa, float4* sPart) const {
    float s[2][4][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int f = 0; f < 4; ++f) s[m][f][0] = s[m][f][1] = s[m][f][2] = s[m][f][3] = 0.f;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
#pragma unroll
      for (int f = 0; f < 4; f += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, str_b_at + sa + (2 * i * kChunkBytes + f * kRowBlock));
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          uint32_t a_smem[4];
          if constexpr (!kOwnInRegisters) owner_fragment(a_smem, i, m);
          const uint32_t(&a)[4] = *(kOwnInRegisters ? &oa[i][m] : &a_smem);
          mma_m16n8k16<T>(s[m][f], a, b0, s[m][f]);
          mma_m16n8k16<T>(s[m][f + 1], a, b1, s[m][f + 1]);
        }
      }
    }
    // sPart[warp][fragment][lane], fragment m * 4 + f; base pointers, so that the offsets are immediates.
    float4* mine = sPart + warp * 256 + lane;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int f = 0; f < 4; ++f) mine[(m * 4 + f) * 32] = make_float4(s[m][f][0], s[m][f][1], s[m][f][2], s[m][f][3]);
    __syncthreads();
    const float4* sum_of = sPart + warp * 32 + lane;
    x[0] = x[1] = x[2] = x[3] = 0.f;
#pragma unroll
    for (int w = 0; w < kWarpsW; ++w) {
      const float4 v = sum_of[w * 256];
      x[0] += v.x, x[1] += v.y, x[2] += v.z, x[3] += v.w;
    }
  }

  // The thread's 4 values of G' (as `logits` lays them out) into the padded 32 x 32 tile sg as T, or
  // with `low` their rounding error (hi + lo carries G' to about twice T's precision).
  __device__ __forceinline__ void store_g(uint32_t* sg, const float (&x)[4], bool low) const {
    const int row = 16 * (warp >> 2) + (lane >> 2), col = 8 * (warp & 3) + 2 * (lane & 3);
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const float a = x[2 * h], b = x[2 * h + 1];
      sg[((row + 8 * h) * kGStride + col) / 2] =
          low ? pack2<T>(a - to_float(from_float<T>(a)), b - to_float(from_float<T>(b))) : pack2<T>(a, b);
    }
  }

  // acc += G' (sg, 32 x 32) . stream stage at byte offset sa (32 x the warp's groups), in two k-steps.
  __device__ __forceinline__ void product(Acc& acc, const uint32_t* sg, int sa) const {
#pragma unroll
    for (int k = 0; k < 2; ++k) {
      uint32_t ga[2][4];
#pragma unroll
      for (int m = 0; m < 2; ++m) {
        const int row = m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = k * 16 + (lane >> 4) * 8;
        ldmatrix_x4(ga[m], smem_addr(sg) + (row * kGStride + col) * 2);
      }
#pragma unroll
      for (int i = 0; i < kGroups; ++i) {
        uint32_t b[4];
        ldmatrix_x4_trans(b, str_a_at + sa + (2 * i * kChunkBytes + 2 * k * kRowBlock));
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          mma_m16n8k16<T>(acc[i][m][0], ga[m], b0, acc[i][m][0]);
          mma_m16n8k16<T>(acc[i][m][1], ga[m], b1, acc[i][m][1]);
        }
      }
    }
  }

  // out[row][d] = acc * unscale for the block's rows own0.. (< n) and d < D: acc[i][m][n] element e is
  // row m * 16 + l / 4 + 8 (e / 2), column 16 (w + 8 i) + 8 n + 2 (l % 4) + e % 2.
  __device__ __forceinline__ void store(const Acc& acc, float* out, int64_t own0, int64_t n, int64_t D,
                                        float unscale) const {
#pragma unroll
    for (int i = 0; i < kGroups; ++i)
#pragma unroll
      for (int m = 0; m < 2; ++m)
#pragma unroll
        for (int c = 0; c < 2; ++c)
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            const int64_t row = own0 + m * 16 + (lane >> 2) + 8 * h;
            const int64_t d = int64_t(warp + kWarpsW * i) * 16 + c * 8 + 2 * (lane & 3);
            if (row < n && d < D) {
              *reinterpret_cast<float2*>(out + row * D + d) =
                  make_float2(acc[i][m][c][2 * h] * unscale, acc[i][m][c][2 * h + 1] * unscale);
            }
          }
  }
};

// acc = 0.
template <int kGroups>
__device__ __forceinline__ void zero_wide_acc(float (&acc)[kGroups][2][2][4]) {
#pragma unroll
  for (int i = 0; i < kGroups; ++i)
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 2; ++n) acc[i][m][n][0] = acc[i][m][n][1] = acc[i][m][n][2] = acc[i][m][n][3] = 0.f;
}

}  // namespace fastcl::gpu

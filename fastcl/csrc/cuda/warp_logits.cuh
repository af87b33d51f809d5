// The logit tile both mma kernels start from: a warp's 16 rows held as mma A fragments, times the
// rows of a swizzled shared tile, into fp32 accumulator fragments (the PTX m16n8 C layout: lane l
// holds rows l / 4 and l / 4 + 8, columns 2 (l % 4) and 2 (l % 4) + 1 of each 8-column fragment).
#pragma once
#include <cstdint>

#include "cuda/mma.cuh"
#include "cuda/swizzled_tile.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

// The lane's rows of a warp's 16 A rows in a swizzled tile (lanes 8i..8i+7 give the rows of matrix i).
template <int kD>
__device__ __forceinline__ LaneRows<kD> warp_rows(int warp, int lane) {
  return LaneRows<kD>(warp * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
}

// Rows [16 warp, 16 warp + 16) of a swizzled (rows x kD) tile as A fragments, one per 16 columns:
// lanes 8i..8i+7 give the rows of matrix i, (rows 0-7 | 8-15) x (chunk 2s | 2s + 1).
template <int kD>
__device__ __forceinline__ void load_warp_rows(uint32_t (&a)[kD / 16][4], SmemAddr tile, int warp, int lane) {
  const LaneRows<kD> rows = warp_rows<kD>(warp, lane);
#pragma unroll
  for (int s = 0; s < kD / 16; ++s) ldmatrix_x4(a[s], rows(tile, 0, 2 * s));
}

// The lane's rows of the B tile for warp_logits: matrices (rows 8f | 8f + 8) x (chunk 2s | 2s + 1).
template <int kD>
__device__ __forceinline__ LaneRows<kD> logit_rows(int lane) {
  return LaneRows<kD>((lane >> 4) * 8 + (lane & 7), (lane >> 3) & 1);
}

// s = a (16 x kD) . (rows [0, kCols) of the swizzled tile)^T, in kCols / 8 fragments.
template <typename T, int kD, int kCols>
__device__ __forceinline__ void warp_logits(float (&s)[kCols / 8][4], const uint32_t (&a)[kD / 16][4], SmemAddr tile,
                                            const LaneRows<kD>& rows) {
#pragma unroll
  for (int f = 0; f < kCols / 8; ++f) s[f][0] = s[f][1] = s[f][2] = s[f][3] = 0.f;
#pragma unroll
  for (int k = 0; k < kD / 16; ++k) {
#pragma unroll
    for (int f = 0; f < kCols / 8; f += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, rows(tile, f, 2 * k));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_m16n8k16<T>(s[f], a[k], b0, s[f]);
      mma_m16n8k16<T>(s[f + 1], a[k], b1, s[f + 1]);
    }
  }
}

// s += a (16 x kD, A fragments read from the swizzled tile `a_tile` at each step; the lane's rows
// `a_rows`: warp_rows) . (rows [0, kCols) of the swizzled tile)^T: for kD whose fragments would not
// stay in registers beside a backward's accumulators, and for D chunks of wider rows.
template <typename T, int kD, int kCols>
__device__ __forceinline__ void warp_logits_add_from_smem(float (&s)[kCols / 8][4], SmemAddr a_tile,
                                                          const LaneRows<kD>& a_rows, SmemAddr tile,
                                                          const LaneRows<kD>& rows) {
#pragma unroll
  for (int k = 0; k < kD / 16; ++k) {
    uint32_t a[4];
    ldmatrix_x4(a, a_rows(a_tile, 0, 2 * k));
#pragma unroll
    for (int f = 0; f < kCols / 8; f += 2) {
      uint32_t b[4];
      ldmatrix_x4(b, rows(tile, f, 2 * k));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_m16n8k16<T>(s[f], a, b0, s[f]);
      mma_m16n8k16<T>(s[f + 1], a, b1, s[f + 1]);
    }
  }
}

// As warp_logits_add_from_smem, into zeroed accumulators.
template <typename T, int kD, int kCols>
__device__ __forceinline__ void warp_logits_from_smem(float (&s)[kCols / 8][4], SmemAddr a_tile,
                                                      const LaneRows<kD>& a_rows, SmemAddr tile,
                                                      const LaneRows<kD>& rows) {
#pragma unroll
  for (int f = 0; f < kCols / 8; ++f) s[f][0] = s[f][1] = s[f][2] = s[f][3] = 0.f;
  warp_logits_add_from_smem<T, kD, kCols>(s, a_tile, a_rows, tile, rows);
}

// acc (16 owner rows x the kOut columns from 16-byte chunk chunk0 on, per warp) += G' (16 x kCols, fp32
// fragments, the accumulator layout of warp_logits) . stream tile (kCols x kD at sa), G' re-packed as
// the A operand and the tile read transposed (`trow`: lane rows (l % 8) + 8 ((l / 8) % 2), chunk bit
// l / 16); G' rounded to T, or with `low` its rounding error: hi + lo carries G' to about twice T's
// precision on the tiles that need it. The backward kernels' second product (contrastive_backward_mma.cu,
// siglip_mma.cu).
template <typename T, int kD, int kOut, int kCols>
__device__ __forceinline__ void warp_grad_product(float (&acc)[kOut / 8][4], const float (&g)[kCols / 8][4],
                                                  SmemAddr sa, const LaneRows<kD>& trow, int chunk0, bool low) {
#pragma unroll
  for (int c = 0; c < kCols / 16; ++c) {
    const float* v[4] = {&g[2 * c][0], &g[2 * c][2], &g[2 * c + 1][0], &g[2 * c + 1][2]};
    uint32_t a[4];
#pragma unroll
    for (int r = 0; r < 4; ++r) {
      const float x = v[r][0], y = v[r][1];
      a[r] = low ? pack2<T>(x - to_float(from_float<T>(x)), y - to_float(from_float<T>(y))) : pack2<T>(x, y);
    }
#pragma unroll
    for (int n = 0; n < kOut / 8; n += 2) {
      uint32_t b[4];
      ldmatrix_x4_trans(b, trow(sa, 2 * c, chunk0 + n));
      const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
      mma_m16n8k16<T>(acc[n], a, b0, acc[n]);
      mma_m16n8k16<T>(acc[n + 1], a, b1, acc[n + 1]);
    }
  }
}

// out[row][d] = acc * unscale, the backward kernels' partials: the thread's owner rows row0 and row0 + 8
// (< n) and its columns of gradient slice `slice` (kOut wide, d < D); element e of fragment f is row
// row0 + 8 (e / 2), column slice kOut + 8 f + 2 t4 + e % 2.
template <int kOut>
__device__ __forceinline__ void store_grad_slice(const float (&acc)[kOut / 8][4], float* out, int64_t row0, int64_t n,
                                                 int64_t D, int slice, int t4, float unscale) {
#pragma unroll
  for (int f = 0; f < kOut / 8; ++f) {
    const int64_t d = int64_t(slice) * kOut + int64_t(f) * 8 + 2 * t4;
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = row0 + 8 * h;
      if (i < n && d < D) {
        *reinterpret_cast<float2*>(out + i * D + d) = make_float2(acc[f][2 * h] * unscale, acc[f][2 * h + 1] * unscale);
      }
    }
  }
}

}  // namespace fastcl::gpu

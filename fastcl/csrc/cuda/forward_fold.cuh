// The per-tile softmax of the forward mma kernels (contrastive_forward_mma.cu: q in registers, D <= 256;
// contrastive_forward_wide.cu: q from shared memory in D chunks): a warp's 16 x 64 logit tile, fp32
// mma fragments, folded into its rows' online log-sum-exp and positive sums, and the per-row
// partials written at the end. One copy, so both kernels apply the same masks and the same base-2
// arithmetic, and a change reaches both.
#pragma once
#include <cstdint>

#include "common/contrastive_math.h"
#include "common/online_lse.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/mma.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

constexpr int kMmaThreads = 256, kBM = 128, kBN = 64;

// A thread's two rows (g and g + 8 of its warp's 16), base 2: running max, sum of exp, positive
// logit sum, positive count.
struct RowRun {
  float m[2] = {math::neg_inf<float>(), math::neg_inf<float>()}, l[2] = {0.f, 0.f};
  float pos_sum[2] = {0.f, 0.f}, pos_cnt[2] = {0.f, 0.f};
};

// Column side values of one tile: labels (threads 0-63), inverse norms (threads 64-79, four a
// copy from col_norm, which is padded to whole tiles) and with kIds sample ids (threads 80-143),
// for columns [col0, col0 + kBN).
template <bool kIds>
__device__ __forceinline__ void load_col_values(float* norm, int64_t* label, int64_t* id, const Problem& p,
                                                const float* __restrict__ col_norm, int64_t col0) {
  const int t = threadIdx.x;
  if (t < kBN) {
    const int64_t j = col0 + t;
    const bool ok = j < p.L;
    cp_async8(&label[t], ok ? p.col_labels + j : p.col_labels, ok);
  } else if (t < kBN + kBN / 4) {
    const int c = 4 * (t - kBN);
    cp_async16(&norm[c], col_norm + col0 + c, true);
  } else if (kIds && t < 2 * kBN + kBN / 4) {
    const int c = t - kBN - kBN / 4;
    const int64_t j = col0 + c;
    const bool ok = j < p.L;
    cp_async8(&id[c], ok ? p.col_ids + j : p.col_ids, ok);
  }
}

// The base-2 factor a_i = |scale| log2(e) / |q_i| of the thread's rows my_row and my_row + 8.
__device__ __forceinline__ void row_factors(float (&a)[2], const Problem& p, int64_t my_row) {
  const float scale = *p.logit_scale;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = my_row + 8 * h;
    // >= 0 (the sign rides on col_norm) and never 0, so a masked -inf stays -inf times a_i.
    a[h] = i < p.M ? fmaxf(fabsf(scale) * kLog2e * p.row_info[i].x, 1e-30f) : 1.f;
  }
}

// Whether column tile `tile` (kBN columns from col0) can hold a masked pair for block `block`'s kBM
// rows from row0: tile_may_mask over the per-tile ranges of the pre-pass (row and column labels,
// and with their features the ids and the bias owners).
template <bool kIds, bool kBias>
__device__ __forceinline__ int forward_tile_masked(const Problem& p, int64_t row0, int64_t col0, int block, int tile,
                                                   const int64_t* row_range, const int64_t* col_range,
                                                   const int64_t* row_id_range, const int64_t* col_id_range,
                                                   const int64_t* owner_range) {
  return tile_may_mask(p, row0, kBM, col0, kBN, col0 + kBN > p.L, row_range + 2 * block, col_range + 2 * tile,
                       kIds ? row_id_range + 2 * block : nullptr, kIds ? col_id_range + 2 * tile : nullptr,
                       kBias ? row_range + 2 * block : nullptr, kBias ? owner_range + 2 * tile : nullptr);
}

// Folds the warp's logits of columns [col0, col0 + kBN) (acc: q . k, unscaled) into `run`. norm, lab
// and ids: the tile's column values in shared memory; masked: tile_may_mask of the tile.
template <int kFrags, bool kIds, bool kBias>
__device__ __forceinline__ void fold_tile(float (&acc)[kFrags][4], RowRun& run, const float (&a)[2], const Problem& p,
                                          int64_t my_row, int64_t col0, const float* norm, const int64_t* lab,
                                          const int64_t* ids, bool masked, int t4) {
  using namespace math;
  // x = acc * sign(scale) / |k_j|; the base-2 logit is y = x * a_i with a_i >= 0, so a row's
  // largest y is a_i times its largest x. Element e of fragment f sits at row h = e / 2, column
  // f * 8 + 2 t4 + e % 2.
#pragma unroll
  for (int f = 0; f < kFrags; ++f) {
    const float2 rk = *reinterpret_cast<const float2*>(norm + f * 8 + 2 * t4);
    acc[f][0] *= rk.x;
    acc[f][1] *= rk.y;
    acc[f][2] *= rk.x;
    acc[f][3] *= rk.y;
  }
  if (masked) {  // sass: rare
    // In tile coordinates: columns c < width exist; column self[h] is row h's own (or none);
    // is_self, is_positive and is_masked_negative of common/contrastive_math.h, on 32-bit offsets.
    const int width = static_cast<int>(min(int64_t(kBN), p.L - col0));
    int self[2];
    int64_t label[2], id[2];
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const int64_t i = my_row + 8 * h, at = i + p.row_offset - col0;
      self[h] = p.exclude_self && at >= 0 && at < kBN ? static_cast<int>(at) : -1;
      label[h] = i < p.M ? p.row_labels[i] : -1;
      id[h] = kIds && i < p.M ? p.row_ids[i] : -1;
    }
    if constexpr (kBias) {
      // An owned bias (bias_applies): + bias_j log2(e) on the base-2 logit y = x a_i, so x gains
      // bias_j log2(e) / a_i; owners and biases read from global memory, on these tiles only.
      const float inv_a[2] = {1.f / a[0], 1.f / a[1]};
#pragma unroll
      for (int f = 0; f < kFrags; ++f) {
#pragma unroll
        for (int b = 0; b < 2; ++b) {
          const int c = f * 8 + 2 * t4 + b;
          if (c >= width) continue;
          const int64_t owner = p.col_bias_owner[col0 + c];
          const float bias2 = p.col_info[col0 + c].y * kLog2e;
#pragma unroll
          for (int h = 0; h < 2; ++h) {
            if (owner == label[h]) acc[f][2 * h + b] = fmaf(bias2, inv_a[h], acc[f][2 * h + b]);
          }
        }
      }
    }
#pragma unroll
    for (int f = 0; f < kFrags; ++f) {
#pragma unroll
      for (int b = 0; b < 2; ++b) {
        const int c = f * 8 + 2 * t4 + b;
        const int64_t col_label = lab[c], col_id = kIds ? ids[c] : -1;
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          float& x = acc[f][2 * h + b];
          const bool valid = c < width && c != self[h], positive = valid && is_positive(label[h], col_label);
          if (positive) {
            run.pos_sum[h] = fmaf(x, a[h], run.pos_sum[h]);
            run.pos_cnt[h] += 1.f;
          }
          if (!valid || (kIds && !positive && is_masked_negative(id[h], col_id))) x = neg_inf<float>();
        }
      }
    }
  }

  // Online log-sum-exp per row: the quad (t4 = 0..3) shares a row.
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float mx = neg_inf<float>();
#pragma unroll
    for (int f = 0; f < kFrags; ++f) mx = fmaxf(mx, fmaxf(acc[f][2 * h], acc[f][2 * h + 1]));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 1));
    mx = fmaxf(mx, __shfl_xor_sync(0xffffffffu, mx, 2));
    const float m_new = fmaxf(run.m[h], mx * a[h]);
    const float base = m_new == neg_inf<float>() ? 0.f : m_new;  // an all-masked row so far: no NaN
    float sum = 0.f;
#pragma unroll
    for (int f = 0; f < kFrags; ++f) {
      sum += ex2_approx(fmaf(acc[f][2 * h], a[h], -base)) + ex2_approx(fmaf(acc[f][2 * h + 1], a[h], -base));
    }
    run.l[h] = run.l[h] * ex2_approx(run.m[h] - base) + sum;
    run.m[h] = m_new;
  }
}

// partial[split][row] = (running max, sum of exp, positive logit sum, positive count), natural log.
__device__ __forceinline__ void write_row_partials(RowRun& run, const Problem& p, int64_t my_row, int t4,
                                                   float4* __restrict__ partial) {
  using namespace math;
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    float l = run.l[h], ps = run.pos_sum[h], pc = run.pos_cnt[h];
#pragma unroll
    for (int off = 1; off < 4; off <<= 1) {
      l += __shfl_xor_sync(0xffffffffu, l, off);
      ps += __shfl_xor_sync(0xffffffffu, ps, off);
      pc += __shfl_xor_sync(0xffffffffu, pc, off);
    }
    const int64_t i = my_row + 8 * h;
    if (t4 == 0 && i < p.M) {
      const float m = run.m[h] == neg_inf<float>() ? run.m[h] : run.m[h] * kLn2;
      partial[int64_t(blockIdx.y) * p.M + i] = make_float4(m, l, ps * kLn2, pc);
    }
  }
}

}  // namespace fastcl::gpu

// CUDA kernels of the contrastive core (semantics: csrc/README.md).
//
// Forward: a block owns 64 rows and streams 64-column tiles (split over gridDim.y when there
// are few row tiles); each tile's logits are computed in fp32 from D in shared-memory chunks,
// then folded into a per-row online log-sum-exp, positive sum and count. A combine kernel
// merges the column splits in a fixed order.
// Backward: grad_kernel<kRowOwner> owns 64 rows of q (or of k), a slice of D (256 columns,
// 128 for fp32; gridDim.y) and a range of stream tiles (gridDim.z); it recomputes each logit
// tile over all of D, forms G and accumulates G . k (or G^T . q) in registers. Each extra D
// slice recomputes the logits, so D > 256 costs (slices + 1) / 2 times the ideal backward. Splits write separate fp32 partials that
// grad_finish_kernel sums in order, so nothing uses floating-point atomics and every run is
// bitwise identical.
// For fp16/bf16, normalisation is folded in rather than copied: an O(N D) pre-pass packs each
// row's fp32 inverse norm with its other per-row values, logits use dot = (q_i . k_j) / |q_i| /
// |k_j|, and the stream side's inverse norm is folded into G, so the inputs keep their exact
// products. fp32 rows are normalised in a pre-pass instead (prenormalise, below).
// Per-row/column values travel to shared memory with cp.async beside the operand tiles, so no
// register holds them across the products.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <limits>
#include <tuple>

#include "checks.h"
#include "common/contrastive_math.h"
#include "common/online_lse.h"
#include "cuda/device_api.cuh"
#include "cuda/tile_math.cuh"
#include "normalise.h"

namespace fastcl::gpu {

using namespace math;

namespace {

constexpr int kMaxExp = 100;  // bound on the fp16 staging scale 2^e, so 2^e and 2^-e are normal floats
constexpr int kWarps = kThreads / 32;
// Resident grad_kernel blocks per SM the compiler must allow for (128 registers at 2); 1 lifts
// the register cap (180-250 used) at the cost of occupancy. A tuning knob for the GPU.
#ifndef FASTCL_GRAD_MINB
#define FASTCL_GRAD_MINB 2
#endif

// Everything the per-pair rules read.
struct Problem {
  const int64_t* row_labels;
  const int64_t* col_labels;
  const int64_t* col_bias_owner;  // null: a bias applies to every row
  const float4* row_info;         // {1 / |q_i| (1 without normalize), lse_i, grad_i, 1 / num_pos_i}
  const float4* col_info;         // {1 / |k_j|, bias_j, 0, 0}
  const float* logit_scale;
  int64_t M, L, D, row_offset;
  bool exclude_self, has_bias;
};

// The per-row values of one 64-row tile of either side, in shared memory.
struct MetaSlot {
  int64_t label[kTile];
  int64_t owner[kTile];  // columns with col_bias_owner only
  float4 info[kTile];
};

// Starts the asynchronous copy of rows [base, base + 64) of one side into slot (zero past n).
__device__ __forceinline__ void load_slot(MetaSlot* slot, const int64_t* labels, const int64_t* owners,
                                          const float4* info, int64_t base, int64_t n) {
  const int t = threadIdx.x & (kTile - 1);
  const int64_t idx = base + t;
  const bool ok = idx < n;
  if (threadIdx.x < kTile) {
    cp_async8(&slot->label[t], ok ? labels + idx : labels, ok);
    cp_async16(&slot->info[t], ok ? info + idx : info, ok);
  } else if (threadIdx.x < 2 * kTile && owners != nullptr) {
    cp_async8(&slot->owner[t], ok ? owners + idx : owners, ok);
  }
}
__device__ __forceinline__ void load_rows(const Problem& p, MetaSlot* slot, int64_t base) {
  load_slot(slot, p.row_labels, nullptr, p.row_info, base, p.M);
}
__device__ __forceinline__ void load_cols(const Problem& p, MetaSlot* slot, int64_t base) {
  load_slot(slot, p.col_labels, p.col_bias_owner, p.col_info, base, p.L);
}

struct RowView {
  int64_t label;
  float4 info;
};
struct ColView {
  int64_t label;
  float4 info;
  const int64_t* owners;  // the slot's owner array, or null without col_bias_owner
  int t;
};
__device__ __forceinline__ RowView row_view(const MetaSlot& s, int t) { return {s.label[t], s.info[t]}; }
__device__ __forceinline__ ColView col_view(const Problem& p, const MetaSlot& s, int t) {
  return {s.label[t], s.info[t], p.col_bias_owner != nullptr ? s.owner : nullptr, t};
}

struct Pair {
  float s, dot;
  bool valid, pos;
};

// The one place a logit is formed, so forward and backward round it identically.
__device__ __forceinline__ Pair pair_at(const Problem& p, float scale, float raw, int64_t i, const RowView& r,
                                        int64_t j, const ColView& c) {
  Pair out;
  out.valid = i < p.M && j < p.L && !is_self(i, j, p.row_offset, p.exclude_self);
  out.dot = __fmul_rn(__fmul_rn(raw, r.info.x), c.info.x);
  const bool biased = p.has_bias && bias_applies(c.owners, c.t, r.label);
  out.s = fmaf(scale, out.dot, biased ? c.info.y : 0.f);
  out.pos = out.valid && is_positive(r.label, c.label);
  return out;
}

// dloss_i / ds_ij; r.info.z (grad_loss_i) is 0 for a row without positives. Such a row is never
// formed: its exp could overflow (an lse that did not come from this forward), and 0 * inf is NaN.
__device__ __forceinline__ float grad_logit(const Pair& pr, const RowView& r) {
  if (r.info.z == 0.f) return 0.f;
  return r.info.z * (exp_of(pr.s - r.info.y) - (pr.pos ? r.info.w : 0.f));
}

__device__ __forceinline__ float warp_sum(float v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}
__device__ __forceinline__ double warp_sum(double v) {
#pragma unroll
  for (int off = 16; off > 0; off >>= 1) v += __shfl_xor_sync(0xffffffffu, v, off);
  return v;
}

// Byte offsets of the dynamic shared memory; every region starts 128-byte aligned.
template <typename T, bool kBackward>
struct SmemLayout {
  using M = Math<T>;
  static constexpr size_t kStage = size_t(kTile) * M::kLd * sizeof(T);  // one operand chunk
  static constexpr size_t kA = 0;                                        // 2 stages of the owner tile
  static constexpr size_t kB = 2 * kStage;                               // 2 stages of the stream tile
  static constexpr size_t kS = 4 * kStage;                               // fp32 logits / staging out
  static constexpr size_t kG = kS + size_t(kTile) * kSLd * sizeof(float);
  // G in the input type for the tensor cores: a high and a low part (see form_g).
  static constexpr size_t kGBytes = kBackward && M::kStageG ? 2 * size_t(kTile) * M::kGLd * sizeof(typename M::G) : 0;
  static constexpr size_t kMeta = (kG + kGBytes + 127) / 128 * 128;
  static constexpr size_t kBytes = kMeta + 3 * sizeof(MetaSlot);  // 2 stream slots by tile parity + owner
  static_assert(kStage % 128 == 0 && kG % 128 == 0, "regions must stay aligned for wmma and cp.async");
};

// ---------------------------------------------------------------------------------------------
// Forward: partial[split][row] = (running max, sum of exp, positive logit sum, positive count).
template <typename T>
__global__ void __launch_bounds__(kThreads, 2)
    forward_kernel(const T* __restrict__ q, const T* __restrict__ k, Problem p, int tiles_per_split, bool vec,
                   float4* __restrict__ partial) {
  using M = Math<T>;
  using Layout = SmemLayout<T, false>;
  constexpr int BK = M::kBK, LD = M::kLd;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sA = reinterpret_cast<T*>(smem + Layout::kA);
  T* sB = reinterpret_cast<T*>(smem + Layout::kB);
  float* sS = reinterpret_cast<float*>(smem + Layout::kS);
  MetaSlot* sMeta = reinterpret_cast<MetaSlot*>(smem + Layout::kMeta);

  const int64_t row0 = int64_t(blockIdx.x) * kTile;
  const int n_tiles = static_cast<int>((p.L + kTile - 1) / kTile);
  const int t_begin = blockIdx.y * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
  const int nK = max(1, static_cast<int>((p.D + BK - 1) / BK));
  const float scale = *p.logit_scale;
  // Four threads share a row; thread ec takes columns ec, ec + 4, ... so a warp's S reads hit 32 banks.
  const int er = threadIdx.x >> 2, ec = threadIdx.x & 3;
  const int64_t i = row0 + er;

  auto issue = [&](int tile, int kc, int b) {
    if (kc == 0) load_cols(p, &sMeta[tile & 1], int64_t(tile) * kTile);
    load_tile<T, BK, LD>(sA + b * kTile * LD, q, p.M, p.D, row0, int64_t(kc) * BK, vec);
    load_tile<T, BK, LD>(sB + b * kTile * LD, k, p.L, p.D, int64_t(tile) * kTile, int64_t(kc) * BK, vec);
  };

  OnlineLSE<float> run;
  float pos_sum = 0.f, pos_cnt = 0.f;
  int buf = 0;
  load_rows(p, &sMeta[2], row0);
  if (t_begin < t_end) issue(t_begin, 0, 0);
  cp_async_commit();
  for (int tile = t_begin; tile < t_end; ++tile) {
    const int64_t col0 = int64_t(tile) * kTile;
    typename M::SAcc acc;
    M::zero(acc);
    for (int kc = 0; kc < nK; ++kc) {
      // Double buffering: the last chunk prefetches the next tile's first, overlapping the epilogue.
      if (kc + 1 < nK) {
        issue(tile, kc + 1, buf ^ 1);
      } else if (tile + 1 < t_end) {
        issue(tile + 1, 0, buf ^ 1);
      }
      cp_async_commit();
      cp_async_wait_prev();
      __syncthreads();
      M::mma_abt(acc, sA + buf * kTile * LD, sB + buf * kTile * LD);
      __syncthreads();  // everyone is done with `buf` before the next iteration refills it
      buf ^= 1;
    }
    M::store(acc, sS);
    __syncthreads();

    const RowView rv = row_view(sMeta[2], er);
    const MetaSlot& cols = sMeta[tile & 1];
    float s[16];
    float mx = neg_inf<float>();
#pragma unroll
    for (int c = 0; c < 16; ++c) {
      const int jj = ec + 4 * c;
      const Pair pr = pair_at(p, scale, sS[er * kSLd + jj], i, rv, col0 + jj, col_view(p, cols, jj));
      s[c] = pr.valid ? pr.s : neg_inf<float>();
      mx = fmaxf(mx, s[c]);
      if (pr.pos) {
        pos_sum += pr.s;
        pos_cnt += 1.f;
      }
    }
    if (mx != neg_inf<float>()) {  // else every pair here is masked: exp(-inf - -inf) would be NaN
      float sum = 0.f;
#pragma unroll
      for (int c = 0; c < 16; ++c) sum += exp_of(s[c] - mx);
      run.merge(mx, sum);
    }
    // With a single D chunk the next tile's first step prefetches tile + 2's columns into this
    // tile's slot before any other barrier.
    __syncthreads();
  }

#pragma unroll
  for (int off = 1; off < 4; off <<= 1) {
    const float om = __shfl_xor_sync(0xffffffffu, run.m, off), ol = __shfl_xor_sync(0xffffffffu, run.l, off);
    run.merge(om, ol);
    pos_sum += __shfl_xor_sync(0xffffffffu, pos_sum, off);
    pos_cnt += __shfl_xor_sync(0xffffffffu, pos_cnt, off);
  }
  cp_async_wait_all();  // without column tiles the row copies above were never waited for
  if (ec == 0 && i < p.M) partial[int64_t(blockIdx.y) * p.M + i] = make_float4(run.m, run.l, pos_sum, pos_cnt);
}

__global__ void forward_combine_kernel(const float4* __restrict__ partial, int splits, int64_t M,
                                       float* __restrict__ loss, float* __restrict__ lse,
                                       float* __restrict__ num_pos) {
  const int64_t i = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (i >= M) return;
  OnlineLSE<float> run;
  float pos_sum = 0.f, pos_cnt = 0.f;
  for (int z = 0; z < splits; ++z) {
    const float4 v = partial[int64_t(z) * M + i];
    run.merge(v.x, v.y);
    pos_sum += v.z;
    pos_cnt += v.w;
  }
  const float l = run.value();
  lse[i] = l;
  num_pos[i] = pos_cnt;
  loss[i] = pos_cnt > 0.f ? l - pos_sum / pos_cnt : 0.f;
}

// ---------------------------------------------------------------------------------------------
// Backward. kRowOwner: owner = rows of q, stream = columns (k) -> grad_qn and the scale
// partials. Otherwise owner = columns of k, stream = rows of q -> grad_kn. part[split][owner][d]
// receives sum over the split's stream tiles of G' . stream_x, G' = G / |stream row|; the
// logit scale and the normalisation gradient are applied in grad_finish_kernel.
template <typename T, bool kRowOwner>
__global__ void __launch_bounds__(kThreads, FASTCL_GRAD_MINB)
    grad_kernel(const T* __restrict__ own_x, const T* __restrict__ str_x, Problem p, int tiles_per_split,
                bool vec, float* __restrict__ part, double* __restrict__ scale_part) {
  using M = Math<T>;
  using Layout = SmemLayout<T, true>;
  using GT = typename M::G;
  constexpr int BK = M::kBK, LD = M::kLd, kDC = M::kDC, kNC = kDC / BK;  // kDC: D columns a block owns
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  __shared__ float s_red[kWarps];
  __shared__ double s_red_d[kWarps];
  T* sA = reinterpret_cast<T*>(smem + Layout::kA);
  T* sB = reinterpret_cast<T*>(smem + Layout::kB);
  float* sS = reinterpret_cast<float*>(smem + Layout::kS);
  GT* sG = M::kStageG ? reinterpret_cast<GT*>(smem + Layout::kG) : reinterpret_cast<GT*>(sS);
  GT* sGlo = sG + kTile * M::kGLd;  // tensor cores only: the low part of G
  MetaSlot* sMeta = reinterpret_cast<MetaSlot*>(smem + Layout::kMeta);

  const int64_t n_own = kRowOwner ? p.M : p.L, n_str = kRowOwner ? p.L : p.M;
  const int64_t own0 = int64_t(blockIdx.x) * kTile;
  const int64_t d0 = int64_t(blockIdx.y) * kDC;
  const int nC = static_cast<int>((min(int64_t(kDC), p.D - d0) + BK - 1) / BK);  // P slices in this block
  const int nK = max(1, static_cast<int>((p.D + BK - 1) / BK));                  // S chunks (all of D)
  const int n_tiles = static_cast<int>((n_str + kTile - 1) / kTile);
  const int t_begin = blockIdx.z * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
  const float scale = *p.logit_scale;
  const int er = threadIdx.x >> 2, ec = threadIdx.x & 3;
  const int64_t o = own0 + er;
  const bool want_dscale = kRowOwner && blockIdx.y == 0;  // one D slice counts each pair once
  double dscale = 0.0;
  int e_acc = kMaxExp;  // fp16 only: acc holds the true sum times 2^e_acc

  typename M::PAcc acc[kNC];
#pragma unroll
  for (int c = 0; c < kNC; ++c) M::zero(acc[c]);

  // Per stream tile: nK steps load owner + stream chunks of D for S, then nC steps load the
  // stream tile's slices of this block's D range for P.
  auto issue = [&](int tile, int step, int b) {
    const int64_t str0 = int64_t(tile) * kTile;
    if (step == 0) {
      if (kRowOwner) {
        load_cols(p, &sMeta[tile & 1], str0);
      } else {
        load_rows(p, &sMeta[tile & 1], str0);
      }
    }
    if (step < nK) {
      load_tile<T, BK, LD>(sA + b * kTile * LD, own_x, n_own, p.D, own0, int64_t(step) * BK, vec);
      load_tile<T, BK, LD>(sB + b * kTile * LD, str_x, n_str, p.D, str0, int64_t(step) * BK, vec);
    } else {
      load_tile<T, BK, LD>(sB + b * kTile * LD, str_x, n_str, p.D, str0, d0 + int64_t(step - nK) * BK, vec);
    }
  };
  auto prefetch_after = [&](int tile, int step, int b) {
    if (step + 1 < nK + nC) {
      issue(tile, step + 1, b);
    } else if (tile + 1 < t_end) {
      issue(tile + 1, 0, b);
    }
    cp_async_commit();
  };

  int buf = 0;
  if (kRowOwner) {
    load_rows(p, &sMeta[2], own0);
  } else {
    load_cols(p, &sMeta[2], own0);
  }
  // Turns the logit tile in sS into G' = G / |stream row| and, for tensor cores, into sG in
  // the input type.
  auto form_g = [&](int tile) {
    const int64_t str0 = int64_t(tile) * kTile;
    const MetaSlot& own = sMeta[2];
    const MetaSlot& str = sMeta[tile & 1];
    // In place: each element has one owning thread, and no register array stays live beside
    // the accumulators.
    float gmax = 0.f, tile_dscale = 0.f;  // 16 terms in fp32, then into the double once a tile
#pragma unroll 4
    for (int c = 0; c < 16; ++c) {
      const int jj = ec + 4 * c;
      const float raw = sS[er * kSLd + jj];
      float g = 0.f, str_r;
      if constexpr (kRowOwner) {
        const RowView rv = row_view(own, er);
        const ColView cv = col_view(p, str, jj);
        const Pair pr = pair_at(p, scale, raw, o, rv, str0 + jj, cv);
        if (pr.valid) {
          g = grad_logit(pr, rv);
          tile_dscale = fmaf(g, pr.dot, tile_dscale);
        }
        str_r = cv.info.x;
      } else {
        const RowView rv = row_view(str, jj);
        const Pair pr = pair_at(p, scale, raw, str0 + jj, rv, o, col_view(p, own, er));
        if (pr.valid) g = grad_logit(pr, rv);
        str_r = rv.info.x;
      }
      float gs = g * str_r;
      if constexpr (M::kRangeScale) {
        // A nonzero fp16 row has norm >= 2^-24, so 1/eps marks an all-zero stream row, whose
        // product is 0 whatever G. Left in, its ~1e12 would set the block's fp16 scale (which
        // never rises again) and flush every other G entry of this and later tiles to zero.
        if (str_r >= 0.5f / static_cast<float>(kNormEps)) gs = 0.f;
      }
      sS[er * kSLd + jj] = gs;
      gmax = fmaxf(gmax, fabsf(gs));
    }
    if (want_dscale) dscale += double(tile_dscale);
    float mul = 1.f;
    if constexpr (M::kRangeScale) {
      // G is tiny (grad_loss / M times a softmax) or large (inverse norms): stage each tile in
      // fp16 scaled by a block-uniform power of two, its largest entry in [2^14, 2^15), and
      // rescale the accumulator exactly when the scale must drop.
      gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, 16));
      gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, 8));
      gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, 4));
      gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, 2));
      gmax = fmaxf(gmax, __shfl_xor_sync(0xffffffffu, gmax, 1));
      if ((threadIdx.x & 31) == 0) s_red[threadIdx.x >> 5] = gmax;
      __syncthreads();
      float tmax = s_red[0];
#pragma unroll
      for (int w = 1; w < kWarps; ++w) tmax = fmaxf(tmax, s_red[w]);
      const int ex = ((__float_as_int(tmax) >> 23) & 0xff) - 127;  // floor(log2) for normal tmax >= 0
      const int e_tile = max(-kMaxExp, min(kMaxExp, 14 - ex));
      if (e_tile < e_acc) {
        const float f = ldexpf(1.f, e_tile - e_acc);
#pragma unroll
        for (int c = 0; c < kNC; ++c) M::scale(acc[c], f);
        e_acc = e_tile;
      }
      mul = ldexpf(1.f, e_acc);
    }
    if constexpr (M::kStageG) {
      // Tensor cores take G in the input type: as hi + lo, whose sum carries G to about twice the
      // type's precision. One part alone missed plain PyTorch's gradient accuracy at temperature
      // 0.01 (fp16 and bf16, on the H200 and in the simulator); the low part costs a second
      // product per slice.
#pragma unroll 4
      for (int c = 0; c < 16; ++c) {
        const int at = er * M::kGLd + ec + 4 * c;
        const float v = sS[er * kSLd + ec + 4 * c] * mul;
        const GT hi = from_float<GT>(v);
        sG[at] = hi;
        sGlo[at] = from_float<GT>(v - to_float(hi));
      }
    }
  };

  if (t_begin < t_end) issue(t_begin, 0, 0);
  cp_async_commit();
  for (int tile = t_begin; tile < t_end; ++tile) {
    typename M::SAcc s_acc;
    M::zero(s_acc);
    for (int kc = 0; kc < nK; ++kc) {
      prefetch_after(tile, kc, buf ^ 1);
      cp_async_wait_prev();
      __syncthreads();
      M::mma_abt(s_acc, sA + buf * kTile * LD, sB + buf * kTile * LD);
      __syncthreads();
      buf ^= 1;
    }
    M::store(s_acc, sS);
    __syncthreads();
    form_g(tile);
    __syncthreads();
    // Unrolled so that acc[c] stays in registers.
#pragma unroll
    for (int c = 0; c < kNC; ++c) {
      if (c < nC) {
        prefetch_after(tile, nK + c, buf ^ 1);
        cp_async_wait_prev();
        __syncthreads();
        M::mma_ab(acc[c], sG, sB + buf * kTile * LD);
        if constexpr (M::kStageG) M::mma_ab(acc[c], sGlo, sB + buf * kTile * LD);
        __syncthreads();
        buf ^= 1;
      }
    }
  }

  // Out through shared memory: the wmma layout is opaque and this keeps the stores coalesced.
  const float unscale = M::kRangeScale ? ldexpf(1.f, -e_acc) : 1.f;
  float* out = part + (int64_t(blockIdx.z) * n_own) * p.D;
#pragma unroll
  for (int c = 0; c < kNC; ++c) {
    if (c < nC) {
      M::scale(acc[c], unscale);
      M::store(acc[c], sS);
      __syncthreads();
#pragma unroll
      for (int it = 0; it < kTile * BK / kThreads; ++it) {
        const int e = threadIdx.x + it * kThreads, r = e / BK, col = e % BK;
        const int64_t row = own0 + r, d = d0 + int64_t(c) * BK + col;
        if (row < n_own && d < p.D) out[row * p.D + d] = sS[r * kSLd + col];
      }
      __syncthreads();
    }
  }

  if constexpr (kRowOwner) {
    if (want_dscale) {  // block-uniform
      dscale = warp_sum(dscale);
      if ((threadIdx.x & 31) == 0) s_red_d[threadIdx.x >> 5] = dscale;
      __syncthreads();
      if (threadIdx.x == 0) {
        double total = 0.0;
        for (int w = 0; w < kWarps; ++w) total += s_red_d[w];
        scale_part[int64_t(blockIdx.z) * gridDim.x + blockIdx.x] = total;
      }
    }
  }
}

__device__ __forceinline__ float inv_norm(float n) { return 1.f / fmaxf(n, static_cast<float>(kNormEps)); }

// Sum of squares of a row, reduced over the warp. Shared by the two kernels below so that
// both derive bitwise the same norm.
template <typename T>
__device__ __forceinline__ float row_sumsq(const T* __restrict__ xr, int64_t D) {
  float ss = 0.f;
  for (int64_t d = threadIdx.x & 31; d < D; d += 32) {
    const float v = to_float(xr[d]);
    ss = fmaf(v, v, ss);
  }
  return warp_sum(ss);
}

// One warp per row: info = {1 / max(|x|, eps) (1 without normalize), a, b, 1 / c}, null a, b, c
// reading as 0. With c = num_pos and b = grad_loss, a row without positives gets b = 0: its loss
// is the constant 0, so its whole row of G vanishes (README).
template <typename T>
__global__ void side_info_kernel(const T* __restrict__ x, int64_t N, int64_t D, bool normalize,
                                 const float* __restrict__ a, const float* __restrict__ b,
                                 const float* __restrict__ c, float4* __restrict__ info) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= N) return;  // whole warps leave together
  const float r = normalize ? inv_norm(sqrtf(row_sumsq(x + row * D, D))) : 1.f;
  if ((threadIdx.x & 31) == 0) {
    const float cv = c != nullptr ? c[row] : 0.f;
    const float bv = b != nullptr && (c == nullptr || cv > 0.f) ? b[row] : 0.f;
    info[row] = make_float4(r, a != nullptr ? a[row] : 0.f, bv, cv > 0.f ? 1.f / cv : 0.f);
  }
}

// One warp per row: grad = logit_scale * (sum of the split partials), then the gradient of
// x / max(|x|, eps) when normalising, then the cast to the input dtype.
template <typename T>
__global__ void grad_finish_kernel(const float* __restrict__ part, int splits, const T* __restrict__ x,
                                   bool normalize, const float* __restrict__ logit_scale, int64_t N, int64_t D,
                                   T* __restrict__ out) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  const int lane = threadIdx.x & 31;
  if (row >= N) return;
  const float scale = *logit_scale;
  const int64_t split_stride = N * D;
  const float* pr = part + row * D;
  const T* xr = x + row * D;
  auto grad_at = [&](int64_t d) {
    float g = 0.f;
    for (int z = 0; z < splits; ++z) g += pr[z * split_stride + d];
    return scale * g;
  };
  float r = 1.f, proj = 0.f;
  if (normalize) {
    const float n = sqrtf(row_sumsq(xr, D));
    r = inv_norm(n);
    if (n >= static_cast<float>(kNormEps)) {  // (g - (g . xn) xn) / n with xn = x r
      float gx = 0.f;
      for (int64_t d = lane; d < D; d += 32) gx = fmaf(grad_at(d), to_float(xr[d]), gx);
      proj = warp_sum(gx) * r * r;
    }
  }
  for (int64_t d = lane; d < D; d += 32) out[row * D + d] = from_float<T>((grad_at(d) - proj * to_float(xr[d])) * r);
}

// Fixed-order sum of the per-block scale-gradient partials (one block).
__global__ void sum_partials_kernel(const double* __restrict__ part, int64_t n, float* __restrict__ out) {
  __shared__ double red[kThreads];
  double s = 0.0;
  for (int64_t i = threadIdx.x; i < n; i += kThreads) s += part[i];
  red[threadIdx.x] = s;
  __syncthreads();
  for (int w = kThreads / 2; w > 0; w >>= 1) {
    if (threadIdx.x < w) red[threadIdx.x] += red[threadIdx.x + w];
    __syncthreads();
  }
  if (threadIdx.x == 0) *out = static_cast<float>(red[0]);
}

// ---------------------------------------------------------------------------------------------
// Host side.

int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

dim3 grid_of(int64_t x, int64_t y = 1, int64_t z = 1) {
  check_grid(x, y, z);
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

template <typename T>
struct Tag {
  using type = T;
};
template <typename F>
void dispatch_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(Tag<float>{}); break;
    case at::kHalf: f(Tag<__half>{}); break;
    case at::kBFloat16: f(Tag<__nv_bfloat16>{}); break;
    default: fail_unsupported_dtype("fastcl", t);
  }
}

// Contiguous operands (kept alive here while the kernels run) and the packed per-row values.
struct Inputs {
  at::Tensor q, k, row_labels, col_labels, bias, owner, scale, grad, lse, num_pos, row_info, col_info;
  int64_t M, L, D, row_offset;
  bool exclude_self;

  Problem problem() const {
    // clang-format off
    return {ptr<int64_t>(row_labels), ptr<int64_t>(col_labels), ptr<int64_t>(owner), ptr<float4>(row_info),
            ptr<float4>(col_info), ptr<float>(scale), M, L, D, row_offset, exclude_self, bias.defined()};
    // clang-format on
  }
  // 16-byte copies need every row of both operands to start on a 16-byte boundary.
  bool vectorisable() const {
    const auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
    return D > 0 && (D * q.element_size()) % 16 == 0 && aligned(q) && aligned(k);
  }
};

Inputs prepare(const ContrastiveSizes& sz, const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
               const at::Tensor& col_labels, const c10::optional<at::Tensor>& col_bias,
               const c10::optional<at::Tensor>& col_bias_owner, const at::Tensor& logit_scale, int64_t row_offset,
               bool exclude_self) {
  if (q.scalar_type() == at::kDouble) fail_unsupported_dtype("fastcl (float64 runs on the CPU only)", at::kDouble);
  const auto& prop = dev::properties();
  check_cuda_capability(prop.major, prop.minor);
  Inputs in;
  in.q = q.contiguous();
  in.k = k.is_same(q) ? in.q : k.contiguous();
  in.row_labels = row_labels.contiguous();
  in.col_labels = col_labels.contiguous();
  if (col_bias.has_value()) in.bias = col_bias->contiguous();
  if (col_bias_owner.has_value()) in.owner = col_bias_owner->contiguous();
  in.scale = logit_scale.contiguous();
  std::tie(in.M, in.L, in.D, in.row_offset, in.exclude_self) = std::tie(sz.M, sz.L, sz.D, row_offset, exclude_self);
  return in;
}

// fp32 rows are normalised once in a pre-pass, as the CPU does, and the kernels run unnormalised.
// Folding 1/|q_i| 1/|k_j| into every logit instead keeps fp16/bf16 products exact (normalised
// copies in those types would lose far more), but in fp32 it made the gradient miss plain
// PyTorch's accuracy on single elements at temperature 0.01 (2-4x the CPU's worst relative error,
// in the simulator and on the H200).
struct Prenormalised {
  Normalised q, k;
  bool active = false;
};
Prenormalised prenormalise(Inputs& in, bool normalize) {
  Prenormalised pre;
  if (!normalize || in.q.scalar_type() != at::kFloat) return pre;
  const bool same = in.k.is_same(in.q);
  pre.q = normalise_rows(in.q, at::kFloat, true);
  pre.k = same ? pre.q : normalise_rows(in.k, at::kFloat, true);
  in.q = pre.q.rows;
  in.k = same ? in.q : pre.k.rows;
  pre.active = true;
  return pre;
}

template <typename T>
at::Tensor side_info(const at::Tensor& x, bool normalize, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& c, dev::Stream stream) {
  const int64_t n = x.size(0);
  at::Tensor info = at::empty({n, 4}, x.options().dtype(at::kFloat));
  if (n > 0) {
    dev::launch<side_info_kernel<T>>(grid_of(ceil_div(n, kWarps)), kThreads, 0, stream, ptr<T>(x), n, x.size(1),
                                     normalize, ptr<float>(a), ptr<float>(b), ptr<float>(c),
                                     reinterpret_cast<float4*>(info.data_ptr<float>()));
  }
  return info;
}

// row_info = {1/|q|, lse, grad (0 without positives), 1/num_pos} (the last three 0 in the forward),
// col_info = {1/|k|, bias}.
template <typename T>
void pack_side_info(Inputs& in, bool normalize, dev::Stream stream) {
  in.row_info = side_info<T>(in.q, normalize, in.lse, in.grad, in.num_pos, stream);
  in.col_info = side_info<T>(in.k, normalize, in.bias, at::Tensor(), at::Tensor(), stream);
}

// Splits the stream tiles so that small problems still put about four blocks on every SM.
struct Split {
  int64_t count, per;
};
Split split_stream(int64_t blocks, int64_t tiles) {
  if (tiles == 0) return {1, 1};
  const int64_t sms = dev::properties().multiProcessorCount;
  const int64_t want = std::min({std::max<int64_t>(1, ceil_div(4 * sms, blocks)), tiles, int64_t(65535)});
  const int64_t per = ceil_div(tiles, want);
  return {ceil_div(tiles, per), per};
}

template <typename T>
void forward_impl(Inputs& in, bool normalize, at::Tensor& loss, at::Tensor& lse, at::Tensor& num_pos) {
  dev::Stream stream = dev::current_stream();
  pack_side_info<T>(in, normalize, stream);
  const Problem p = in.problem();
  const int64_t blocks = ceil_div(in.M, kTile);
  const Split split = split_stream(blocks, ceil_div(in.L, kTile));
  at::Tensor partial = at::empty({split.count * in.M * 4}, in.q.options().dtype(at::kFloat));
  constexpr size_t smem = SmemLayout<T, false>::kBytes;
  dev::allow_dynamic_smem<forward_kernel<T>>("fastcl", smem);
  dev::launch<forward_kernel<T>>(grid_of(blocks, split.count), kThreads, smem, stream, ptr<T>(in.q), ptr<T>(in.k), p,
                                 static_cast<int>(split.per), in.vectorisable(),
                                 reinterpret_cast<float4*>(partial.data_ptr<float>()));
  dev::launch<forward_combine_kernel>(grid_of(ceil_div(in.M, kThreads)), kThreads, 0, stream,
                                      reinterpret_cast<const float4*>(partial.data_ptr<float>()),
                                      static_cast<int>(split.count), in.M, loss.data_ptr<float>(),
                                      lse.data_ptr<float>(), num_pos.data_ptr<float>());
}

// grad_kernel for one side, then the finishing pass into `out`; the row side also fills scale_part.
template <typename T, bool kRowOwner>
void grad_side(const Inputs& in, const Problem& p, bool normalize, const at::Tensor& own_x, const at::Tensor& str_x,
               at::Tensor& out, at::Tensor* scale_part, dev::Stream stream) {
  const int64_t n_own = own_x.size(0), n_str = str_x.size(0);
  const int64_t blocks = ceil_div(n_own, kTile), slices = ceil_div(in.D, Math<T>::kDC);
  const Split split = split_stream(blocks * slices, ceil_div(n_str, kTile));
  at::Tensor part = at::empty({split.count, n_own, in.D}, own_x.options().dtype(at::kFloat));
  if (kRowOwner) *scale_part = at::empty({blocks * split.count}, own_x.options().dtype(at::kDouble));
  constexpr size_t smem = SmemLayout<T, true>::kBytes;
  dev::allow_dynamic_smem<grad_kernel<T, kRowOwner>>("fastcl", smem);
  dev::launch<grad_kernel<T, kRowOwner>>(grid_of(blocks, slices, split.count), kThreads, smem, stream, ptr<T>(own_x),
                                         ptr<T>(str_x), p, static_cast<int>(split.per), in.vectorisable(),
                                         part.data_ptr<float>(),
                                         kRowOwner ? scale_part->data_ptr<double>() : nullptr);
  dev::launch<grad_finish_kernel<T>>(grid_of(ceil_div(n_own, kWarps)), kThreads, 0, stream, part.data_ptr<float>(),
                                     static_cast<int>(split.count), ptr<T>(own_x), normalize, p.logit_scale, n_own,
                                     in.D, static_cast<T*>(out.data_ptr()));
}

template <typename T>
void backward_impl(Inputs& in, bool normalize, at::Tensor& grad_q, at::Tensor& grad_k, at::Tensor& grad_scale) {
  dev::Stream stream = dev::current_stream();
  pack_side_info<T>(in, normalize, stream);
  const Problem p = in.problem();
  at::Tensor scale_part;
  grad_side<T, true>(in, p, normalize, in.q, in.k, grad_q, &scale_part, stream);
  grad_side<T, false>(in, p, normalize, in.k, in.q, grad_k, nullptr, stream);
  dev::launch<sum_partials_kernel>(1, kThreads, 0, stream, scale_part.data_ptr<double>(), scale_part.numel(),
                                   grad_scale.data_ptr<float>());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_forward_cuda(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels, const at::Tensor& col_labels,
    const c10::optional<at::Tensor>& col_bias, const c10::optional<at::Tensor>& col_bias_owner,
    const at::Tensor& logit_scale, int64_t row_offset, bool exclude_self, bool normalize) {
  const ContrastiveSizes sz = check_contrastive_args(q, k, row_labels, col_labels, col_bias, col_bias_owner,
                                                     logit_scale, row_offset, exclude_self);
  dev::DeviceGuard guard(q.device());
  Inputs in = prepare(sz, q, k, row_labels, col_labels, col_bias, col_bias_owner, logit_scale, row_offset,
                      exclude_self);
  const auto opts = q.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({sz.M}, opts), lse = at::empty({sz.M}, opts), num_pos = at::empty({sz.M}, opts);
  if (sz.M == 0) return {loss, lse, num_pos};
  if (sz.L == 0) {  // no columns: every row has an empty sum and no positives
    loss.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    num_pos.zero_();
    return {loss, lse, num_pos};
  }
  const Prenormalised pre = prenormalise(in, normalize);
  dispatch_type(q.scalar_type(), [&](auto tag) {
    forward_impl<typename decltype(tag)::type>(in, normalize && !pre.active, loss, lse, num_pos);
  });
  return {loss, lse, num_pos};
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
    const at::Tensor& col_labels, const c10::optional<at::Tensor>& col_bias,
    const c10::optional<at::Tensor>& col_bias_owner, const at::Tensor& logit_scale, const at::Tensor& lse,
    const at::Tensor& num_pos, int64_t row_offset, bool exclude_self, bool normalize) {
  const ContrastiveSizes sz = check_contrastive_args(q, k, row_labels, col_labels, col_bias, col_bias_owner,
                                                     logit_scale, row_offset, exclude_self);
  check_backward_args(sz, grad_loss, lse, num_pos, q);
  dev::DeviceGuard guard(q.device());
  Inputs in = prepare(sz, q, k, row_labels, col_labels, col_bias, col_bias_owner, logit_scale, row_offset,
                      exclude_self);
  in.grad = grad_loss.contiguous();
  in.lse = lse.contiguous();
  in.num_pos = num_pos.contiguous();
  at::Tensor grad_q = at::empty({sz.M, sz.D}, in.q.options());
  at::Tensor grad_k = at::empty({sz.L, sz.D}, in.k.options());
  at::Tensor grad_scale = at::empty({}, logit_scale.options());
  if (sz.M == 0 || sz.L == 0 || sz.D == 0) {  // no pair contributes, or there is nothing to differentiate
    grad_q.zero_();
    grad_k.zero_();
    grad_scale.zero_();
    return {grad_q, grad_k, grad_scale};
  }
  const Prenormalised pre = prenormalise(in, normalize);
  dispatch_type(q.scalar_type(), [&](auto tag) {
    backward_impl<typename decltype(tag)::type>(in, normalize && !pre.active, grad_q, grad_k, grad_scale);
  });
  if (pre.active) {
    grad_q = normalise_backward(grad_q, pre.q, true);
    grad_k = normalise_backward(grad_k, pre.k, true);
  }
  return {grad_q, grad_k, grad_scale};
}

}  // namespace

FASTCL_CUDA_KERNELS(m) {
  m.impl("contrastive_forward", &contrastive_forward_cuda);
  m.impl("contrastive_backward", &contrastive_backward_cuda);
}

}  // namespace fastcl::gpu

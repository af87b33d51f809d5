// Device-side pieces the forward and backward contrastive kernels share: the problem they read,
// the per-row values staged beside each operand tile, the one place a logit is formed, and the
// layout of their dynamic shared memory.
#pragma once
#include <cstddef>
#include <cstdint>

#include "common/contrastive_math.h"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

constexpr int kWarps = kThreads / 32;
// The mma kernels form base-2 logits for ex2.approx and turn their sums back to natural logs.
constexpr float kLog2e = 1.4426950408889634f, kLn2 = 0.6931471805599453f;

// Everything the per-pair rules read.
struct Problem {
  const int64_t* row_labels;
  const int64_t* col_labels;
  const int64_t* col_bias_owner;  // null: a bias applies to every row
  const int64_t* row_ids;         // null, or sample ids of rows and columns (duplicate masking)
  const int64_t* col_ids;
  const float4* row_info;         // {1 / |q_i| (1 without normalize), lse_i, grad_i, 1 / num_pos_i}
  const float4* col_info;         // {1 / |k_j|, bias_j, 0, 0}
  const float* logit_scale;
  int64_t M, L, D, row_offset;
  int64_t grad_cols;  // backward: the columns [0, grad_cols) that own a gradient
  float hardness;     // with hardness_mode != 0: a constant hardness * dot on selected pairs
  int hardness_mode;
  bool exclude_self, has_bias, has_ids;
};

// The per-row values of one 64-row tile of either side, in shared memory.
struct MetaSlot {
  int64_t label[kTile];
  int64_t owner[kTile];  // columns with col_bias_owner only
  int64_t id[kTile];     // with sample ids only
  float4 info[kTile];
};

// Starts the asynchronous copy of rows [base, base + 64) of one side into slot (zero past n).
__device__ __forceinline__ void load_slot(MetaSlot* slot, const int64_t* labels, const int64_t* owners,
                                          const int64_t* ids, const float4* info, int64_t base, int64_t n) {
  const int t = threadIdx.x & (kTile - 1);
  const int64_t idx = base + t;
  const bool ok = idx < n;
  if (threadIdx.x < kTile) {
    cp_async8(&slot->label[t], ok ? labels + idx : labels, ok);
    cp_async16(&slot->info[t], ok ? info + idx : info, ok);
  } else if (threadIdx.x < 2 * kTile) {
    if (owners != nullptr) cp_async8(&slot->owner[t], ok ? owners + idx : owners, ok);
  } else if (threadIdx.x < 3 * kTile) {
    if (ids != nullptr) cp_async8(&slot->id[t], ok ? ids + idx : ids, ok);
  }
}
__device__ __forceinline__ void load_rows(const Problem& p, MetaSlot* slot, int64_t base) {
  load_slot(slot, p.row_labels, nullptr, p.row_ids, p.row_info, base, p.M);
}
__device__ __forceinline__ void load_cols(const Problem& p, MetaSlot* slot, int64_t base) {
  load_slot(slot, p.col_labels, p.col_bias_owner, p.col_ids, p.col_info, base, p.L);
}

struct RowView {
  int64_t label, id;
  float4 info;
};
struct ColView {
  int64_t label, id;
  float4 info;
  const int64_t* owners;  // the slot's owner array, or null without col_bias_owner
  int t;
};
// Without sample ids the slot's id array was never written: both views read -1 instead.
__device__ __forceinline__ RowView row_view(const Problem& p, const MetaSlot& s, int t) {
  return {s.label[t], p.has_ids ? s.id[t] : -1, s.info[t]};
}
__device__ __forceinline__ ColView col_view(const Problem& p, const MetaSlot& s, int t) {
  return {s.label[t], p.has_ids ? s.id[t] : -1, s.info[t], p.col_bias_owner != nullptr ? s.owner : nullptr, t};
}

// Whether the tile of q rows [q0, q0 + qn) and k columns [k0, k0 + kn) can hold an excluded pair
// (`partial`: its streamed side runs past the end; or the diagonal) or a positive (the {min, max}
// label ranges of its two sides overlap; column ranges leave negative labels out). The mma kernels
// run their masks only on such tiles.
// With sample ids (ids_a, ids_b: the two sides' id ranges, id_ranges in contrastive_host.cuh), also
// a tile whose id ranges overlap, or whose columns hold a POSITIVE_ONLY id (its range is the whole
// line, which overlaps every range, an empty one too); with an owned column bias, a tile whose
// rows' label range meets its columns' owner range (where the bias may apply). Kernels without the
// feature pass null, and its check compiles away.
__device__ __forceinline__ bool tile_may_mask(const Problem& p, int64_t q0, int64_t qn, int64_t k0, int64_t kn,
                                              bool partial, const int64_t* range_a, const int64_t* range_b,
                                              const int64_t* ids_a = nullptr, const int64_t* ids_b = nullptr,
                                              const int64_t* row_labels = nullptr, const int64_t* owners = nullptr) {
  if (partial) return true;
  if (p.exclude_self && q0 + p.row_offset < k0 + kn && k0 < q0 + p.row_offset + qn) return true;
  if (ids_a != nullptr && ids_a[0] <= ids_b[1] && ids_b[0] <= ids_a[1]) return true;
  if (row_labels != nullptr && row_labels[0] <= owners[1] && owners[0] <= row_labels[1]) return true;
  return range_a[0] <= range_b[1] && range_b[0] <= range_a[1];
}

struct Pair {
  float s, dot;
  bool valid, pos;
};

// The one place a logit is formed, so forward and backward round it identically.
__device__ __forceinline__ Pair pair_at(const Problem& p, float scale, float raw, int64_t i, const RowView& r,
                                        int64_t j, const ColView& c) {
  Pair out;
  out.valid = i < p.M && j < p.L && !math::is_self(i, j, p.row_offset, p.exclude_self);
  out.dot = __fmul_rn(__fmul_rn(raw, r.info.x), c.info.x);
  const bool biased = p.has_bias && math::bias_applies(c.owners, c.t, r.label);
  const bool positive = math::is_positive(r.label, c.label);
  out.s = fmaf(scale, out.dot, biased ? c.info.y : 0.f);
  if (p.hardness_mode != 0 && math::penalty_applies(p.hardness_mode, c.owners, c.t, r.label, positive)) {
    out.s = fmaf(p.hardness, out.dot, out.s);
  }
  out.pos = out.valid && positive;
  if (p.has_ids && !out.pos && math::is_masked_negative(r.id, c.id)) out.valid = false;
  return out;
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

__device__ __forceinline__ float inv_norm(float n) { return 1.f / fmaxf(n, static_cast<float>(math::kNormEps)); }

// Sum of squares of a row, reduced over the warp. Shared by the side-info pre-pass and
// grad_finish_kernel so that both derive bitwise the same norm.
template <typename T>
__device__ __forceinline__ float row_sumsq(const T* __restrict__ xr, int64_t D) {
  float ss = 0.f;
  for (int64_t d = threadIdx.x & 31; d < D; d += 32) {
    const float v = to_float(xr[d]);
    ss = fmaf(v, v, ss);
  }
  return warp_sum(ss);
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
  // G in the input type for the tensor cores: a high and a low part (see GradBlock::stage_g).
  static constexpr size_t kGBytes = kBackward && M::kStageG ? 2 * size_t(kTile) * M::kGLd * sizeof(typename M::G) : 0;
  static constexpr size_t kMeta = (kG + kGBytes + 127) / 128 * 128;
  static constexpr size_t kBytes = kMeta + 3 * sizeof(MetaSlot);  // 2 stream slots by tile parity + owner
  static_assert(kStage % 128 == 0 && kG % 128 == 0, "regions must stay aligned for wmma and cp.async");
};

}  // namespace fastcl::gpu

// What the mma backwards (contrastive_backward_mma.cu for D <= 256, contrastive_backward_wide.cu
// for 256 < D <= 768) share: the two sides of the problem as a kernel sees them, the per-tile mask
// decision, and G of one pair, the value their second product multiplies by the stream rows:
// G_ij = grad_i (exp(s_ij - lse_i) - [positive] / num_pos_i), plus for q = k and for CLIP's column
// direction the same logit's transposed term (Transposed, contrastive_host.cuh).
#pragma once
#include <cstdint>

#include "common/contrastive_math.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/device_api.cuh"
#include "cuda/mma.cuh"
#include "cuda/tile_math.cuh"
#include "cuda/wide_tile.cuh"

namespace fastcl::gpu {

// One side of the problem as the kernel sees it: its rows, per-row info and labels.
template <typename T>
struct Side {
  const T* x;
  const float4* info;  // q rows: {1/|q|, lse, grad (0: no positives), 1/num_pos}; k rows: {1/|k|, ...}
  const int64_t* labels;
  int64_t n;
  const int64_t* range;  // {min, max} label per tile of this side's tiling (columns: labels >= 0)
  const int64_t* ids;    // with sample ids: this side's ids and their ranges (tile_ranges, RangeOf::kIds)
  const int64_t* id_range;
  const int64_t* owner_range;  // the column side with an owned bias: col_bias_owner's ranges
};

// tile_may_mask (contrastive_device.cuh) of stream tile `tile` (kStrRows rows from s0) against the
// block's kOwnRows owner rows from own0, in q/k roles: owners are q rows or k columns. Each side's
// ranges were taken over its own tiling (kOwnRows for the owners, kStrRows for the stream); `ids`,
// `bias`: whether the sample-id and bias-owner ranges take part.
template <typename T, int kOwnRows, int kStrRows, bool kRowOwner>
__device__ __forceinline__ bool tile_masked(const Side<T>& own, const Side<T>& str, const Problem& p, int64_t own0,
                                            int64_t s0, int tile, bool ids, bool bias) {
  const int64_t q0 = kRowOwner ? own0 : s0, k0 = kRowOwner ? s0 : own0;
  const int64_t qn = kRowOwner ? kOwnRows : kStrRows, kn = kRowOwner ? kStrRows : kOwnRows;
  const int64_t block = own0 / kOwnRows;
  const int64_t *own_at = own.range + 2 * block, *str_at = str.range + 2 * tile;
  const int64_t* owners = kRowOwner ? str.owner_range + 2 * tile : own.owner_range + 2 * block;
  return tile_may_mask(p, q0, qn, k0, kn, s0 + kStrRows > str.n, own_at, str_at,
                       ids ? own.id_range + 2 * block : nullptr, ids ? str.id_range + 2 * tile : nullptr,
                       bias ? (kRowOwner ? own_at : str_at) : nullptr, bias ? owners : nullptr);
}

// Thread t's share of the per-row values of stream rows [s0, s0 + kRows) into a stage: info (t < kRows),
// labels (kRows <= t < 2 kRows) and with `ids` the sample ids (2 kRows <= t < 3 kRows); rows past
// the end are zero-filled.
template <typename T, int kRows>
__device__ __forceinline__ void copy_stream_values(float4* info, int64_t* label, int64_t* id, const Side<T>& str,
                                                   int64_t s0, bool ids) {
  const int t = threadIdx.x;
  if (t < kRows) {
    const bool ok = s0 + t < str.n;
    cp_async16(&info[t], ok ? str.info + s0 + t : str.info, ok);
  } else if (t < 2 * kRows) {
    const int c = t - kRows;
    const bool ok = s0 + c < str.n;
    cp_async8(&label[c], ok ? str.labels + s0 + c : str.labels, ok);
  } else if (ids && t < 3 * kRows) {
    const int c = t - 2 * kRows;
    const bool ok = s0 + c < str.n;
    cp_async8(&id[c], ok ? str.ids + s0 + c : str.ids, ok);
  }
}

// An owner row of a thread: index, label, 1/norm, and for q rows lse (base 2; +inf where grad is 0,
// so that P = 0 there and no exp of a foreign lse can overflow into 0 * inf), grad, 1/num_pos.
struct OwnRow {
  int64_t i, label;
  float rn, lse2, grad, inv;
};

template <typename T>
__device__ __forceinline__ OwnRow own_row(const Side<T>& own, int64_t i) {
  const bool in = i < own.n;
  const float4 v = in ? own.info[i] : make_float4(0.f, 0.f, 0.f, 0.f);
  return OwnRow{i, in ? own.labels[i] : 0, v.x, v.z == 0.f ? INFINITY : v.y * kLog2e, v.z, v.w};
}

// G of the pair (owner row o, stream row with info si) on a tile that needs no mask, from the raw
// dot product: t = raw / |stream|, P = exp2(t * ow2 - lse2) with ow2 = |own|^-1 scale log2(e). A row
// owner adds grad P t to row_dscale (its scale gradient, times |own|^-1 once a tile).
template <bool kRowOwner, bool kBoth>
__device__ __forceinline__ float plain_pair_grad(const OwnRow& o, float ow2, const float4& si, float raw,
                                                 float& row_dscale) {
  const float t = raw * si.x;
  const float grad = kRowOwner ? o.grad : si.z;
  const float lse2 = kRowOwner ? o.lse2 : (si.z == 0.f ? INFINITY : si.y * kLog2e);
  float gp = grad * ex2_approx(fmaf(t, ow2, -lse2));
  if (kRowOwner) row_dscale = fmaf(gp, t, row_dscale);
  if (kBoth) gp += si.z * ex2_approx(fmaf(t, ow2, si.z == 0.f ? -INFINITY : -si.y * kLog2e));  // + G_ji
  return gp;
}

// The same on a tile that may need masks: stream row sr = s0 + c (label slabels[c], id sids[c]; oid the owner's id)
// may be past the end, the pair may be excluded (self, a duplicate's ids, POSITIVE_ONLY one-sided
// for G_ji), a positive subtracts 1/num_pos, and an owned bias adds to its owner's logit (read from
// global memory: these tiles are few). kIds, kBias: the problem has them. A row owner adds G dot to
// dscale. (The narrow kernel spells this out in its masked branch: as a call, nvcc 13.0 gave one of
// its instantiations a spill.)
template <bool kRowOwner, bool kBoth, bool kIds, bool kBias>
__device__ __forceinline__ float masked_pair_grad(const Problem& p, const OwnRow& o, int64_t oid, int64_t own_n,
                                                  int64_t s0, int c, int64_t str_n, const float4& si,
                                                  const int64_t* slabels, const int64_t* sids, float raw, float c2,
                                                  float& dscale) {
  const int64_t sr = s0 + c, i = kRowOwner ? o.i : sr, j = kRowOwner ? sr : o.i;
  const bool in_pair = sr < str_n && o.i < own_n && !math::is_self(i, j, p.row_offset, p.exclude_self);
  const bool pos = math::is_positive(kRowOwner ? o.label : slabels[c], kRowOwner ? slabels[c] : o.label);
  const int64_t row_id = kIds ? (kRowOwner ? oid : sids[c]) : -1;
  const int64_t col_id = kIds ? (kRowOwner ? sids[c] : oid) : -1;
  const bool valid = in_pair && !(kIds && !pos && math::is_masked_negative(row_id, col_id));
  const bool valid_t = in_pair && !(kIds && !pos && math::is_masked_negative(col_id, row_id));
  const float dot = raw * o.rn * si.x;
  const float grad = kRowOwner ? o.grad : si.z;
  const float lse2 = kRowOwner ? o.lse2 : si.y * kLog2e;
  const float inv = kRowOwner ? o.inv : si.w;
  float bias2 = 0.f;
  if (kBias && in_pair) {
    const int64_t col = kRowOwner ? sr : o.i;
    if (p.col_bias_owner[col] == (kRowOwner ? o.label : slabels[c])) bias2 = p.col_info[col].y * kLog2e;
  }
  float gp = 0.f;
  if (valid && grad != 0.f) gp = grad * (ex2_approx(fmaf(dot, c2, bias2 - lse2)) - (pos ? inv : 0.f));
  if (kRowOwner) dscale = fmaf(gp, dot, dscale);
  if (kBoth && valid_t && si.z != 0.f) {  // + G_ji (q = k, one label vector: the pair rules are symmetric)
    gp += si.z * (ex2_approx(fmaf(dot, c2, -si.y * kLog2e)) - (pos ? si.w : 0.f));
  }
  return gp;
}

// The wide backward (contrastive_backward_wide.cu) for one side: owner blocks of kRowsW rows and
// stream tiles of kColsW (wide_tile.cuh), grid (blocks, splits); part and scale_part as
// grad_mma_partials writes them.
template <typename T, bool kRowOwner, bool kBoth>
void launch_grad_wide(int64_t D, const Side<T>& own, const Side<T>& str, const Problem& p, const float* g_scale,
                      int64_t per, dim3 grid, float* part, double* scale_part, dev::Stream stream);
// Its dynamic shared memory at D, to check against the device's limit.
size_t grad_wide_smem(int64_t D);

}  // namespace fastcl::gpu

// What the sigmoid loss's kernels (siglip_mma.cu for D <= 256, siglip_wide.cu past it) share: the
// pair loss and its gradient on the MUFU, the per-tile mask decision, the per-pair rule on the tiles
// that need it.
#pragma once
#include <cstdint>

#include "common/contrastive_math.h"
#include "common/sigmoid_math.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/mma.cuh"
#include "cuda/siglip_host.cuh"

namespace fastcl::gpu {

// softplus(x) = max(x, 0) + log1p(exp(-|x|)) with the exp on the MUFU (ex2.approx) and log1p(e), e in
// [0, 1], as e q(e): q of degree 8 fitted to a relative error of 3e-8 (2.2e-7 evaluated in fp32, over
// [2^-126, 1]). No exp sees a positive argument, as in common/sigmoid_math.h, at a third of the
// instructions of log1pf(expf()).
__device__ __forceinline__ float fast_softplus(float x) {
  const float e = ex2_approx(-fabsf(x) * kLog2e);
  float q = 5.232664756e-03f;
  q = fmaf(q, e, -2.950507775e-02f);
  q = fmaf(q, e, 7.822560519e-02f);
  q = fmaf(q, e, -1.366320848e-01f);
  q = fmaf(q, e, 1.910598427e-01f);
  q = fmaf(q, e, -2.484297454e-01f);
  q = fmaf(q, e, 3.331909478e-01f);
  q = fmaf(q, e, -4.999949336e-01f);
  q = fmaf(q, e, 9.999999404e-01f);
  return fmaxf(x, 0.f) + e * q;
}

// d loss / dz of a pair (math::sigmoid_pair_grad): sigmoid(z) for a negative, -sigmoid(-z) for a
// positive, both from e = exp(-|z|) (MUFU) and r = 1 / (1 + e): the side whose exp is small is e r.
__device__ __forceinline__ float fast_pair_grad(float z, bool positive) {
  const float e = ex2_approx(-fabsf(z) * kLog2e);
  const float r = __fdividef(1.f, 1.f + e);
  const float v = ((z >= 0.f) == positive) ? e * r : r;
  return positive ? -v : v;
}

// Whether the tile of owner rows [o0, o0 + kOwnRows) and stream rows [s0, s0 + kStrRows) may hold a
// positive or a pair past the end: the shifted diagonal j = i + offset meets it, the id ranges (taken
// at those tilings) overlap, or the tile is partial. Uniform over the block.
template <int kOwnRows, int kStrRows, bool kRowOwner, bool kIds>
__device__ __forceinline__ bool siglip_tile_masked(const SiglipProblem& p, const SiglipSide& own,
                                                   const SiglipSide& str, int64_t o0, int64_t s0) {
  if (o0 + kOwnRows > own.n || s0 + kStrRows > str.n) return true;
  const int64_t i0 = kRowOwner ? o0 : s0, j0 = kRowOwner ? s0 : o0;
  const int64_t in = kRowOwner ? kOwnRows : kStrRows, jn = kRowOwner ? kStrRows : kOwnRows;
  if (i0 + p.offset < j0 + jn && j0 < i0 + in + p.offset) return true;
  if (kIds) {
    const int64_t* a = own.id_range + 2 * (o0 / kOwnRows);
    const int64_t* b = str.id_range + 2 * (s0 / kStrRows);
    return max(a[0], b[0]) <= min(a[1], b[1]);
  }
  return false;
}

// The pair (owner h's row, stream column c of the tile) on a masked tile: whether it exists and
// whether it is positive.
template <bool kRowOwner, bool kIds>
__device__ __forceinline__ bool siglip_pair(const SiglipProblem& p, const SiglipSide& own, const SiglipSide& str,
                                            int64_t oi, int64_t sj, bool* positive) {
  const int64_t i = kRowOwner ? oi : sj, j = kRowOwner ? sj : oi;
  const int64_t* row_ids = kIds ? (kRowOwner ? own.ids : str.ids) : nullptr;
  const int64_t* col_ids = kIds ? (kRowOwner ? str.ids : own.ids) : nullptr;
  const bool in = oi < own.n && sj < str.n;
  *positive = in && math::is_siglip_positive(i, j, p.offset, row_ids, col_ids);
  return in;
}


}  // namespace fastcl::gpu

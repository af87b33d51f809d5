// Host-side interface of the sigmoid-loss kernels (siglip_mma.cu), which siglip.cu calls: one side
// of the problem as the kernels read it, the scalars, and the entry points.
#pragma once
#include <ATen/ATen.h>

#include <cstddef>
#include <cstdint>

#include "cuda/device_api.cuh"

namespace fastcl::gpu {

// One side of the loss (rows of a, or columns b): fp16/bf16 rows (n, D) with D a multiple of 8 and
// 16-byte aligned, their inverse norms (fp32, padded with zeros to whole 64-row tiles; 1 without
// normalize, 0 for an all-zero row), and with sample ids the ids and their per-tile {min, max}
// ranges (tile_ranges, RangeOf::kIds) at the tiling the kernel uses for this side (128 rows a block
// for the side a block owns, 64 for the streamed side).
struct SiglipSide {
  const void* x;
  const float* inv;
  const int64_t* ids;  // null: no sample ids
  const int64_t* id_range;
  int64_t n;
};

// The device scalars (fp32, 0-dim) and sizes every kernel reads; g = grad_loss / M and g_scale (the
// power of two fp16 stages G' at, 1 for bf16) for the backward only.
struct SiglipProblem {
  const float* logit_scale;
  const float* logit_bias;
  const float* g;
  const float* g_scale;
  int64_t D, offset;
};

// The widest D the kernels take (D <= 256: siglip_mma.cu; past it the wide kernels of
// siglip_wide.cu), and the dynamic shared memory they need for D (0: too wide).
constexpr int64_t kSiglipNarrowMaxD = 256, kSiglipMaxD = 768;
size_t siglip_mma_smem(int64_t D);
size_t siglip_wide_smem(int64_t D);
// The owner and stream tilings at D (the sides' id ranges are taken at them).
constexpr int64_t siglip_own_rows(int64_t D) { return D > kSiglipNarrowMaxD ? 32 : 128; }
constexpr int64_t siglip_stream_rows(int64_t D) { return D > kSiglipNarrowMaxD ? 32 : 64; }

// out[v] = mul * the sum of x[v * n, (v + 1) * n) in index order, for v < count (count <= 32).
void siglip_sum(const double* x, int64_t n, int count, float mul, float* out, dev::Stream stream);

// The forward and backward below for 256 < D <= 768 (siglip_wide.cu), which those call past
// kSiglipNarrowMaxD.
template <typename T>
void siglip_forward_wide(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p, at::Tensor& out,
                         dev::Stream stream);
template <typename T, bool kRowOwner>
at::Tensor siglip_grad_wide(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p,
                            at::Tensor* scalars, dev::Stream stream);

// out (0-dim fp32) = (1 / own.n) sum of the pair losses; own: a's rows, str: b's.
template <typename T>
void siglip_forward_mma(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p, at::Tensor& out,
                        dev::Stream stream);

// The gradient of the owner side's normalised rows over the scale, (own.n, D) fp32: sum over the stream
// rows j of G_ij / |x_j| x_j (kRowOwner: own = a, else own = b and G transposed). For the row
// owners also scalars[0] = sum G_ij * <a_i, b_j> / |a_i| / |b_j| and scalars[1] = sum G_ij (fp32,
// (2,)); `scalars` gives the options of the result either way.
template <typename T, bool kRowOwner>
at::Tensor siglip_grad_mma(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p,
                           at::Tensor* scalars, dev::Stream stream);

}  // namespace fastcl::gpu

// The fp16/bf16 kernels of the sigmoid loss (SigLIP; semantics: csrc/README.md, siglip) in the
// FlashAttention-2 shape of contrastive_forward_mma.cu / contrastive_backward_mma.cu, D <= 256 with
// 16-byte rows (siglip.cu pads others). Sample ids are a compile-time feature (kIds), so the plain
// kernel carries no per-logit id code.
//
// A block owns 128 rows of one side (8 warps x 16, held in registers through ldmatrix) and streams
// 64-row tiles of the other through a two-stage cp.async pipeline into XOR-swizzled shared memory;
// mma.sync m16n8k16 forms the dots in fp32 fragments and z = scale <a_i, b_j> / |a_i| / |b_j| + bias
// is formed on them (inverse norms 1 without normalize, 0 for an all-zero row, whose dots are 0).
// Every logit's loss and gradient depend on that logit alone, so a tile needs nothing of the others:
//   siglip_forward_kernel  sum of softplus(-y z) per block, a double per (block, split);
//   siglip_grad_kernel     G = g (sigmoid(z) - [positive]) on the fragments, G' = G / |stream row|
//                          re-packed as the A operand of G' . stream tile (read transposed through
//                          ldmatrix.trans): the owner side's gradient of the normalised rows over
//                          scale; the row owners also sum G * (normalised dot) and G (the scale and
//                          bias gradients) per block.
// Softplus and sigmoid take their exp from the MUFU (ex2.approx) and never see a positive argument
// (fast_softplus, fast_pair_grad). The masked tiles of the backward also run the low-order product of
// G' (warp_grad_product), as the contrastive backward does.
// Only the tiles that can hold the shifted diagonal, a shared id (per-tile id ranges) or a row or
// column past the end run the per-pair rule (siglip_tile_masked); the others are all negatives.
// Partials are summed in a fixed order (siglip_sum_kernel, at::sum over splits): no atomics,
// bitwise reproducible.
#include <ATen/ATen.h>

#include <type_traits>

#include "common/sigmoid_math.h"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/forward_fold.cuh"
#include "cuda/mma.cuh"
#include "cuda/siglip_host.cuh"
#include "cuda/siglip_tile.cuh"
#include "cuda/swizzled_tile.cuh"
#include "cuda/tile_math.cuh"
#include "cuda/warp_logits.cuh"

namespace fastcl::gpu {

namespace {

// The D columns of the gradient one backward block accumulates (contrastive_backward_mma.cu's kMaxSlice):
// kD = 256 splits them into two slices (blockIdx.z), each recomputing the logits from owner rows read
// from shared memory.
constexpr int kSlice = 128;

// Shared memory: owner rows (kBM x kD), two stages of stream rows (kBN x kD), swizzled, and per
// stage the stream rows' inverse norms.
template <int kD>
struct SiglipLayout {
  static constexpr size_t kOwn = 0;
  static constexpr size_t kStr = kOwn + size_t(kBM) * kD * 2;
  static constexpr size_t kStageStr = size_t(kBN) * kD * 2;
  static constexpr size_t kInv = kStr + 2 * kStageStr;  // float [2][kBN]
  static constexpr size_t kBytes = kInv + 2 * kBN * sizeof(float);
};

// Stream rows [s0, s0 + kBN) and their inverse norms (inv is padded to whole tiles) into a stage.
template <typename T, int kD>
__device__ __forceinline__ void siglip_issue(T* rows, float* inv, const SiglipSide& str, int64_t D, int64_t s0) {
  load_swizzled<T, kD, kBN, kMmaThreads>(rows, static_cast<const T*>(str.x), str.n, D, s0);
  const int t = threadIdx.x;
  if (t < kBN / 4) cp_async16(&inv[4 * t], str.inv + s0 + 4 * t, true);
}

// partial[split * blocks + block] = sum of the block's pair losses over the split's tiles.
template <typename T, int kD, bool kIds>
__global__ void __launch_bounds__(kMmaThreads, kD <= 128 ? 2 : 1)
    siglip_forward_kernel(SiglipSide own, SiglipSide str, SiglipProblem p, int tiles_per_split,
                          double* __restrict__ partial) {
  using L = SiglipLayout<kD>;
  constexpr int kSteps = kD / 16, kFrags = kBN / 8;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sOwn = reinterpret_cast<T*>(smem + L::kOwn);
  T* sStr = reinterpret_cast<T*>(smem + L::kStr);
  float* sInv = reinterpret_cast<float*>(smem + L::kInv);
  __shared__ double s_red[kMmaThreads / 32];
  __shared__ int s_masked[2];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t o0 = int64_t(blockIdx.x) * kBM;
  const int n_tiles = static_cast<int>((str.n + kBN - 1) / kBN);
  const int t_begin = blockIdx.y * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
  const float scale = *p.logit_scale, bias = *p.logit_bias;
  float ra[2];  // scale / |a_i| of the thread's rows g and g + 8
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = o0 + warp * 16 + g + 8 * h;
    ra[h] = i < own.n ? scale * own.inv[i] : 0.f;
  }

  auto issue = [&](int tile, int stage) {
    const int64_t s0 = int64_t(tile) * kBN;
    siglip_issue<T, kD>(sStr + stage * (kBN * kD), sInv + stage * kBN, str, p.D, s0);
    if (threadIdx.x == kMmaThreads - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[stage] = siglip_tile_masked<kBM, kBN, true, kIds>(p, own, str, o0, s0);
    }
  };
  load_swizzled<T, kD, kBM, kMmaThreads>(sOwn, static_cast<const T*>(own.x), own.n, p.D, o0);
  start_two_stage(issue, t_begin, t_end);
  uint32_t qa[kSteps][4];
  load_warp_rows<kD>(qa, smem_addr(sOwn), warp, lane);
  const LaneRows<kD> krow = logit_rows<kD>(lane);
  double total = 0.0;

  for (int tile = t_begin; tile < t_end; ++tile) {
    const int stage = next_two_stage(issue, tile, t_begin, t_end);
    float acc[kFrags][4];
    warp_logits<T, kD, kBN>(acc, qa, smem_addr(sStr) + stage * L::kStageStr, krow);
    const float* inv = sInv + stage * kBN;
    float tile_loss = 0.f;
    if (!s_masked[stage]) {  // every pair negative: softplus(z)
#pragma unroll
      for (int f = 0; f < kFrags; ++f) {
        const float2 rb = *reinterpret_cast<const float2*>(inv + f * 8 + 2 * t4);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float z = fmaf(acc[f][e] * ra[e >> 1], (e & 1) ? rb.y : rb.x, bias);
          tile_loss += fast_softplus(z);
        }
      }
    } else {  // sass: rare
      const int64_t s0 = int64_t(tile) * kBN;
#pragma unroll
      for (int f = 0; f < kFrags; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = f * 8 + 2 * t4 + (e & 1);
          bool pos;
          if (siglip_pair<true, kIds>(p, own, str, o0 + warp * 16 + g + 8 * (e >> 1), s0 + c, &pos)) {
            const float z = fmaf(acc[f][e] * ra[e >> 1], inv[c], bias);
            tile_loss += fast_softplus(pos ? -z : z);
          }
        }
      }
    }
    total += double(tile_loss);
    __syncthreads();  // the stage is free for the prefetch two tiles on
  }
  cp_async_wait_all();
  block_sum_to(total, s_red, partial, int64_t(blockIdx.y) * gridDim.x + blockIdx.x);
}

// part[split][owner row][d] = (sum over the split's stream rows of G'_ij x_j) (times gs, undone
// here), G' = G / |stream row|; the row owners also write sums[0][k] = sum G * (normalised dot) and
// sums[1][k] = sum G for block-split k.
template <typename T, int kD, bool kRowOwner, bool kIds>
__global__ void __launch_bounds__(kMmaThreads, 1)
    siglip_grad_kernel(SiglipSide own, SiglipSide str, SiglipProblem p, int tiles_per_split,
                       float* __restrict__ part, double* __restrict__ sums) {
  using L = SiglipLayout<kD>;
  constexpr int kOut = kD < kSlice ? kD : kSlice, kSFrags = kBN / 8, kDFrags = kOut / 8;
  constexpr bool kOwnInRegisters = kD <= kSlice;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sOwn = reinterpret_cast<T*>(smem + L::kOwn);
  T* sStr = reinterpret_cast<T*>(smem + L::kStr);
  float* sInv = reinterpret_cast<float*>(smem + L::kInv);
  __shared__ double s_red[kMmaThreads / 32];
  __shared__ int s_masked[2];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t o0 = int64_t(blockIdx.x) * kBM;
  const int slice = kOwnInRegisters ? 0 : static_cast<int>(blockIdx.z), chunk0 = slice * (kOut / 8);
  const int n_tiles = static_cast<int>((str.n + kBN - 1) / kBN);
  const int t_begin = blockIdx.y * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
  const float scale = *p.logit_scale, bias = *p.logit_bias, gl = *p.g, gs = *p.g_scale;
  float ro[2];  // 1 / |owner row| of the thread's rows g and g + 8
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = o0 + warp * 16 + g + 8 * h;
    ro[h] = i < own.n ? own.inv[i] : 0.f;
  }

  auto issue = [&](int tile, int stage) {
    const int64_t s0 = int64_t(tile) * kBN;
    siglip_issue<T, kD>(sStr + stage * (kBN * kD), sInv + stage * kBN, str, p.D, s0);
    if (threadIdx.x == kMmaThreads - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[stage] = siglip_tile_masked<kBM, kBN, kRowOwner, kIds>(p, own, str, o0, s0);
    }
  };
  load_swizzled<T, kD, kBM, kMmaThreads>(sOwn, static_cast<const T*>(own.x), own.n, p.D, o0);
  start_two_stage(issue, t_begin, t_end);
  uint32_t oa[kOwnInRegisters ? kD / 16 : 1][4];
  if constexpr (kOwnInRegisters) load_warp_rows<kD>(oa, smem_addr(sOwn), warp, lane);
  const LaneRows<kD> orow = warp_rows<kD>(warp, lane);
  const LaneRows<kD> srow = logit_rows<kD>(lane);
  const LaneRows<kD> trow((lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
  float acc[kDFrags][4];
#pragma unroll
  for (int f = 0; f < kDFrags; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.f;
  double dscale = 0.0, dbias = 0.0;

  for (int tile = t_begin; tile < t_end; ++tile) {
    const int stage = next_two_stage(issue, tile, t_begin, t_end);
    const SmemAddr sa = smem_addr(sStr) + stage * L::kStageStr;
    const float* inv = sInv + stage * kBN;
    float s[kSFrags][4];
    if constexpr (kOwnInRegisters) {
      warp_logits<T, kD, kBN>(s, oa, sa, srow);
    } else {
      warp_logits_from_smem<T, kD, kBN>(s, smem_addr(sOwn), orow, sa, srow);
    }
    // In place: t = dot / |own| / |str| (the normalised dot), G = g (sigmoid(scale t + bias) - [pos]),
    // G' = G / |str| * gs.
    const bool masked = s_masked[stage];
    float tile_ds = 0.f, tile_db = 0.f;
    if (!masked) {
#pragma unroll
      for (int f = 0; f < kSFrags; ++f) {
        const float2 rs = *reinterpret_cast<const float2*>(inv + f * 8 + 2 * t4);
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const float r = (e & 1) ? rs.y : rs.x;
          const float t = s[f][e] * ro[e >> 1] * r;
          const float G = gl * fast_pair_grad(fmaf(scale, t, bias), false);
          if (kRowOwner) tile_ds = fmaf(G, t, tile_ds), tile_db += G;
          s[f][e] = G * (r * gs);
        }
      }
    } else {  // sass: rare
      const int64_t s0 = int64_t(tile) * kBN;
#pragma unroll
      for (int f = 0; f < kSFrags; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int c = f * 8 + 2 * t4 + (e & 1);
          const float t = s[f][e] * ro[e >> 1] * inv[c];
          bool pos;
          const bool in = siglip_pair<kRowOwner, kIds>(p, own, str, o0 + warp * 16 + g + 8 * (e >> 1), s0 + c, &pos);
          const float G = in ? gl * fast_pair_grad(fmaf(scale, t, bias), pos) : 0.f;
          if (kRowOwner) tile_ds = fmaf(G, t, tile_ds), tile_db += G;
          s[f][e] = G * (inv[c] * gs);
        }
      }
    }
    if (kRowOwner) dscale += double(tile_ds), dbias += double(tile_db);
    warp_grad_product<T, kD, kOut, kBN>(acc, s, sa, trow, chunk0, false);
    if (masked) warp_grad_product<T, kD, kOut, kBN>(acc, s, sa, trow, chunk0, true);  // sass: rare
    __syncthreads();  // the stage is free for the prefetch two tiles on
  }
  cp_async_wait_all();

  store_grad_slice<kOut>(acc, part + int64_t(blockIdx.y) * own.n * p.D, o0 + warp * 16 + g, own.n, p.D, slice, t4,
                         1.f / gs);
  if (kRowOwner && slice == 0) {  // every slice forms the same G; the first one sums the scalars
    const int64_t k = int64_t(blockIdx.y) * gridDim.x + blockIdx.x, count = int64_t(gridDim.x) * gridDim.y;
    block_sum_to(dscale, s_red, sums, k);
    block_sum_to(dbias, s_red, sums + count, k);
  }
}

template <typename T, int kD, bool kIds>
void launch_forward(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p, const Split& split,
                    dim3 grid, double* partial, dev::Stream stream) {
  constexpr auto kernel = siglip_forward_kernel<T, kD, kIds>;
  constexpr size_t smem = SiglipLayout<kD>::kBytes;
  dev::allow_dynamic_smem<kernel>("fastcl siglip", smem);
  dev::launch<kernel>(grid, kMmaThreads, smem, stream, own, str, p, static_cast<int>(split.per), partial);
}

template <typename T, int kD, bool kRowOwner, bool kIds>
void launch_grad(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p, const Split& split,
                 dim3 grid, float* part, double* sums, dev::Stream stream) {
  constexpr auto kernel = siglip_grad_kernel<T, kD, kRowOwner, kIds>;
  constexpr size_t smem = SiglipLayout<kD>::kBytes;
  dev::allow_dynamic_smem<kernel>("fastcl siglip", smem);
  dev::launch<kernel>(grid, kMmaThreads, smem, stream, own, str, p, static_cast<int>(split.per), part, sums);
}

// out[v] = mul * sum of x[v * n, (v + 1) * n) in index order, for v < count: the partials' fixed-order sum.
__global__ void siglip_sum_kernel(const double* __restrict__ x, int64_t n, int count, float mul,
                                  float* __restrict__ out) {
  const int v = threadIdx.x;
  if (v >= count) return;
  double total = 0.0;
  for (int64_t k = 0; k < n; ++k) total += x[v * n + k];
  out[v] = static_cast<float>(total * mul);
}

}  // namespace

void siglip_sum(const double* x, int64_t n, int count, float mul, float* out, dev::Stream stream) {
  dev::launch<siglip_sum_kernel>(dim3(1), 32, 0, stream, x, n, count, mul, out);
}

size_t siglip_mma_smem(int64_t D) {
  if (D > kSiglipNarrowMaxD) return D <= kSiglipMaxD ? siglip_wide_smem(D) : 0;
  size_t bytes = 0;
  with_width<64, 128, 256>(D, [&](auto w) { bytes = SiglipLayout<decltype(w)::value>::kBytes; });
  return bytes;
}

template <typename T>
void siglip_forward_mma(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p, at::Tensor& out,
                        dev::Stream stream) {
  if (p.D > kSiglipNarrowMaxD) return siglip_forward_wide<T>(own, str, p, out, stream);
  const int64_t blocks = ceil_div(own.n, kBM);
  const Split split = split_stream(blocks, ceil_div(str.n, kBN));
  at::Tensor partial = at::empty({blocks * split.count}, out.options().dtype(at::kDouble));
  const dim3 grid = grid_of(blocks, split.count);
  with_width<64, 128, 256>(p.D, [&](auto w) {
    constexpr int kD = decltype(w)::value;
    if (own.ids != nullptr) launch_forward<T, kD, true>(own, str, p, split, grid, partial.data_ptr<double>(), stream);
    else launch_forward<T, kD, false>(own, str, p, split, grid, partial.data_ptr<double>(), stream);
  });
  siglip_sum(partial.data_ptr<double>(), partial.numel(), 1, static_cast<float>(1.0 / static_cast<double>(own.n)),
             out.data_ptr<float>(), stream);
}

template <typename T, bool kRowOwner>
at::Tensor siglip_grad_mma(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p,
                           at::Tensor* scalars, dev::Stream stream) {
  if (p.D > kSiglipNarrowMaxD) return siglip_grad_wide<T, kRowOwner>(own, str, p, scalars, stream);
  const int64_t blocks = ceil_div(own.n, kBM), slices = ceil_div(p.D, kSlice);
  const Split split = split_stream(blocks * slices, ceil_div(str.n, kBN));
  const auto opts = scalars->options();
  at::Tensor part = at::empty({split.count, own.n, p.D}, opts);
  at::Tensor sums;
  if (kRowOwner) sums = at::empty({2 * blocks * split.count}, opts.dtype(at::kDouble));
  const dim3 grid = grid_of(blocks, split.count, slices);
  double* sums_ptr = kRowOwner ? sums.data_ptr<double>() : nullptr;
  with_width<64, 128, 256>(p.D, [&](auto w) {
    constexpr int kD = decltype(w)::value;
    if (own.ids != nullptr) launch_grad<T, kD, kRowOwner, true>(own, str, p, split, grid, part.data_ptr<float>(), sums_ptr, stream);
    else launch_grad<T, kD, kRowOwner, false>(own, str, p, split, grid, part.data_ptr<float>(), sums_ptr, stream);
  });
  if (kRowOwner) {
    siglip_sum(sums.data_ptr<double>(), blocks * split.count, 2, 1.f, scalars->data_ptr<float>(), stream);
  }
  return split.count == 1 ? part[0] : part.sum(0);
}

#define FASTCL_SIGLIP_INSTANTIATE(T)                                                                      \
  template void siglip_forward_mma<T>(const SiglipSide&, const SiglipSide&, const SiglipProblem&, at::Tensor&, \
                                      dev::Stream);                                                       \
  template at::Tensor siglip_grad_mma<T, true>(const SiglipSide&, const SiglipSide&, const SiglipProblem&,   \
                                               at::Tensor*, dev::Stream);                                 \
  template at::Tensor siglip_grad_mma<T, false>(const SiglipSide&, const SiglipSide&, const SiglipProblem&,  \
                                                at::Tensor*, dev::Stream);
FASTCL_SIGLIP_INSTANTIATE(__half)
FASTCL_SIGLIP_INSTANTIATE(__nv_bfloat16)
#undef FASTCL_SIGLIP_INSTANTIATE

}  // namespace fastcl::gpu

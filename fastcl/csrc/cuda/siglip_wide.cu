// The fp16/bf16 kernels of the sigmoid loss (siglip_mma.cu) for 256 < D <= 768: SigLIP's 768 and
// CLIP's 512, on the tiles of the wide contrastive backward (wide_tile.cuh: 32 owner rows, 32-row
// stream tiles of whole D, each warp's 16-column groups of D for both products, the 32 x 32 logits
// summed over the warps through shared memory). On each warp's fragment of the sum:
//   siglip_wide_forward_kernel  softplus(-y z) summed per block (a double per block and split);
//   siglip_wide_grad_kernel     G = g (sigmoid(z) - [positive]), G' = G / |stream row| stored as T and
//                               multiplied by the stream tile into the owner rows' gradient; the row
//                               owners also sum G * (normalised dot) and G (scale and bias gradients).
// z = scale <a_i, b_j> / |a_i| / |b_j| + bias, as in siglip_mma.cu; the tiles that may hold the
// shifted diagonal, a shared id or a row past the end run the per-pair rule (siglip_tile_masked),
// and there G' also goes through the low-order product. 2U a side, no atomics.
#include <ATen/ATen.h>

#include <type_traits>

#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/mma.cuh"
#include "cuda/siglip_host.cuh"
#include "cuda/siglip_tile.cuh"
#include "cuda/tile_math.cuh"
#include "cuda/wide_tile.cuh"

namespace fastcl::gpu {

namespace {

// Dynamic shared memory: the wide tiles (WideTiles), then per stage the stream rows' inverse norms.
struct SiglipWideLayout : WideTiles {
  size_t inv, bytes;
  __host__ __device__ explicit SiglipWideLayout(int groups)
      : WideTiles(groups), inv(end), bytes(inv + 2 * kColsW * sizeof(float)) {}
};

// What both kernels set up: the shared tiles, the block's rows, the split's tiles, the stream
// stages' copies (rows, inverse norms, the mask decision) and the first stage in flight.
template <typename T, int kGroups, bool kRowOwner, bool kIds>
struct SiglipWideBlock {
  SiglipWideLayout L{kGroups};
  T *sOwn, *sStr;
  float4* sPart;
  uint32_t *sHi, *sLo;
  float* sInv;
  int* s_masked;
  int64_t o0;
  int t_begin, t_end;

  __device__ __forceinline__ SiglipWideBlock(unsigned char* smem, int* masked, const SiglipSide& own,
                                             const SiglipSide& str, int tiles_per_split)
      : sOwn(reinterpret_cast<T*>(smem + L.own)),
        sStr(reinterpret_cast<T*>(smem + L.str)),
        sPart(reinterpret_cast<float4*>(smem + L.part)),
        sHi(reinterpret_cast<uint32_t*>(smem + L.ghi)),
        sLo(reinterpret_cast<uint32_t*>(smem + L.glo)),
        sInv(reinterpret_cast<float*>(smem + L.inv)),
        s_masked(masked),
        o0(int64_t(blockIdx.x) * kRowsW) {
    const int n_tiles = static_cast<int>((str.n + kColsW - 1) / kColsW);
    t_begin = blockIdx.y * tiles_per_split;
    t_end = min(n_tiles, t_begin + tiles_per_split);
  }

  __device__ __forceinline__ void issue(const SiglipProblem& p, const SiglipSide& own, const SiglipSide& str,
                                        int tile, int stage) {
    const int64_t s0 = int64_t(tile) * kColsW;
    load_row_chunks<T, 2 * kGroups>(sStr + stage * (L.stage / sizeof(T)), static_cast<const T*>(str.x), str.n,
                                    p.D, s0);
    const int t = threadIdx.x;
    if (t < kColsW / 4) cp_async16(&sInv[stage * kColsW + 4 * t], str.inv + s0 + 4 * t, true);  // padded
    if (t == kThreadsW - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[stage] = siglip_tile_masked<kRowsW, kColsW, kRowOwner, kIds>(p, own, str, o0, s0);
    }
  }

  __device__ __forceinline__ void start(const SiglipProblem& p, const SiglipSide& own, const SiglipSide& str) {
    load_row_chunks<T, 2 * kGroups>(sOwn, static_cast<const T*>(own.x), own.n, p.D, o0);
    if (t_begin < t_end) issue(p, own, str, t_begin, 0);
    cp_async_commit();
    cp_async_wait_all();
    __syncthreads();
  }

  // At tile `tile`: waits for its copies (issued a tile ago) and issues the next tile's into the
  // other stage, read last before this barrier. Returns the stage.
  __device__ __forceinline__ int next(const SiglipProblem& p, const SiglipSide& own, const SiglipSide& str,
                                     int tile) {
    const int stage = (tile - t_begin) & 1;
    if (tile > t_begin) {
      cp_async_wait_all();
      __syncthreads();
    }
    if (tile + 1 < t_end) issue(p, own, str, tile + 1, stage ^ 1);
    cp_async_commit();
    return stage;
  }
};

// The thread's 4 logits of the warp's fragment: owner rows o0 + 16 (warp / 4) + l / 4 (+ 8 for e >= 2),
// stream rows s0 + 8 (warp % 4) + 2 (l % 4) + e % 2.
__device__ __forceinline__ int frag_row(int e) {
  return 16 * static_cast<int>(threadIdx.x >> 7) + static_cast<int>((threadIdx.x & 31) >> 2) + 8 * (e >> 1);
}
__device__ __forceinline__ int frag_col(int e) {
  return 8 * static_cast<int>((threadIdx.x >> 5) & 3) + 2 * static_cast<int>(threadIdx.x & 3) + (e & 1);
}

// partial[split * blocks + block] = the sum of the block's pair losses over the split's tiles.
template <typename T, int kGroups, bool kIds>
__global__ void __launch_bounds__(kThreadsW, 1)
    siglip_wide_forward_kernel(SiglipSide own, SiglipSide str, SiglipProblem p, int tiles_per_split,
                               double* __restrict__ partial) {
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  __shared__ int s_masked[2];
  __shared__ double s_red[kWarpsW];
  SiglipWideBlock<T, kGroups, true, kIds> b(smem, s_masked, own, str, tiles_per_split);
  const float scale = *p.logit_scale, bias = *p.logit_bias;
  float ra[2];  // scale / |a_i| of the thread's two rows
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = b.o0 + frag_row(2 * h);
    ra[h] = i < own.n ? scale * own.inv[i] : 0.f;
  }
  b.start(p, own, str);
  const WideWarp<T, kGroups> ww(b.sOwn, b.sStr, threadIdx.x >> 5, threadIdx.x & 31);
  double total = 0.0;

  for (int tile = b.t_begin; tile < b.t_end; ++tile) {
    const int stage = b.next(p, own, str, tile);
    float x[4];
    ww.logits(x, stage * static_cast<int>(b.L.stage), b.sPart);
    const float* inv = b.sInv + stage * kColsW;
    float tile_loss = 0.f;
    if (!b.s_masked[stage]) {  // every pair negative: softplus(z)
#pragma unroll
      for (int e = 0; e < 4; ++e) tile_loss += fast_softplus(fmaf(x[e] * ra[e >> 1], inv[frag_col(e)], bias));
    } else {  // sass: rare
      const int64_t s0 = int64_t(tile) * kColsW;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        bool pos;
        if (siglip_pair<true, kIds>(p, own, str, b.o0 + frag_row(e), s0 + frag_col(e), &pos)) {
          const float z = fmaf(x[e] * ra[e >> 1], inv[frag_col(e)], bias);
          tile_loss += fast_softplus(pos ? -z : z);
        }
      }
    }
    total += double(tile_loss);
  }
  cp_async_wait_all();
  block_sum_to(total, s_red, partial, int64_t(blockIdx.y) * gridDim.x + blockIdx.x);
}

// part[split][owner row][d] = the sum over the split's stream rows of G'_ij x_j (times gs, undone here);
// the row owners also write sums[0][k] = sum G * (normalised dot) and sums[1][k] = sum G.
template <typename T, int kGroups, bool kRowOwner, bool kIds>
__global__ void __launch_bounds__(kThreadsW, 1)
    siglip_wide_grad_kernel(SiglipSide own, SiglipSide str, SiglipProblem p, int tiles_per_split,
                            float* __restrict__ part, double* __restrict__ sums) {
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  __shared__ int s_masked[2];
  __shared__ double s_red[kWarpsW];
  SiglipWideBlock<T, kGroups, kRowOwner, kIds> b(smem, s_masked, own, str, tiles_per_split);
  const float scale = *p.logit_scale, bias = *p.logit_bias, gl = *p.g, gs = *p.g_scale;
  float ro[2];  // 1 / |owner row| of the thread's two rows
#pragma unroll
  for (int h = 0; h < 2; ++h) {
    const int64_t i = b.o0 + frag_row(2 * h);
    ro[h] = i < own.n ? own.inv[i] : 0.f;
  }
  b.start(p, own, str);
  const WideWarp<T, kGroups> ww(b.sOwn, b.sStr, threadIdx.x >> 5, threadIdx.x & 31);
  float acc[kGroups][2][2][4];
  zero_wide_acc<kGroups>(acc);
  double dscale = 0.0, dbias = 0.0;

  for (int tile = b.t_begin; tile < b.t_end; ++tile) {
    const int stage = b.next(p, own, str, tile);
    const int sa = stage * static_cast<int>(b.L.stage);
    float x[4];
    ww.logits(x, sa, b.sPart);
    // t = dot / |own| / |str| (the normalised dot), G = g (sigmoid(scale t + bias) - [pos]), G' = G / |str| gs.
    const float* inv = b.sInv + stage * kColsW;
    const bool masked = b.s_masked[stage];
    float tile_ds = 0.f, tile_db = 0.f;
    if (!masked) {
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float r = inv[frag_col(e)], t = x[e] * ro[e >> 1] * r;
        const float G = gl * fast_pair_grad(fmaf(scale, t, bias), false);
        if (kRowOwner) tile_ds = fmaf(G, t, tile_ds), tile_db += G;
        x[e] = G * (r * gs);
      }
    } else {  // sass: rare
      const int64_t s0 = int64_t(tile) * kColsW;
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float r = inv[frag_col(e)], t = x[e] * ro[e >> 1] * r;
        bool pos;
        const bool in = siglip_pair<kRowOwner, kIds>(p, own, str, b.o0 + frag_row(e), s0 + frag_col(e), &pos);
        const float G = in ? gl * fast_pair_grad(fmaf(scale, t, bias), pos) : 0.f;
        if (kRowOwner) tile_ds = fmaf(G, t, tile_ds), tile_db += G;
        x[e] = G * (r * gs);
      }
      ww.store_g(b.sLo, x, true);
    }
    if (kRowOwner) dscale += double(tile_ds), dbias += double(tile_db);
    ww.store_g(b.sHi, x, false);
    __syncthreads();
    ww.product(acc, b.sHi, sa);
    if (masked) ww.product(acc, b.sLo, sa);  // sass: rare (the low part of G')
  }
  cp_async_wait_all();
  ww.store(acc, part + int64_t(blockIdx.y) * own.n * p.D, b.o0, own.n, p.D, 1.f / gs);
  if (kRowOwner) {
    const int64_t k = int64_t(blockIdx.y) * gridDim.x + blockIdx.x, count = int64_t(gridDim.x) * gridDim.y;
    block_sum_to(dscale, s_red, sums, k);
    block_sum_to(dbias, s_red, sums + count, k);
  }
}

template <auto kKernel, typename... Args>
void launch_wide(int64_t blocks, const Split& split, size_t smem, dev::Stream stream, Args... args) {
  dev::allow_dynamic_smem<kKernel>("fastcl siglip", smem, " (the wide kernels keep two 32-row tiles of D)");
  dev::launch<kKernel>(grid_of(blocks, split.count), kThreadsW, smem, stream, args...);
}

}  // namespace

size_t siglip_wide_smem(int64_t D) { return SiglipWideLayout(wide_instance_groups<3>(D)).bytes; }

template <typename T>
void siglip_forward_wide(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p, at::Tensor& out,
                         dev::Stream stream) {
  const int64_t blocks = ceil_div(own.n, kRowsW);
  const Split split = split_stream(blocks, ceil_div(str.n, kColsW));
  at::Tensor partial = at::empty({blocks * split.count}, out.options().dtype(at::kDouble));
  const size_t smem = siglip_wide_smem(p.D);
  with_wide_groups<3>(p.D, [&](auto w) {
    constexpr int kGroups = decltype(w)::value;
    const int per = static_cast<int>(split.per);
    if (own.ids != nullptr) {
      launch_wide<siglip_wide_forward_kernel<T, kGroups, true>>(blocks, split, smem, stream, own, str, p, per,
                                                                partial.data_ptr<double>());
    } else {
      launch_wide<siglip_wide_forward_kernel<T, kGroups, false>>(blocks, split, smem, stream, own, str, p, per,
                                                                 partial.data_ptr<double>());
    }
  });
  siglip_sum(partial.data_ptr<double>(), partial.numel(), 1, static_cast<float>(1.0 / static_cast<double>(own.n)),
             out.data_ptr<float>(), stream);
}

template <typename T, bool kRowOwner>
at::Tensor siglip_grad_wide(const SiglipSide& own, const SiglipSide& str, const SiglipProblem& p,
                            at::Tensor* scalars, dev::Stream stream) {
  const int64_t blocks = ceil_div(own.n, kRowsW);
  const Split split = split_stream(blocks, ceil_div(str.n, kColsW));
  const auto opts = scalars->options();
  at::Tensor part = at::empty({split.count, own.n, p.D}, opts);
  at::Tensor sums;
  if (kRowOwner) sums = at::empty({2 * blocks * split.count}, opts.dtype(at::kDouble));
  double* sums_ptr = kRowOwner ? sums.data_ptr<double>() : nullptr;
  const size_t smem = siglip_wide_smem(p.D);
  with_wide_groups<3>(p.D, [&](auto w) {
    constexpr int kGroups = decltype(w)::value;
    const int per = static_cast<int>(split.per);
    if (own.ids != nullptr) {
      launch_wide<siglip_wide_grad_kernel<T, kGroups, kRowOwner, true>>(blocks, split, smem, stream, own, str, p, per,
                                                                        part.data_ptr<float>(), sums_ptr);
    } else {
      launch_wide<siglip_wide_grad_kernel<T, kGroups, kRowOwner, false>>(blocks, split, smem, stream, own, str, p,
                                                                         per, part.data_ptr<float>(), sums_ptr);
    }
  });
  if (kRowOwner) siglip_sum(sums.data_ptr<double>(), blocks * split.count, 2, 1.f, scalars->data_ptr<float>(), stream);
  return split.count == 1 ? part[0] : part.sum(0);
}

#define FASTCL_SIGLIP_WIDE(T)                                                                                  \
  template void siglip_forward_wide<T>(const SiglipSide&, const SiglipSide&, const SiglipProblem&, at::Tensor&, \
                                       dev::Stream);                                                           \
  template at::Tensor siglip_grad_wide<T, true>(const SiglipSide&, const SiglipSide&, const SiglipProblem&,      \
                                                at::Tensor*, dev::Stream);                                     \
  template at::Tensor siglip_grad_wide<T, false>(const SiglipSide&, const SiglipSide&, const SiglipProblem&,     \
                                                 at::Tensor*, dev::Stream);
FASTCL_SIGLIP_WIDE(__half)
FASTCL_SIGLIP_WIDE(__nv_bfloat16)
#undef FASTCL_SIGLIP_WIDE

}  // namespace fastcl::gpu

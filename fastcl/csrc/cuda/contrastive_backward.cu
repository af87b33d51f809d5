// CUDA backward kernels of the contrastive core (semantics: csrc/README.md; the ops that call
// them: contrastive.cu).
//
// grad_kernel<kRowOwner> owns 64 rows of q (or of k), a slice of D (256 columns, 128 for fp32;
// gridDim.y) and a range of stream tiles (gridDim.z); it recomputes each logit tile over all of D,
// forms G and accumulates G . k (or G^T . q) in registers. Each extra D slice recomputes the
// logits, so D > 256 costs (slices + 1) / 2 times the ideal backward. Splits write separate fp32
// partials that grad_finish_kernel sums in order, so nothing uses floating-point atomics and
// every run is bitwise identical.
#include <ATen/ATen.h>

#include <type_traits>
#include <utility>

#include "common/contrastive_math.h"
#include "common/online_lse.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

using namespace math;

namespace {

constexpr int kMaxExp = 100;  // bound on the fp16 staging scale 2^e, so 2^e and 2^-e are normal floats
// Resident grad_kernel blocks per SM the compiler must allow for (128 registers at 2); 1 lifts
// the register cap (180-250 used) at the cost of occupancy. A tuning knob for the GPU.
#ifndef FASTCL_GRAD_MINB
#define FASTCL_GRAD_MINB 2
#endif

// dloss_i / ds_ij; r.info.z (grad_loss_i) is 0 for a row without positives. Such a row is never
// formed: its exp could overflow (an lse that did not come from this forward), and 0 * inf is NaN.
__device__ __forceinline__ float grad_logit(const Pair& pr, const RowView& r) {
  if (r.info.z == 0.f) return 0.f;
  return r.info.z * (exp_of(pr.s - r.info.y) - (pr.pos ? r.info.w : 0.f));
}

// One block of grad_kernel<T, kRowOwner>: its shared-memory regions, its owner tile, D slice and
// stream tiles, and the phases of its work on each stream tile (logit_tile, g_prime, range_scale,
// stage_g, products), then the writes of its results (store_partials, store_scale_partial).
// kRowOwner: owner = rows of q, stream = columns (k) -> grad_qn and the scale partials. Otherwise
// owner = columns of k, stream = rows of q -> grad_kn.
template <typename T, bool kRowOwner>
struct GradBlock {
  using M = Math<T>;
  using Layout = SmemLayout<T, true>;
  using GT = typename M::G;
  using PAcc = typename M::PAcc;
  static constexpr int BK = M::kBK, LD = M::kLd, kDC = M::kDC, kNC = kDC / BK;  // kDC: D columns a block owns

  T* sA;
  T* sB;
  float* sS;
  GT* sG;
  GT* sGlo;  // tensor cores only: the low part of G
  MetaSlot* sMeta;
  const T* __restrict__ own_x;
  const T* __restrict__ str_x;
  const Problem& p;
  bool vec;
  int64_t n_own, n_str, own0, d0;
  int nC, nK, t_begin, t_end;
  float scale;
  int er, ec;  // the row of the tile this thread takes, and its first column (ec, ec + 4, ...)
  int64_t o;   // the owner row of er
  bool want_dscale;

  __device__ __forceinline__ GradBlock(unsigned char* smem, const T* __restrict__ own, const T* __restrict__ str,
                                       const Problem& prob, int tiles_per_split, bool vectorised)
      : sA(reinterpret_cast<T*>(smem + Layout::kA)),
        sB(reinterpret_cast<T*>(smem + Layout::kB)),
        sS(reinterpret_cast<float*>(smem + Layout::kS)),
        sG(M::kStageG ? reinterpret_cast<GT*>(smem + Layout::kG) : reinterpret_cast<GT*>(sS)),
        sGlo(sG + kTile * M::kGLd),
        sMeta(reinterpret_cast<MetaSlot*>(smem + Layout::kMeta)),
        own_x(own),
        str_x(str),
        p(prob),
        vec(vectorised) {
    n_own = kRowOwner ? p.M : p.grad_cols, n_str = kRowOwner ? p.L : p.M;
    own0 = int64_t(blockIdx.x) * kTile;
    d0 = int64_t(blockIdx.y) * kDC;
    nC = static_cast<int>((min(int64_t(kDC), p.D - d0) + BK - 1) / BK);  // P slices in this block
    nK = max(1, static_cast<int>((p.D + BK - 1) / BK));                  // S chunks (all of D)
    const int n_tiles = static_cast<int>((n_str + kTile - 1) / kTile);
    t_begin = blockIdx.z * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
    scale = *p.logit_scale;
    er = threadIdx.x >> 2, ec = threadIdx.x & 3;
    o = own0 + er;
    want_dscale = kRowOwner && blockIdx.y == 0;  // one D slice counts each pair once
  }

  // Per stream tile: nK steps load owner + stream chunks of D for S, then nC steps load the
  // stream tile's slices of this block's D range for P.
  __device__ __forceinline__ void issue(int tile, int step, int b) const {
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
  }
  __device__ __forceinline__ void prefetch_after(int tile, int step, int b) const {
    if (step + 1 < nK + nC) {
      issue(tile, step + 1, b);
    } else if (tile + 1 < t_end) {
      issue(tile + 1, 0, b);
    }
    cp_async_commit();
  }

  // The owner tile's per-row values, into the third meta slot.
  __device__ __forceinline__ void load_owner_meta() const {
    if (kRowOwner) {
      load_rows(p, &sMeta[2], own0);
    } else {
      load_cols(p, &sMeta[2], own0);
    }
  }

  // S = owner tile . stream tile^T over all of D, into sS (fp32).
  __device__ __forceinline__ void logit_tile(int tile, int& buf) const {
    typename M::SAcc s_acc;
    M::zero(s_acc);
    for (int kc = 0; kc < nK; ++kc) {  // sass: trips=D/BK
      prefetch_after(tile, kc, buf ^ 1);
      cp_async_wait_prev();
      __syncthreads();
      M::mma_abt(s_acc, sA + buf * kTile * LD, sB + buf * kTile * LD);
      __syncthreads();
      buf ^= 1;
    }
    M::store(s_acc, sS);
    __syncthreads();
  }

  // Turns the logit tile in sS into G' = G / |stream row|, in place: each element has one owning
  // thread, and no register array stays live beside the accumulators. Adds the tile's share of
  // sum(G * dot) to dscale (row owners, first D slice); returns this thread's largest |G'|.
  __device__ __forceinline__ float g_prime(int tile, double& dscale) const {
    const int64_t str0 = int64_t(tile) * kTile;
    const MetaSlot& own = sMeta[2];
    const MetaSlot& str = sMeta[tile & 1];
    float gmax = 0.f, tile_dscale = 0.f;  // 16 terms in fp32, then into the double once a tile
#pragma unroll 4
    for (int c = 0; c < 16; ++c) {  // sass: trips=4
      const int jj = ec + 4 * c;
      const float raw = sS[er * kSLd + jj];
      float g = 0.f, str_r;
      if constexpr (kRowOwner) {
        const RowView rv = row_view(p, own, er);
        const ColView cv = col_view(p, str, jj);
        const Pair pr = pair_at(p, scale, raw, o, rv, str0 + jj, cv);
        if (pr.valid) {
          g = grad_logit(pr, rv);
          tile_dscale = fmaf(g, pr.dot, tile_dscale);
        }
        str_r = cv.info.x;
      } else {
        const RowView rv = row_view(p, str, jj);
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
    return gmax;
  }

  // The factor G' is staged with: 1, or for fp16 (kRangeScale) a block-uniform power of two.
  // G is tiny (grad_loss / M times a softmax) or large (inverse norms): each tile is staged in
  // fp16 scaled so that its largest entry lies in [2^14, 2^15), and the accumulator is rescaled
  // exactly when the scale must drop. e_acc: acc holds the true sum times 2^e_acc.
  __device__ __forceinline__ float range_scale(float gmax, PAcc (&acc)[kNC], int& e_acc, float* s_red) const {
    float mul = 1.f;
    if constexpr (M::kRangeScale) {
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
    return mul;
  }

  // Tensor cores take G in the input type: as hi + lo, whose sum carries G to about twice the
  // type's precision. One part alone missed plain PyTorch's gradient accuracy at temperature
  // 0.01 (fp16 and bf16, on the H200 and in the simulator); the low part costs a second
  // product per slice. (SIMT reads G' in place from sS.)
  __device__ __forceinline__ void stage_g(float mul) const {
    if constexpr (M::kStageG) {
#pragma unroll 4
      for (int c = 0; c < 16; ++c) {  // sass: trips=4
        const int at = er * M::kGLd + ec + 4 * c;
        const float v = sS[er * kSLd + ec + 4 * c] * mul;
        const GT hi = from_float<GT>(v);
        sG[at] = hi;
        sGlo[at] = from_float<GT>(v - to_float(hi));
      }
    }
  }

  // acc[c] += G' . (slice c of this block's D range of the stream tile), for the nC slices.
  // Unrolled so that acc[c] stays in registers.
  __device__ __forceinline__ void products(int tile, PAcc (&acc)[kNC], int& buf) const {
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

  // part[split][owner row][d] = acc / 2^e_acc, out through shared memory: the wmma layout is
  // opaque and this keeps the stores coalesced.
  __device__ __forceinline__ void store_partials(PAcc (&acc)[kNC], int e_acc, float* __restrict__ part) const {
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
  }
};

// The block's sum of its threads' dscale, in a fixed order, into scale_part[split][block].
// Block-uniform: called by every thread or none.
__device__ __forceinline__ void store_scale_partial(double dscale, double* s_red_d, double* __restrict__ scale_part) {
  dscale = warp_sum(dscale);
  if ((threadIdx.x & 31) == 0) s_red_d[threadIdx.x >> 5] = dscale;
  __syncthreads();
  if (threadIdx.x == 0) {
    double total = 0.0;
    for (int w = 0; w < kWarps; ++w) total += s_red_d[w];
    scale_part[int64_t(blockIdx.z) * gridDim.x + blockIdx.x] = total;
  }
}

// part[split][owner][d] receives sum over the split's stream tiles of G' . stream_x,
// G' = G / |stream row|; the logit scale and the normalisation gradient are applied in
// grad_finish_kernel. scale_part (row owners): per-block partials of sum(G * dot).
template <typename T, bool kRowOwner>
__global__ void __launch_bounds__(kThreads, FASTCL_GRAD_MINB)
    grad_kernel(const T* __restrict__ own_x, const T* __restrict__ str_x, Problem p, int tiles_per_split,
                bool vec, float* __restrict__ part, double* __restrict__ scale_part) {
  using Block = GradBlock<T, kRowOwner>;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  __shared__ float s_red[kWarps];
  __shared__ double s_red_d[kWarps];
  const Block b(smem, own_x, str_x, p, tiles_per_split, vec);
  double dscale = 0.0;
  int e_acc = kMaxExp;  // fp16 only: acc holds the true sum times 2^e_acc

  typename Block::PAcc acc[Block::kNC];
#pragma unroll
  for (int c = 0; c < Block::kNC; ++c) Block::M::zero(acc[c]);

  int buf = 0;
  b.load_owner_meta();
  if (b.t_begin < b.t_end) b.issue(b.t_begin, 0, 0);
  cp_async_commit();
  for (int tile = b.t_begin; tile < b.t_end; ++tile) {
    b.logit_tile(tile, buf);
    const float gmax = b.g_prime(tile, dscale);
    b.stage_g(b.range_scale(gmax, acc, e_acc, s_red));
    __syncthreads();
    b.products(tile, acc, buf);
  }
  b.store_partials(acc, e_acc, part);
  if constexpr (kRowOwner) {
    if (b.want_dscale) store_scale_partial(dscale, s_red_d, scale_part);  // block-uniform
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

// grad_kernel (or the mma kernel) for one side, then the finishing pass into `out`; the row side also
// fills scale_part. `transposed` (mma kernel only): the row side's partials also carry G's transposed
// term, the whole gradient of q = k or of one side of a paired loss.
template <typename T, bool kRowOwner>
void grad_side(const Inputs& in, const Problem& p, bool normalize, const at::Tensor& own_x, const at::Tensor& str_x,
               at::Tensor& out, at::Tensor* scale_part, dev::Stream stream,
               Transposed transposed = Transposed::kNone) {
  const int64_t n_own = own_x.size(0), n_str = str_x.size(0);
  at::Tensor part;
  int64_t splits = 0;
  if constexpr (!std::is_same<T, float>::value) {
    if (backward_mma_applies(in, sizeof(T))) {
      splits = grad_mma_partials<T, kRowOwner>(in, own_x, str_x, part, scale_part, stream, transposed);
    }
  }
  if (splits == 0) {
    const int64_t blocks = ceil_div(n_own, kTile), slices = ceil_div(in.D, Math<T>::kDC);
    const Split split = split_stream(blocks * slices, ceil_div(n_str, kTile));
    splits = split.count;
    part = at::empty({split.count, n_own, in.D}, own_x.options().dtype(at::kFloat));
    if (kRowOwner) *scale_part = at::empty({blocks * split.count}, own_x.options().dtype(at::kDouble));
    constexpr size_t smem = SmemLayout<T, true>::kBytes;
    dev::allow_dynamic_smem<grad_kernel<T, kRowOwner>>("fastcl", smem);
    dev::launch<grad_kernel<T, kRowOwner>>(grid_of(blocks, slices, split.count), kThreads, smem, stream,
                                           ptr<T>(own_x), ptr<T>(str_x), p, static_cast<int>(split.per),
                                           in.vectorisable(), part.data_ptr<float>(),
                                           kRowOwner ? scale_part->data_ptr<double>() : nullptr);
  }
  dev::launch<grad_finish_kernel<T>>(grid_of(ceil_div(n_own, kWarps)), kThreads, 0, stream, part.data_ptr<float>(),
                                     static_cast<int>(splits), ptr<T>(own_x), normalize, p.logit_scale, n_own,
                                     in.D, static_cast<T*>(out.data_ptr()));
}

}  // namespace

template <typename T>
void backward_impl(const Inputs& in, bool normalize, dev::Stream stream, at::Tensor& grad_q, at::Tensor& grad_k,
                   at::Tensor& grad_scale) {
  const Problem p = in.problem();
  at::Tensor scale_part;
  // q = k with one label vector (NT-Xent, SupCon): one pass gives the whole gradient in grad_q and
  // grad_k is zero, which autograd adds (csrc/README.md).
  const bool both = !std::is_same<T, float>::value && backward_mma_symmetric(in, sizeof(T));
  grad_side<T, true>(in, p, normalize, in.q, in.k, grad_q, &scale_part, stream,
                     both ? Transposed::kSelf : Transposed::kNone);
  // Only the leading grad_cols columns are differentiated (the rest, a queue, are constants).
  if (both) {
    grad_k.zero_();
  } else if (in.grad_cols < in.L) {
    grad_k.narrow(0, in.grad_cols, in.L - in.grad_cols).zero_();
  }
  if (in.grad_cols > 0 && !both) {
    at::Tensor grad_k_head = grad_k.narrow(0, 0, in.grad_cols);
    grad_side<T, false>(in, p, normalize, in.k.narrow(0, 0, in.grad_cols), in.q, grad_k_head, nullptr, stream);
  }
  dev::launch<sum_partials_kernel>(1, kThreads, 0, stream, scale_part.data_ptr<double>(), scale_part.numel(),
                                   grad_scale.data_ptr<float>());
}

template <typename T>
void pair_backward_impl(const Inputs& in, bool normalize, dev::Stream stream, at::Tensor& grad_a, at::Tensor& grad_b,
                        at::Tensor& grad_scale) {
  TORCH_INTERNAL_ASSERT(pair_backward_fused(in, sizeof(T)), "fastcl: no fused paired backward for this problem");
  Inputs swapped = in;  // b's rows against a: the same logits transposed, each side's statistics kept
  std::swap(swapped.q, swapped.k);
  std::swap(swapped.row_info, swapped.col_info);
  at::Tensor scale_a, scale_b;
  grad_side<T, true>(in, in.problem(), normalize, in.q, in.k, grad_a, &scale_a, stream, Transposed::kPair);
  grad_side<T, true>(swapped, swapped.problem(), normalize, swapped.q, swapped.k, grad_b, &scale_b, stream,
                     Transposed::kPair);
  // Each pass holds its own direction's share of the scale gradient.
  const at::Tensor scale_part = at::cat({scale_a, scale_b});
  dev::launch<sum_partials_kernel>(1, kThreads, 0, stream, scale_part.data_ptr<double>(), scale_part.numel(),
                                   grad_scale.data_ptr<float>());
}

template void pair_backward_impl<__half>(const Inputs&, bool, dev::Stream, at::Tensor&, at::Tensor&, at::Tensor&);
template void pair_backward_impl<__nv_bfloat16>(const Inputs&, bool, dev::Stream, at::Tensor&, at::Tensor&,
                                                at::Tensor&);
template void backward_impl<float>(const Inputs&, bool, dev::Stream, at::Tensor&, at::Tensor&, at::Tensor&);
template void backward_impl<__half>(const Inputs&, bool, dev::Stream, at::Tensor&, at::Tensor&, at::Tensor&);
template void backward_impl<__nv_bfloat16>(const Inputs&, bool, dev::Stream, at::Tensor&, at::Tensor&, at::Tensor&);

}  // namespace fastcl::gpu

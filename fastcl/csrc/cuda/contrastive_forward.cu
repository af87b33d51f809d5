// CUDA forward kernels of the contrastive core (semantics: csrc/README.md; the ops that call
// them: contrastive.cu).
//
// A block owns 64 rows and streams 64-column tiles (split over gridDim.y when there are few row
// tiles); each tile's logits are computed in fp32 from D in shared-memory chunks, then folded
// into a per-row online log-sum-exp, positive sum and count. A combine kernel merges the column
// splits in a fixed order.
#include <ATen/ATen.h>

#include <type_traits>

#include "common/online_lse.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

using namespace math;

namespace {

// partial[split][row] = (running max, sum of exp, positive logit sum, positive count).
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
    for (int kc = 0; kc < nK; ++kc) {  // sass: trips=D/BK
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

    const RowView rv = row_view(p, sMeta[2], er);
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

}  // namespace

template <typename T>
void forward_impl(const Inputs& in, dev::Stream stream, at::Tensor& loss, at::Tensor& lse, at::Tensor& num_pos) {
  at::Tensor partial;
  Split split{1, 1};
  if constexpr (!std::is_same<T, float>::value) {
    if (forward_mma_applies(in, sizeof(T))) {
      split = forward_mma_impl<T>(in, stream, partial);
    } else if (forward_wide_applies(in, sizeof(T))) {
      split = forward_wide_impl<T>(in, stream, partial);
    }
  }
  if (!partial.defined()) {
    const Problem p = in.problem();
    const int64_t blocks = ceil_div(in.M, kTile);
    split = split_stream(blocks, ceil_div(in.L, kTile));
    partial = at::empty({split.count * in.M * 4}, in.q.options().dtype(at::kFloat));
    constexpr size_t smem = SmemLayout<T, false>::kBytes;
    dev::allow_dynamic_smem<forward_kernel<T>>("fastcl", smem);
    dev::launch<forward_kernel<T>>(grid_of(blocks, split.count), kThreads, smem, stream, ptr<T>(in.q), ptr<T>(in.k),
                                   p, static_cast<int>(split.per), in.vectorisable(),
                                   reinterpret_cast<float4*>(partial.data_ptr<float>()));
  }
  dev::launch<forward_combine_kernel>(grid_of(ceil_div(in.M, kThreads)), kThreads, 0, stream,
                                      reinterpret_cast<const float4*>(partial.data_ptr<float>()),
                                      static_cast<int>(split.count), in.M, loss.data_ptr<float>(),
                                      lse.data_ptr<float>(), num_pos.data_ptr<float>());
}

template void forward_impl<float>(const Inputs&, dev::Stream, at::Tensor&, at::Tensor&, at::Tensor&);
template void forward_impl<__half>(const Inputs&, dev::Stream, at::Tensor&, at::Tensor&, at::Tensor&);
template void forward_impl<__nv_bfloat16>(const Inputs&, dev::Stream, at::Tensor&, at::Tensor&, at::Tensor&);

}  // namespace fastcl::gpu

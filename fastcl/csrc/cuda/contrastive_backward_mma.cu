// The fp16/bf16 backward of the contrastive core in the FlashAttention-2 shape, for the problems of
// contrastive_forward_mma.cu with D <= 128 (D <= 256 without features; others take grad_kernel), with
// the same compile-time features (sample ids, an owned column bias).
//
// grad_mma_kernel<T, kD, kRowOwner> owns 128 rows of one side (q rows: grad_q and the scale
// partials; or k columns: grad_k) and streams 64-row tiles of the other through a two-stage
// cp.async pipeline into swizzled shared memory. Each warp recomputes its 16 x 64 logits with
// mma.sync from its owner rows held in registers, turns them into G' = G / |stream row| on the
// fragments (G = grad_i (exp(s - lse_i) - [positive] / num_pos_i), plus the same term under the
// stream row's statistics for q = k and for CLIP's column direction: Transposed), and multiplies G' (the
// accumulator fragments re-packed as the next product's A operand, as FlashAttention-2 does with
// P) by the stream tile, read transposed through ldmatrix.trans, into fp32 accumulators. The
// tiles that can hold a positive or an excluded pair take masks and a second, low-part product
// of G' (hi + lo carries the positives' G, where exp(s - lse) - 1/num_pos cancels, to about
// twice the input precision); the others run neither. Column splits write separate partials
// that grad_finish_kernel sums in order: no atomics, bitwise reproducible.
#include <ATen/ATen.h>

#include <type_traits>

#include "common/contrastive_math.h"
#include "common/online_lse.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/grad_tile.cuh"
#include "cuda/mma.cuh"
#include "cuda/swizzled_tile.cuh"
#include "cuda/warp_logits.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

using namespace math;

namespace {

constexpr int kGThreads = 256, kGBM = 128, kGBN = 64;
// The D columns of the gradient one block accumulates: a block of a kD = 256 problem owns one of
// its two slices (blockIdx.z) and recomputes the logits over all of D for it (3U a side, not 2U),
// since 16 rows x 256 fp32 accumulators a warp would not fit beside the rest; its owner rows' A
// fragments are read from shared memory at each step instead of being held in registers.
constexpr int kMaxSlice = 128;
// The q = k kernel with sample ids fits 255 registers up to kD = 64 only: at kD = 128 it spilled 76-92
// bytes in its main loop (make sass), so such problems take the dq and dk kernels instead.
constexpr int kSymmetricIdsMaxD = 64;

// Shared memory: owner rows (kGBM x kD) and two stages of stream rows (kGBN x kD) as swizzled rows
// (swizzled_tile.cuh), and per stage the stream rows' info (float4), labels (and sample ids).
template <int kD, bool kIds>
struct GradLayout {
  static constexpr size_t kOwn = 0;
  static constexpr size_t kStr = kOwn + size_t(kGBM) * kD * 2;
  static constexpr size_t kStageStr = size_t(kGBN) * kD * 2;
  static constexpr size_t kInfo = kStr + 2 * kStageStr;                 // float4 [2][kGBN]
  static constexpr size_t kLabel = kInfo + 2 * kGBN * sizeof(float4);   // int64 [2][kGBN]
  static constexpr size_t kId = kLabel + 2 * kGBN * sizeof(int64_t);    // int64 [2][kGBN], with ids
  static constexpr size_t kBytes = kId + (kIds ? 2 * kGBN * sizeof(int64_t) : 0);
};

template <typename T, int kD, bool kRowOwner, bool kBoth, uint32_t kFeatures>
__global__ void __launch_bounds__(kGThreads, 1)
    grad_mma_kernel(Side<T> own, Side<T> str, Problem p, const float* __restrict__ g_scale, int tiles_per_split,
                    float* __restrict__ part, double* __restrict__ scale_part) {
  constexpr bool kIds = (kFeatures & kSampleIds) != 0, kBias = (kFeatures & kColBias) != 0;
  static_assert(!(kBoth && kBias), "an owned bias is not symmetric: q = k with a bias takes the dq and dk kernels");
  using L = GradLayout<kD, kIds>;
  constexpr int kOut = kD < kMaxSlice ? kD : kMaxSlice, kSFrags = kGBN / 8, kDFrags = kOut / 8;
  constexpr bool kOwnInRegisters = kD <= kMaxSlice;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sOwn = reinterpret_cast<T*>(smem + L::kOwn);
  T* sStr = reinterpret_cast<T*>(smem + L::kStr);
  float4* sInfo = reinterpret_cast<float4*>(smem + L::kInfo);
  int64_t* sLabel = reinterpret_cast<int64_t*>(smem + L::kLabel);
  int64_t* sId = reinterpret_cast<int64_t*>(smem + L::kId);
  __shared__ double s_red[kGThreads / 32];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t own0 = int64_t(blockIdx.x) * kGBM;
  const int slice = kOwnInRegisters ? 0 : static_cast<int>(blockIdx.z), chunk0 = slice * (kOut / 8);
  const int n_tiles = static_cast<int>((str.n + kGBN - 1) / kGBN);
  const int t_begin = blockIdx.y * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
  const float scale = *p.logit_scale;
  // fp16: G' staged times 2^e, within fp16's range; bf16 has fp32's range and stages G' as it is.
  const float gs = std::is_same<T, __half>::value ? *g_scale : 1.f;

  OwnRow o[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) o[h] = own_row(own, own0 + warp * 16 + g + 8 * h);

  // Whether each stage's tile can need masks (tile_masked): decided once per block, by a thread that
  // copies nothing, as the tile's copies are issued, instead of by every thread after them.
  __shared__ int s_masked[2];
  auto issue = [&](int tile, int stage) {
    const int64_t s0 = int64_t(tile) * kGBN;
    load_swizzled<T, kD, kGBN, kGThreads>(sStr + stage * (kGBN * kD), str.x, str.n, p.D, s0);
    if (threadIdx.x == kGThreads - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[stage] = tile_masked<T, kGBM, kGBN, kRowOwner>(own, str, p, own0, s0, tile, kIds, kBias);
    }
    copy_stream_values<T, kGBN>(sInfo + stage * kGBN, sLabel + stage * kGBN, sId + stage * kGBN, str, s0, kIds);
  };
  // The owner rows first, in a group of their own, so the warps take their fragments before the loop.
  load_swizzled<T, kD, kGBM, kGThreads>(sOwn, own.x, own.n, p.D, own0);
  start_two_stage(issue, t_begin, t_end);
  uint32_t oa[kOwnInRegisters ? kD / 16 : 1][4];
  if constexpr (kOwnInRegisters) load_warp_rows<kD>(oa, smem_addr(sOwn), warp, lane);
  const LaneRows<kD> orow = warp_rows<kD>(warp, lane);

  // Stream rows of the ldmatrix x4 for S fragments f, f + 1: (rows 8f | 8f + 8) x (chunk 2s | 2s + 1);
  // transposed, for chunk c of G' and D fragments n, n + 1: (rows 16c | 16c + 8) x (chunk n | n + 1).
  const LaneRows<kD> srow = logit_rows<kD>(lane);
  const LaneRows<kD> trow((lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
  float acc[kDFrags][4];
#pragma unroll
  for (int f = 0; f < kDFrags; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.f;
  double dscale = 0.0;  // row owners: sum of G * dot, a tile's fp32 share at a time
  const float c2 = scale * kLog2e;
  const float ow2[2] = {o[0].rn * c2, o[1].rn * c2};  // the owner rows' share of the base-2 logit factor

  for (int tile = t_begin; tile < t_end; ++tile) {
    const int stage = next_two_stage(issue, tile, t_begin, t_end);
    const SmemAddr sa = smem_addr(sStr) + stage * L::kStageStr;
    const float4* info = sInfo + stage * kGBN;

    // S (16 owner rows x 64 stream rows per warp) = own . str^T.
    float g[kSFrags][4];
    if constexpr (kOwnInRegisters) {
      warp_logits<T, kD, kGBN>(g, oa, sa, srow);
    } else {
      warp_logits_from_smem<T, kD, kGBN>(g, smem_addr(sOwn), orow, sa, srow);
    }

    // G' = G / |stream row| (times gs) in place: element e of fragment f is owner row h = e / 2 and
    // stream row c = f * 8 + 2 t4 + e % 2 of the tile. The q row's lse, grad and 1/num_pos come from
    // the owner side when it is q (registers), else from the stream side (shared memory).
    const int64_t s0 = int64_t(tile) * kGBN;
    const bool masked = s_masked[stage];
    float tile_dscale = 0.f;
    if (!masked) {
      // Per element: G' = G (plain_pair_grad) / |stream row| * gs; the scale gradient takes the owner's
      // 1 / norm once a tile.
      float row_dscale[2] = {0.f, 0.f};
#pragma unroll
      for (int f = 0; f < kSFrags; ++f) {
        const float4 i0 = info[f * 8 + 2 * t4], i1 = info[f * 8 + 2 * t4 + 1];
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1;
          const float4& si = (e & 1) ? i1 : i0;
          g[f][e] = plain_pair_grad<kRowOwner, kBoth>(o[h], ow2[h], si, g[f][e], row_dscale[h]) * (si.x * gs);
        }
      }
      tile_dscale = row_dscale[0] * o[0].rn + row_dscale[1] * o[1].rn;
    } else {  // sass: rare
      const int64_t* lab = sLabel + stage * kGBN;
      const int64_t* sid = sId + stage * kGBN;
      int64_t oid[2];  // the owner rows' sample ids (read here: no register holds them through the loop)
#pragma unroll
      for (int h = 0; h < 2; ++h) oid[h] = kIds && o[h].i < own.n ? own.ids[o[h].i] : -1;
#pragma unroll
      for (int f = 0; f < kSFrags; ++f) {
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1, c = f * 8 + 2 * t4 + (e & 1);
          const float4 si = info[c];
          // masked_pair_grad (grad_tile.cuh) spelled out: called, nvcc 13.0 gives the kD = 128 k-owner
          // kernel with ids 27 more registers and a spill (make sass).
          const int64_t sr = s0 + c, i = kRowOwner ? o[h].i : sr, j = kRowOwner ? sr : o[h].i;
          const bool in_pair = sr < str.n && o[h].i < own.n && !is_self(i, j, p.row_offset, p.exclude_self);
          const bool pos = is_positive(kRowOwner ? o[h].label : lab[c], kRowOwner ? lab[c] : o[h].label);
          const int64_t row_id = kIds ? (kRowOwner ? oid[h] : sid[c]) : -1;
          const int64_t col_id = kIds ? (kRowOwner ? sid[c] : oid[h]) : -1;
          const bool valid = in_pair && !(kIds && !pos && is_masked_negative(row_id, col_id));
          const bool valid_t = in_pair && !(kIds && !pos && is_masked_negative(col_id, row_id));
          const float dot = g[f][e] * o[h].rn * si.x;
          const float grad = kRowOwner ? o[h].grad : si.z;
          const float lse2 = kRowOwner ? o[h].lse2 : si.y * kLog2e;
          const float inv = kRowOwner ? o[h].inv : si.w;
          float bias2 = 0.f;
          if (kBias && in_pair) {
            const int64_t col = kRowOwner ? sr : o[h].i;
            if (p.col_bias_owner[col] == (kRowOwner ? o[h].label : lab[c])) bias2 = p.col_info[col].y * kLog2e;
          }
          float gp = 0.f;
          if (valid && grad != 0.f) gp = grad * (ex2_approx(fmaf(dot, c2, bias2 - lse2)) - (pos ? inv : 0.f));
          if (kRowOwner) tile_dscale = fmaf(gp, dot, tile_dscale);
          if (kBoth && valid_t && si.z != 0.f) {
            gp += si.z * (ex2_approx(fmaf(dot, c2, -si.y * kLog2e)) - (pos ? si.w : 0.f));
          }
          g[f][e] = gp * si.x * gs;
        }
      }
    }
    dscale += double(tile_dscale);

    // acc += G' . str: the G' fragments of stream rows [16 c, 16 c + 16) are the A operand of chunk c;
    // the stream tile, (stream row, d) in shared memory, is read transposed as B.
    warp_grad_product<T, kD, kOut, kGBN>(acc, g, sa, trow, chunk0, false);
    if (masked) warp_grad_product<T, kD, kOut, kGBN>(acc, g, sa, trow, chunk0, true);  // sass: rare (the low part of G')
    __syncthreads();  // the stage is free for the prefetch two tiles on
  }
  cp_async_wait_all();

  // part[split][owner row][d] = acc / gs.
  store_grad_slice<kOut>(acc, part + int64_t(blockIdx.y) * own.n * p.D, o[0].i, own.n, p.D, slice, t4, 1.f / gs);
  if (kRowOwner && slice == 0) {  // every slice forms the same G; the first one sums the scale gradient
    block_sum_to(dscale, s_red, scale_part, int64_t(blockIdx.y) * gridDim.x + blockIdx.x);
  }
}

template <typename T, int kD, bool kRowOwner, bool kBoth, uint32_t kFeatures>
void launch_grad_mma(const Side<T>& own, const Side<T>& str, const Problem& p, const float* g_scale, int64_t per,
                     dim3 grid, float* part, double* scale_part, dev::Stream stream) {
  constexpr auto kernel = grad_mma_kernel<T, kD, kRowOwner, kBoth, kFeatures>;
  constexpr size_t smem = GradLayout<kD, (kFeatures & kSampleIds) != 0>::kBytes;
  dev::allow_dynamic_smem<kernel>("fastcl", smem);
  dev::launch<kernel>(grid, kGThreads, smem, stream, own, str, p, g_scale, static_cast<int>(per), part, scale_part);
}

// The instantiation for D and the problem's features (kSampleIds, kColBias); the symmetric kernel
// is instantiated without a bias, and with ids up to kSymmetricIdsMaxD (backward_mma_symmetric);
// kD = 256 without features (kWideFeatures).
template <typename T, bool kRowOwner, bool kBoth>
void launch_grad_mma(int64_t D, uint32_t features, const Side<T>& own, const Side<T>& str, const Problem& p,
                     const float* g_scale, int64_t per, dim3 grid, float* part, double* scale_part,
                     dev::Stream stream) {
  with_width<64, 128, 256>(D, [&](auto w) {
    constexpr int kD = decltype(w)::value;
    const auto run = [&](auto f) {
      launch_grad_mma<T, kD, kRowOwner, kBoth, decltype(f)::value>(own, str, p, g_scale, per, grid, part, scale_part,
                                                                   stream);
    };
    using std::integral_constant;
    const uint32_t used = features & (kSampleIds | kColBias);
    if constexpr (kD > kMaxSlice) {
      TORCH_INTERNAL_ASSERT(used == 0, "fastcl: the kD = 256 mma backward has no features");
      run(integral_constant<uint32_t, 0>{});
    } else if constexpr (kBoth) {
      TORCH_INTERNAL_ASSERT(used == 0 || (used == kSampleIds && kD <= kSymmetricIdsMaxD),
                            "fastcl: no symmetric mma backward for these features");
      if constexpr (kD <= kSymmetricIdsMaxD) {
        if (used == kSampleIds) return run(integral_constant<uint32_t, kSampleIds>{});
      }
      run(integral_constant<uint32_t, 0>{});
    } else {
      switch (used) {
        case 0: run(integral_constant<uint32_t, 0>{}); break;
        case kSampleIds: run(integral_constant<uint32_t, kSampleIds>{}); break;
        case kColBias: run(integral_constant<uint32_t, kColBias>{}); break;
        default: run(integral_constant<uint32_t, kColBias | kSampleIds>{});
      }
    }
  });
}

// Whether the wide kernel (contrastive_backward_wide.cu) takes the problem: the wide forward's
// (256 < D <= 768), and 128 < D <= 256 with sample ids or an owned bias, which the kD = 256 kernel
// here is not instantiated for.
bool grad_wide_takes(const Inputs& in, size_t element_size) {
  const bool featured = in.D > kMaxSlice && in.D <= 2 * kMaxSlice && (in.has(kSampleIds) || in.has(kColBias));
  return (forward_wide_applies(in, element_size) || (featured && forward_mma_applies(in, element_size))) &&
         grad_wide_smem(in.D) + 1024 <= static_cast<size_t>(dev::properties().sharedMemPerBlockOptin);
}

}  // namespace

bool backward_mma_applies(const Inputs& in, size_t element_size) {
  return (forward_mma_applies(in, element_size) &&
          (in.D <= kMaxSlice || (in.D <= 2 * kMaxSlice && !in.has(kSampleIds) && !in.has(kColBias)))) ||
         grad_wide_takes(in, element_size);
}

bool pair_backward_fused(const Inputs& in, size_t element_size) {
  return element_size == 2 && backward_mma_applies(in, element_size);
}

bool backward_mma_symmetric(const Inputs& in, size_t element_size) {
  return backward_mma_applies(in, element_size) && in.has(kSelfSimilarity) && !in.has(kRowOffset) &&
         !in.has(kConstantCols) && !in.has(kColBias) &&
         (!in.has(kSampleIds) || in.D <= kSymmetricIdsMaxD || in.D > kMaxSlice);  // wide: ids at run time
}

template <typename T, bool kRowOwner>
int64_t grad_mma_partials(const Inputs& in, const at::Tensor& own_x, const at::Tensor& str_x, at::Tensor& part,
                          at::Tensor* scale_part, dev::Stream stream, Transposed transposed) {
  const bool both = transposed != Transposed::kNone;
  const Problem p = in.problem();
  const int64_t n_own = own_x.size(0), n_str = str_x.size(0);
  // The wide kernel's 32-row blocks and tiles, no slices (contrastive_backward_wide.cu).
  const bool wide = grad_wide_takes(in, sizeof(T));
  const int own_rows = wide ? kRowsW : kGBM, str_rows = wide ? kColsW : kGBN;
  const int64_t blocks = ceil_div(n_own, own_rows), tiles = ceil_div(n_str, str_rows);
  const int64_t slices = wide ? 1 : ceil_div(in.D, kMaxSlice);
  const Split split = split_stream(blocks * slices, tiles);
  const at::Tensor& own_labels = kRowOwner ? in.row_labels : in.col_labels;
  const at::Tensor& str_labels = kRowOwner ? in.col_labels : in.row_labels;
  const at::Tensor& own_info = kRowOwner ? in.row_info : in.col_info;
  // q = k: the stream rows are q rows too, with the lse, grad and 1/num_pos of G_ji.
  const at::Tensor& str_info = !kRowOwner || transposed == Transposed::kSelf ? in.row_info : in.col_info;
  // Column labels below zero are never positives: their side's ranges leave them out.
  const auto kind = [](bool columns) { return columns ? RangeOf::kNonNegativeLabels : RangeOf::kLabels; };
  const at::Tensor own_range = tile_ranges(own_labels, n_own, own_rows, kind(!kRowOwner), stream);
  const at::Tensor str_range = tile_ranges(str_labels, n_str, str_rows, kind(kRowOwner), stream);
  const at::Tensor& own_ids = kRowOwner ? in.row_ids : in.col_ids;
  const at::Tensor& str_ids = kRowOwner ? in.col_ids : in.row_ids;
  at::Tensor own_id_range, str_id_range;
  if (in.has(kSampleIds)) {
    own_id_range = tile_ranges(own_ids, n_own, own_rows, RangeOf::kIds, stream);
    str_id_range = tile_ranges(str_ids, n_str, str_rows, RangeOf::kIds, stream);
  }
  // With an owned bias, the column side's owner ranges (kLabels: an owner -1 may meet a row label -1).
  at::Tensor owner_range;
  if (in.has(kColBias)) {
    owner_range = tile_ranges(in.col_bias_owner, in.L, kRowOwner ? str_rows : own_rows, RangeOf::kLabels, stream);
  }
  const Side<T> own{ptr<T>(own_x),           ptr<float4>(own_info),  ptr<int64_t>(own_labels),
                    n_own,                   ptr<int64_t>(own_range), ptr<int64_t>(own_ids),
                    ptr<int64_t>(own_id_range), kRowOwner ? nullptr : ptr<int64_t>(owner_range)};

  // fp16 holds G' scaled by a power of two that puts the largest possible |G'| (max grad times the
  // largest stream 1/norm) just under 2^15; bf16 has fp32's range. An all-zero stream row has
  // 1/norm = 1/eps (~1e12) and a zero product whatever its G: its 1/norm is zeroed in a copy of the
  // stream info, so it neither sets the scale (flushing every other G) nor overflows fp16.
  at::Tensor g_scale, str_info_used = str_info;
  if (std::is_same<T, __half>::value) {
    str_info_used = str_info.narrow(0, 0, n_str).clone();
    at::Tensor inv_norm = str_info_used.select(1, 0);
    inv_norm.masked_fill_(inv_norm >= 0.5 / kNormEps, 0.0);
    at::Tensor top_grad = in.row_info.select(1, 2).abs().max();
    if (transposed == Transposed::kPair) top_grad = at::maximum(top_grad, str_info.select(1, 2).abs().max());
    const at::Tensor bound = top_grad * inv_norm.max();
    const double top = both ? 13.0 : 14.0;  // G_ij plus its transposed term is at most twice either
    g_scale = at::exp2(at::clamp(top - at::floor(at::log2(bound)), -100.0, 100.0)).to(at::kFloat);
  }
  const Side<T> str{ptr<T>(str_x),           ptr<float4>(str_info_used), ptr<int64_t>(str_labels),
                    n_str,                   ptr<int64_t>(str_range),    ptr<int64_t>(str_ids),
                    ptr<int64_t>(str_id_range), kRowOwner ? ptr<int64_t>(owner_range) : nullptr};
  part = at::empty({split.count, n_own, in.D}, own_x.options().dtype(at::kFloat));
  if (kRowOwner) *scale_part = at::empty({blocks * split.count}, own_x.options().dtype(at::kDouble));
  const dim3 grid = grid_of(blocks, split.count, slices);
  float* part_ptr = part.data_ptr<float>();
  double* scale_ptr = kRowOwner ? scale_part->data_ptr<double>() : nullptr;
  const float* gs = g_scale.defined() ? g_scale.data_ptr<float>() : nullptr;

  if (wide) {
    if (kRowOwner && both) {
      launch_grad_wide<T, true, true>(in.D, own, str, p, gs, split.per, grid, part_ptr, scale_ptr, stream);
    } else {
      launch_grad_wide<T, kRowOwner, false>(in.D, own, str, p, gs, split.per, grid, part_ptr, scale_ptr, stream);
    }
    return split.count;
  }
  if constexpr (kRowOwner) {
    if (both) {
      launch_grad_mma<T, true, true>(in.D, in.features, own, str, p, gs, split.per, grid, part_ptr, scale_ptr,
                                     stream);
      return split.count;
    }
  }
  launch_grad_mma<T, kRowOwner, false>(in.D, in.features, own, str, p, gs, split.per, grid, part_ptr, scale_ptr,
                                       stream);
  return split.count;
}

template int64_t grad_mma_partials<__half, true>(const Inputs&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                                                 at::Tensor*, dev::Stream, Transposed);
template int64_t grad_mma_partials<__half, false>(const Inputs&, const at::Tensor&, const at::Tensor&, at::Tensor&,
                                                  at::Tensor*, dev::Stream, Transposed);
template int64_t grad_mma_partials<__nv_bfloat16, true>(const Inputs&, const at::Tensor&, const at::Tensor&,
                                                        at::Tensor&, at::Tensor*, dev::Stream, Transposed);
template int64_t grad_mma_partials<__nv_bfloat16, false>(const Inputs&, const at::Tensor&, const at::Tensor&,
                                                         at::Tensor&, at::Tensor*, dev::Stream, Transposed);

}  // namespace fastcl::gpu

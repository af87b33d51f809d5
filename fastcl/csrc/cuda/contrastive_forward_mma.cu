// The fp16/bf16 forward of the contrastive core in the FlashAttention-2 shape (semantics:
// csrc/README.md), for problems without a hardness penalty or an ownerless column bias, D <= 256
// with 16-byte rows (pad_rows_for_mma pads others); sample ids and an owned column bias (SimCSE's
// hard-negative weight) are compile-time features (kFeatures). Other problems take forward_kernel (contrastive_forward.cu).
//
// A block owns 128 rows (8 warps x 16) and streams 64-column tiles through a two-stage cp.async
// pipeline into XOR-swizzled shared memory. Each warp keeps its 16 x D slice of q in registers
// (ldmatrix once), forms its 16 x 64 logits with mma.sync m16n8k16 in fp32 accumulators, and
// folds them into a per-row online log-sum-exp on the fragments themselves: logits scaled to
// base 2 (logit_scale * log2(e) / |q_i| per row, 1 / |k_j| per column), exp2 on the MUFU, row
// maxima over the quad with two shuffles. Masks run only on tiles that can hold an excluded pair
// (the diagonal, the last partial tile) or a positive (row and column label ranges overlap, read
// from a pre-pass; or id ranges, or row label and column owner ranges): the other tiles run no
// per-pair rule.
#include <ATen/ATen.h>

#include "common/contrastive_math.h"
#include "common/online_lse.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/forward_fold.cuh"
#include "cuda/mma.cuh"
#include "cuda/swizzled_tile.cuh"
#include "cuda/warp_logits.cuh"
#include "cuda/tile_math.cuh"

namespace fastcl::gpu {

using namespace math;

namespace {

// Shared memory of forward_mma_kernel<T, kD, kIds>: q (kBM x kD) and two stages of k (kBN x kD) as
// swizzled rows (swizzled_tile.cuh), and per stage the columns' inverse norms, labels (and ids).
template <int kD, bool kIds>
struct MmaLayout {
  static constexpr size_t kQ = 0;
  static constexpr size_t kK = kQ + size_t(kBM) * kD * 2;
  static constexpr size_t kStageK = size_t(kBN) * kD * 2;
  static constexpr size_t kColNorm = kK + 2 * kStageK;                      // float [2][kBN]
  static constexpr size_t kColLabel = kColNorm + 2 * kBN * sizeof(float);  // int64 [2][kBN]
  static constexpr size_t kColId = kColLabel + 2 * kBN * sizeof(int64_t);  // int64 [2][kBN], with ids
  static constexpr size_t kBytes = kColId + (kIds ? 2 * kBN * sizeof(int64_t) : 0);
};

// partial[split][row] = (running max, sum of exp, positive logit sum, positive count), natural log.
template <typename T, int kD, uint32_t kFeatures>
__global__ void __launch_bounds__(kMmaThreads, kD <= 128 ? 2 : 1)
    forward_mma_kernel(const T* __restrict__ q, const T* __restrict__ k, Problem p,
                       const float* __restrict__ col_norm, const int64_t* __restrict__ row_range,
                       const int64_t* __restrict__ col_range, const int64_t* __restrict__ row_id_range,
                       const int64_t* __restrict__ col_id_range, const int64_t* __restrict__ owner_range,
                       int tiles_per_split, float4* __restrict__ partial) {
  constexpr bool kIds = (kFeatures & kSampleIds) != 0, kBias = (kFeatures & kColBias) != 0;
  using L = MmaLayout<kD, kIds>;
  constexpr int kSteps = kD / 16, kFrags = kBN / 8;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sQ = reinterpret_cast<T*>(smem + L::kQ);
  T* sK = reinterpret_cast<T*>(smem + L::kK);
  float* sNorm = reinterpret_cast<float*>(smem + L::kColNorm);
  int64_t* sLabel = reinterpret_cast<int64_t*>(smem + L::kColLabel);
  int64_t* sId = reinterpret_cast<int64_t*>(smem + L::kColId);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t row0 = int64_t(blockIdx.x) * kBM;
  const int n_tiles = static_cast<int>((p.L + kBN - 1) / kBN);
  const int t_begin = blockIdx.y * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);

  // This thread's two rows are g and g + 8 of its warp's 16 (their index and label are re-read where
  // the rare masks need them, so no 64-bit register stays live through the loop): base-2 factors.
  const int64_t my_row = row0 + warp * 16 + g;
  float a[2];
  row_factors(a, p, my_row);

  // Whether each stage's tile can need masks (tile_may_mask): decided once per block, by a thread
  // that copies nothing, as the tile's copies are issued, instead of by every thread after them.
  __shared__ int s_masked[2];
  auto issue = [&](int tile, int stage) {
    const int64_t col0 = int64_t(tile) * kBN;
    load_swizzled<T, kD, kBN, kMmaThreads>(sK + stage * (kBN * kD), k, p.L, p.D, col0);
    load_col_values<kIds>(sNorm + stage * kBN, sLabel + stage * kBN, sId + stage * kBN, p, col_norm, col0);
    if (threadIdx.x == kMmaThreads - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[stage] = forward_tile_masked<kIds, kBias>(p, row0, col0, blockIdx.x, tile, row_range, col_range,
                                                         row_id_range, col_id_range, owner_range);
    }
  };
  // The q rows first, in a group of their own, so the warps take their fragments before the loop.
  load_swizzled<T, kD, kBM, kMmaThreads>(sQ, q, p.M, p.D, row0);
  start_two_stage(issue, t_begin, t_end);
  uint32_t qa[kSteps][4];
  load_warp_rows<kD>(qa, smem_addr(sQ), warp, lane);

  const LaneRows<kD> krow = logit_rows<kD>(lane);
  RowRun run;

  for (int tile = t_begin; tile < t_end; ++tile) {
    const int stage = next_two_stage(issue, tile, t_begin, t_end);

    // S (16 x 64 per warp) = q_w . k_tile^T.
    float acc[kFrags][4];
    warp_logits<T, kD, kBN>(acc, qa, smem_addr(sK) + stage * L::kStageK, krow);

    fold_tile<kFrags, kIds, kBias>(acc, run, a, p, my_row, int64_t(tile) * kBN, sNorm + stage * kBN,
                                   sLabel + stage * kBN, sId + stage * kBN, s_masked[stage], t4);
    __syncthreads();  // the stage is free for the prefetch two tiles on
  }
  cp_async_wait_all();  // without column tiles the row copies above were never waited for
  write_row_partials(run, p, my_row, t4, partial);
}

// {min, max} of values[tile * size, +size) as RangeOf `what` says (an empty set gives min > max).
__global__ void range_kernel(const int64_t* __restrict__ values, int64_t n, int size, RangeOf what,
                             int64_t* __restrict__ out) {
  const int64_t tile = int64_t(blockIdx.x) * blockDim.x + threadIdx.x;
  if (tile * size >= n) return;
  int64_t lo = INT64_MAX, hi = INT64_MIN;
  for (int64_t i = tile * size; i < min(n, (tile + 1) * size); ++i) {
    const int64_t v = values[i];
    if (what == RangeOf::kIds && v == kPositiveOnly) {  // masks every row: the whole line
      lo = INT64_MIN;
      hi = INT64_MAX;
      break;
    }
    if (what != RangeOf::kLabels && v < 0) continue;
    lo = min(lo, v);
    hi = max(hi, v);
  }
  out[2 * tile] = lo;
  out[2 * tile + 1] = hi;
}

template <typename T, int kD, uint32_t kFeatures>
void launch_forward_mma(const Inputs& in, const Problem& p, const ColumnTables& tab, const Split& split,
                        at::Tensor& partial, dev::Stream stream) {
  constexpr auto kernel = forward_mma_kernel<T, kD, kFeatures>;
  constexpr size_t smem = MmaLayout<kD, (kFeatures & kSampleIds) != 0>::kBytes;
  dev::allow_dynamic_smem<kernel>("fastcl", smem);
  dev::launch<kernel>(grid_of(ceil_div(in.M, kBM), split.count), kMmaThreads, smem, stream, ptr<T>(in.q),
                      ptr<T>(in.k), p, tab.norm.data_ptr<float>(), ptr<int64_t>(tab.row_range),
                      ptr<int64_t>(tab.col_range), ptr<int64_t>(tab.row_id_range), ptr<int64_t>(tab.col_id_range),
                      ptr<int64_t>(tab.owner_range), static_cast<int>(split.per),
                      reinterpret_cast<float4*>(partial.data_ptr<float>()));
}

}  // namespace

at::Tensor tile_ranges(const at::Tensor& values, int64_t n, int tile, RangeOf what, dev::Stream stream) {
  const int64_t tiles = ceil_div(n, tile);
  at::Tensor out = at::empty({std::max<int64_t>(tiles, 1) * 2}, values.options());
  if (tiles > 0) {
    dev::launch<range_kernel>(grid_of(ceil_div(tiles, kMmaThreads)), kMmaThreads, 0, stream, ptr<int64_t>(values),
                              n, tile, what, out.data_ptr<int64_t>());
  }
  return out;
}

namespace {

}  // namespace

bool mma_takes_features(const Inputs& in, size_t element_size) {
  return element_size == 2 && in.only(kMmaFeatures) && !(in.has(kColBias) && !in.col_bias_owner.defined());
}

void pad_rows_for_mma(Inputs& in) {
  const int64_t pad = (8 - in.D % 8) % 8;
  if (!mma_takes_features(in, in.q.element_size()) || in.D == 0 || in.D + pad > kMaxWideD || in.vectorisable()) {
    return;
  }
  Inputs padded = in;
  const auto copy = [&](const at::Tensor& x) { return pad > 0 ? at::constant_pad_nd(x, {0, pad}) : x.clone(); };
  padded.q = copy(in.q);
  padded.k = in.k.is_same(in.q) ? padded.q : copy(in.k);
  padded.D = in.D + pad;
  if (forward_mma_applies(padded, 2) || forward_wide_applies(padded, 2)) in = padded;
}

bool forward_mma_applies(const Inputs& in, size_t element_size) {
  if (!mma_takes_features(in, element_size) || in.D > 256 || !in.vectorisable()) return false;
  // kD = 256 needs 130 KiB: more than the 99 KiB a block may have on compute capability 8.6 / 8.9,
  // where those widths keep forward_kernel (the 1 KiB a resident block reserves counts too).
  size_t smem = 0;
  with_width<64, 128, 256>(in.D, [&](auto w) {
    constexpr int kD = decltype(w)::value;
    smem = in.has(kSampleIds) ? MmaLayout<kD, true>::kBytes : MmaLayout<kD, false>::kBytes;
  });
  return smem + 1024 <= static_cast<size_t>(dev::properties().sharedMemPerBlockOptin);
}

ColumnTables column_tables(const Inputs& in, dev::Stream stream) {
  ColumnTables tab;
  tab.row_range = tile_ranges(in.row_labels, in.M, kBM, RangeOf::kLabels, stream);
  tab.col_range = tile_ranges(in.col_labels, in.L, kBN, RangeOf::kNonNegativeLabels, stream);
  if (in.has(kSampleIds)) {
    tab.row_id_range = tile_ranges(in.row_ids, in.M, kBM, RangeOf::kIds, stream);
    tab.col_id_range = tile_ranges(in.col_ids, in.L, kBN, RangeOf::kIds, stream);
  }
  if (in.has(kColBias)) tab.owner_range = tile_ranges(in.col_bias_owner, in.L, kBN, RangeOf::kLabels, stream);
  tab.norm = at::zeros({ceil_div(in.L, kBN) * kBN}, in.q.options().dtype(at::kFloat));
  tab.norm.narrow(0, 0, in.L).copy_(in.col_info.select(1, 0) * at::sign(in.logit_scale));
  return tab;
}

template <typename T>
Split forward_mma_impl(const Inputs& in, dev::Stream stream, at::Tensor& partial) {
  const Problem p = in.problem();
  const Split split = split_stream(ceil_div(in.M, kBM), ceil_div(in.L, kBN));
  const ColumnTables tab = column_tables(in, stream);
  partial = at::empty({split.count * in.M * 4}, in.q.options().dtype(at::kFloat));
  with_width<64, 128, 256>(in.D, [&](auto w) {
    constexpr int kD = decltype(w)::value;
    switch (in.features & (kSampleIds | kColBias)) {
      case 0: launch_forward_mma<T, kD, 0>(in, p, tab, split, partial, stream); break;
      case kSampleIds: launch_forward_mma<T, kD, kSampleIds>(in, p, tab, split, partial, stream); break;
      case kColBias: launch_forward_mma<T, kD, kColBias>(in, p, tab, split, partial, stream); break;
      default: launch_forward_mma<T, kD, kColBias | kSampleIds>(in, p, tab, split, partial, stream);
    }
  });
  return split;
}

template Split forward_mma_impl<__half>(const Inputs&, dev::Stream, at::Tensor&);
template Split forward_mma_impl<__nv_bfloat16>(const Inputs&, dev::Stream, at::Tensor&);

}  // namespace fastcl::gpu

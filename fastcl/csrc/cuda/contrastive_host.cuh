// Host-side pieces of the CUDA contrastive ops: the prepared inputs, launch-shape helpers, and
// the entry points of the forward and backward kernels (contrastive_forward.cu,
// contrastive_backward.cu), which contrastive.cu calls for float, __half and __nv_bfloat16.
#pragma once
#include <ATen/ATen.h>

#include <algorithm>
#include <cstdint>
#include <type_traits>

#include "checks.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/device_api.cuh"

namespace fastcl::gpu {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }

// Calls f(std::integral_constant<int, w>{}) for the first width w >= D of kWidths (the mma kernels'
// kD instantiations); false when D is wider than all of them.
template <int... kWidths, typename F>
bool with_width(int64_t D, F&& f) {
  return ((D <= kWidths ? (f(std::integral_constant<int, kWidths>{}), true) : false) || ...);
}

inline dim3 grid_of(int64_t x, int64_t y = 1, int64_t z = 1) {
  check_grid(x, y, z);
  return dim3(static_cast<unsigned>(x), static_cast<unsigned>(y), static_cast<unsigned>(z));
}

template <typename T>
const T* ptr(const at::Tensor& t) {
  return t.defined() ? static_cast<const T*>(t.data_ptr()) : nullptr;
}

// The checked problem (contiguous operands, kept alive here while the kernels run) and the packed
// per-row values.
struct Inputs : ContrastiveArgs {
  at::Tensor grad, lse, num_pos, row_info, col_info;
  int64_t grad_cols = 0;  // backward: columns [0, grad_cols) get a gradient, the rest are constants

  explicit Inputs(const ContrastiveArgs& a) : ContrastiveArgs(a) {}

  Problem problem() const {
    // clang-format off
    return {ptr<int64_t>(row_labels), ptr<int64_t>(col_labels), ptr<int64_t>(col_bias_owner), ptr<int64_t>(row_ids),
            ptr<int64_t>(col_ids), ptr<float4>(row_info), ptr<float4>(col_info), ptr<float>(logit_scale), M, L, D,
            row_offset, grad_cols, static_cast<float>(hardness), hardness_mode, exclude_self, has(kColBias),
            has(kSampleIds)};
    // clang-format on
  }
  // 16-byte copies need every row of both operands to start on a 16-byte boundary.
  bool vectorisable() const {
    const auto aligned = [](const at::Tensor& t) { return reinterpret_cast<uintptr_t>(t.data_ptr()) % 16 == 0; };
    return D > 0 && (D * q.element_size()) % 16 == 0 && aligned(q) && aligned(k);
  }
};

// Splits the stream tiles so that small problems still put about four blocks on every SM.
struct Split {
  int64_t count, per;
};
inline Split split_stream(int64_t blocks, int64_t tiles) {
  if (tiles == 0) return {1, 1};
  const int64_t sms = dev::properties().multiProcessorCount;
  const int64_t want = std::min({std::max<int64_t>(1, ceil_div(4 * sms, blocks)), tiles, int64_t(65535)});
  const int64_t per = ceil_div(tiles, want);
  return {ceil_div(tiles, per), per};
}

// The features the mma kernels implement (contrastive_args.h), kSampleIds and kColBias (with owners
// only) as compile-time flags of their instantiations; a problem with any other runs the general
// kernels.
constexpr uint32_t kMmaFeatures =
    kExcludeSelf | kRowOffset | kConstantCols | kNormalize | kSelfSimilarity | kSampleIds | kColBias;

// fp16/bf16 and only the features the mma kernels implement (an owned bias, not an ownerless one).
bool mma_takes_features(const Inputs& in, size_t element_size);
// The widest D (after padding to a multiple of 8) an mma forward takes (forward_wide_applies).
constexpr int64_t kMaxWideD = 768;

// Whether forward_mma_impl takes this problem (fp16/bf16, only kMmaFeatures, D <= 256, 16-byte rows):
// the FlashAttention-2 style kernel of contrastive_forward_mma.cu.
bool forward_mma_applies(const Inputs& in, size_t element_size);
// Rows the mma kernels cannot copy in 16-byte chunks (D not a multiple of 8, or a base address off
// 16 bytes) are copied once into fresh rows zero-padded to the next multiple of 8, when that makes
// forward_mma_applies hold: an O((M + L) D) pass, and zero columns change no dot product or norm.
// in.D becomes the padded width (the backward's gradients are computed that wide and narrowed).
void pad_rows_for_mma(Inputs& in);
// Fills partial (split.count x M float4: max, sum of exp, positive sum, positive count) with the
// mma kernel; returns the split of the columns it used.
template <typename T>
Split forward_mma_impl(const Inputs& in, dev::Stream stream, at::Tensor& partial);

// Whether forward_wide_impl takes this problem: as forward_mma_applies, but 256 < D <= 768 (CLIP's 512
// and 768, BERT's 768, MiniLM's 384), where q's rows no longer fit in registers
// (contrastive_forward_wide.cu). Its shared memory grows with D: on compute capability 8.x only
// some widths fit, and the others keep forward_kernel.
bool forward_wide_applies(const Inputs& in, size_t element_size);
// As forward_mma_impl, with the wide kernel.
template <typename T>
Split forward_wide_impl(const Inputs& in, dev::Stream stream, at::Tensor& partial);

// The mma forwards' column side: inverse norms times sign(scale), padded to whole 64-column tiles, and
// the label (id, bias owner) ranges of each 128-row block and 64-column tile that say which tiles
// may need masks (tile_may_mask).
struct ColumnTables {
  at::Tensor norm, row_range, col_range, row_id_range, col_id_range, owner_range;
};
ColumnTables column_tables(const Inputs& in, dev::Stream stream);

// Which values of a tile its {min, max} range covers (range_kernel, contrastive_forward_mma.cu).
enum class RangeOf : int {
  kLabels = 0,             // every label (rows)
  kNonNegativeLabels = 1,  // columns: a negative label is never a positive
  kIds = 2,                // sample ids >= 0; a tile holding POSITIVE_ONLY gets {INT64_MIN, INT64_MAX}
};
// {min, max} of values[t * tile, (t + 1) * tile) for each tile t of the first n values (max < min
// when none counts): the mma kernels mask only tiles whose row and column ranges overlap.
at::Tensor tile_ranges(const at::Tensor& values, int64_t n, int tile, RangeOf what, dev::Stream stream);

// Whether grad_mma_partials takes this problem: forward_mma_applies and D <= 128, or D <= 256 without
// sample ids or a column bias; or, in the wide backward, the wide forward's problems (256 < D <= 768)
// and 128 < D <= 256 with those features.
bool backward_mma_applies(const Inputs& in, size_t element_size);
// And whether one pass over q's rows can give the whole gradient (kSelfSimilarity, no row offset or
// constant columns, no column bias; with sample ids D <= 64): G + G^T from each recomputed tile, 3U in all.
bool backward_mma_symmetric(const Inputs& in, size_t element_size);

// Which transposed term the row owners' pass adds to G_ij from the same logit: none (q != k), G_ji of
// q = k (the stream rows are q rows: their lse, grad and 1/num_pos are row_info's), or the column
// direction of a paired loss (CLIP: col_info holds the columns' own lse, grad and 1/num_pos, so
// G_ij + G^col_ij is the whole gradient of the row side, and the same pass with the sides swapped
// gives the other side's).
enum class Transposed { kNone, kSelf, kPair };

// The mma backward of one side (kRowOwner: q rows, else the k columns own_x holds) into
// part (splits x n_own x D fp32, the sum over splits is G' . stream rows) and, for q rows,
// scale_part (the row direction's share of the scale gradient only); returns the number of
// splits (contrastive_backward_mma.cu).
template <typename T, bool kRowOwner>
int64_t grad_mma_partials(const Inputs& in, const at::Tensor& own_x, const at::Tensor& str_x, at::Tensor& part,
                          at::Tensor* scale_part, dev::Stream stream, Transposed transposed);

// loss, lse, num_pos (M,) fp32 from inputs whose row_info / col_info are packed (M, L > 0).
template <typename T>
void forward_impl(const Inputs& in, dev::Stream stream, at::Tensor& loss, at::Tensor& lse, at::Tensor& num_pos);

// grad_q, grad_k (input dtype) and grad_scale (0-dim fp32) from packed inputs (M, L, D > 0);
// `normalize`: apply the normalisation gradient (the rows were not normalised in a pre-pass).
template <typename T>
void backward_impl(const Inputs& in, bool normalize, dev::Stream stream, at::Tensor& grad_q, at::Tensor& grad_k,
                   at::Tensor& grad_scale);

// Whether pair_backward_impl takes this problem (a paired loss: a as q, b as k, labels 0..M-1 on
// both sides; row_info and col_info {1/|x|, lse, grad, 1}): fp16/bf16 on the mma kernels.
bool pair_backward_fused(const Inputs& in, size_t element_size);
// CLIP's backward from one recomputed logit tile per pass: grad_a from a's rows against b with both
// directions' G, then grad_b with the sides swapped; 4U where two calls of backward_impl run 8U.
template <typename T>
void pair_backward_impl(const Inputs& in, bool normalize, dev::Stream stream, at::Tensor& grad_a, at::Tensor& grad_b,
                        at::Tensor& grad_scale);

}  // namespace fastcl::gpu

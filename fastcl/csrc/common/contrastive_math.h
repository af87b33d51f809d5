// The per-pair rules of the contrastive core, shared by the CPU and CUDA kernels so
// that both agree on which pairs are masked, which are positive and which get a bias.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace fastcl::math {

// Column j is the anchor itself (row i, shifted into column space by row_offset).
FASTCL_HD bool is_self(int64_t i, int64_t j, int64_t row_offset, bool exclude_self) {
  return exclude_self && j == i + row_offset;
}

// Negative column labels never match: they mark columns that are only ever negatives.
FASTCL_HD bool is_positive(int64_t row_label, int64_t col_label) {
  return col_label >= 0 && col_label == row_label;
}

// Column id of a column that is never a negative, only ever a positive: MoCo's in-batch keys
// when the queue alone supplies negatives.
constexpr int64_t kPositiveOnly = -2;

// With sample ids, a pair that is not a positive leaves the denominator (as the self pair does)
// when its column is positive-only or carries the row's own non-negative sample id: the same
// sentence or image twice in a batch is not its own negative.
FASTCL_HD bool is_masked_negative(int64_t row_id, int64_t col_id) {
  return col_id == kPositiveOnly || (row_id >= 0 && col_id == row_id);
}

// A column bias applies to every row, or (with owners) only to the row whose label owns it,
// as SimCSE's hard-negative weight applies only to a query's own hard negative.
FASTCL_HD bool bias_applies(const int64_t* owner, int64_t j, int64_t row_label) {
  return owner == nullptr || owner[j] == row_label;
}

// Hardness penalties (sentence-transformers' hardness_mode): hardness * dot, a constant in the
// backward, added to the logits of the pairs a mode selects among columns with an owner >= 0:
// other rows' columns (in-batch negatives), the row's own columns that are not its positive (its
// hard negatives), or both.
constexpr int kPenaltyOthers = 1;
constexpr int kPenaltyOwn = 2;
FASTCL_HD bool penalty_applies(int mode, const int64_t* owner, int64_t j, int64_t row_label, bool positive) {
  if (mode == 0 || owner == nullptr || owner[j] < 0) return false;
  return owner[j] == row_label ? (mode & kPenaltyOwn) != 0 && !positive : (mode & kPenaltyOthers) != 0;
}

// Normalisation epsilon (as torch.nn.functional.normalize); norms are computed in fp32 or
// wider, so it survives fp16 inputs.
constexpr double kNormEps = 1e-12;

}  // namespace fastcl::math

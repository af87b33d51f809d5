// What the CPU contrastive kernels share: the problem description and the per-row logit rules
// (the normalisation pre-pass and epilogue are in normalise.h, shared with the CUDA host code).
#pragma once
#include <ATen/ATen.h>
#include <ATen/Parallel.h>

#include <algorithm>
#include <cstdlib>

#include "common/contrastive_math.h"
#include "common/online_lse.h"
#include "cpu/row_kernels.h"
#include "normalise.h"

namespace fastcl::cpu {

constexpr int64_t kColTile = 256;               // columns per GEMM tile: a 256 x 256 fp32 tile is 256 KiB
constexpr int64_t kMaxRowBlock = 256;
constexpr int64_t kPartialBudget = 64ll << 20;  // bytes of grad_kn partials in flight in the backward

// The kColTile-row blocks of M rows of a square (paired) problem, split into at most one contiguous
// chunk per thread: a chunk keeps its own partial sums, merged in chunk order, so results do not
// depend on scheduling.
struct RowBlocks {
  int64_t M, count, chunks;
  explicit RowBlocks(int64_t m) : M(m), count((m + kColTile - 1) / kColTile) {
    chunks = std::min<int64_t>(count, std::max(1, at::get_num_threads()));
  }
  int64_t begin(int64_t c) const { return c * count / chunks; }
  int64_t end(int64_t c) const { return (c + 1) * count / chunks; }
  int64_t rows(int64_t b) const { return std::min(kColTile, M - b * kColTile); }
};

// FASTCL_CPU_PARTIAL_BYTES overrides the budget (the tests shrink it to exercise column groups).
inline int64_t partial_budget() {
  const char* env = std::getenv("FASTCL_CPU_PARTIAL_BYTES");
  return env != nullptr ? std::max<long long>(1, std::atoll(env)) : kPartialBudget;
}

// Everything a row needs to know about the problem, with raw pointers for the hot loops.
template <typename acc_t>
struct Problem {
  int64_t M, L, D;
  int64_t row_offset;
  bool exclude_self;
  const int64_t* row_labels;
  const int64_t* col_labels;
  const acc_t* bias;         // nullptr when there is no column bias
  const int64_t* bias_owner;  // nullptr: the bias applies to every row
  const int64_t* row_ids;     // nullptr, or sample ids of rows and columns (duplicate masking)
  const int64_t* col_ids;
  int64_t grad_cols;          // columns [0, grad_cols) get a gradient; the rest are constants
  acc_t scale;
  acc_t hardness;             // with hardness_mode != 0: a constant hardness * dot on selected pairs
  int hardness_mode;
};

// s[j] = scale * s[j] (+ hardness * s[j] on penalised pairs): one row of a dot-product tile, row
// i against columns [c0, c0 + bc), turned into logits before bias and masks.
template <typename acc_t>
inline void scale_logits(const Problem<acc_t>& p, int64_t i, int64_t c0, int64_t bc, acc_t* s) {
  if (p.hardness_mode == 0) {
    scale_in_place(s, bc, p.scale);
    return;
  }
  const int64_t label = p.row_labels[i];
  for (int64_t j = 0; j < bc; ++j) {
    const bool positive = math::is_positive(label, p.col_labels[c0 + j]);
    const bool penalised = math::penalty_applies(p.hardness_mode, p.bias_owner, c0 + j, label, positive);
    s[j] = penalised ? p.scale * s[j] + p.hardness * s[j] : p.scale * s[j];
  }
}

// Masks (-inf) the pairs of row i with columns [c0, c0 + bc) that sample ids take out of the
// denominator; positives keep their logits.
template <typename acc_t>
inline void mask_duplicates(const Problem<acc_t>& p, int64_t i, int64_t c0, int64_t bc, acc_t* s) {
  if (p.row_ids == nullptr) return;
  const int64_t id = p.row_ids[i], label = p.row_labels[i];
  const int64_t* ids = p.col_ids + c0;
  const int64_t* labels = p.col_labels + c0;
  for (int64_t j = 0; j < bc; ++j) {
    if (math::is_masked_negative(id, ids[j]) && !math::is_positive(label, labels[j])) s[j] = math::neg_inf<acc_t>();
  }
}

// Adds bias, duplicate and self masks to one row of a tile, already scaled: s[j] = logit of column c0 + j.
template <typename acc_t>
inline void finish_logits(const Problem<acc_t>& p, int64_t i, int64_t c0, int64_t bc, acc_t* s) {
  if (p.bias != nullptr) {
    const int64_t label = p.row_labels[i];
    for (int64_t j = 0; j < bc; ++j) {
      if (math::bias_applies(p.bias_owner, c0 + j, label)) s[j] += p.bias[c0 + j];
    }
  }
  mask_duplicates(p, i, c0, bc, s);
  if (p.exclude_self) {
    const int64_t self = i + p.row_offset - c0;
    if (self >= 0 && self < bc) s[self] = math::neg_inf<acc_t>();
  }
}

// Sum over the positives of row i among columns [c0, c0 + bc) of v[j]; their count in *count.
template <typename acc_t>
inline acc_t positive_sum(const Problem<acc_t>& p, int64_t i, int64_t c0, int64_t bc, const acc_t* v,
                   acc_t* count) {
  const int64_t label = p.row_labels[i];
  const int64_t self = p.exclude_self ? i + p.row_offset - c0 : -1;
  const int64_t* cl = p.col_labels + c0;
  acc_t sum = 0, n = 0;
  for (int64_t j = 0; j < bc; ++j) {
    if (j != self && math::is_positive(label, cl[j])) {
      sum += v[j];
      n += 1;
    }
  }
  *count = n;
  return sum;
}

inline at::Tensor tile_view(at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

}  // namespace fastcl::cpu

// The CPU self-similarity path: rows compared with themselves (NT-Xent, SupCon). The logit
// matrix is symmetric, so each pair of tiles (I, J), I <= J, is computed once and serves
// rows I (by row) and rows J (by column): half the GEMMs of the general path forward and
// backward.
#pragma once
#include <ATen/ATen.h>

#include <tuple>

#include "cpu/problem.h"

namespace fastcl::cpu {

// Whether the path applies: columns are the rows themselves, with the same labels, the self
// pair excluded, no offset or bias, sample ids (if any) the same for rows and columns and none
// positive-only (so that the duplicate mask is symmetric too), and the per-chunk gradient
// partials fit the budget. row_ids / col_ids may be undefined.
bool self_similarity_applies(const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
                             const at::Tensor& col_labels, const at::Tensor& row_ids, const at::Tensor& col_ids,
                             bool has_bias, int64_t row_offset, bool exclude_self, int64_t bytes_per_element);

// loss, lse, num_pos (M,) from the normalised rows zn (M, D).
template <typename acc_t>
std::tuple<at::Tensor, at::Tensor, at::Tensor> self_similarity_forward(const Problem<acc_t>& p,
                                                                       const at::Tensor& zn);

// The gradient with respect to zn (already multiplied by the logit scale; both the row and
// the column role of each row included) and the logit-scale gradient.
template <typename acc_t>
std::tuple<at::Tensor, acc_t> self_similarity_backward(const Problem<acc_t>& p, const at::Tensor& zn,
                                                       const at::Tensor& grad, const at::Tensor& lse,
                                                       const at::Tensor& num_pos);

}  // namespace fastcl::cpu

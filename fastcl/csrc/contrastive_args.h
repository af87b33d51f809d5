// One contrastive problem as both backends receive it: the op's arguments checked once
// (checks.cpp), made contiguous, with the features the kernels specialise on. The op functions
// the dispatcher calls are written here once; cpu/contrastive.cpp and cuda/contrastive.cu
// register them with their own forward and backward, which take ContrastiveArgs.
// Python builds the same problem as fastcl.problem.ContrastiveProblem (fields in the same order).
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Optional.h>

#include <cstdint>
#include <tuple>

namespace fastcl {

// What a problem uses beyond rows against columns with labels. The CUDA side turns these into
// compile-time flags: a kernel instantiated without a feature carries none of its code.
enum Feature : uint32_t {
  kColBias = 1u << 0,       // col_bias (with or without col_bias_owner)
  kHardness = 1u << 1,      // hardness_mode != 0 (col_bias_owner names each column's row)
  kSampleIds = 1u << 2,     // row_ids / col_ids: duplicate masking
  kExcludeSelf = 1u << 3,   // row i never meets column row_offset + i
  kRowOffset = 1u << 4,     // row_offset != 0: this rank's rows inside a gathered batch
  kConstantCols = 1u << 5,  // the last constant_cols columns take no gradient (a queue)
  kNormalize = 1u << 6,     // cosine similarity, not raw dot products
  kSelfSimilarity = 1u << 7,  // q and k are one tensor, and so are the label vectors and the id vectors
};

struct ContrastiveArgs {
  at::Tensor q, k, row_labels, col_labels, logit_scale;  // contiguous; k is q when the op got one tensor
  at::Tensor col_bias, col_bias_owner, row_ids, col_ids;  // contiguous, or undefined when not given
  int64_t M = 0, L = 0, D = 0;
  int64_t row_offset = 0, constant_cols = 0;
  double hardness = 0.0;
  int hardness_mode = 0;
  bool exclude_self = false, normalize = true;
  uint32_t features = 0;

  bool has(Feature f) const { return (features & f) != 0; }
  // Whether every feature the problem uses is among `supported` (a kernel's compile-time set).
  bool only(uint32_t supported) const { return (features & ~supported) == 0; }
};

// Checks every argument (raising a clear error naming it) and returns the problem.
ContrastiveArgs contrastive_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
                                 const at::Tensor& col_labels, const c10::optional<at::Tensor>& col_bias,
                                 const c10::optional<at::Tensor>& col_bias_owner,
                                 const c10::optional<at::Tensor>& row_ids, const c10::optional<at::Tensor>& col_ids,
                                 const at::Tensor& logit_scale, int64_t row_offset, bool exclude_self,
                                 bool normalize, int64_t constant_cols, double hardness, int64_t hardness_mode);

// The backward's per-row tensors: (M,) in the loss dtype, on q's device.
void check_backward_args(const ContrastiveArgs& a, const at::Tensor& grad_loss, const at::Tensor& lse,
                         const at::Tensor& num_pos);

using Triple = std::tuple<at::Tensor, at::Tensor, at::Tensor>;
using ForwardFn = Triple (*)(const ContrastiveArgs&);
using BackwardFn = Triple (*)(const ContrastiveArgs&, const at::Tensor& grad_loss, const at::Tensor& lse,
                              const at::Tensor& num_pos);

// The schemas' signatures (schemas.h), once: each backend registers contrastive_forward_op<its forward>.
template <ForwardFn kForward>
Triple contrastive_forward_op(const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
                              const at::Tensor& col_labels, const c10::optional<at::Tensor>& col_bias,
                              const c10::optional<at::Tensor>& col_bias_owner,
                              const c10::optional<at::Tensor>& row_ids, const c10::optional<at::Tensor>& col_ids,
                              const at::Tensor& logit_scale, int64_t row_offset, bool exclude_self, bool normalize,
                              int64_t constant_cols, double hardness, int64_t hardness_mode) {
  return kForward(contrastive_args(q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids,
                                   logit_scale, row_offset, exclude_self, normalize, constant_cols, hardness,
                                   hardness_mode));
}

template <BackwardFn kBackward>
Triple contrastive_backward_op(const at::Tensor& grad_loss, const at::Tensor& q, const at::Tensor& k,
                               const at::Tensor& row_labels, const at::Tensor& col_labels,
                               const c10::optional<at::Tensor>& col_bias,
                               const c10::optional<at::Tensor>& col_bias_owner,
                               const c10::optional<at::Tensor>& row_ids, const c10::optional<at::Tensor>& col_ids,
                               const at::Tensor& logit_scale, const at::Tensor& lse, const at::Tensor& num_pos,
                               int64_t row_offset, bool exclude_self, bool normalize, int64_t constant_cols,
                               double hardness, int64_t hardness_mode) {
  const ContrastiveArgs a = contrastive_args(q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids,
                                             col_ids, logit_scale, row_offset, exclude_self, normalize,
                                             constant_cols, hardness, hardness_mode);
  check_backward_args(a, grad_loss, lse, num_pos);
  return kBackward(a, grad_loss.contiguous(), lse.contiguous(), num_pos.contiguous());
}

}  // namespace fastcl

// Argument checks shared by the CPU and CUDA kernels. The Python layer validates
// first with friendlier messages; these keep direct torch.ops calls from crashing.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

namespace fastcl {

// Loss, log-sum-exp, counts and the logit scale are fp64 for fp64 inputs, else fp32.
inline at::ScalarType loss_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

struct ContrastiveSizes {
  int64_t M, L, D;
};

inline void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastcl: ", name, " is on ", t.device(),
                    " but q is on ", ref.device());
}

inline ContrastiveSizes check_contrastive_args(
    const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
    const at::Tensor& col_labels, const c10::optional<at::Tensor>& col_bias,
    const c10::optional<at::Tensor>& col_bias_owner, const at::Tensor& logit_scale,
    int64_t row_offset, bool exclude_self) {
  TORCH_CHECK_VALUE(q.dim() == 2, "fastcl: q must be 2-D (M, D), got shape ", q.sizes());
  TORCH_CHECK_VALUE(k.dim() == 2, "fastcl: k must be 2-D (L, D), got shape ", k.sizes());
  TORCH_CHECK_VALUE(q.size(1) == k.size(1), "fastcl: q and k must have the same feature size D, got ",
                    q.size(1), " and ", k.size(1));
  TORCH_CHECK_TYPE(q.scalar_type() == k.scalar_type(), "fastcl: q and k must have the same dtype, got ",
                   q.scalar_type(), " and ", k.scalar_type());
  const auto dt = q.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
                   "fastcl: q must be float32, float16, bfloat16 or float64, got ", dt);
  check_same_device(k, q, "k");
  check_same_device(row_labels, q, "row_labels");
  check_same_device(col_labels, q, "col_labels");
  check_same_device(logit_scale, q, "logit_scale");
  const int64_t M = q.size(0), L = k.size(0), D = q.size(1);
  TORCH_CHECK_VALUE(row_labels.dim() == 1 && row_labels.size(0) == M,
                    "fastcl: row_labels must have shape (", M, "), got ", row_labels.sizes());
  TORCH_CHECK_VALUE(col_labels.dim() == 1 && col_labels.size(0) == L,
                    "fastcl: col_labels must have shape (", L, "), got ", col_labels.sizes());
  TORCH_CHECK_TYPE(row_labels.scalar_type() == at::kLong && col_labels.scalar_type() == at::kLong,
                   "fastcl: row_labels and col_labels must be int64");
  TORCH_CHECK_VALUE(logit_scale.dim() == 0, "fastcl: logit_scale must be a 0-dim tensor, got shape ",
                    logit_scale.sizes());
  TORCH_CHECK_TYPE(logit_scale.scalar_type() == loss_dtype(dt), "fastcl: logit_scale must be ",
                   loss_dtype(dt), " for ", dt, " inputs, got ", logit_scale.scalar_type());
  if (col_bias.has_value()) {
    check_same_device(*col_bias, q, "col_bias");
    TORCH_CHECK_VALUE(col_bias->dim() == 1 && col_bias->size(0) == L,
                      "fastcl: col_bias must have shape (", L, "), got ", col_bias->sizes());
    TORCH_CHECK_TYPE(col_bias->scalar_type() == loss_dtype(dt), "fastcl: col_bias must be ",
                     loss_dtype(dt), ", got ", col_bias->scalar_type());
  }
  if (col_bias_owner.has_value()) {
    TORCH_CHECK_VALUE(col_bias.has_value(), "fastcl: col_bias_owner given without col_bias");
    check_same_device(*col_bias_owner, q, "col_bias_owner");
    TORCH_CHECK_VALUE(col_bias_owner->dim() == 1 && col_bias_owner->size(0) == L,
                      "fastcl: col_bias_owner must have shape (", L, "), got ", col_bias_owner->sizes());
    TORCH_CHECK_TYPE(col_bias_owner->scalar_type() == at::kLong, "fastcl: col_bias_owner must be int64");
  }
  TORCH_CHECK_VALUE(row_offset >= 0, "fastcl: row_offset must be >= 0, got ", row_offset);
  if (exclude_self) {
    TORCH_CHECK_VALUE(row_offset + M <= L, "fastcl: with exclude_self, rows [row_offset, row_offset+M) = [",
                      row_offset, ", ", row_offset + M, ") must lie inside the ", L, " columns");
  }
  return {M, L, D};
}

inline void check_backward_args(const ContrastiveSizes& s, const at::Tensor& grad_loss,
                                const at::Tensor& lse, const at::Tensor& num_pos,
                                const at::Tensor& q) {
  for (const at::Tensor* t : {&grad_loss, &lse, &num_pos}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == s.M, "fastcl: backward expects per-row tensors of shape (",
                      s.M, "), got ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == loss_dtype(q.scalar_type()),
                     "fastcl: backward per-row tensors must be ", loss_dtype(q.scalar_type()));
    check_same_device(*t, q, "a backward per-row tensor");
  }
}

}  // namespace fastcl

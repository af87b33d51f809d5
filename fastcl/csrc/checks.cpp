// Definitions of checks.h, compiled by the host compiler for both backends.
#include "checks.h"

#include <ATen/core/Tensor.h>

#include <algorithm>
#include <cmath>
#include <cstdlib>
#include <utility>

#include "common/augment_math.h"

namespace fastcl {
namespace {

void check_same_device(const at::Tensor& t, const at::Tensor& ref, const char* name) {
  TORCH_CHECK_VALUE(t.device() == ref.device(), "fastcl: ", name, " is on ", t.device(),
                    " but q is on ", ref.device());
}

at::Tensor contiguous_or_undefined(const c10::optional<at::Tensor>& t) {
  return t.has_value() ? t->contiguous() : at::Tensor();
}

// The checked arguments as one problem: contiguous tensors (k stays q when the op got one tensor)
// and the features the kernels specialise on.
ContrastiveArgs make_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
                          const at::Tensor& col_labels, const c10::optional<at::Tensor>& col_bias,
                          const c10::optional<at::Tensor>& col_bias_owner, const c10::optional<at::Tensor>& row_ids,
                          const c10::optional<at::Tensor>& col_ids, const at::Tensor& logit_scale, int64_t row_offset,
                          bool exclude_self, bool normalize, int64_t constant_cols, double hardness,
                          int64_t hardness_mode) {
  ContrastiveArgs a;
  a.q = q.contiguous();
  a.k = k.is_same(q) ? a.q : k.contiguous();
  a.row_labels = row_labels.contiguous();
  a.col_labels = col_labels.is_same(row_labels) ? a.row_labels : col_labels.contiguous();
  a.logit_scale = logit_scale.contiguous();
  a.col_bias = contiguous_or_undefined(col_bias);
  a.col_bias_owner = contiguous_or_undefined(col_bias_owner);
  a.row_ids = contiguous_or_undefined(row_ids);
  a.col_ids = contiguous_or_undefined(col_ids);
  a.M = q.size(0);
  a.L = k.size(0);
  a.D = q.size(1);
  a.row_offset = row_offset;
  a.constant_cols = constant_cols;
  a.hardness = hardness;
  a.hardness_mode = static_cast<int>(hardness_mode);
  a.exclude_self = exclude_self;
  a.normalize = normalize;
  const bool same_ids = !row_ids.has_value() || row_ids->is_same(*col_ids);
  const std::pair<bool, Feature> uses[] = {
      {col_bias.has_value(), kColBias},  {hardness_mode != 0, kHardness},
      {row_ids.has_value(), kSampleIds}, {exclude_self, kExcludeSelf},
      {row_offset != 0, kRowOffset},     {constant_cols != 0, kConstantCols},
      {normalize, kNormalize},           {k.is_same(q) && col_labels.is_same(row_labels) && same_ids, kSelfSimilarity}};
  for (const auto& [used, feature] : uses) a.features |= used ? feature : 0u;
  return a;
}

}  // namespace

ContrastiveArgs contrastive_args(const at::Tensor& q, const at::Tensor& k, const at::Tensor& row_labels,
                                 const at::Tensor& col_labels, const c10::optional<at::Tensor>& col_bias,
                                 const c10::optional<at::Tensor>& col_bias_owner,
                                 const c10::optional<at::Tensor>& row_ids, const c10::optional<at::Tensor>& col_ids,
                                 const at::Tensor& logit_scale, int64_t row_offset, bool exclude_self,
                                 bool normalize, int64_t constant_cols, double hardness, int64_t hardness_mode) {
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
    TORCH_CHECK_VALUE(col_bias.has_value() || hardness_mode != 0,
                      "fastcl: col_bias_owner given without col_bias or a hardness_mode");
    check_same_device(*col_bias_owner, q, "col_bias_owner");
    TORCH_CHECK_VALUE(col_bias_owner->dim() == 1 && col_bias_owner->size(0) == L,
                      "fastcl: col_bias_owner must have shape (", L, "), got ", col_bias_owner->sizes());
    TORCH_CHECK_TYPE(col_bias_owner->scalar_type() == at::kLong, "fastcl: col_bias_owner must be int64");
  }
  TORCH_CHECK_VALUE(row_ids.has_value() == col_ids.has_value(),
                    "fastcl: row_ids and col_ids must be given together (or neither)");
  if (row_ids.has_value()) {
    check_same_device(*row_ids, q, "row_ids");
    check_same_device(*col_ids, q, "col_ids");
    TORCH_CHECK_VALUE(row_ids->dim() == 1 && row_ids->size(0) == M, "fastcl: row_ids must have shape (", M,
                      "), got ", row_ids->sizes());
    TORCH_CHECK_VALUE(col_ids->dim() == 1 && col_ids->size(0) == L, "fastcl: col_ids must have shape (", L,
                      "), got ", col_ids->sizes());
    TORCH_CHECK_TYPE(row_ids->scalar_type() == at::kLong && col_ids->scalar_type() == at::kLong,
                     "fastcl: row_ids and col_ids must be int64");
  }
  TORCH_CHECK_VALUE(hardness_mode >= 0 && hardness_mode <= 3, "fastcl: hardness_mode must be in [0, 3], got ",
                    hardness_mode);
  TORCH_CHECK_VALUE(std::isfinite(hardness), "fastcl: hardness must be finite, got ", hardness);
  TORCH_CHECK_VALUE(hardness_mode == 0 || col_bias_owner.has_value(),
                    "fastcl: a hardness_mode needs col_bias_owner (the row that owns each column)");
  TORCH_CHECK_VALUE(constant_cols >= 0 && constant_cols <= L, "fastcl: constant_cols must be in [0, ", L,
                    "], got ", constant_cols);
  TORCH_CHECK_VALUE(row_offset >= 0, "fastcl: row_offset must be >= 0, got ", row_offset);
  if (exclude_self) {
    TORCH_CHECK_VALUE(row_offset + M <= L, "fastcl: with exclude_self, rows [row_offset, row_offset+M) = [",
                      row_offset, ", ", row_offset + M, ") must lie inside the ", L, " columns");
  }
  return make_args(q, k, row_labels, col_labels, col_bias, col_bias_owner, row_ids, col_ids, logit_scale,
                   row_offset, exclude_self, normalize, constant_cols, hardness, hardness_mode);
}

void check_pair_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale) {
  TORCH_CHECK_VALUE(a.dim() == 2 && a.size(0) >= 1, "fastcl: a must be 2-D (M, D) with M >= 1, got shape ",
                    a.sizes());
  TORCH_CHECK_VALUE(b.sizes() == a.sizes(), "fastcl: b must have the shape of a ", a.sizes(), ", got ", b.sizes());
  TORCH_CHECK_TYPE(a.scalar_type() == b.scalar_type(), "fastcl: a and b must have the same dtype, got ",
                   a.scalar_type(), " and ", b.scalar_type());
  const auto dt = a.scalar_type();
  TORCH_CHECK_TYPE(dt == at::kFloat || dt == at::kHalf || dt == at::kBFloat16 || dt == at::kDouble,
                   "fastcl: a must be float32, float16, bfloat16 or float64, got ", dt);
  TORCH_CHECK_VALUE(b.device() == a.device(), "fastcl: b is on ", b.device(), " but a is on ", a.device());
  TORCH_CHECK_VALUE(logit_scale.device() == a.device() && logit_scale.dim() == 0,
                    "fastcl: logit_scale must be a 0-dim tensor on ", a.device());
  TORCH_CHECK_TYPE(logit_scale.scalar_type() == loss_dtype(dt), "fastcl: logit_scale must be ", loss_dtype(dt),
                   " for ", dt, " inputs, got ", logit_scale.scalar_type());
}

void check_pair_backward_args(const at::Tensor& a, const at::Tensor& grad_a, const at::Tensor& grad_b,
                              const at::Tensor& lse_a, const at::Tensor& lse_b) {
  for (const at::Tensor* t : {&grad_a, &grad_b, &lse_a, &lse_b}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == a.size(0), "fastcl: backward expects per-row tensors of shape (",
                      a.size(0), "), got ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == loss_dtype(a.scalar_type()), "fastcl: backward per-row tensors must be ",
                     loss_dtype(a.scalar_type()));
    TORCH_CHECK_VALUE(t->device() == a.device(), "fastcl: a backward per-row tensor is on ", t->device(),
                      " but a is on ", a.device());
  }
}

void check_siglip_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale,
                       const at::Tensor& logit_bias, const c10::optional<at::Tensor>& a_ids,
                       const c10::optional<at::Tensor>& b_ids) {
  TORCH_CHECK_VALUE(a.dim() == 2 && a.size(0) >= 1, "fastcl: a must be 2-D (M, D) with M >= 1, got shape ",
                    a.sizes());
  TORCH_CHECK_VALUE(b.dim() == 2 && b.size(0) >= 1 && b.size(1) == a.size(1),
                    "fastcl: b must be 2-D (L, D) with L >= 1 and a's feature size ", a.size(1), ", got shape ",
                    b.sizes());
  // The paired checks (dtypes, device, the scale) see b's first row broadcast to a's shape when L != M.
  check_pair_args(a, b.size(0) == a.size(0) ? b : b.narrow(0, 0, 1).expand(a.sizes()), logit_scale);
  TORCH_CHECK_VALUE(logit_bias.device() == a.device() && logit_bias.dim() == 0,
                    "fastcl: logit_bias must be a 0-dim tensor on ", a.device());
  TORCH_CHECK_TYPE(logit_bias.scalar_type() == loss_dtype(a.scalar_type()), "fastcl: logit_bias must be ",
                   loss_dtype(a.scalar_type()), " for ", a.scalar_type(), " inputs, got ", logit_bias.scalar_type());
  TORCH_CHECK_VALUE(a_ids.has_value() == b_ids.has_value(), "fastcl: a_ids and b_ids come together (both or neither)");
  if (!a_ids.has_value()) return;
  const std::pair<const at::Tensor*, const at::Tensor*> ids[] = {{&*a_ids, &a}, {&*b_ids, &b}};
  for (const auto& [id, x] : ids) {
    TORCH_CHECK_TYPE(id->scalar_type() == at::kLong, "fastcl: sample ids must be int64, got ", id->scalar_type());
    TORCH_CHECK_VALUE(id->dim() == 1 && id->size(0) == x->size(0) && id->device() == a.device(),
                      "fastcl: sample ids must be 1-D of their rows' count (", x->size(0), ") on ", a.device(),
                      ", got shape ", id->sizes(), " on ", id->device());
  }
}

void check_siglip_backward_args(const at::Tensor& a, const at::Tensor& grad_loss) {
  TORCH_CHECK_VALUE(grad_loss.device() == a.device() && grad_loss.dim() == 0,
                    "fastcl: siglip_backward's grad_loss must be a 0-dim tensor on ", a.device());
  TORCH_CHECK_TYPE(grad_loss.scalar_type() == loss_dtype(a.scalar_type()), "fastcl: grad_loss must be ",
                   loss_dtype(a.scalar_type()), ", got ", grad_loss.scalar_type());
}

void check_backward_args(const ContrastiveArgs& a, const at::Tensor& grad_loss, const at::Tensor& lse,
                         const at::Tensor& num_pos) {
  for (const at::Tensor* t : {&grad_loss, &lse, &num_pos}) {
    TORCH_CHECK_VALUE(t->dim() == 1 && t->size(0) == a.M, "fastcl: backward expects per-row tensors of shape (",
                      a.M, "), got ", t->sizes());
    TORCH_CHECK_TYPE(t->scalar_type() == loss_dtype(a.q.scalar_type()),
                     "fastcl: backward per-row tensors must be ", loss_dtype(a.q.scalar_type()));
    check_same_device(*t, a.q, "a backward per-row tensor");
  }
}

AugmentSizes check_augment_args(at::TensorList images, const at::Tensor& source_index, const at::Tensor& params,
                                int64_t size, int64_t blur_kernel, const c10::optional<at::Tensor>& mean,
                                const c10::optional<at::Tensor>& std_, at::ScalarType out_dtype,
                                int64_t num_params) {
  TORCH_CHECK_VALUE(!images.empty(), "fastcl.augment: images is empty");
  TORCH_CHECK_VALUE(size > 0 && size <= 16384, "fastcl.augment: size must be in [1, 16384], got ", size);
  TORCH_CHECK_VALUE(blur_kernel >= 1 && blur_kernel % 2 == 1 && blur_kernel <= 4095,
                    "fastcl.augment: blur_kernel must be odd and at most 4095, got ", blur_kernel);
  AugmentSizes s{};
  s.batched = images.size() == 1 && images[0].dim() == 4;
  s.count = s.batched ? images[0].size(0) : static_cast<int64_t>(images.size());
  s.C = s.batched ? images[0].size(1) : images[0].size(0);
  s.Hmax = s.Wmax = 1;
  const at::Device device = images[0].device();
  for (const at::Tensor& img : images) {
    TORCH_CHECK_VALUE(img.dim() == (s.batched ? 4 : 3),
                      "fastcl.augment: images must be (B, C, H, W) or a list of (C, H, W)");
    TORCH_CHECK_TYPE(img.scalar_type() == at::kByte || img.scalar_type() == at::kFloat,
                     "fastcl.augment: images must be uint8 or float32, got ", img.scalar_type());
    TORCH_CHECK_TYPE(img.scalar_type() == images[0].scalar_type(), "fastcl.augment: images must all have one dtype");
    TORCH_CHECK_VALUE(img.size(s.batched ? 1 : 0) == s.C, "fastcl.augment: all images need ", s.C, " channels");
    TORCH_CHECK_VALUE(img.device() == device, "fastcl.augment: images must all be on ", device, ", got one on ",
                      img.device());
    const int64_t H = img.size(-2), W = img.size(-1);
    TORCH_CHECK_VALUE(H >= 1 && W >= 1 && H < (int64_t(1) << 30) && W < (int64_t(1) << 30),
                      "fastcl.augment: image size ", H, "x", W, " is out of range");
    s.Hmax = std::max(s.Hmax, H), s.Wmax = std::max(s.Wmax, W);
  }
  TORCH_CHECK_VALUE(s.C == 1 || s.C == 3, "fastcl.augment: images must have 1 or 3 channels, got ", s.C);
  TORCH_CHECK_VALUE(params.dim() == 2 && params.size(1) == num_params && params.scalar_type() == at::kFloat,
                    "fastcl.augment: params must be float32 (P, ", num_params, "), got ", params.scalar_type(), " ",
                    params.sizes());
  s.P = params.size(0);
  TORCH_CHECK_VALUE(source_index.dim() == 1 && source_index.size(0) == s.P && source_index.scalar_type() == at::kLong,
                    "fastcl.augment: source_index must be int64 of shape (", s.P, ")");
  TORCH_CHECK_VALUE(params.device() == device && source_index.device() == device,
                    "fastcl.augment: params and source_index must be on the images' device ", device, ", got ",
                    params.device(), " and ", source_index.device());
  TORCH_CHECK_VALUE(s.P == 0 || s.count > 0, "fastcl.augment: images is an empty batch");
  for (const c10::optional<at::Tensor>* t : {&mean, &std_}) {
    if (!t->has_value()) continue;
    TORCH_CHECK_VALUE((*t)->device() == device, "fastcl.augment: mean and std must be on the images' device ",
                      device, ", got ", (*t)->device());
    TORCH_CHECK_VALUE((*t)->numel() == s.C, "fastcl.augment: mean and std need one value per channel (", s.C,
                      "), got ", (*t)->numel());
  }
  TORCH_CHECK_TYPE(out_dtype == at::kFloat || out_dtype == at::kHalf || out_dtype == at::kBFloat16 ||
                       out_dtype == at::kDouble,
                   "fastcl.augment: out_dtype must be float32, float16, bfloat16 or float64, got ", out_dtype);
  return s;
}

void check_augment_rows(at::TensorList images, const AugmentSizes& s, const at::Tensor& source_index,
                        const at::Tensor& params) {
  TORCH_INTERNAL_ASSERT(source_index.is_cpu() && params.is_cpu(), "check_augment_rows reads host tensors");
  const at::Tensor index_c = source_index.contiguous(), params_c = params.contiguous();
  const int64_t* idx = index_c.data_ptr<int64_t>();
  for (int64_t p = 0; p < s.P; ++p) {
    TORCH_CHECK_VALUE(idx[p] >= 0 && idx[p] < s.count, "fastcl.augment: source_index ", idx[p], " out of range");
  }
  for (int64_t p = 0; p < s.P; ++p) {
    const float* row = params_c.data_ptr<float>() + p * params_c.size(1);
    const at::Tensor& img = images[s.batched ? 0 : idx[p]];
    const int64_t H = img.size(-2), W = img.size(-1);
    using namespace math;
    TORCH_CHECK_VALUE(row[kTop] >= 0 && row[kLeft] >= 0 && row[kHeight] >= 1 && row[kWidth] >= 1 &&
                          row[kTop] + row[kHeight] <= H && row[kLeft] + row[kWidth] <= W,
                      "fastcl.augment: crop box of sample ", p, " lies outside its ", H, "x", W, " image");
    TORCH_CHECK_VALUE(std::isfinite(row[kAngle]), "fastcl.augment: the rotation angle of sample ", p, " is not finite");
    TORCH_CHECK_VALUE(row[kFill0] >= 0 && row[kFill0] <= 1 && row[kFill1] >= 0 && row[kFill1] <= 1 && row[kFill2] >= 0 &&
                          row[kFill2] <= 1,
                      "fastcl.augment: the rotation fill of sample ", p, " must lie in [0, 1]");
  }
}

void check_cuda_capability(int major, int minor) {
  TORCH_CHECK(major >= 8, "fastcl: the CUDA kernels need compute capability 8.0 or newer, got ", major, ".", minor);
}

void check_shared_memory(const char* what, int64_t bytes, int64_t limit, const char* hint) {
  TORCH_CHECK(bytes + 1024 <= limit, what, ": ", bytes, " bytes of shared memory needed", hint,
              ", the device allows ", limit);
}

void check_grid(int64_t x, int64_t y, int64_t z) {
  TORCH_CHECK(x <= INT32_MAX && y <= 65535 && z <= 65535, "fastcl: problem too large for one launch (grid ", x, " x ",
              y, " x ", z, ")");
}

void fail_unsupported_dtype(const char* what, at::ScalarType dtype) {
  TORCH_CHECK_TYPE(false, what, ": unsupported dtype ", dtype, " on CUDA");
  std::abort();  // unreachable: the check throws
}

}  // namespace fastcl

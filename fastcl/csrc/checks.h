// Argument checks shared by the CPU and CUDA kernels. The Python layer validates
// first with friendlier messages; these keep direct torch.ops calls from crashing.
// Defined once in checks.cpp, so that the two backends cannot drift apart and the .cu files
// hold no error formatting of their own.
#pragma once
#include <ATen/core/Tensor.h>
#include <c10/util/Exception.h>
#include <c10/util/Optional.h>

#include <cstdint>

#include "contrastive_args.h"  // the contrastive core's checks: contrastive_args, check_backward_args

namespace fastcl {

// Loss, log-sum-exp, counts and the logit scale are fp64 for fp64 inputs, else fp32.
inline at::ScalarType loss_dtype(at::ScalarType input) {
  return input == at::kDouble ? at::kDouble : at::kFloat;
}

// The paired two-direction op: a and b (M, D), M >= 1, one dtype and device; logit_scale 0-dim.
void check_pair_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale);
void check_pair_backward_args(const at::Tensor& a, const at::Tensor& grad_a, const at::Tensor& grad_b,
                              const at::Tensor& lse_a, const at::Tensor& lse_b);

// The sigmoid loss: a (M, D) and b (L, D), M, L >= 1, one dtype and device; logit_scale and logit_bias
// 0-dim, loss dtype, a's device; a_ids (M,) and b_ids (L,) int64 on a's device, both or neither.
void check_siglip_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale,
                       const at::Tensor& logit_bias, const c10::optional<at::Tensor>& a_ids,
                       const c10::optional<at::Tensor>& b_ids);
// Its backward's grad_loss: 0-dim, loss dtype, a's device.
void check_siglip_backward_args(const at::Tensor& a, const at::Tensor& grad_loss);

// The shape of an augment call: one (B, C, H, W) batch or a list of (C, H, W) images.
struct AugmentSizes {
  bool batched;
  int64_t count, C, Hmax, Wmax, P;
};

// Everything both augment kernels require: image ranks, dtypes, channels and sizes, one device
// for all tensors, params and source_index shapes, mean/std lengths, size, blur kernel and
// out_dtype ranges. (The values in source_index and params: check_augment_rows.)
AugmentSizes check_augment_args(at::TensorList images, const at::Tensor& source_index, const at::Tensor& params,
                                int64_t size, int64_t blur_kernel, const c10::optional<at::Tensor>& mean,
                                const c10::optional<at::Tensor>& std_, at::ScalarType out_dtype,
                                int64_t num_params);

// The values of host-side source_index and params, after check_augment_args: every index names
// an image and every crop box lies inside its image. The CPU op calls it; the CUDA op does not,
// since reading them would stall the host on the device, and its kernel clamps both into range
// instead (Python validates both before either op runs).
void check_augment_rows(at::TensorList images, const AugmentSizes& s, const at::Tensor& source_index,
                        const at::Tensor& params);

// Launch limits of the CUDA kernels, with their messages.
void check_cuda_capability(int major, int minor);
void check_shared_memory(const char* what, int64_t bytes, int64_t limit, const char* hint);
void check_grid(int64_t x, int64_t y, int64_t z);
[[noreturn]] void fail_unsupported_dtype(const char* what, at::ScalarType dtype);

}  // namespace fastcl

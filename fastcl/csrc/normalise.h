// The L2 normalisation of rows as a pre-pass, and its gradient as an epilogue, in ATen ops on
// whatever device the rows live: the CPU kernels always use them, the CUDA host code for fp32.
#pragma once
#include <ATen/ATen.h>

#include "common/contrastive_math.h"

namespace fastcl {

// Rows converted to the accumulation type and (optionally) L2-normalised; norms saved.
struct Normalised {
  at::Tensor rows;   // (n, D) acc dtype, contiguous
  at::Tensor norms;  // (n,) acc dtype; empty when not normalising
};

inline Normalised normalise_rows(const at::Tensor& x, at::ScalarType acc, bool normalize) {
  Normalised out;
  out.rows = x.detach().to(acc).contiguous();  // detached: the ATen calls below see no autograd history
  if (normalize) {
    out.norms = out.rows.norm(2, {1});
    out.rows = out.rows / out.norms.clamp_min(math::kNormEps).unsqueeze(1);
  }
  return out;
}

// The gradient of x / max(|x|, eps) applied to grad_n (both acc dtype).
inline at::Tensor normalise_backward(const at::Tensor& grad_n, const Normalised& n, bool normalize) {
  if (!normalize) return grad_n;
  const at::Tensor radial = (grad_n * n.rows).sum(1, /*keepdim=*/true);
  const at::Tensor norms = n.norms.unsqueeze(1);
  const at::Tensor projected = (grad_n - radial * n.rows) / norms.clamp_min(math::kNormEps);
  return at::where(norms >= math::kNormEps, projected, grad_n / math::kNormEps);
}

}  // namespace fastcl

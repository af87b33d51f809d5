// CUDA ops of the sigmoid loss (SigLIP; semantics: csrc/README.md, siglip): argument checks, the
// per-row pre-passes (inverse norms, rows padded to 16-byte multiples, id ranges) and the
// normalisation backward here, in ATen ops; the kernels in siglip_mma.cu (D <= 256) and
// siglip_wide.cu (D <= 768). fp16/bf16 with D <= 768 only: other inputs are refused with a message, and fastcl.ops routes them to the chunked
// pure-PyTorch path before they reach the op.
//
// Normalisation is folded into the logits rather than copied (as contrastive.cu does for
// fp16/bf16): z = scale <a_i, b_j> / |a_i| / |b_j| + bias, the stream side's inverse norm folded
// into G, and the gradient of the normalised rows mapped back through normalise_backward.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <tuple>

#include "checks.h"
#include "common/contrastive_math.h"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/siglip_host.cuh"
#include "normalise.h"

namespace fastcl::gpu {
namespace {

// One side, prepared: rows in 16-byte chunks, fp32 inverse norms padded to whole stream tiles, the
// norms (normalize), and the ids with their ranges at the owner and the stream tiling.
struct Prepared {
  at::Tensor rows, inv, norms, ids, own_range, str_range;
  int64_t n = 0;

  SiglipSide side(bool owner) const {
    return {rows.data_ptr(), inv.data_ptr<float>(), ptr<int64_t>(ids), ptr<int64_t>(owner ? own_range : str_range),
            n};
  }
};

Prepared prepare(const at::Tensor& x, bool normalize, const c10::optional<at::Tensor>& ids, dev::Stream stream) {
  Prepared s;
  s.n = x.size(0);
  const int64_t D = x.size(1), pad = D == 0 ? 8 : (8 - D % 8) % 8;
  at::Tensor rows = x.detach().contiguous();
  const bool aligned = reinterpret_cast<uintptr_t>(rows.data_ptr()) % 16 == 0;
  s.rows = pad > 0 ? at::constant_pad_nd(rows, {0, pad}).contiguous() : (aligned ? rows : rows.clone());
  // Padded to whole 64-row tiles (the widest stream tiling), which the kernels copy whole.
  s.inv = at::zeros({std::max<int64_t>(1, ceil_div(s.n, 64)) * 64}, x.options().dtype(at::kFloat));
  if (normalize) {
    s.norms = at::linalg_vector_norm(rows, 2, {1}, false, at::kFloat);
    // An all-zero row's dots are 0 whatever its factor: 0 keeps 1 / eps out of fp16's G'.
    s.inv.narrow(0, 0, s.n).copy_(s.norms.clamp_min(math::kNormEps).reciprocal().masked_fill_(s.norms == 0, 0.0));
  } else {
    s.inv.narrow(0, 0, s.n).fill_(1.0);
  }
  if (ids.has_value()) {  // at the tilings of the kernels for this D (siglip_own_rows, siglip_stream_rows)
    const int64_t width = D + pad;
    s.ids = ids->contiguous();
    s.own_range = tile_ranges(s.ids, s.n, static_cast<int>(siglip_own_rows(width)), RangeOf::kIds, stream);
    s.str_range = tile_ranges(s.ids, s.n, static_cast<int>(siglip_stream_rows(width)), RangeOf::kIds, stream);
  }
  return s;
}

// fp16/bf16 with D <= kSiglipMaxD on a GPU whose blocks may hold the kernels' shared memory.
void check_siglip_cuda(const at::Tensor& a) {
  const dev::Properties prop = dev::properties();
  check_cuda_capability(prop.major, prop.minor);
  const at::ScalarType t = a.scalar_type();
  const size_t smem = siglip_mma_smem(a.size(1) + (8 - a.size(1) % 8) % 8);
  TORCH_CHECK((t == at::kHalf || t == at::kBFloat16) && a.size(1) <= kSiglipMaxD && smem > 0 &&
                  smem + 1024 <= prop.sharedMemPerBlockOptin,
              "fastcl: the SigLIP CUDA kernels take float16/bfloat16 rows with D <= ", kSiglipMaxD, " (got ", t,
              ", D = ", a.size(1), "); fastcl.ops.siglip runs the chunked pure-PyTorch path for other inputs");
}

template <typename F>
void dispatch_half(at::ScalarType t, F&& f) {
  if (t == at::kHalf) f(__half{});
  else f(__nv_bfloat16{});
}

at::Tensor scalar_f32(const at::Tensor& x) { return x.detach().to(at::kFloat).contiguous(); }

at::Tensor siglip_forward_cuda(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale,
                               const at::Tensor& logit_bias, bool normalize, const c10::optional<at::Tensor>& a_ids,
                               const c10::optional<at::Tensor>& b_ids, int64_t offset) {
  check_siglip_args(a, b, logit_scale, logit_bias, a_ids, b_ids);
  dev::DeviceGuard guard(a.device());
  check_siglip_cuda(a);
  at::Tensor out = at::zeros({}, a.options().dtype(at::kFloat));
  if (a.size(0) == 0 || b.size(0) == 0) return a.size(0) == 0 ? out.fill_(NAN) : out;
  const dev::Stream stream = dev::current_stream();
  const Prepared pa = prepare(a, normalize, a_ids, stream), pb = prepare(b, normalize, b_ids, stream);
  const at::Tensor scale = scalar_f32(logit_scale), bias = scalar_f32(logit_bias);
  const SiglipProblem p{scale.data_ptr<float>(), bias.data_ptr<float>(), nullptr, nullptr, pa.rows.size(1), offset};
  dispatch_half(a.scalar_type(), [&](auto zero) {
    siglip_forward_mma<decltype(zero)>(pa.side(true), pb.side(false), p, out, stream);
  });
  return out;
}

// G' is staged in fp16 times a power of two that puts its largest possible value, |g| times the
// stream side's largest inverse norm, just under 2^15; bf16 has fp32's range (1).
at::Tensor g_scale_for(const at::Tensor& g, const Prepared& str, bool fp16) {
  if (!fp16) return at::ones({}, g.options());
  const at::Tensor bound = g.abs() * str.inv.max();
  return at::exp2(at::clamp(14.0 - at::floor(at::log2(bound)), -100.0, 100.0)).to(at::kFloat);
}

// d loss / d x from the gradient of its normalised rows (fp32).
at::Tensor rows_grad(const at::Tensor& grad_n, const at::Tensor& x, const Prepared& s, bool normalize) {
  if (!normalize) return grad_n.to(x.scalar_type());
  Normalised n;
  n.norms = s.norms;
  n.rows = x.detach().to(at::kFloat) / s.norms.clamp_min(math::kNormEps).unsqueeze(1);
  return normalise_backward(grad_n, n, true).to(x.scalar_type());
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> siglip_backward_cuda(
    const at::Tensor& grad_loss, const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale,
    const at::Tensor& logit_bias, bool normalize, const c10::optional<at::Tensor>& a_ids,
    const c10::optional<at::Tensor>& b_ids, int64_t offset) {
  check_siglip_args(a, b, logit_scale, logit_bias, a_ids, b_ids);
  check_siglip_backward_args(a, grad_loss);
  dev::DeviceGuard guard(a.device());
  check_siglip_cuda(a);
  const int64_t M = a.size(0), L = b.size(0), D = a.size(1);
  at::Tensor scalars = at::zeros({2}, a.options().dtype(at::kFloat));
  if (M == 0 || L == 0) {
    return {at::zeros_like(a), at::zeros_like(b), scalars[0], scalars[1]};
  }
  const dev::Stream stream = dev::current_stream();
  const Prepared pa = prepare(a, normalize, a_ids, stream), pb = prepare(b, normalize, b_ids, stream);
  const at::Tensor scale = scalar_f32(logit_scale), bias = scalar_f32(logit_bias);
  const at::Tensor g = (grad_loss.detach().to(at::kFloat) / static_cast<double>(M)).contiguous();
  const bool fp16 = a.scalar_type() == at::kHalf;
  const at::Tensor gs_rows = g_scale_for(g, pb, fp16), gs_cols = g_scale_for(g, pa, fp16);
  const int64_t Dp = pa.rows.size(1);
  const SiglipProblem p_rows{scale.data_ptr<float>(), bias.data_ptr<float>(), g.data_ptr<float>(),
                             gs_rows.data_ptr<float>(), Dp, offset};
  SiglipProblem p_cols = p_rows;
  p_cols.g_scale = gs_cols.data_ptr<float>();
  at::Tensor grad_an, grad_bn;
  dispatch_half(a.scalar_type(), [&](auto zero) {
    using T = decltype(zero);
    grad_an = siglip_grad_mma<T, true>(pa.side(true), pb.side(false), p_rows, &scalars, stream);
    grad_bn = siglip_grad_mma<T, false>(pb.side(true), pa.side(false), p_cols, &scalars, stream);
  });
  grad_an = grad_an.narrow(1, 0, D) * scale;
  grad_bn = grad_bn.narrow(1, 0, D) * scale;
  return {rows_grad(grad_an, a, pa, normalize), rows_grad(grad_bn, b, pb, normalize), scalars[0].clone(),
          scalars[1].clone()};
}

}  // namespace

FASTCL_CUDA_KERNELS(m) {
  m.impl("siglip_forward", &siglip_forward_cuda);
  m.impl("siglip_backward", &siglip_backward_cuda);
}

}  // namespace fastcl::gpu

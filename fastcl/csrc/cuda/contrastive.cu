// CUDA ops of the contrastive core (semantics: csrc/README.md): argument checks, contiguous
// inputs and the per-row pre-passes here; the kernels in contrastive_forward.cu and
// contrastive_backward.cu, what they share in contrastive_device.cuh (device code) and
// contrastive_host.cuh (host code).
//
// For fp16/bf16, normalisation is folded in rather than copied: an O(N D) pre-pass packs each
// row's fp32 inverse norm with its other per-row values, logits use dot = (q_i . k_j) / |q_i| /
// |k_j|, and the stream side's inverse norm is folded into G, so the inputs keep their exact
// products. fp32 rows are normalised in a pre-pass instead (prenormalise, below).
// Per-row/column values travel to shared memory with cp.async beside the operand tiles, so no
// register holds them across the products.
#include <ATen/ATen.h>
#include <torch/library.h>

#include <limits>
#include <tuple>
#include <type_traits>
#include <utility>

#include "checks.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/tile_math.cuh"
#include "normalise.h"

namespace fastcl::gpu {
namespace {

template <typename T>
struct Tag {
  using type = T;
};
template <typename F>
void dispatch_type(at::ScalarType t, F&& f) {
  switch (t) {
    case at::kFloat: f(Tag<float>{}); break;
    case at::kHalf: f(Tag<__half>{}); break;
    case at::kBFloat16: f(Tag<__nv_bfloat16>{}); break;
    default: fail_unsupported_dtype("fastcl", t);
  }
}

Inputs prepare(const ContrastiveArgs& a) {
  if (a.q.scalar_type() == at::kDouble) fail_unsupported_dtype("fastcl (float64 runs on the CPU only)", at::kDouble);
  const dev::Properties prop = dev::properties();
  check_cuda_capability(prop.major, prop.minor);
  return Inputs(a);
}

// fp32 rows are normalised once in a pre-pass, as the CPU does, and the kernels run unnormalised.
// Folding 1/|q_i| 1/|k_j| into every logit instead keeps fp16/bf16 products exact (normalised
// copies in those types would lose far more), but in fp32 it made the gradient miss plain
// PyTorch's accuracy on single elements at temperature 0.01 (2-4x the CPU's worst relative error,
// in the simulator and on the H200).
struct Prenormalised {
  Normalised q, k;
  bool active = false;
};
Prenormalised prenormalise(Inputs& in, bool normalize) {
  Prenormalised pre;
  if (!normalize || in.q.scalar_type() != at::kFloat) return pre;
  const bool same = in.k.is_same(in.q);
  pre.q = normalise_rows(in.q, at::kFloat, true);
  pre.k = same ? pre.q : normalise_rows(in.k, at::kFloat, true);
  in.q = pre.q.rows;
  in.k = same ? in.q : pre.k.rows;
  pre.active = true;
  return pre;
}

// One warp per row: info = {1 / max(|x|, eps) (1 without normalize), a, b, 1 / c}, null a, b, c
// reading as 0. With c = num_pos and b = grad_loss, a row without positives gets b = 0: its loss
// is the constant 0, so its whole row of G vanishes (README).
template <typename T>
__global__ void side_info_kernel(const T* __restrict__ x, int64_t N, int64_t D, bool normalize,
                                 const float* __restrict__ a, const float* __restrict__ b,
                                 const float* __restrict__ c, float4* __restrict__ info) {
  const int64_t row = int64_t(blockIdx.x) * kWarps + (threadIdx.x >> 5);
  if (row >= N) return;  // whole warps leave together
  const float r = normalize ? inv_norm(sqrtf(row_sumsq(x + row * D, D))) : 1.f;
  if ((threadIdx.x & 31) == 0) {
    const float cv = c != nullptr ? c[row] : 0.f;
    const float bv = b != nullptr && (c == nullptr || cv > 0.f) ? b[row] : 0.f;
    info[row] = make_float4(r, a != nullptr ? a[row] : 0.f, bv, cv > 0.f ? 1.f / cv : 0.f);
  }
}

template <typename T>
at::Tensor side_info(const at::Tensor& x, bool normalize, const at::Tensor& a, const at::Tensor& b,
                     const at::Tensor& c, dev::Stream stream) {
  const int64_t n = x.size(0);
  at::Tensor info = at::empty({n, 4}, x.options().dtype(at::kFloat));
  if (n > 0) {
    dev::launch<side_info_kernel<T>>(grid_of(ceil_div(n, kWarps)), kThreads, 0, stream, ptr<T>(x), n, x.size(1),
                                     normalize, ptr<float>(a), ptr<float>(b), ptr<float>(c),
                                     reinterpret_cast<float4*>(info.data_ptr<float>()));
  }
  return info;
}

// row_info = {1/|q|, lse, grad (0 without positives), 1/num_pos} (the last three 0 in the forward),
// col_info = {1/|k|, bias}.
template <typename T>
void pack_side_info(Inputs& in, bool normalize, dev::Stream stream) {
  in.row_info = side_info<T>(in.q, normalize, in.lse, in.grad, in.num_pos, stream);
  in.col_info = side_info<T>(in.k, normalize, in.col_bias, at::Tensor(), at::Tensor(), stream);
}

// The first D columns of a gradient computed on padded rows (pad_rows_for_mma), as its own tensor.
at::Tensor unpad(const at::Tensor& grad, int64_t D) { return grad.narrow(1, 0, D).contiguous(); }

Triple forward(const ContrastiveArgs& a) {
  dev::DeviceGuard guard(a.q.device());
  Inputs in = prepare(a);
  const auto opts = a.q.options().dtype(at::kFloat);
  at::Tensor loss = at::empty({a.M}, opts), lse = at::empty({a.M}, opts), num_pos = at::empty({a.M}, opts);
  if (a.M == 0) return {loss, lse, num_pos};
  if (a.L == 0) {  // no columns: every row has an empty sum and no positives
    loss.zero_();
    lse.fill_(-std::numeric_limits<float>::infinity());
    num_pos.zero_();
    return {loss, lse, num_pos};
  }
  pad_rows_for_mma(in);
  const Prenormalised pre = prenormalise(in, a.normalize);
  dispatch_type(a.q.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const dev::Stream stream = dev::current_stream();
    pack_side_info<T>(in, a.normalize && !pre.active, stream);
    forward_impl<T>(in, stream, loss, lse, num_pos);
  });
  return {loss, lse, num_pos};
}

Triple backward(const ContrastiveArgs& a, const at::Tensor& grad_loss, const at::Tensor& lse,
                const at::Tensor& num_pos) {
  dev::DeviceGuard guard(a.q.device());
  Inputs in = prepare(a);
  in.grad = grad_loss;
  in.lse = lse;
  in.num_pos = num_pos;
  in.grad_cols = a.L - a.constant_cols;
  at::Tensor grad_q = at::empty({a.M, a.D}, in.q.options());
  at::Tensor grad_k = at::empty({a.L, a.D}, in.k.options());
  at::Tensor grad_scale = at::empty({}, a.logit_scale.options());
  if (a.M == 0 || a.L == 0 || a.D == 0) {  // no pair contributes, or there is nothing to differentiate
    grad_q.zero_();
    grad_k.zero_();
    grad_scale.zero_();
    return {grad_q, grad_k, grad_scale};
  }
  pad_rows_for_mma(in);
  if (in.D != a.D) {  // padded rows: gradients as wide, narrowed below
    grad_q = at::empty({a.M, in.D}, in.q.options());
    grad_k = at::empty({a.L, in.D}, in.k.options());
  }
  const Prenormalised pre = prenormalise(in, a.normalize);
  dispatch_type(a.q.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    const dev::Stream stream = dev::current_stream();
    pack_side_info<T>(in, a.normalize && !pre.active, stream);
    backward_impl<T>(in, a.normalize && !pre.active, stream, grad_q, grad_k, grad_scale);
  });
  if (pre.active) {
    grad_q = normalise_backward(grad_q, pre.q, true);
    grad_k = normalise_backward(grad_k, pre.k, true);
  }
  if (in.D != a.D) return {unpad(grad_q, a.D), unpad(grad_k, a.D), grad_scale};
  return {grad_q, grad_k, grad_scale};
}

// The paired two-direction op (CLIP's symmetric loss). The forward is two calls of the general
// kernels (2U); a one-pass forward needs each column's log-sum-exp over every row block, which is
// yet to be written and measured on a GPU. The fp16/bf16 backward takes both directions' G from
// each recomputed logit tile (pair_backward_impl: 4U where two general backwards run 8U); fp32,
// D > 256 and unaligned rows run the general backward twice.
ContrastiveArgs pair_args(const at::Tensor& a, const at::Tensor& b, const at::Tensor& logit_scale, bool normalize) {
  check_pair_args(a, b, logit_scale);
  const at::Tensor labels = at::arange(a.size(0), a.options().dtype(at::kLong));
  const c10::optional<at::Tensor> none;
  return contrastive_args(a, b, labels, labels, none, none, none, none, logit_scale, 0, false, normalize, 0, 0.0, 0);
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> contrastive_pair_forward_cuda(const at::Tensor& a,
                                                                                         const at::Tensor& b,
                                                                                         const at::Tensor& logit_scale,
                                                                                         bool normalize) {
  ContrastiveArgs args = pair_args(a, b, logit_scale, normalize);
  auto [loss_a, lse_a, pos_a] = forward(args);
  std::swap(args.q, args.k);
  auto [loss_b, lse_b, pos_b] = forward(args);
  return {loss_a, lse_a, loss_b, lse_b};
}

// Both directions at once: row_info = {1/|a|, lse_a, grad_a, 1}, col_info = {1/|b|, lse_b, grad_b, 1}.
// Returns false (nothing launched) where pair_backward_fused does not take the problem.
bool pair_backward_fused_run(const ContrastiveArgs& args, const at::Tensor& grad_a, const at::Tensor& grad_b,
                             const at::Tensor& lse_a, const at::Tensor& lse_b, Triple& out) {
  dev::DeviceGuard guard(args.q.device());
  if (args.q.scalar_type() == at::kFloat || args.q.scalar_type() == at::kDouble) return false;
  Inputs in = prepare(args);
  pad_rows_for_mma(in);
  if (!pair_backward_fused(in, in.q.element_size())) return false;
  const at::Tensor one = at::ones_like(lse_a);
  at::Tensor ga = at::empty_like(in.q), gb = at::empty_like(in.k), gs = at::empty({}, args.logit_scale.options());
  dispatch_type(args.q.scalar_type(), [&](auto tag) {
    using T = typename decltype(tag)::type;
    if constexpr (!std::is_same<T, float>::value) {
      const dev::Stream stream = dev::current_stream();
      in.row_info = side_info<T>(in.q, args.normalize, lse_a, grad_a, one, stream);
      in.col_info = side_info<T>(in.k, args.normalize, lse_b, grad_b, one, stream);
      pair_backward_impl<T>(in, args.normalize, stream, ga, gb, gs);
    }
  });
  out = in.D != args.D ? Triple{unpad(ga, args.D), unpad(gb, args.D), gs} : Triple{ga, gb, gs};
  return true;
}

std::tuple<at::Tensor, at::Tensor, at::Tensor> contrastive_pair_backward_cuda(
    const at::Tensor& grad_a, const at::Tensor& grad_b, const at::Tensor& a, const at::Tensor& b,
    const at::Tensor& logit_scale, const at::Tensor& lse_a, const at::Tensor& lse_b, bool normalize) {
  ContrastiveArgs args = pair_args(a, b, logit_scale, normalize);
  check_pair_backward_args(a, grad_a, grad_b, lse_a, lse_b);
  const at::Tensor ga_in = grad_a.contiguous(), gb_in = grad_b.contiguous();
  const at::Tensor la = lse_a.contiguous(), lb = lse_b.contiguous();
  Triple fused;
  if (pair_backward_fused_run(args, ga_in, gb_in, la, lb, fused)) return fused;
  const at::Tensor one_positive = at::ones_like(lse_a);
  auto [ga, gb, gs] = backward(args, ga_in, la, one_positive);
  std::swap(args.q, args.k);
  auto [gb2, ga2, gs2] = backward(args, gb_in, lb, one_positive);
  return {ga.add_(ga2), gb.add_(gb2), gs.add_(gs2)};
}

}  // namespace

FASTCL_CUDA_KERNELS(m) {
  m.impl("contrastive_forward", &contrastive_forward_op<&forward>);
  m.impl("contrastive_backward", &contrastive_backward_op<&backward>);
  m.impl("contrastive_pair_forward", &contrastive_pair_forward_cuda);
  m.impl("contrastive_pair_backward", &contrastive_pair_backward_cuda);
}

}  // namespace fastcl::gpu

// The sigmoid loss of one logit (SigLIP), shared by the CPU kernel and, later, the CUDA kernels.
// Each pair's loss and gradient depend on its own logit z alone: with y = +1 for a positive pair
// and -1 for a negative one, loss = softplus(-y z) = -log sigmoid(y z), and d loss / dz =
// sigmoid(z) - [y = +1]. Written so that no exp sees a positive argument: finite for any finite z.
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace fastcl::math {

template <typename T>
FASTCL_HD T log1p_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::log1p(x);
#else
  return std::log1p(x);
#endif
}

template <typename T>
FASTCL_HD T exp_neg_abs(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(-::fabs(x));
#else
  return std::exp(-std::fabs(x));
#endif
}

// log(1 + exp(x)) = max(x, 0) + log1p(exp(-|x|)).
template <typename T>
FASTCL_HD T softplus(T x) {
  return (x > T(0) ? x : T(0)) + log1p_of(exp_neg_abs(x));
}

// 1 / (1 + exp(-x)), from exp(-|x|) so that it neither overflows nor loses the small side.
template <typename T>
FASTCL_HD T sigmoid(T x) {
  const T e = exp_neg_abs(x);
  return x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
}

// The loss of a pair with logit z: softplus(-z) for a positive, softplus(z) for a negative.
template <typename T>
FASTCL_HD T sigmoid_pair_loss(T z, bool positive) {
  return softplus(positive ? -z : z);
}

// d loss / dz of that pair: sigmoid(z) - 1 for a positive (= -sigmoid(-z), formed without the
// cancellation), sigmoid(z) for a negative.
template <typename T>
FASTCL_HD T sigmoid_pair_grad(T z, bool positive) {
  return positive ? -sigmoid(-z) : sigmoid(z);
}

// Both at once, from one exp (the fused forward + backward): *loss = sigmoid_pair_loss(z, positive)
// and *grad = sigmoid_pair_grad(z, positive), bit for bit, since each is a function of
// x = (positive ? -z : z): loss softplus(x), grad (positive ? -1 : 1) sigmoid(x).
template <typename T>
FASTCL_HD void sigmoid_pair_loss_grad(T z, bool positive, T* loss, T* grad) {
  const T x = positive ? -z : z;
  const T e = exp_neg_abs(x);
  *loss = (x > T(0) ? x : T(0)) + log1p_of(e);
  const T s = x >= T(0) ? T(1) / (T(1) + e) : e / (T(1) + e);
  *grad = positive ? -s : s;
}

// Whether row i and column j (of a chunk of M rows against L columns) form a positive pair: on the
// diagonal shifted by offset (j == i + offset; none when that falls outside the chunk, as for the
// keys of another rank), or sharing a sample id (>= 0; row_ids nullptr: no ids).
FASTCL_HD bool is_siglip_positive(int64_t i, int64_t j, int64_t offset, const int64_t* row_ids,
                                         const int64_t* col_ids) {
  if (j == i + offset) return true;
  return row_ids != nullptr && row_ids[i] >= 0 && row_ids[i] == col_ids[j];
}

}  // namespace fastcl::math

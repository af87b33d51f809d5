// Online (streaming) log-sum-exp shared by the CPU and CUDA kernels: a running
// maximum m and a sum l of exp(x - m), so exp never sees a large argument.
#pragma once
#include <cmath>
#include <limits>

#include "common/macros.h"

namespace fastcl::math {

template <typename T>
FASTCL_HD T neg_inf() {
  return -std::numeric_limits<T>::infinity();
}

template <typename T>
FASTCL_HD T exp_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::exp(x);
#else
  return std::exp(x);
#endif
}

template <typename T>
FASTCL_HD T log_of(T x) {
#if defined(__CUDA_ARCH__)
  return ::log(x);
#else
  return std::log(x);
#endif
}

template <typename T>
struct OnlineLSE {
  T m = neg_inf<T>();  // running maximum
  T l = T(0);          // sum of exp(x - m)

  // Folds in a block whose maximum is block_max and whose sum of exp(x - block_max) is block_sum.
  FASTCL_HD void merge(T block_max, T block_sum) {
    if (block_max == neg_inf<T>()) return;
    if (block_max > m) {
      l = l * exp_of(m - block_max) + block_sum;  // exp(-inf) == 0 when m is still empty
      m = block_max;
    } else {
      l += block_sum * exp_of(block_max - m);
    }
  }

  FASTCL_HD void add(T x) { merge(x, T(1)); }

  // log(sum exp(x)); -inf for an empty set.
  FASTCL_HD T value() const { return m == neg_inf<T>() ? m : m + log_of(l); }
};

}  // namespace fastcl::math

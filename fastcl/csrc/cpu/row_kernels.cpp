// Row loops of the CPU contrastive kernels. Reductions keep kLanes independent partial
// results so the compiler can vectorise them without -ffast-math, and so the summation
// order (hence the result) is fixed.
#include "cpu/row_kernels.h"

#include <algorithm>
#include <cmath>
#include <limits>

#include "common/fast_exp.h"
#include "cpu/clones.h"

namespace fastcl::cpu {
namespace {

constexpr int64_t kLanes = 16;

}  // namespace

FASTCL_CLONES void scale_in_place(float* s, int64_t n, float scale) {
  for (int64_t j = 0; j < n; ++j) s[j] *= scale;
}

void scale_in_place(double* s, int64_t n, double scale) {
  for (int64_t j = 0; j < n; ++j) s[j] *= scale;
}

FASTCL_CLONES float max_of(const float* s, int64_t n) {
  float lane[kLanes];
  for (int64_t u = 0; u < kLanes; ++u) lane[u] = -std::numeric_limits<float>::infinity();
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t u = 0; u < kLanes; ++u) lane[u] = s[j + u] > lane[u] ? s[j + u] : lane[u];
  }
  for (; j < n; ++j) lane[0] = s[j] > lane[0] ? s[j] : lane[0];
  float m = lane[0];
  for (int64_t u = 1; u < kLanes; ++u) m = lane[u] > m ? lane[u] : m;
  return m;
}

double max_of(const double* s, int64_t n) {
  double m = -std::numeric_limits<double>::infinity();
  for (int64_t j = 0; j < n; ++j) m = s[j] > m ? s[j] : m;
  return m;
}

FASTCL_CLONES float sum_exp_shifted(const float* s, int64_t n, float m) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t u = 0; u < kLanes; ++u) lane[u] += math::fast_expf(s[j + u] - m);
  }
  for (; j < n; ++j) lane[0] += math::fast_expf(s[j] - m);
  float total = 0;
  for (int64_t u = 0; u < kLanes; ++u) total += lane[u];
  return total;
}

double sum_exp_shifted(const double* s, int64_t n, double m) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += std::exp(s[j] - m);
  return total;
}

// A row with weight 0 (no positives: constant loss) contributes nothing, whatever lse it is
// handed: with an lse far below its logits exp overflows, and 0 * inf would be NaN.
template <typename T>
T zero_row(T* dot, int64_t n) {
  std::fill(dot, dot + n, T(0));
  return T(0);
}

FASTCL_CLONES float softmax_grad_in_place(const float* logits, float* dot, int64_t n, float lse, float g) {
  if (g == 0) return zero_row(dot, n);
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t u = 0; u < kLanes; ++u) {
      const float p = math::fast_expf(logits[j + u] - lse);
      lane[u] += p * dot[j + u];
      dot[j + u] = g * p;
    }
  }
  for (; j < n; ++j) {
    const float p = math::fast_expf(logits[j] - lse);
    lane[0] += p * dot[j];
    dot[j] = g * p;
  }
  float total = 0;
  for (int64_t u = 0; u < kLanes; ++u) total += lane[u];
  return g * total;
}

double softmax_grad_in_place(const double* logits, double* dot, int64_t n, double lse, double g) {
  if (g == 0) return zero_row(dot, n);
  double total = 0;
  for (int64_t j = 0; j < n; ++j) {
    const double p = std::exp(logits[j] - lse);
    total += p * dot[j];
    dot[j] = g * p;
  }
  return g * total;
}

std::string row_kernels_isa() {
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
  __builtin_cpu_init();
  if (__builtin_cpu_supports("x86-64-v4")) return "avx512 (x86-64-v4)";
  if (__builtin_cpu_supports("x86-64-v3")) return "avx2+fma (x86-64-v3)";
  return "baseline (x86-64)";
#else
  return "baseline (compiler auto-vectorisation)";
#endif
}


FASTCL_CLONES void max_into(float* acc, const float* row, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] = row[c] > acc[c] ? row[c] : acc[c];
}

void max_into(double* acc, const double* row, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] = row[c] > acc[c] ? row[c] : acc[c];
}

FASTCL_CLONES void add_exp_shifted_into(float* acc, const float* row, const float* shift, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += math::fast_expf(row[c] - shift[c]);
}

void add_exp_shifted_into(double* acc, const double* row, const double* shift, int64_t n) {
  for (int64_t c = 0; c < n; ++c) acc[c] += std::exp(row[c] - shift[c]);
}

FASTCL_CLONES void softmax_grad_row(const float* logits, float* out, int64_t n, float lse, float g) {
  if (g == 0) {
    zero_row(out, n);
    return;
  }
  for (int64_t c = 0; c < n; ++c) out[c] = g * math::fast_expf(logits[c] - lse);
}

void softmax_grad_row(const double* logits, double* out, int64_t n, double lse, double g) {
  if (g == 0) {
    zero_row(out, n);
    return;
  }
  for (int64_t c = 0; c < n; ++c) out[c] = g * std::exp(logits[c] - lse);
}

FASTCL_CLONES void softmax_grad_cols_add(const float* logits, float* out, int64_t n, const float* lse,
                                         const float* g) {
  for (int64_t c = 0; c < n; ++c) out[c] += g[c] != 0 ? g[c] * math::fast_expf(logits[c] - lse[c]) : 0.0f;
}

void softmax_grad_cols_add(const double* logits, double* out, int64_t n, const double* lse, const double* g) {
  for (int64_t c = 0; c < n; ++c) out[c] += g[c] != 0 ? g[c] * std::exp(logits[c] - lse[c]) : 0.0;
}

FASTCL_CLONES float dot_of(const float* a, const float* b, int64_t n) {
  float lane[kLanes] = {};
  int64_t j = 0;
  for (; j + kLanes <= n; j += kLanes) {
    for (int64_t u = 0; u < kLanes; ++u) lane[u] += a[j + u] * b[j + u];
  }
  for (; j < n; ++j) lane[0] += a[j] * b[j];
  float total = 0;
  for (int64_t u = 0; u < kLanes; ++u) total += lane[u];
  return total;
}

double dot_of(const double* a, const double* b, int64_t n) {
  double total = 0;
  for (int64_t j = 0; j < n; ++j) total += a[j] * b[j];
  return total;
}

}  // namespace fastcl::cpu

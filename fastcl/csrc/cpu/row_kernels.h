// Vectorised loops over one row of a logit tile, for the CPU contrastive kernels.
// The float versions are compiled for several x86 ISA levels and picked at load time.
#pragma once
#include <cstdint>
#include <string>

namespace fastcl::cpu {

void scale_in_place(float* s, int64_t n, float scale);
void scale_in_place(double* s, int64_t n, double scale);

// Maximum of s[0..n); -inf for an all-masked row.
float max_of(const float* s, int64_t n);
double max_of(const double* s, int64_t n);

// sum_j exp(s[j] - m), with m finite.
float sum_exp_shifted(const float* s, int64_t n, float m);
double sum_exp_shifted(const double* s, int64_t n, double m);

// With p_j = exp(logits[j] - lse): returns g * sum_j p_j * dot[j] and overwrites dot[j] with g * p_j.
float softmax_grad_in_place(const float* logits, float* dot, int64_t n, float lse, float g);
double softmax_grad_in_place(const double* logits, double* dot, int64_t n, double lse, double g);

// Which clone of the float loops this CPU runs ("avx512", "avx2+fma" or "baseline").
std::string row_kernels_isa();

// Column-wise forms, for a tile whose columns are rows of their own (the self-similarity path).
// acc[c] = max(acc[c], row[c])
void max_into(float* acc, const float* row, int64_t n);
void max_into(double* acc, const double* row, int64_t n);
// acc[c] += exp(row[c] - shift[c])
void add_exp_shifted_into(float* acc, const float* row, const float* shift, int64_t n);
void add_exp_shifted_into(double* acc, const double* row, const double* shift, int64_t n);
// out[c] = g * exp(logits[c] - lse)
void softmax_grad_row(const float* logits, float* out, int64_t n, float lse, float g);
void softmax_grad_row(const double* logits, double* out, int64_t n, double lse, double g);
// out[c] += g[c] * exp(logits[c] - lse[c])
void softmax_grad_cols_add(const float* logits, float* out, int64_t n, const float* lse, const float* g);
void softmax_grad_cols_add(const double* logits, double* out, int64_t n, const double* lse, const double* g);
// sum_c a[c] * b[c] in a fixed order
float dot_of(const float* a, const float* b, int64_t n);
double dot_of(const double* a, const double* b, int64_t n);

}  // namespace fastcl::cpu

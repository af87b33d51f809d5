// Device math that host C++ lacks, with CUDA's semantics where they differ from an obvious
// host spelling. Part of cuda_sim.h. Intrinsics CUDA computes approximately (__expf, __logf,
// __fdividef) are computed accurately here.
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

namespace fastcl {
namespace sim {
namespace detail {
template <typename To, typename From>
inline To bits_as(From f) {
  static_assert(sizeof(To) == sizeof(From), "same size");
  To t;
  __builtin_memcpy(&t, &f, sizeof t);
  return t;
}
}  // namespace detail
}  // namespace sim
}  // namespace fastcl

// Round-to-nearest arithmetic that the compiler must not contract into an FMA: a separate
// non-inlined-able expression per operation (host builds without -ffp-contract=fast or FMA).
inline float __fmul_rn(float a, float b) { return a * b; }
inline float __fadd_rn(float a, float b) { return a + b; }
inline float __fsub_rn(float a, float b) { return a - b; }
inline float __fdiv_rn(float a, float b) { return a / b; }
inline float __fmaf_rn(float a, float b, float c) { return std::fmaf(a, b, c); }
inline float __frcp_rn(float a) { return 1.0f / a; }
inline float __fsqrt_rn(float a) { return std::sqrt(a); }
inline double __dmul_rn(double a, double b) { return a * b; }
inline double __dadd_rn(double a, double b) { return a + b; }
inline double __fma_rn(double a, double b, double c) { return std::fma(a, b, c); }
inline float __fdividef(float a, float b) { return a / b; }
inline float __expf(float x) { return std::exp(x); }
inline float __logf(float x) { return std::log(x); }
inline float __log2f(float x) { return std::log2(x); }
inline float __powf(float a, float b) { return std::pow(a, b); }
inline float __sinf(float x) { return std::sin(x); }
inline float __cosf(float x) { return std::cos(x); }
inline float __saturatef(float x) { return x > 0.f ? (x < 1.f ? x : 1.f) : 0.f; }  // NaN -> 0
inline float rsqrtf(float x) { return 1.0f / std::sqrt(x); }
inline double rsqrt(double x) { return 1.0 / std::sqrt(x); }
inline int __float_as_int(float x) { return fastcl::sim::detail::bits_as<int>(x); }
inline float __int_as_float(int x) { return fastcl::sim::detail::bits_as<float>(x); }
inline unsigned __float_as_uint(float x) { return fastcl::sim::detail::bits_as<unsigned>(x); }
inline float __uint_as_float(unsigned x) { return fastcl::sim::detail::bits_as<float>(x); }
inline long long __double_as_longlong(double x) { return fastcl::sim::detail::bits_as<long long>(x); }
inline double __longlong_as_double(long long x) { return fastcl::sim::detail::bits_as<double>(x); }
inline int __float2int_rn(float x) { return static_cast<int>(std::nearbyint(x)); }
inline int __float2int_rz(float x) { return static_cast<int>(x); }
inline int __float2int_rd(float x) { return static_cast<int>(std::floor(x)); }
inline int __float2int_ru(float x) { return static_cast<int>(std::ceil(x)); }
inline int __popc(unsigned x) { return __builtin_popcount(x); }
inline int __popcll(unsigned long long x) { return __builtin_popcountll(x); }
inline int __clz(int x) { return x ? __builtin_clz(static_cast<unsigned>(x)) : 32; }
inline int __clzll(long long x) { return x ? __builtin_clzll(static_cast<unsigned long long>(x)) : 64; }
inline int __ffs(int x) { return __builtin_ffs(x); }
inline int __ffsll(long long x) { return __builtin_ffsll(x); }
inline unsigned __brev(unsigned x) {
  x = ((x >> 1) & 0x55555555u) | ((x & 0x55555555u) << 1);
  x = ((x >> 2) & 0x33333333u) | ((x & 0x33333333u) << 2);
  x = ((x >> 4) & 0x0F0F0F0Fu) | ((x & 0x0F0F0F0Fu) << 4);
  x = ((x >> 8) & 0x00FF00FFu) | ((x & 0x00FF00FFu) << 8);
  return (x >> 16) | (x << 16);
}
inline unsigned __umulhi(unsigned a, unsigned b) { return static_cast<unsigned>((uint64_t(a) * b) >> 32); }
inline int __mulhi(int a, int b) { return static_cast<int>((int64_t(a) * b) >> 32); }
template <typename T>
inline T __ldg(const T* p) { return *p; }
inline void __threadfence() {}
inline void __threadfence_block() {}
inline size_t __cvta_generic_to_shared(const void* p) { return reinterpret_cast<size_t>(p); }
inline void* __cvta_shared_to_generic(size_t a) { return reinterpret_cast<void*>(a); }

// CUDA's global min/max overload set (crt/math_functions.hpp): the same mixed signed/unsigned
// pairs, and the same ambiguities (int with int64_t does not resolve there either).
#define FASTCL_SIM_MINMAX(R, A, B)                                        \
  inline R min(A a, B b) { return static_cast<R>(a) < static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); } \
  inline R max(A a, B b) { return static_cast<R>(a) > static_cast<R>(b) ? static_cast<R>(a) : static_cast<R>(b); }
FASTCL_SIM_MINMAX(int, int, int)
FASTCL_SIM_MINMAX(unsigned int, unsigned int, unsigned int)
FASTCL_SIM_MINMAX(unsigned int, int, unsigned int)
FASTCL_SIM_MINMAX(unsigned int, unsigned int, int)
FASTCL_SIM_MINMAX(long, long, long)
FASTCL_SIM_MINMAX(unsigned long, unsigned long, unsigned long)
FASTCL_SIM_MINMAX(unsigned long, long, unsigned long)
FASTCL_SIM_MINMAX(unsigned long, unsigned long, long)
FASTCL_SIM_MINMAX(long long, long long, long long)
FASTCL_SIM_MINMAX(unsigned long long, unsigned long long, unsigned long long)
FASTCL_SIM_MINMAX(unsigned long long, long long, unsigned long long)
FASTCL_SIM_MINMAX(unsigned long long, unsigned long long, long long)
#undef FASTCL_SIM_MINMAX
inline float min(float a, float b) { return std::fmin(a, b); }
inline float max(float a, float b) { return std::fmax(a, b); }
inline double min(double a, double b) { return std::fmin(a, b); }
inline double max(double a, double b) { return std::fmax(a, b); }
inline double min(float a, double b) { return std::fmin(static_cast<double>(a), b); }
inline double max(float a, double b) { return std::fmax(static_cast<double>(a), b); }
inline double min(double a, float b) { return std::fmin(a, static_cast<double>(b)); }
inline double max(double a, float b) { return std::fmax(a, static_cast<double>(b)); }

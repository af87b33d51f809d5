// A float or double whose every operation rounds on its own, for instantiating the shared
// templates of augment_math.h (aa_window<T>) on the device exactly as the host computes them.
//
// PTX lets ptxas fuse a plain mul.f32/f64 with a following add into an FMA, which rounds once
// where the host (built with -ffp-contract=off) rounds twice: a different resampling weight in
// the last bit, or a window edge that truncates to the neighbouring integer. The _rn intrinsics
// are never fused. On the host this is a plain wrapper with the host's own rounding.
#pragma once
#include <cstdint>

#include "common/macros.h"

namespace fastcl::math {

template <typename T>
struct RnScalar {
  T v;

  RnScalar() = default;
  FASTCL_HD explicit RnScalar(double x) : v(static_cast<T>(x)) {}
  FASTCL_HD explicit RnScalar(float x) : v(static_cast<T>(x)) {}
  FASTCL_HD explicit RnScalar(int x) : v(static_cast<T>(x)) {}
  FASTCL_HD explicit RnScalar(int64_t x) : v(static_cast<T>(x)) {}
  FASTCL_HD explicit operator int64_t() const { return static_cast<int64_t>(v); }

  FASTCL_HD static RnScalar of(T x) {
    RnScalar r;
    r.v = x;
    return r;
  }
  FASTCL_HD static T add(T a, T b) {
#if defined(__CUDA_ARCH__)
    if constexpr (sizeof(T) == 4) return __fadd_rn(a, b); else return __dadd_rn(a, b);
#else
    return a + b;
#endif
  }
  FASTCL_HD static T mul(T a, T b) {
#if defined(__CUDA_ARCH__)
    if constexpr (sizeof(T) == 4) return __fmul_rn(a, b); else return __dmul_rn(a, b);
#else
    return a * b;
#endif
  }
  FASTCL_HD static T div(T a, T b) {
#if defined(__CUDA_ARCH__)
    if constexpr (sizeof(T) == 4) return __fdiv_rn(a, b); else return __ddiv_rn(a, b);
#else
    return a / b;
#endif
  }

  FASTCL_HD friend RnScalar operator+(RnScalar a, RnScalar b) { return of(add(a.v, b.v)); }
  FASTCL_HD friend RnScalar operator-(RnScalar a, RnScalar b) { return of(add(a.v, -b.v)); }
  FASTCL_HD friend RnScalar operator*(RnScalar a, RnScalar b) { return of(mul(a.v, b.v)); }
  FASTCL_HD friend RnScalar operator/(RnScalar a, RnScalar b) { return of(div(a.v, b.v)); }
  FASTCL_HD RnScalar operator-() const { return of(-v); }
  FASTCL_HD RnScalar& operator+=(RnScalar b) { return *this = *this + b; }
  FASTCL_HD RnScalar& operator/=(RnScalar b) { return *this = *this / b; }
  FASTCL_HD friend bool operator<(RnScalar a, RnScalar b) { return a.v < b.v; }
  FASTCL_HD friend bool operator>=(RnScalar a, RnScalar b) { return a.v >= b.v; }
  FASTCL_HD friend bool operator!=(RnScalar a, RnScalar b) { return a.v != b.v; }
};

}  // namespace fastcl::math

// A branch-free exp for float that compilers vectorise (the CPU hot loops call it on whole
// tile rows). Cephes-style: exp(x) = 2^n * exp(r) with |r| <= ln2/2 and a degree-6
// polynomial; about 1 ulp on [-87, 88], and exactly 0 for x below -87.3 (masked logits).
#pragma once
#include <cmath>
#include <cstdint>
#include <cstring>

#include "common/macros.h"

namespace fastcl::math {

FASTCL_HD float fast_expf(float x) {
  const float lo = -87.3365447505531f, hi = 88.3762626647949f;
  const float xc = x < lo ? lo : (x > hi ? hi : x);
  const float n = std::floor(xc * 1.44269504088896341f + 0.5f);
  float r = xc - n * 0.693359375f;
  r = r - n * -2.12194440e-4f;
  float y = 1.9875691500e-4f;
  y = y * r + 1.3981999507e-3f;
  y = y * r + 8.3334519073e-3f;
  y = y * r + 4.1665795894e-2f;
  y = y * r + 1.6666665459e-1f;
  y = y * r + 5.0000001201e-1f;
  y = y * r * r + r + 1.0f;
  const int32_t bits = (static_cast<int32_t>(n) + 127) << 23;
  float scale;
  std::memcpy(&scale, &bits, sizeof(scale));
  return x < lo ? 0.0f : y * scale;
}

}  // namespace fastcl::math

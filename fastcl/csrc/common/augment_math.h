// Per-pixel math of the SimCLR augmentation, shared by the CPU and CUDA kernels.
//
// Each function reproduces torchvision.transforms.v2.functional on tensors, including
// its uint8 behaviour: on uint8 images every colour op clamps and truncates back to
// integers (`.to(uint8)`), grayscale means are floored, and hue goes through [0, 1]
// floats and back with to_dtype(scale=True). Values here are floats either in [0, 1]
// (float images, bound 1) or in [0, 255] (uint8 images, bound 255, integer-valued).
#pragma once
#include <cmath>
#include <cstdint>

#include "common/macros.h"

namespace fastcl::math {

// Recipe steps a colour-jitter order refers to (ColorJitter's fn_idx).
enum JitterOp : int { kBrightness = 0, kContrast = 1, kSaturation = 2, kHue = 3 };

// Layout of one sample's parameter row (float32). Integers are stored exactly.
enum ParamColumn : int {
  kTop = 0, kLeft, kHeight, kWidth,  // crop box in source pixels
  kFlip,                             // 1: horizontal flip
  kJitter,                           // 1: colour jitter applied
  kBrightnessFactor, kContrastFactor, kSaturationFactor, kHueFactor,
  kOrder0, kOrder1, kOrder2, kOrder3,  // permutation of JitterOp
  kGray,                               // 1: grayscale (3 output channels)
  kBlurSigma,                          // > 0: gaussian blur with this sigma
  kSolarize,                           // 1: solarize
  kAngle,                              // rotation in degrees, counter-clockwise (0: none)
  kFill0, kFill1, kFill2,              // the rotation's fill per channel, in [0, 1] of full scale
  kNumParams
};

FASTCL_HD float clampf(float x, float lo, float hi) { return x < lo ? lo : (x > hi ? hi : x); }

// Plain comparisons rather than fmaxf/fminf (pixels are never NaN), so loops vectorise.
FASTCL_HD float max3(float a, float b, float c) {
  const float ab = a > b ? a : b;
  return ab > c ? ab : c;
}

FASTCL_HD float min3(float a, float b, float c) {
  const float ab = a < b ? a : b;
  return ab < c ? ab : c;
}

// A product or sum that must round on its own, as torch's separate tensor ops do: the host
// build turns contraction off (-ffp-contract=off), and on the device these are the _rn
// intrinsics, which nvcc never fuses into an FMA.
FASTCL_HD float mul_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fmul_rn(a, b);
#else
  return a * b;
#endif
}

FASTCL_HD float add_rn(float a, float b) {
#if defined(__CUDA_ARCH__)
  return __fadd_rn(a, b);
#else
  return a + b;
#endif
}

// Back to the image's value set: uint8 images truncate like `.to(torch.uint8)` (values are >= 0).
FASTCL_HD float settle(float x, float bound, bool u8) {
  x = clampf(x, 0.0f, bound);
  return u8 ? floorf(x) : x;
}

// _rgb_to_grayscale_image: r.mul(0.2989).add_(g, alpha=0.587).add_(b, alpha=0.114); torch's
// add with alpha is a fused multiply-add.
FASTCL_HD float luma(float r, float g, float b) {
  return fmaf(b, 0.114f, fmaf(g, 0.587f, mul_rn(r, 0.2989f)));
}

// _blend(image, other, ratio): image.mul(ratio).add_(other, alpha=1 - ratio), clamped and settled.
FASTCL_HD float blend(float x, float other, float ratio, float bound, bool u8) {
  return settle(fmaf(other, 1.0f - ratio, mul_rn(x, ratio)), bound, u8);
}

FASTCL_HD float brightness(float x, float factor, float bound, bool u8) {
  return settle(mul_rn(x, factor), bound, u8);
}

// The gray value saturation and contrast blend towards: floored for uint8 images.
FASTCL_HD float gray_of(float r, float g, float b, bool u8) {
  const float l = luma(r, g, b);
  return u8 ? floorf(l) : l;
}

// torch.remainder(a, 1) for the hue wheel.
FASTCL_HD float wrap_unit(float a) { return a - floorf(a); }

// adjust_hue on one RGB pixel in [0, 1] (uint8 callers scale by 1/255 first and come back with
// hue_to_u8), following _rgb_to_hsv / _hsv_to_rgb step by step. Branch-free, so the CPU
// loops over pixels vectorise; fmod(x, 1) of the non-negative h is x - floor(x), exactly.
FASTCL_HD void hue_shift(float& r, float& g, float& b, float factor) {
  const float maxc = max3(r, g, b);
  const float minc = min3(r, g, b);
  // Conditions become 0/1 factors, as torchvision multiplies by its masks: exact, and no branches.
  const float eqc = static_cast<float>(maxc == minc);
  const float range = maxc - minc;
  const float s = range / (maxc + eqc);  // eqc: range is 0 and the divisor only has to be non-zero
  const float div = range + eqc;
  const float rc = (maxc - r) / div, gc = (maxc - g) / div, bc = (maxc - b) / div;
  const float is_r = static_cast<float>(maxc == r), is_g = static_cast<float>(maxc == g);
  const float hr = (bc - gc) * is_r;
  const float hg = ((rc + 2.0f) - bc) * (is_g * (1.0f - is_r));
  const float hb = ((gc + 4.0f) - rc) * ((1.0f - is_r) * (1.0f - is_g));
  float h = (hr + hg) + hb;
  h = add_rn(mul_rn(h, 1.0f / 6.0f), 1.0f);
  h = h - floorf(h);
  h = wrap_unit(h + factor);
  const float v = maxc;
  const float h6 = mul_rn(h, 6.0f);
  float i = floorf(h6);
  const float f = h6 - i;
  i = i - 6.0f * static_cast<float>(i >= 6.0f);  // h6 can round up to 6: the sector wraps to 0
  const float sxf = mul_rn(s, f);
  const float one_minus_s = 1.0f - s;
  const float q = clampf((1.0f - sxf) * v, 0.0f, 1.0f);
  const float t = clampf(add_rn(sxf, one_minus_s) * v, 0.0f, 1.0f);
  const float p = clampf(one_minus_s * v, 0.0f, 1.0f);
  // Sector i -> (r, g, b): 0 (v,t,p) 1 (q,v,p) 2 (p,v,t) 3 (p,q,v) 4 (t,p,v) 5 (v,p,q).
  const float s0 = static_cast<float>(i == 0.0f), s1 = static_cast<float>(i == 1.0f);
  const float s2 = static_cast<float>(i == 2.0f), s3 = static_cast<float>(i == 3.0f);
  const float s4 = static_cast<float>(i == 4.0f), s5 = static_cast<float>(i == 5.0f);
  r = v * (s0 + s5) + q * s1 + p * (s2 + s3) + t * s4;
  g = v * (s1 + s2) + t * s0 + q * s3 + p * (s4 + s5);
  b = v * (s3 + s4) + t * s2 + q * s5 + p * (s0 + s1);
}

// to_dtype(float -> uint8, scale=True): x * (255 + 1 - 1e-3), truncated.
FASTCL_HD float hue_to_u8(float x) { return floorf(x * (255.0f + 1.0f - 1e-3f)); }

// solarize: values at or above the threshold are inverted.
FASTCL_HD float solarize(float x, float threshold, float bound) { return x >= threshold ? bound - x : x; }

// Antialiased bilinear resampling along one axis, as torch's _upsample_bilinear2d_aa
// (align_corners=False): output index i reads source [first, first + count) with weights.
struct AAWindow {
  int64_t first, count;
};

template <typename T>
FASTCL_HD T aa_filter(T x) {
  x = x < T(0) ? -x : x;
  return x < T(1) ? T(1) - x : T(0);
}

// Fills weights[0..count) (normalised) and returns the window; T is float for float images
// and double for uint8 images (whose weights torch then rounds to fixed point).
template <typename T>
FASTCL_HD AAWindow aa_window(int64_t i, int64_t in_size, int64_t out_size, T* weights, int64_t max_taps) {
  const T scale = static_cast<T>(in_size) / static_cast<T>(out_size);
  const T support = scale >= T(1) ? scale : T(1);
  const T center = scale * (static_cast<T>(i) + T(0.5));
  const T invscale = scale >= T(1) ? T(1) / scale : T(1);
  int64_t first = static_cast<int64_t>(center - support + T(0.5));
  if (first < 0) first = 0;
  int64_t last = static_cast<int64_t>(center + support + T(0.5));
  if (last > in_size) last = in_size;
  int64_t count = last - first;
  count = count < 0 ? 0 : (count > max_taps ? max_taps : count);
  T total = T(0);
  for (int64_t j = 0; j < count; ++j) {
    const T w = aa_filter<T>((static_cast<T>(j + first) - center + T(0.5)) * invscale);
    weights[j] = w;
    total += w;
  }
  if (total != T(0)) {
    for (int64_t j = 0; j < count; ++j) weights[j] /= total;
  }
  return {first, count};
}

// torch's fixed-point precision for uint8 resampling: the most bits for which the largest
// weight still fits int16 (_compute_index_ranges_int16_weights).
FASTCL_HD int u8_weight_precision(double max_weight) {
  int precision = 0;
  for (; precision < 22; ++precision) {
    const int next = static_cast<int>(0.5 + max_weight * static_cast<double>(1 << (precision + 1)));
    if (next >= (1 << 15)) break;
  }
  return precision;
}

FASTCL_HD int32_t u8_weight(double w, int precision) {
  const double v = w * static_cast<double>(1 << precision);
  return v < 0 ? static_cast<int32_t>(-0.5 + v) : static_cast<int32_t>(0.5 + v);
}

// One fixed-point tap sum, rounded by the half-unit start and saturated to [0, 255].
FASTCL_HD float u8_resample_finish(int64_t acc, int precision) {
  const int64_t v = acc >> precision;
  return static_cast<float>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

// Taps an axis needs at most: ceil(support) * 2 + 1, as torch bounds it.
FASTCL_HD int64_t aa_max_taps(int64_t in_size, int64_t out_size) {
  const double scale = static_cast<double>(in_size) / static_cast<double>(out_size);
  return static_cast<int64_t>(ceil(scale >= 1.0 ? scale : 1.0)) * 2 + 1;
}

// torchvision's gaussian kernel: softmax(-(x / sigma)^2) over x = linspace(-lim, lim, k),
// lim = (k - 1) / (2 sqrt 2).
FASTCL_HD void gaussian_kernel(int k, float sigma, float* w) {
  const float lim = static_cast<float>((k - 1) / (2.0 * 1.4142135623730951));
  float total = 0.0f;
  float mx = -1e30f;
  for (int j = 0; j < k; ++j) {
    const float x = k == 1 ? -lim : -lim + (2.0f * lim) * static_cast<float>(j) / static_cast<float>(k - 1);
    const float z = x / sigma;
    w[j] = -(z * z);
    mx = w[j] > mx ? w[j] : mx;
  }
  for (int j = 0; j < k; ++j) {
    w[j] = expf(w[j] - mx);
    total += w[j];
  }
  for (int j = 0; j < k; ++j) w[j] /= total;
}

// torch's "reflect" padding index (the edge pixel is not repeated).
FASTCL_HD int64_t reflect_index(int64_t x, int64_t n) {
  if (n == 1) return 0;
  const int64_t period = 2 * (n - 1);
  x = x % period;
  if (x < 0) x += period;
  return x < n ? x : period - x;
}

// Rotation about the centre of an S x S image, as torchvision's rotate(image, angle, BILINEAR,
// expand=False, fill) computes it: Python's angle % 360 first; 0, 90, 180 and 270 degrees are
// exact pixel permutations (rotate's clone and rot90 fast paths); other angles sample the inverse
// affine grid (_affine_grid with float32 theta) bilinearly with grid_sample(align_corners=False,
// zeros padding) on the image and on a mask of ones, then blend in the fill: (v - fill) * mask + fill.
struct Rotation {
  int quarter;  // 0..3: a multiple of 90 degrees (0: no rotation); -1: any other angle
  // theta / (S / 2): grid x = xb * xx + yb * xy, grid y = xb * yx + yb * yy, (xb, yb) the
  // pixel's offset from the centre.
  float xx, xy, yx, yy;
};

FASTCL_HD Rotation rotation_of(float degrees, int64_t S) {
  double a = fmod(static_cast<double>(degrees), 360.0);
  if (a < 0.0) a += 360.0;
  Rotation r{-1, 0.0f, 0.0f, 0.0f, 0.0f};
  if (a == 0.0 || a == 90.0 || a == 180.0 || a == 270.0) {
    r.quarter = static_cast<int>(a / 90.0);
    return r;
  }
  // _get_inverse_affine_matrix(center 0, -angle): [cos, sin, 0, -sin, cos, 0] of radians(-angle),
  // in double, then float32 and divided by the float32 half sizes.
  const double rad = -a * (3.141592653589793 / 180.0);
  const float c = static_cast<float>(cos(rad)), s = static_cast<float>(sin(rad));
  const float half = static_cast<float>(0.5 * static_cast<double>(S));
  r.xx = c / half, r.xy = s / half, r.yx = -s / half, r.yy = c / half;
  return r;
}

// Where output pixel (x, y) of an S x S rotation reads: torch.rot90's permutations.
FASTCL_HD int64_t quarter_source(int quarter, int64_t S, int64_t x, int64_t y) {
  switch (quarter) {
    case 1: return x * S + (S - 1 - y);            // rot90(k=1): flip the width, then transpose
    case 2: return (S - 1 - y) * S + (S - 1 - x);  // rot90(k=2)
    case 3: return (S - 1 - x) * S + y;            // rot90(k=3): flip the height, then transpose
    default: return y * S + x;
  }
}

// The bilinear taps of output pixel (x, y): the north-west tap (x0, y0) (the others are +1 in x
// and y), the weights in grid_sample's order nw, ne, sw, se, and the mask (the sampled plane of
// ones: the weights of the taps inside the image, as grid_sample reads zeros outside). Scalars
// only and no branches, so that a loop over a row vectorises.
struct RotationTaps {
  int x0, y0;
  float nw, ne, sw, se;
  float mask;
};

FASTCL_HD bool tap_inside(int x, int y, int S) { return x >= 0 && x < S && y >= 0 && y < S; }

FASTCL_HD RotationTaps rotation_taps(const Rotation& r, int S, int x, int y) {
  const float centre = static_cast<float>(S - 1) * 0.5f;  // linspace's exact half-integers
  const float xb = static_cast<float>(x) - centre, yb = static_cast<float>(y) - centre;
  const float gx = add_rn(mul_rn(xb, r.xx), mul_rn(yb, r.xy));
  const float gy = add_rn(mul_rn(xb, r.yx), mul_rn(yb, r.yy));
  // grid_sample's unnormalize (align_corners=False) as its CPU kernel: (g + 1) * (size / 2) - 0.5.
  const float scale = static_cast<float>(S) / 2.0f;
  const float ix = mul_rn(gx + 1.0f, scale) - 0.5f, iy = mul_rn(gy + 1.0f, scale) - 0.5f;
  const float fx = floorf(ix), fy = floorf(iy);
  const float w = ix - fx, e = 1.0f - w, n = iy - fy, s = 1.0f - n;
  RotationTaps t;
  t.nw = mul_rn(s, e), t.ne = mul_rn(s, w), t.sw = mul_rn(n, e), t.se = mul_rn(n, w);
  // Far-away taps are clamped to two pixels outside before the conversion (no overflow); both
  // taps of each axis stay outside.
  const float lim = static_cast<float>(S);
  // (NaN, from a non-finite angle, goes to -2 as well: compares are false for it)
  const float cx = fx > -2.0f ? (fx < lim ? fx : lim) : -2.0f, cy = fy > -2.0f ? (fy < lim ? fy : lim) : -2.0f;
  t.x0 = static_cast<int>(cx), t.y0 = static_cast<int>(cy);
  // Which taps lie inside, as 0/1 factors from float compares (integer range tests of the
  // converted values keep gcc from vectorising the loop).
  const float x_in0 = static_cast<float>(cx >= 0.0f) * static_cast<float>(cx < lim);
  const float x_in1 = static_cast<float>(cx >= -1.0f) * static_cast<float>(cx < lim - 1.0f);
  const float y_in0 = static_cast<float>(cy >= 0.0f) * static_cast<float>(cy < lim);
  const float y_in1 = static_cast<float>(cy >= -1.0f) * static_cast<float>(cy < lim - 1.0f);
  t.mask = add_rn(add_rn(add_rn(t.nw * (x_in0 * y_in0), t.ne * (x_in1 * y_in0)), t.sw * (x_in0 * y_in1)),
                  t.se * (x_in1 * y_in1));
  return t;
}

// The four taps' values (zero outside), summed in grid_sample's order.
FASTCL_HD float rotation_sum(float nw, float ne, float sw, float se, const RotationTaps& t) {
  return add_rn(add_rn(add_rn(mul_rn(nw, t.nw), mul_rn(ne, t.ne)), mul_rn(sw, t.sw)), mul_rn(se, t.se));
}

// The fill blended in by the mask, and for uint8 images round() (half to even) as rotate does
// before .to(uint8).
FASTCL_HD float rotation_finish(float v, float mask, float fill, bool u8) {
  v = add_rn(mul_rn(v - fill, mask), fill);
  return u8 ? clampf(rintf(v), 0.0f, 255.0f) : v;
}

}  // namespace fastcl::math

// CPU kernel of the SimCLR batch augmentation (semantics: fastcl/augment.py and
// csrc/common/augment_math.h). One output sample at a time, in parallel over samples:
// crop + antialiased resize + flip in one separable pass into a per-thread float buffer, an
// optional rotation into a second buffer, the colour ops in their sampled order on that buffer,
// an optional separable blur, then solarize, scaling, normalisation and the cast on the way to the output tensor.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <type_traits>
#include <vector>

#include "checks.h"
#include "common/augment_math.h"
#include "cpu/clones.h"

namespace fastcl::cpu {

using namespace math;

namespace {

// A source image as the kernel reads it: element (c, y, x) at base + c*sc + y*sy + x*sx.
struct Source {
  const void* base;
  bool u8;
  int64_t C, H, W, sc, sy, sx;
};

// Image i of the input: one (B, C, H, W) tensor or a list of (C, H, W) tensors.
Source source_of(at::TensorList images, bool batched, int64_t i) {
  const at::Tensor& t = batched ? images[0] : images[i];
  const int64_t d = batched ? 1 : 0;
  const bool u8 = t.scalar_type() == at::kByte;
  const int64_t offset = batched ? i * t.stride(0) * static_cast<int64_t>(t.element_size()) : 0;
  return {static_cast<const char*>(t.data_ptr()) + offset, u8, t.size(d), t.size(d + 1), t.size(d + 2),
          t.stride(d), t.stride(d + 1), t.stride(d + 2)};
}

// One resampled axis: each output index's source window and weights. uint8 images use
// torch's fixed-point weights (computed in double, rounded to int16 at a shared precision),
// float images float weights, so both match torch's own resize. Buffers are reused.
struct Axis {
  int64_t taps = 0;
  int precision = 0;
  std::vector<AAWindow> window;
  std::vector<float> wf;
  std::vector<int32_t> wi;
  std::vector<double> wd;

  void build(int64_t in, int64_t out, bool u8) {
    taps = aa_max_taps(in, out);
    window.resize(out);
    if (!u8) {
      wf.assign(out * taps, 0.0f);
      for (int64_t i = 0; i < out; ++i) window[i] = aa_window<float>(i, in, out, &wf[i * taps], taps);
      return;
    }
    wd.assign(out * taps, 0.0);
    double wmax = 0.0;
    for (int64_t i = 0; i < out; ++i) {
      window[i] = aa_window<double>(i, in, out, &wd[i * taps], taps);
      for (int64_t j = 0; j < window[i].count; ++j) wmax = std::max(wmax, wd[i * taps + j]);
    }
    precision = u8_weight_precision(wmax);
    wi.resize(out * taps);
    for (int64_t k = 0; k < out * taps; ++k) wi[k] = u8_weight(wd[k], precision);
  }
};

// One output row's rotation taps (one array each, so the loops over a row vectorise): the
// north-west tap's offset into the plane padded with two zeros on every side (the other taps are
// +1, +P, +P + 1), the weights, and the mask.
struct RotationRow {
  std::vector<int32_t> off;
  std::vector<float> w[4];
  std::vector<float> mask;

  void resize(int64_t S) {
    off.resize(S), mask.resize(S);
    for (int k = 0; k < 4; ++k) w[k].resize(S);
  }
};

// Per-thread scratch, reused across samples.
struct Scratch {
  std::vector<float> image, rotated, padded, rows, weights;
  std::vector<int32_t> acc;
  Axis ax, ay;
  RotationRow rotation;
};

// Horizontal pass: the crop's h rows, each resampled from w to S columns, into rows (C, h, S).
template <typename src_t>
void resample_rows(const Source& src, int64_t top, int64_t left, int64_t h, int64_t w, int64_t S, Scratch& sc) {
  float* rows = sc.rows.data();
  const src_t* base = static_cast<const src_t*>(src.base);
  const bool u8 = std::is_same<src_t, uint8_t>::value;
  if (w == S) {  // torch skips an axis whose size does not change
    for (int64_t c = 0; c < src.C; ++c)
      for (int64_t y = 0; y < h; ++y) {
        const src_t* line = base + c * src.sc + (top + y) * src.sy + left * src.sx;
        for (int64_t x = 0; x < S; ++x) rows[(c * h + y) * S + x] = static_cast<float>(line[x * src.sx]);
      }
    return;
  }
  const Axis& ax = sc.ax;
  for (int64_t c = 0; c < src.C; ++c)
    for (int64_t y = 0; y < h; ++y) {
      const src_t* line = base + c * src.sc + (top + y) * src.sy + left * src.sx;
      float* out = rows + (c * h + y) * S;
      for (int64_t x = 0; x < S; ++x) {
        const AAWindow win = ax.window[x];
        const src_t* px = line + win.first * src.sx;
        if (u8) {
          const int32_t* wt = &ax.wi[x * ax.taps];
          int32_t acc = int32_t(1) << (ax.precision - 1);
          for (int64_t j = 0; j < win.count; ++j) acc += wt[j] * static_cast<int32_t>(px[j * src.sx]);
          out[x] = u8_resample_finish(acc, ax.precision);
        } else {
          const float* wt = &ax.wf[x * ax.taps];
          float acc = 0.0f;
          for (int64_t j = 0; j < win.count; ++j) acc += wt[j] * static_cast<float>(px[j * src.sx]);
          out[x] = acc;
        }
      }
    }
}

// Vertical pass, tap by tap over whole rows (a loop over x the compiler vectorises), with the flip.
FASTCL_CLONES void resample_columns(const float* rows, int64_t C, int64_t h, int64_t S, bool u8, bool flip,
                                    Scratch& sc) {
  float* img = sc.image.data();
  const Axis& ay = sc.ay;
  sc.acc.resize(S);
  sc.weights.resize(S);
  int32_t* iacc = sc.acc.data();
  float* facc = sc.weights.data();
  for (int64_t c = 0; c < C; ++c)
    for (int64_t y = 0; y < S; ++y) {
      const AAWindow win = ay.window[y];
      float* dst = img + (c * S + y) * S;
      if (u8) {
        for (int64_t x = 0; x < S; ++x) iacc[x] = int32_t(1) << (ay.precision - 1);
        for (int64_t j = 0; j < win.count; ++j) {
          const float* line = rows + (c * h + win.first + j) * S;
          const int32_t wt = ay.wi[y * ay.taps + j];
          for (int64_t x = 0; x < S; ++x) iacc[x] += wt * static_cast<int32_t>(line[x]);
        }
        for (int64_t x = 0; x < S; ++x) dst[flip ? S - 1 - x : x] = u8_resample_finish(iacc[x], ay.precision);
      } else {
        for (int64_t x = 0; x < S; ++x) facc[x] = 0.0f;
        for (int64_t j = 0; j < win.count; ++j) {
          const float* line = rows + (c * h + win.first + j) * S;
          const float wt = ay.wf[y * ay.taps + j];
          for (int64_t x = 0; x < S; ++x) facc[x] += wt * line[x];
        }
        for (int64_t x = 0; x < S; ++x) dst[flip ? S - 1 - x : x] = facc[x];
      }
    }
}

// Crop, antialiased bilinear resize to S x S (width first, as torch) and flip, into scratch.image.
void resized_crop(const Source& src, const float* prm, int64_t S, bool u8, Scratch& sc) {
  const int64_t top = static_cast<int64_t>(prm[kTop]), left = static_cast<int64_t>(prm[kLeft]);
  const int64_t h = static_cast<int64_t>(prm[kHeight]), w = static_cast<int64_t>(prm[kWidth]);
  const bool flip = prm[kFlip] != 0.0f;
  sc.rows.resize(src.C * h * S);
  if (w != S) sc.ax.build(w, S, u8);
  if (u8) {
    resample_rows<uint8_t>(src, top, left, h, w, S, sc);
  } else {
    resample_rows<float>(src, top, left, h, w, S, sc);
  }
  if (h == S) {
    float* img = sc.image.data();
    for (int64_t c = 0; c < src.C; ++c)
      for (int64_t y = 0; y < S; ++y)
        for (int64_t x = 0; x < S; ++x) img[(c * S + y) * S + (flip ? S - 1 - x : x)] = sc.rows[(c * h + y) * S + x];
    return;
  }
  sc.ay.build(h, S, u8);
  resample_columns(sc.rows.data(), src.C, h, S, u8, flip, sc);
}

// Rotation of the resized crop (C planes of S x S) from img into out: a pixel permutation for
// multiples of 90 degrees; otherwise per output row, the taps of every pixel (a vectorised loop),
// then their sums read from a copy of the image with a border of zeros two pixels wide, which
// holds every tap outside the image (rotation_taps clamps far ones to two outside), so that no
// tap needs a branch. RGB images are copied with their channels interleaved (4 floats a pixel):
// a tap is then one 16-byte load for all channels rather than three gathers.
constexpr int64_t kRotationPad = 2;
typedef float Pixel4 __attribute__((vector_size(16)));

FASTCL_CLONES void rotation_row(const Rotation& r, int S, int y, int32_t* __restrict off, float* __restrict nw,
                                float* __restrict ne, float* __restrict sw, float* __restrict se,
                                float* __restrict mask) {
  const int P = S + 2 * kRotationPad;
  for (int x = 0; x < S; ++x) {
    const RotationTaps t = rotation_taps(r, S, x, y);
    off[x] = (t.y0 + kRotationPad) * P + t.x0 + kRotationPad;
    nw[x] = t.nw, ne[x] = t.ne, sw[x] = t.sw, se[x] = t.se;
    mask[x] = t.mask;
  }
}

// Pixel p of an interleaved image: 4 floats at pix + 4 p.
FASTCL_HD Pixel4 load_pixel(const float* pix, int64_t p) {
  Pixel4 v;
  std::memcpy(&v, pix + 4 * p, sizeof(v));
  return v;
}

// rotation_sum and rotation_finish on the three channels of a pixel at once (lane-wise the same
// IEEE operations; rint as the round-to-nearest-even of adding and subtracting 2^23, exact on [0, 255]).
FASTCL_CLONES void rotation_rgb_row(const float* __restrict pix, const RotationRow& row, int S, Pixel4 fill, bool u8,
                                    float* __restrict out, int64_t n) {
  const int64_t P = S + 2 * kRotationPad;
  const int32_t* off = row.off.data();
  const float *nw = row.w[0].data(), *ne = row.w[1].data(), *sw = row.w[2].data(), *se = row.w[3].data();
  for (int x = 0; x < S; ++x) {
    const int64_t o = off[x];
    Pixel4 v = ((load_pixel(pix, o) * nw[x] + load_pixel(pix, o + 1) * ne[x]) + load_pixel(pix, o + P) * sw[x]) +
               load_pixel(pix, o + P + 1) * se[x];
    v = (v - fill) * row.mask[x] + fill;
    if (u8) {
      v = v < 0.0f ? 0.0f : v;
      v = v > 255.0f ? 255.0f : v;
      v = (v + 8388608.0f) - 8388608.0f;
    }
    out[x] = v[0], out[n + x] = v[1], out[2 * n + x] = v[2];
  }
}

// One loop per image kind: with u8 a runtime value inside, gcc does not vectorise the gathers.
template <bool kU8>
__attribute__((always_inline)) inline void rotation_plane_loop(const float* __restrict plane, const RotationRow& row,
                                                               int S, float fill, float* __restrict out) {
  const int32_t P = S + 2 * kRotationPad;
  const int32_t* off = row.off.data();
  const float *nw = row.w[0].data(), *ne = row.w[1].data(), *sw = row.w[2].data(), *se = row.w[3].data();
  const float* mask = row.mask.data();
  for (int x = 0; x < S; ++x) {
    RotationTaps t;
    t.nw = nw[x], t.ne = ne[x], t.sw = sw[x], t.se = se[x];
    const int32_t o = off[x];
    out[x] = rotation_finish(rotation_sum(plane[o], plane[o + 1], plane[o + P], plane[o + P + 1], t), mask[x], fill,
                             kU8);
  }
}

FASTCL_CLONES void rotation_plane_row(const float* __restrict plane, const RotationRow& row, int S, float fill, bool u8,
                                      float* __restrict out) {
  if (u8) {
    rotation_plane_loop<true>(plane, row, S, fill, out);
  } else {
    rotation_plane_loop<false>(plane, row, S, fill, out);
  }
}

// The padded copy: planar for one channel, interleaved (lane 3 unused) for three; only the border
// is zeroed, the rest is overwritten.
FASTCL_CLONES void pad_for_rotation(const float* __restrict img, int64_t C, int64_t S, float* __restrict padded) {
  const int64_t P = S + 2 * kRotationPad, n = S * S, k = C == 3 ? 4 : 1, pad = kRotationPad * k;
  std::fill(padded, padded + kRotationPad * P * k, 0.0f);
  std::fill(padded + (S + kRotationPad) * P * k, padded + P * P * k, 0.0f);
  for (int64_t y = 0; y < S; ++y) {
    float* line = padded + (y + kRotationPad) * P * k;
    std::fill(line, line + pad, 0.0f);
    std::fill(line + (S + kRotationPad) * k, line + P * k, 0.0f);
    const float* r = img + y * S;
    float* d = line + pad;
    if (C != 3) {
      std::copy(r, r + S, d);
      continue;
    }
    const float* g = r + n;
    const float* b = g + n;
    for (int64_t x = 0; x < S; ++x) d[4 * x] = r[x], d[4 * x + 1] = g[x], d[4 * x + 2] = b[x], d[4 * x + 3] = 0.0f;
  }
}

void rotate(const float* img, float* out, int64_t C, int64_t S, const Rotation& r, const float* prm, bool u8,
            Scratch& sc) {
  const int64_t n = S * S;
  if (r.quarter >= 0) {
    for (int64_t c = 0; c < C; ++c)
      for (int64_t y = 0; y < S; ++y)
        for (int64_t x = 0; x < S; ++x) out[c * n + y * S + x] = img[c * n + quarter_source(r.quarter, S, x, y)];
    return;
  }
  const int64_t P = S + 2 * kRotationPad;
  sc.padded.resize(P * P * (C == 3 ? 4 : 1));
  pad_for_rotation(img, C, S, sc.padded.data());
  const float bound = u8 ? 255.0f : 1.0f;
  const Pixel4 fill = {mul_rn(prm[kFill0], bound), mul_rn(prm[kFill1], bound), mul_rn(prm[kFill2], bound), 0.0f};
  RotationRow& row = sc.rotation;
  row.resize(S);
  for (int64_t y = 0; y < S; ++y) {
    rotation_row(r, static_cast<int>(S), static_cast<int>(y), row.off.data(), row.w[0].data(), row.w[1].data(),
                 row.w[2].data(), row.w[3].data(), row.mask.data());
    if (C == 3) {
      rotation_rgb_row(sc.padded.data(), row, static_cast<int>(S), fill, u8, out + y * S, n);
    } else {
      rotation_plane_row(sc.padded.data(), row, static_cast<int>(S), fill[0], u8, out + y * S);
    }
  }
}

// Mean gray level of the image as adjust_contrast takes it. uint8 images have integer
// (floored) gray levels, summed exactly in int64 lanes: float lanes pass 2^24 past about
// 1025 x 1025 pixels and would round. Float images: sixteen float partial sums, then a double total.
FASTCL_CLONES float contrast_mean(const float* img, int64_t C, int64_t n, bool u8) {
  constexpr int64_t kLanes = 16;
  const float* r = img;
  const float* g = img + n;
  const float* b = img + 2 * n;
  const auto level = [&](int64_t i) { return C == 3 ? gray_of(r[i], g[i], b[i], u8) : r[i]; };
  double total = 0.0;
  int64_t i = 0;
  if (u8) {
    int64_t lane[kLanes] = {};
    for (; i + kLanes <= n; i += kLanes)
      for (int64_t u = 0; u < kLanes; ++u) lane[u] += static_cast<int64_t>(level(i + u));
    for (; i < n; ++i) lane[0] += static_cast<int64_t>(level(i));
    int64_t sum = 0;
    for (int64_t u = 0; u < kLanes; ++u) sum += lane[u];
    total = static_cast<double>(sum);
  } else {
    float lane[kLanes] = {};
    for (; i + kLanes <= n; i += kLanes)
      for (int64_t u = 0; u < kLanes; ++u) lane[u] += level(i + u);
    for (; i < n; ++i) lane[0] += level(i);
    for (int64_t u = 0; u < kLanes; ++u) total += lane[u];
  }
  return static_cast<float>(total / static_cast<double>(n));
}

// The colour passes over one sample (n pixels per channel); each a flat loop the compiler vectorises.
FASTCL_CLONES void brightness_pass(float* img, int64_t count, float f, float bound, bool u8) {
  for (int64_t i = 0; i < count; ++i) img[i] = brightness(img[i], f, bound, u8);
}

FASTCL_CLONES void blend_constant_pass(float* img, int64_t count, float other, float f, float bound, bool u8) {
  for (int64_t i = 0; i < count; ++i) img[i] = blend(img[i], other, f, bound, u8);
}

FASTCL_CLONES void saturation_pass(float* img, int64_t n, float f, float bound, bool u8) {
  float* r = img;
  float* g = img + n;
  float* b = img + 2 * n;
  for (int64_t i = 0; i < n; ++i) {
    const float gray = gray_of(r[i], g[i], b[i], u8);
    r[i] = blend(r[i], gray, f, bound, u8);
    g[i] = blend(g[i], gray, f, bound, u8);
    b[i] = blend(b[i], gray, f, bound, u8);
  }
}

FASTCL_CLONES void hue_rows(float* __restrict r, float* __restrict g, float* __restrict b, int64_t n, float f) {
  for (int64_t i = 0; i < n; ++i) {
    float rr = r[i], gg = g[i], bb = b[i];
    hue_shift(rr, gg, bb, f);
    r[i] = rr, g[i] = gg, b[i] = bb;
  }
}

// adjust_hue works in [0, 1]: uint8 values go there and back (to_dtype with scale=True).
FASTCL_CLONES void hue_pass(float* img, int64_t n, float f, bool u8) {
  if (u8) {
    for (int64_t i = 0; i < 3 * n; ++i) img[i] = img[i] * (1.0f / 255.0f);
  }
  hue_rows(img, img + n, img + 2 * n, n, f);
  if (u8) {
    for (int64_t i = 0; i < 3 * n; ++i) img[i] = hue_to_u8(img[i]);
  }
}

void jitter(float* img, int64_t C, int64_t n, const float* prm, bool u8) {
  const float bound = u8 ? 255.0f : 1.0f;
  for (int k = 0; k < 4; ++k) {
    const int op = static_cast<int>(prm[kOrder0 + k]);
    if (op == kBrightness) {
      brightness_pass(img, C * n, prm[kBrightnessFactor], bound, u8);
    } else if (op == kContrast) {
      blend_constant_pass(img, C * n, contrast_mean(img, C, n, u8), prm[kContrastFactor], bound, u8);
    } else if (op == kSaturation && C == 3) {
      saturation_pass(img, n, prm[kSaturationFactor], bound, u8);
    } else if (op == kHue && C == 3) {
      hue_pass(img, n, prm[kHueFactor], u8);
    }
  }
}

FASTCL_CLONES void grayscale(float* img, int64_t n, bool u8) {
  for (int64_t i = 0; i < n; ++i) {
    float l = luma(img[i], img[n + i], img[2 * n + i]);
    if (u8) l = floorf(l);  // rgb_to_grayscale keeps the dtype: .to(uint8) truncates
    img[i] = img[n + i] = img[2 * n + i] = l;
  }
}

// Separable gaussian blur with reflect padding, in place. Each row is padded once, so both
// passes are tap-outer loops over a contiguous row that the compiler vectorises.
FASTCL_CLONES void blur(float* img, int64_t C, int64_t S, int k, float sigma, bool u8, Scratch& sc) {
  const int64_t r = k / 2;
  sc.weights.resize(k + S + 2 * r);
  float* w = sc.weights.data();
  float* padded = w + k;
  gaussian_kernel(k, sigma, w);
  sc.rows.resize(C * S * S + S);
  float* tmp = sc.rows.data();
  float* acc = tmp + C * S * S;
  for (int64_t c = 0; c < C; ++c) {
    const float* src = img + c * S * S;
    float* mid = tmp + c * S * S;
    for (int64_t y = 0; y < S; ++y) {  // horizontal pass into mid
      const float* line = src + y * S;
      for (int64_t x = 0; x < S + 2 * r; ++x) padded[x] = line[reflect_index(x - r, S)];
      float* out = mid + y * S;
      for (int64_t x = 0; x < S; ++x) out[x] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float wj = w[j];
        const float* in = padded + j;
        for (int64_t x = 0; x < S; ++x) out[x] += wj * in[x];
      }
    }
    float* dst = img + c * S * S;
    for (int64_t y = 0; y < S; ++y) {  // vertical pass back into the image
      for (int64_t x = 0; x < S; ++x) acc[x] = 0.0f;
      for (int64_t j = 0; j < k; ++j) {
        const float wj = w[j];
        const float* in = mid + reflect_index(y + j - r, S) * S;
        for (int64_t x = 0; x < S; ++x) acc[x] += wj * in[x];
      }
      float* out = dst + y * S;
      for (int64_t x = 0; x < S; ++x) out[x] = u8 ? rintf(acc[x]) : acc[x];
    }
  }
}

template <typename out_t>
void write_sample(const float* img, int64_t C, int64_t S, bool u8, const float* mean, const float* std_,
                  at::Tensor& out, int64_t p) {
  out_t* dst = out.data_ptr<out_t>();
  const int64_t sp = out.stride(0), sc = out.stride(1), sy = out.stride(2), sx = out.stride(3);
  for (int64_t c = 0; c < C; ++c) {
    const float m = mean != nullptr ? mean[c] : 0.0f;
    const float inv = std_ != nullptr ? 1.0f / std_[c] : 1.0f;
    for (int64_t y = 0; y < S; ++y)
      for (int64_t x = 0; x < S; ++x) {
        float v = img[(c * S + y) * S + x];
        if (u8) v *= 1.0f / 255.0f;  // to_dtype(uint8 -> float, scale=True)
        dst[p * sp + c * sc + y * sy + x * sx] = static_cast<out_t>((v - m) * inv);
      }
  }
}

at::Tensor augment_cpu(at::TensorList images, const at::Tensor& source_index, const at::Tensor& params, int64_t size,
                       int64_t blur_kernel, const c10::optional<at::Tensor>& mean,
                       const c10::optional<at::Tensor>& std_, at::ScalarType out_dtype, bool channels_last) {
  const AugmentSizes sz = check_augment_args(images, source_index, params, size, blur_kernel, mean, std_, out_dtype,
                                             kNumParams);
  const bool batched = sz.batched;
  const int64_t C = sz.C, P = sz.P;
  const at::Tensor prm = params.contiguous(), src_idx = source_index.contiguous();
  check_augment_rows(images, sz, src_idx, prm);
  const int64_t* idx = src_idx.data_ptr<int64_t>();
  at::Tensor mean_c, std_c;
  if (mean.has_value()) mean_c = mean->to(at::kFloat).contiguous();
  if (std_.has_value()) std_c = std_->to(at::kFloat).contiguous();
  const float* mean_p = mean_c.defined() ? mean_c.data_ptr<float>() : nullptr;
  const float* std_p = std_c.defined() ? std_c.data_ptr<float>() : nullptr;
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({P, C, size, size}, images[0].options().dtype(out_dtype), format);
  const int64_t S = size, n = S * S;

  at::parallel_for(0, P, 1, [&](int64_t begin, int64_t end) {
    Scratch sc;
    sc.image.resize(C * n);
    for (int64_t p = begin; p < end; ++p) {
      const float* row = prm.data_ptr<float>() + p * kNumParams;
      const Source src = source_of(images, batched, idx[p]);
      const bool u8 = src.u8;
      resized_crop(src, row, S, u8, sc);
      const Rotation rotation = rotation_of(row[kAngle], S);
      if (rotation.quarter != 0) {
        sc.rotated.resize(C * n);
        rotate(sc.image.data(), sc.rotated.data(), C, S, rotation, row, u8, sc);
        std::swap(sc.image, sc.rotated);
      }
      float* buf = sc.image.data();
      if (row[kJitter] != 0.0f) jitter(buf, C, n, row, u8);
      if (row[kGray] != 0.0f && C == 3) grayscale(buf, n, u8);
      if (row[kBlurSigma] > 0.0f) blur(buf, C, S, static_cast<int>(blur_kernel), row[kBlurSigma], u8, sc);
      if (row[kSolarize] != 0.0f) {
        const float bound = u8 ? 255.0f : 1.0f, threshold = u8 ? 128.0f : 0.5f;
        for (int64_t i = 0; i < C * n; ++i) buf[i] = solarize(buf[i], threshold, bound);
      }
      AT_DISPATCH_FLOATING_TYPES_AND2(at::kHalf, at::kBFloat16, out_dtype, "fastcl_augment_write", [&] {
        write_sample<scalar_t>(buf, C, S, u8, mean_p, std_p, out, p);
      });
    }
  });
  return out;
}

}  // namespace

TORCH_LIBRARY_IMPL(fastcl, CPU, m) { m.impl("augment", &augment_cpu); }

}  // namespace fastcl::cpu

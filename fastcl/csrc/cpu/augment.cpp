// CPU kernel of the SimCLR batch augmentation (semantics: fastcl/augment.py and
// csrc/common/augment_math.h). One output sample at a time, in parallel over samples:
// crop + antialiased resize + flip in one separable pass into a per-thread float buffer,
// the colour ops in their sampled order on that buffer, an optional separable blur, then
// solarize, scaling, normalisation and the cast on the way to the output tensor.
#include <ATen/ATen.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <algorithm>
#include <cmath>
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

// Per-thread scratch, reused across samples.
struct Scratch {
  std::vector<float> image, rows, weights;
  std::vector<int32_t> acc;
  Axis ax, ay;
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

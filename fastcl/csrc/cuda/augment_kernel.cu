// CUDA kernel of the SimCLR batch augmentation (the op that launches it: augment.cu): the
// semantics of csrc/cpu/augment.cpp, with the per-pixel math of csrc/common/augment_math.h.
//
// A persistent grid of 256-thread blocks walks the samples (block b takes p = b, b + grid, ...).
// A block keeps its sample as a float "work" image (C, S, S): in shared memory when that fits in
// kSmemWorkBytes (augment.cu; CIFAR, 64x64 RGB), else in the block's slot of a global scratch
// tensor (grid, C + 1, S, S: work and the turn plane) that it reuses from sample to sample; the
// grid shrinks to keep that tensor within kScratchBytes. Per sample:
// 1. Resize, one channel at a time, in bands of output rows: the horizontal pass resamples the
//    crop rows that a band of output rows reads into a shared "band" buffer, the vertical pass
//    writes those output rows (flipped) into work. Rows two bands share are computed twice.
//    With a rotation, a channel is resized into the "turn" plane (shared memory beside work, or
//    the slot's extra plane) and rotated from there into work (rotate_channel).
// 2. Colour: the jitter ops split at each contrast op into segments. One pass over the pixels per
//    segment applies the pending contrast blend, then the segment's ops, and before a contrast
//    sums the gray levels (double, fixed-order block reduction) for its mean. The last segment
//    also applies grayscale and, without blur, finishes (solarize, scale, normalise, cast, store).
// 3. Blur, one channel at a time, in bands: horizontal pass from work into the band buffer,
//    vertical pass from the band straight to the output (finishing there), so work stays intact.
// Products and sums use the _rn intrinsics (mul_rn/add_rn, RnScalar) so that nvcc rounds each
// one as the host does; nothing uses atomics, so results are deterministic. Known differences
// from the CPU: the float contrast mean is summed in another order (uint8 sums are exact), the
// gaussian weights use the device's expf (within 2 ulp), and a source index or crop box outside
// its image is clamped into it rather than raising (Python validates both before the call).
#include <ATen/ATen.h>
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <type_traits>
#include <vector>

#include "common/augment_math.h"
#include "common/rn_scalar.h"
#include "cuda/augment.cuh"
#include "cuda/device_api.cuh"

namespace fastcl::gpu {

using namespace math;

namespace {

constexpr int kThreads = 256;
constexpr int64_t kScratchBytes = int64_t(256) << 20;  // cap of the global work slots of large outputs

// Source image of a sample: element (c, y, x) at base[c*sc + y*sy + x*sx].
template <typename T>
struct Source {
  const T* base;
  int64_t sc, sy, sx;
  int H, W;
};

template <typename T>
__device__ Source<T> source_of(const AugmentArgs& a, int64_t p) {
  int64_t i = a.source_index[p];
  i = i < 0 ? 0 : (i >= a.count ? a.count - 1 : i);  // the CPU raises; a device can only clamp
  if (a.table == nullptr) return {reinterpret_cast<const T*>(a.base) + i * a.sb, a.sc, a.sy, a.sx, a.H, a.W};
  const int64_t* d = a.table + kImageFields * i;
  return {reinterpret_cast<const T*>(d[0]), d[3], d[4], d[5], static_cast<int>(d[1]), static_cast<int>(d[2])};
}

// A crop coordinate as the CPU reads it (truncated), clamped into [0, hi] so that a bad row
// cannot read outside its image (Python validates the boxes; NaN becomes 0).
__device__ int param_int(float v, int hi) {
  const int r = static_cast<int>(fminf(fmaxf(v, 0.0f), static_cast<float>(hi)));
  return r < hi ? r : hi;
}

// Block-wide sum or max in a fixed order: warp trees, then every thread folds the warps' results
// in warp order, so all threads get the same value. `red` holds kThreads / 32 doubles.
template <bool kMax>
__device__ double block_reduce(double v, double* red) {
  for (int o = 16; o > 0; o >>= 1) {
    const double u = __shfl_xor_sync(0xffffffffu, v, o);
    v = kMax ? fmax(v, u) : v + u;
  }
  __syncthreads();  // red is free: every thread has finished reading the previous reduction
  if ((threadIdx.x & 31) == 0) red[threadIdx.x >> 5] = v;
  __syncthreads();
  double r = red[0];
  for (int w = 1; w < kThreads / 32; ++w) r = kMax ? fmax(r, red[w]) : r + red[w];
  return r;
}

// One resampled axis of the current sample: output index i reads window win[i] = {first, count}
// with weights at i * taps (float, or torch's fixed-point int32 for uint8 images).
struct Axis {
  bool skip;  // in == out: torch copies the axis
  int taps, precision;
  const int2* win;
  const void* weights;
};

// Builds an axis in shared memory. uint8 images compute torch's double weights into `dbl` first,
// then round them to fixed point at the precision of the largest weight of the axis.
template <bool kU8>
__device__ Axis setup_axis(int in, int S, int2* win, void* weights, double* dbl, double* red) {
  Axis ax{in == S, static_cast<int>(aa_max_taps(in, S)), 0, win, weights};
  if (ax.skip) return ax;
  if (!kU8) {
    auto* w = static_cast<RnScalar<float>*>(weights);
    for (int i = threadIdx.x; i < S; i += kThreads) {
      const AAWindow wn = aa_window<RnScalar<float>>(i, in, S, w + i * ax.taps, ax.taps);
      win[i] = make_int2(static_cast<int>(wn.first), static_cast<int>(wn.count));
    }
    return ax;
  }
  auto* wd = reinterpret_cast<RnScalar<double>*>(dbl);
  double wmax = 0.0;
  for (int i = threadIdx.x; i < S; i += kThreads) {
    const AAWindow wn = aa_window<RnScalar<double>>(i, in, S, wd + i * ax.taps, ax.taps);
    win[i] = make_int2(static_cast<int>(wn.first), static_cast<int>(wn.count));
    for (int j = 0; j < wn.count; ++j) wmax = fmax(wmax, dbl[i * ax.taps + j]);
  }
  ax.precision = u8_weight_precision(block_reduce<true>(wmax, red));
  auto* wi = static_cast<int32_t*>(weights);
  for (int i = threadIdx.x; i < S; i += kThreads) {  // the same i as above: this thread's own doubles
    for (int j = 0; j < win[i].y; ++j) wi[i * ax.taps + j] = u8_weight(dbl[i * ax.taps + j], ax.precision);
  }
  __syncthreads();  // dbl is reused by the next axis
  return ax;
}

// Output index i of a line whose element k is line[(k - base) * step]: the CPU's tap order and
// rounding (float: a rounded product and sum per tap; uint8: int32 fixed point, then saturated).
template <bool kU8, typename V>
__device__ float resample(const V* line, int64_t step, int base, int i, const Axis& ax) {
  if (ax.skip) return static_cast<float>(line[(i - base) * step]);
  const int2 wn = ax.win[i];
  const V* px = line + (wn.x - base) * step;
  if (kU8) {
    const int32_t* w = static_cast<const int32_t*>(ax.weights) + i * ax.taps;
    int32_t acc = int32_t(1) << (ax.precision - 1);
    for (int j = 0; j < wn.y; ++j) acc += w[j] * static_cast<int32_t>(px[j * step]);
    return u8_resample_finish(acc, ax.precision);
  }
  const float* w = static_cast<const float*>(ax.weights) + i * ax.taps;
  float acc = 0.0f;
  for (int j = 0; j < wn.y; ++j) acc = add_rn(acc, mul_rn(w[j], static_cast<float>(px[j * step])));
  return acc;
}

// The band of output rows [y0, y1) whose source rows [lo, hi) fit in `rows` (at least one row:
// the host sizes the band for the widest window).
__device__ int resize_band(const Axis& ay, int y0, int S, int rows, int& lo, int& hi) {
  if (ay.skip) {
    lo = y0;
    hi = min(S, y0 + rows);
    return hi;
  }
  lo = ay.win[y0].x;
  hi = lo + ay.win[y0].y;
  int y1 = y0 + 1;
  for (; y1 < S; ++y1) {
    const int2 wn = ay.win[y1];
    const int nlo = min(lo, wn.x), nhi = max(hi, wn.x + wn.y);
    if (nhi - nlo > rows) break;
    lo = nlo, hi = nhi;
  }
  return y1;
}

// Crop + antialiased resize (width first) + flip of channel c into work_c (S x S).
template <typename T>
__device__ void resize_channel(const Source<T>& src, int c, int top, int left, const Axis& ax, const Axis& ay,
                               bool flip, int S, int rows, float* band, float* work_c) {
  constexpr bool kU8 = std::is_same<T, uint8_t>::value;
  const T* plane = src.base + c * src.sc + static_cast<int64_t>(left) * src.sx;
  for (int y0 = 0; y0 < S;) {
    int lo, hi;
    const int y1 = resize_band(ay, y0, S, rows, lo, hi);
    for (int k = threadIdx.x; k < (hi - lo) * S; k += kThreads) {
      const int r = k / S, x = k - r * S;
      band[k] = resample<kU8>(plane + static_cast<int64_t>(top + lo + r) * src.sy, src.sx, 0, x, ax);
    }
    __syncthreads();
    for (int k = threadIdx.x; k < (y1 - y0) * S; k += kThreads) {
      const int r = k / S, x = k - r * S;
      work_c[(y0 + r) * S + (flip ? S - 1 - x : x)] = resample<kU8>(band + x, S, lo, y0 + r, ay);
    }
    __syncthreads();  // the band is rewritten next
    y0 = y1;
  }
}

// f(c) for the C (1 or 3) channels of a pixel: unrolled over three with constant indices, so that
// a pixel's float v[3] stays in registers (a runtime index would put it in local memory).
template <typename F>
__device__ __forceinline__ void for_channels(int C, F f) {
#pragma unroll
  for (int c = 0; c < 3; ++c) {
    if (c < C) f(c);
  }
}

// One colour-jitter op on a pixel (contrast is applied by the segment loop).
__device__ void jitter_op(int op, float (&v)[3], int C, const float* prm, float bound, bool u8) {
  if (op == kBrightness) {
    for_channels(C, [&](int c) { v[c] = brightness(v[c], prm[kBrightnessFactor], bound, u8); });
  } else if (op == kSaturation && C == 3) {
    const float gray = gray_of(v[0], v[1], v[2], u8), f = prm[kSaturationFactor];
    for (int c = 0; c < 3; ++c) v[c] = blend(v[c], gray, f, bound, u8);
  } else if (op == kHue && C == 3) {
    if (u8) {  // adjust_hue works in [0, 1]: to_dtype there and back
      for (int c = 0; c < 3; ++c) v[c] = mul_rn(v[c], 1.0f / 255.0f);
    }
    hue_shift(v[0], v[1], v[2], prm[kHueFactor]);
    if (u8) {
      for (int c = 0; c < 3; ++c) v[c] = hue_to_u8(v[c]);
    }
  }
}

// The last steps of a value: solarize, uint8 -> [0, 1], normalise, cast, store.
struct Finisher {
  void* out;
  int64_t base, sc, sy, sx;
  int kind;
  bool solarize, u8;
  const float* mean;  // shared memory, C values each
  const float* inv_std;

  __device__ void operator()(float v, int c, int y, int x) const {
    if (solarize) v = math::solarize(v, u8 ? 128.0f : 0.5f, u8 ? 255.0f : 1.0f);
    if (u8) v = mul_rn(v, 1.0f / 255.0f);
    v = mul_rn(v - mean[c], inv_std[c]);  // the CPU multiplies by 1 / std as well
    const int64_t off = base + c * sc + y * sy + x * sx;
    switch (kind) {
      case kOutFloat: static_cast<float*>(out)[off] = v; break;
      case kOutHalf: static_cast<__half*>(out)[off] = __float2half_rn(v); break;
      case kOutBFloat16: static_cast<__nv_bfloat16*>(out)[off] = __float2bfloat16_rn(v); break;
      default: static_cast<double*>(out)[off] = static_cast<double>(v); break;
    }
  }
};

// Colour jitter, grayscale, and (without blur) the finish, as passes over the pixels of work:
// one per segment of the jitter order, a segment ending at a contrast op (which needs the mean
// gray level of the whole sample as the segment leaves it).
__device__ void colour(float* work, int C, int S, const float* prm, bool u8, bool finish_here, const Finisher& fin,
                       double* red) {
  const int n = S * S;
  const float bound = u8 ? 255.0f : 1.0f;
  // The four ops, 4 bits each (a register rather than an indexed array); values that are no op
  // become 15, as the CPU's loop ignores them.
  unsigned ops = 0xFFFFu;
  if (prm[kJitter] != 0.0f) {
    ops = 0;
    for (int k = 0; k < 4; ++k) {
      const float f = prm[kOrder0 + k];
      const int op = f > -1.0f && f < 4.0f ? static_cast<int>(f) : 15;  // truncates as the CPU does
      ops |= static_cast<unsigned>(op) << (4 * k);
    }
  }
  const auto op_at = [ops](int k) { return static_cast<int>((ops >> (4 * k)) & 15u); };
  const bool gray = prm[kGray] != 0.0f && C == 3;
  bool pending = false;  // a contrast blend towards `mean` opens this segment
  float mean = 0.0f;
  for (int k = 0;;) {
    int next = k;
    while (next < 4 && op_at(next) != kContrast) ++next;
    const bool last = next == 4;
    const bool changes = pending || next > k || (last && gray);
    if (last && !finish_here && !changes) break;  // work already holds the result
    double sum = 0.0;
    for (int i = threadIdx.x; i < n; i += kThreads) {
      float v[3] = {0.0f, 0.0f, 0.0f};
      for_channels(C, [&](int c) { v[c] = work[c * n + i]; });
      if (pending) {
        for_channels(C, [&](int c) { v[c] = blend(v[c], mean, prm[kContrastFactor], bound, u8); });
      }
      for (int j = k; j < next; ++j) jitter_op(op_at(j), v, C, prm, bound, u8);
      if (!last) {
        sum += C == 3 ? gray_of(v[0], v[1], v[2], u8) : v[0];
      } else if (gray) {
        v[0] = v[1] = v[2] = gray_of(v[0], v[1], v[2], u8);  // rgb_to_grayscale keeps uint8: floored
      }
      if (last && finish_here) {
        const int y = i / S, x = i - y * S;
        for_channels(C, [&](int c) { fin(v[c], c, y, x); });
      } else if (changes) {
        for_channels(C, [&](int c) { work[c * n + i] = v[c]; });
      }
    }
    if (last) break;
    mean = static_cast<float>(block_reduce<false>(sum, red) / static_cast<double>(n));
    pending = true;
    k = next + 1;
  }
}

// Rotation of one resized channel from turn into work_c (quarter turns: a permutation).
__device__ void rotate_channel(const float* turn, float* work_c, const Rotation& r, int S, float fill, bool u8) {
  for (int i = threadIdx.x; i < S * S; i += kThreads) {
    const int y = i / S, x = i - y * S;
    if (r.quarter >= 0) {
      work_c[i] = turn[quarter_source(r.quarter, S, x, y)];
    } else {
      const RotationTaps t = rotation_taps(r, S, x, y);
      const auto at = [&](int dx, int dy) {  // grid_sample reads zeros outside
        return tap_inside(t.x0 + dx, t.y0 + dy, S) ? turn[(t.y0 + dy) * S + t.x0 + dx] : 0.0f;
      };
      work_c[i] = rotation_finish(rotation_sum(at(0, 0), at(1, 0), at(0, 1), at(1, 1), t), t.mask, fill, u8);
    }
  }
  __syncthreads();  // colour reads pixels other threads wrote; the next channel rewrites turn
}

// reflect_index for a tap at q, without its 64-bit modulo for the taps that lie inside.
__device__ __forceinline__ int reflect(int q, int n) {
  return static_cast<unsigned>(q) < static_cast<unsigned>(n) ? q : static_cast<int>(reflect_index(q, n));
}

// Separable gaussian blur with reflect padding (weights g), finishing into the output.
template <bool kU8>
__device__ void blur_and_finish(const float* work, int C, int S, int ksize, const float* g, int rows, float* band,
                                const Finisher& fin) {
  const int r = ksize / 2;
  // Output rows per band: the band holds them plus r rows each side (all of them when r >= S).
  const int step = rows >= S ? S : max(1, rows - 2 * r);
  for (int c = 0; c < C; ++c) {
    const float* plane = work + c * S * S;
    for (int y0 = 0; y0 < S; y0 += step) {
      const int y1 = min(S, y0 + step);
      const int lo = r < S ? max(0, y0 - r) : 0, hi = r < S ? min(S, y1 + r) : S;
      for (int k = threadIdx.x; k < (hi - lo) * S; k += kThreads) {
        const int yy = k / S, x = k - yy * S;
        const float* line = plane + (lo + yy) * S;
        float acc = 0.0f;
        for (int j = 0; j < ksize; ++j) acc = add_rn(acc, mul_rn(g[j], line[reflect(x + j - r, S)]));
        band[k] = acc;
      }
      __syncthreads();
      for (int k = threadIdx.x; k < (y1 - y0) * S; k += kThreads) {
        const int y = y0 + k / S, x = k - (k / S) * S;
        float acc = 0.0f;
        for (int j = 0; j < ksize; ++j) {
          acc = add_rn(acc, mul_rn(g[j], band[(reflect(y + j - r, S) - lo) * S + x]));
        }
        fin(kU8 ? rintf(acc) : acc, c, y, x);
      }
      __syncthreads();  // the band is rewritten next
    }
  }
}

template <typename T, bool kSmemWork>
__global__ void __launch_bounds__(kThreads) augment_kernel(const AugmentArgs a) {
  constexpr bool kU8 = std::is_same<T, uint8_t>::value;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 16);
  __shared__ float s_prm[kNumParams];
  __shared__ float s_mean[3], s_inv_std[3];
  __shared__ double s_red[kThreads / 32];
  float* band = reinterpret_cast<float*>(smem + a.off_band);
  float* gauss = reinterpret_cast<float*>(smem + a.off_gauss);
  int2* winx = reinterpret_cast<int2*>(smem + a.off_winx);
  int2* winy = reinterpret_cast<int2*>(smem + a.off_winy);
  float* work = kSmemWork ? reinterpret_cast<float*>(smem + a.off_work)
                          : a.scratch + static_cast<int64_t>(blockIdx.x) * (a.C + 1) * a.S * a.S;
  float* turn = kSmemWork ? reinterpret_cast<float*>(smem + a.off_turn) : work + static_cast<int64_t>(a.C) * a.S * a.S;
  const int S = a.S, C = a.C;
  if (threadIdx.x < C) {
    s_mean[threadIdx.x] = a.mean != nullptr ? a.mean[threadIdx.x] : 0.0f;
    s_inv_std[threadIdx.x] = a.std != nullptr ? 1.0f / a.std[threadIdx.x] : 1.0f;
  }
  for (int64_t p = blockIdx.x; p < a.P; p += gridDim.x) {
    __syncthreads();  // every thread is done with the previous sample's shared memory
    if (threadIdx.x < kNumParams) s_prm[threadIdx.x] = a.params[p * kNumParams + threadIdx.x];
    __syncthreads();
    const float* prm = s_prm;
    const Source<T> src = source_of<T>(a, p);
    const int top = param_int(prm[kTop], src.H - 1), left = param_int(prm[kLeft], src.W - 1);
    const int h = max(1, param_int(prm[kHeight], src.H - top)), w = max(1, param_int(prm[kWidth], src.W - left));
    const bool blur = prm[kBlurSigma] > 0.0f;
    if (blur && threadIdx.x == 0) gaussian_kernel(a.blur_k, prm[kBlurSigma], gauss);
    double* dbl = reinterpret_cast<double*>(band);  // the band is free until the resize
    const Axis ax = setup_axis<kU8>(w, S, winx, smem + a.off_wx, dbl, s_red);
    const Axis ay = setup_axis<kU8>(h, S, winy, smem + a.off_wy, dbl, s_red);
    __syncthreads();
    const Rotation rotation = rotation_of(prm[kAngle], S);
    for (int c = 0; c < C; ++c) {
      float* work_c = work + c * S * S;
      resize_channel<T>(src, c, top, left, ax, ay, prm[kFlip] != 0.0f, S, a.band_rows, band,
                        rotation.quarter == 0 ? work_c : turn);
      if (rotation.quarter != 0) {
        rotate_channel(turn, work_c, rotation, S, mul_rn(prm[kFill0 + c], kU8 ? 255.0f : 1.0f), kU8);
      }
    }
    const Finisher fin{a.out, p * a.os[0], a.os[1], a.os[2], a.os[3], a.out_kind, prm[kSolarize] != 0.0f, kU8,
                       s_mean, s_inv_std};
    colour(work, C, S, prm, kU8, !blur, fin, s_red);
    if (blur) {
      __syncthreads();  // the blur reads neighbours that other threads wrote
      blur_and_finish<kU8>(work, C, S, a.blur_k, gauss, a.band_rows, band, fin);
    }
  }
}

template <typename T, bool kSmemWork>
void launch(AugmentArgs a, int64_t smem, const at::Tensor& like, dev::Stream stream, std::vector<at::Tensor>& keep) {
  dev::allow_dynamic_smem<augment_kernel<T, kSmemWork>>(
      "fastcl.augment", static_cast<size_t>(smem),
      " (the output size, the blur kernel and the largest image set it; downscale the images first)");
  const dev::Properties prop = dev::properties();
  const int per_sm = dev::max_active_blocks_per_sm<augment_kernel<T, kSmemWork>>(kThreads, static_cast<size_t>(smem));
  int64_t grid = std::min<int64_t>(a.P, std::max(1, per_sm) * static_cast<int64_t>(prop.multiProcessorCount));
  if (!kSmemWork) {
    // One float work image and turn plane per block: at 2048-4096 pixels a side a full grid would
    // ask for many GB.
    const int64_t slot_bytes = static_cast<int64_t>(a.C + 1) * a.S * a.S * 4;
    grid = std::max<int64_t>(1, std::min(grid, kScratchBytes / slot_bytes));
    keep.push_back(at::empty({grid * (a.C + 1) * a.S * a.S}, like.options().dtype(at::kFloat)));
    a.scratch = keep.back().data_ptr<float>();
  }
  dev::launch<augment_kernel<T, kSmemWork>>(static_cast<unsigned>(grid), kThreads, static_cast<size_t>(smem), stream, a);
}

}  // namespace

void launch_augment(AugmentArgs a, int64_t smem, bool u8, bool smem_work, const at::Tensor& like, dev::Stream stream,
                    std::vector<at::Tensor>& keep) {
  if (u8) {
    if (smem_work) launch<uint8_t, true>(a, smem, like, stream, keep);
    else launch<uint8_t, false>(a, smem, like, stream, keep);
  } else {
    if (smem_work) launch<float, true>(a, smem, like, stream, keep);
    else launch<float, false>(a, smem, like, stream, keep);
  }
}

}  // namespace fastcl::gpu

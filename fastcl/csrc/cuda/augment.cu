// The CUDA op of the SimCLR batch augmentation: checks, the launch arguments and the layout of
// the kernel's dynamic shared memory (the kernel and its algorithm: augment_kernel.cu).
#include <ATen/ATen.h>
#include <torch/library.h>

#include <algorithm>
#include <vector>

#include "checks.h"
#include "common/augment_math.h"
#include "cuda/augment.cuh"
#include "cuda/device_api.cuh"

namespace fastcl::gpu {

using namespace math;

namespace {

constexpr int64_t kSmemWorkBytes = 48 * 1024;  // the largest work image kept in shared memory
constexpr int64_t kBandBytes = 32 * 1024;      // band buffer size to aim for (it may need more)

int64_t align16(int64_t bytes) { return (bytes + 15) / 16 * 16; }

at::Tensor augment_cuda(at::TensorList images, const at::Tensor& source_index, const at::Tensor& params, int64_t size,
                        int64_t blur_kernel, const c10::optional<at::Tensor>& mean,
                        const c10::optional<at::Tensor>& std_, at::ScalarType out_dtype, bool channels_last) {
  const AugmentSizes sz = check_augment_args(images, source_index, params, size, blur_kernel, mean, std_, out_dtype,
                                             kNumParams);
  const bool batched = sz.batched;
  const int64_t count = sz.count, C = sz.C, Hmax = sz.Hmax, Wmax = sz.Wmax, P = sz.P;
  const at::Device device = images[0].device();
  int out_kind = kOutDouble;
  switch (out_dtype) {
    case at::kFloat: out_kind = kOutFloat; break;
    case at::kHalf: out_kind = kOutHalf; break;
    case at::kBFloat16: out_kind = kOutBFloat16; break;
    default: break;  // float64, the one other dtype the checks accept
  }

  dev::DeviceGuard guard(device);
  const auto format = channels_last ? at::MemoryFormat::ChannelsLast : at::MemoryFormat::Contiguous;
  at::Tensor out = at::empty({P, C, size, size}, images[0].options().dtype(out_dtype), format);
  if (P == 0) return out;
  dev::Stream stream = dev::current_stream();
  std::vector<at::Tensor> keep;  // tensors the kernel reads, alive until the launch is queued

  AugmentArgs a{};
  const at::Tensor& first = images[0];
  if (batched) {
    a.base = static_cast<const char*>(first.data_ptr());
    a.sb = first.stride(0), a.sc = first.stride(1), a.sy = first.stride(2), a.sx = first.stride(3);
    a.H = static_cast<int>(first.size(2)), a.W = static_cast<int>(first.size(3));
  } else {
    // The image table goes up from pinned memory without a host sync; the caching host
    // allocator keeps the buffer until the copy has run.
    at::Tensor host = at::empty({count, kImageFields}, dev::host_staging(at::TensorOptions().dtype(at::kLong)));
    int64_t* t = host.data_ptr<int64_t>();
    for (int64_t i = 0; i < count; ++i) {
      const at::Tensor& img = images[i];
      const int64_t v[kImageFields] = {reinterpret_cast<int64_t>(img.data_ptr()), img.size(1), img.size(2),
                                       img.stride(0), img.stride(1), img.stride(2)};
      std::copy(v, v + kImageFields, t + i * kImageFields);
    }
    keep.push_back(host.to(device, at::kLong, /*non_blocking=*/true));
    a.table = keep.back().data_ptr<int64_t>();
  }
  a.count = count;
  keep.push_back(source_index.contiguous());
  a.source_index = keep.back().data_ptr<int64_t>();
  keep.push_back(params.contiguous());
  a.params = keep.back().data_ptr<float>();
  // Each of mean and std on its own, as the CPU op takes them (a direct op call may pass one).
  if (mean.has_value()) {
    keep.push_back(mean->to(at::kFloat).contiguous());
    a.mean = keep.back().data_ptr<float>();
  }
  if (std_.has_value()) {
    keep.push_back(std_->to(at::kFloat).contiguous());
    a.std = keep.back().data_ptr<float>();
  }
  a.out = out.data_ptr();
  for (int d = 0; d < 4; ++d) a.os[d] = out.stride(d);
  a.out_kind = out_kind;
  a.P = P;
  a.S = static_cast<int>(size), a.C = static_cast<int>(C), a.blur_k = static_cast<int>(blur_kernel);

  // Shared memory: band (also the uint8 double weights), work and turn (small outputs), the two weight
  // tables sized for the widest windows any image can need, the windows, the gaussian.
  const bool u8 = first.scalar_type() == at::kByte;
  const int64_t S = size, tx = aa_max_taps(Wmax, S), ty = aa_max_taps(Hmax, S);
  int64_t rows = std::min(std::max(Hmax, S), std::max<int64_t>(1, kBandBytes / (4 * S)));
  rows = std::max({rows, ty, std::min(S, blur_kernel)});  // one output row's taps, resize or blur
  a.band_rows = static_cast<int>(rows);
  const bool smem_work = C * S * S * 4 <= kSmemWorkBytes;
  int64_t off = 0;
  const auto region = [&off](int64_t bytes) {
    const int64_t start = off;
    off += align16(bytes);
    return static_cast<int>(start);
  };
  a.off_band = region(std::max(rows * S * 4, u8 ? 8 * S * std::max(tx, ty) : 0));
  a.off_work = region(smem_work ? C * S * S * 4 : 0);
  a.off_turn = region(smem_work ? S * S * 4 : 0);  // a channel before its rotation
  a.off_wx = region(S * tx * 4);
  a.off_wy = region(S * ty * 4);
  a.off_winx = region(S * 8);
  a.off_winy = region(S * 8);
  a.off_gauss = region(blur_kernel * 4);
  launch_augment(a, off, u8, smem_work, first, stream, keep);
  return out;
}

}  // namespace

FASTCL_CUDA_KERNELS(m) { m.impl("augment", &augment_cuda); }

}  // namespace fastcl::gpu

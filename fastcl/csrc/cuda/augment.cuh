// What the CUDA augmentation op (augment.cu) hands its kernel (augment_kernel.cu): the launch
// arguments, with the image table and output layouts both sides share.
#pragma once
#include <ATen/ATen.h>

#include <cstdint>
#include <vector>

#include "cuda/device_api.cuh"

namespace fastcl::gpu {

constexpr int kImageFields = 6;  // list input: {address, H, W, sc, sy, sx} per image

enum OutKind : int { kOutFloat, kOutHalf, kOutBFloat16, kOutDouble };

// Everything a launch needs; byte offsets locate the regions of dynamic shared memory.
struct AugmentArgs {
  const char* base;      // one (B, C, H, W) tensor: its data
  const int64_t* table;  // a list of (C, H, W) tensors: kImageFields per image; null otherwise
  int64_t sb, sc, sy, sx, count;
  int H, W;
  const int64_t* source_index;
  const float* params;
  const float* mean;  // null: mean 0
  const float* std;   // null: std 1
  void* out;
  int64_t os[4];
  int out_kind;
  float* scratch;  // global work slots (grid, C + 1, S, S), or null when work lives in shared memory
  int64_t P;
  int S, C, blur_k, band_rows;
  int off_band, off_work, off_turn, off_wx, off_wy, off_winx, off_winy, off_gauss;
};

// Launches the kernel for uint8 (u8) or float images, its work images in shared memory
// (smem_work) or in a global scratch tensor it allocates like `like` and appends to `keep`.
void launch_augment(AugmentArgs a, int64_t smem, bool u8, bool smem_work, const at::Tensor& like, dev::Stream stream,
                    std::vector<at::Tensor>& keep);

}  // namespace fastcl::gpu

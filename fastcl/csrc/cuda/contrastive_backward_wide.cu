// The fp16/bf16 backward of contrastive_backward_mma.cu for 256 < D <= 768 (CLIP's 512 and 768,
// BERT's 768, MiniLM's 384; and 128 < D <= 256 with sample ids or an owned bias), 2U a side where
// slicing the narrow kernel's gradient into 128-column parts would recompute the logits once a
// slice (7U at D = 768).
//
// The tiles are wide_tile.cuh's (32 owner rows, 32-row stream tiles of whole D, each warp's 16-column
// groups of D for both products); this file forms G' on each warp's fragment of the summed logits:
// the softmax's G (grad_tile.cuh) over the stream row's norm. The problem's features (sample ids, an
// owned bias) are read at run time on the few tiles that may need masks (tile_masked); there G' also
// goes through a second product as its rounding error (hi + lo, as in the narrow kernel). Column
// splits write separate partials: no atomics.
#include <ATen/ATen.h>

#include <type_traits>

#include "common/contrastive_math.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/grad_tile.cuh"
#include "cuda/mma.cuh"
#include "cuda/swizzled_tile.cuh"
#include "cuda/tile_math.cuh"
#include "cuda/wide_tile.cuh"

namespace fastcl::gpu {

namespace {

// Dynamic shared memory: the wide tiles (WideTiles), then per stage the stream rows' info, labels and ids.
struct GradWideLayout : WideTiles {
  size_t info, label, id, bytes;
  __host__ __device__ explicit GradWideLayout(int groups)
      : WideTiles(groups),
        info(end),
        label(info + 2 * kColsW * sizeof(float4)),
        id(label + 2 * kColsW * sizeof(int64_t)),
        bytes(id + 2 * kColsW * sizeof(int64_t)) {}
};

template <typename T, int kGroups, bool kRowOwner, bool kBoth>
__global__ void __launch_bounds__(kThreadsW, 1)
    grad_wide_kernel(Side<T> own, Side<T> str, Problem p, const float* __restrict__ g_scale, int tiles_per_split,
                     float* __restrict__ part, double* __restrict__ scale_part) {
  constexpr int kChunks = 2 * kGroups;
  const GradWideLayout L(kGroups);
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sOwn = reinterpret_cast<T*>(smem + L.own);
  T* sStr = reinterpret_cast<T*>(smem + L.str);
  float4* sPart = reinterpret_cast<float4*>(smem + L.part);
  uint32_t* sHi = reinterpret_cast<uint32_t*>(smem + L.ghi);
  uint32_t* sLo = reinterpret_cast<uint32_t*>(smem + L.glo);
  float4* sInfo = reinterpret_cast<float4*>(smem + L.info);
  int64_t* sLabel = reinterpret_cast<int64_t*>(smem + L.label);
  int64_t* sId = reinterpret_cast<int64_t*>(smem + L.id);
  __shared__ int s_masked[2];
  __shared__ double s_red[kWarpsW];

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t4 = lane & 3;
  const int64_t own0 = int64_t(blockIdx.x) * kRowsW;
  const int n_tiles = static_cast<int>((str.n + kColsW - 1) / kColsW);
  const int t_begin = blockIdx.y * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
  const float c2 = *p.logit_scale * kLog2e;
  const float gs = std::is_same<T, __half>::value ? *g_scale : 1.f;  // as in the narrow kernel
  const bool ids = p.has_ids, bias = p.has_bias && p.col_bias_owner != nullptr;

  // The fragment of S this thread forms G' for: rows fm * 16 + g (+ 8), stream rows fn * 8 + 2 t4 (+ 1).
  const int fm = warp >> 2, fn = warp & 3;
  OwnRow o[2];
#pragma unroll
  for (int h = 0; h < 2; ++h) o[h] = own_row(own, own0 + fm * 16 + g + 8 * h);
  const float ow2[2] = {o[0].rn * c2, o[1].rn * c2};

  auto issue = [&](int tile, int stage) {
    const int64_t s0 = int64_t(tile) * kColsW;
    load_row_chunks<T, kChunks>(sStr + stage * (L.stage / sizeof(T)), str.x, str.n, p.D, s0);
    if (threadIdx.x == kThreadsW - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[stage] = tile_masked<T, kRowsW, kColsW, kRowOwner>(own, str, p, own0, s0, tile, ids, bias);
    }
    copy_stream_values<T, kColsW>(sInfo + stage * kColsW, sLabel + stage * kColsW, sId + stage * kColsW, str, s0,
                                  ids);
  };

  load_row_chunks<T, kChunks>(sOwn, own.x, own.n, p.D, own0);
  if (t_begin < t_end) issue(t_begin, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  const WideWarp<T, kGroups> ww(sOwn, sStr, warp, lane);
  float acc[kGroups][2][2][4];
  zero_wide_acc<kGroups>(acc);
  double dscale = 0.0;

  for (int tile = t_begin; tile < t_end; ++tile) {
    const int stage = (tile - t_begin) & 1;
    if (tile > t_begin) {  // this tile's copies were issued a tile ago; the last tile's G' and partials are read
      cp_async_wait_all();
      __syncthreads();
    }
    if (tile + 1 < t_end) issue(tile + 1, stage ^ 1);  // its stage was last read before the barrier above
    cp_async_commit();
    const int sa = stage * static_cast<int>(L.stage);  // the stage's byte offset
    float x[4];
    ww.logits(x, sa, sPart);

    // G' = G / |stream row| * gs of the thread's 4 logits: rows h = e / 2, stream row c = fn * 8 + 2 t4 + e % 2.
    const float4* info = sInfo + stage * kColsW;
    const bool masked = s_masked[stage];
    float tile_dscale = 0.f;
    if (!masked) {
      float row_dscale[2] = {0.f, 0.f};
#pragma unroll
      for (int e = 0; e < 4; ++e) {
        const float4 si = info[fn * 8 + 2 * t4 + (e & 1)];
        x[e] = plain_pair_grad<kRowOwner, kBoth>(o[e >> 1], ow2[e >> 1], si, x[e], row_dscale[e >> 1]) * (si.x * gs);
      }
      tile_dscale = row_dscale[0] * o[0].rn + row_dscale[1] * o[1].rn;
    } else {  // sass: rare
      const int64_t s0 = int64_t(tile) * kColsW;
      const int64_t *lab = sLabel + stage * kColsW, *sid = sId + stage * kColsW;
      // The problem's features as template flags of the pair rule, on these few tiles only.
      const auto fold = [&](auto with_ids, auto with_bias) {
        constexpr bool kIds = decltype(with_ids)::value, kBias = decltype(with_bias)::value;
#pragma unroll
        for (int e = 0; e < 4; ++e) {
          const int h = e >> 1, c = fn * 8 + 2 * t4 + (e & 1);
          const float4 si = info[c];
          const int64_t oid = kIds && o[h].i < own.n ? own.ids[o[h].i] : -1;
          x[e] = masked_pair_grad<kRowOwner, kBoth, kIds, kBias>(p, o[h], oid, own.n, s0, c, str.n, si, lab, sid,
                                                                  x[e], c2, tile_dscale) * si.x * gs;
        }
      };
      using yes = std::true_type;
      using no = std::false_type;
      if (ids) {
        bias ? fold(yes{}, yes{}) : fold(yes{}, no{});
      } else {
        bias ? fold(no{}, yes{}) : fold(no{}, no{});
      }
      ww.store_g(sLo, x, true);
    }
    dscale += double(tile_dscale);
    ww.store_g(sHi, x, false);
    __syncthreads();
    ww.product(acc, sHi, sa);
    if (masked) ww.product(acc, sLo, sa);  // sass: rare (the low part of G')
  }
  cp_async_wait_all();
  ww.store(acc, part + int64_t(blockIdx.y) * own.n * p.D, own0, own.n, p.D, 1.f / gs);
  if (kRowOwner) {
    block_sum_to(dscale, s_red, scale_part, int64_t(blockIdx.y) * gridDim.x + blockIdx.x);
  }
}

template <typename T, int kGroups, bool kRowOwner, bool kBoth>
void launch_groups(const Side<T>& own, const Side<T>& str, const Problem& p, const float* g_scale, int64_t per,
                   dim3 grid, float* part, double* scale_part, dev::Stream stream) {
  constexpr auto kernel = grad_wide_kernel<T, kGroups, kRowOwner, kBoth>;
  const size_t smem = GradWideLayout(kGroups).bytes;
  dev::allow_dynamic_smem<kernel>("fastcl", smem, " (the wide backward keeps two 32-row tiles of D in shared memory)");
  dev::launch<kernel>(grid, kThreadsW, smem, stream, own, str, p, g_scale, static_cast<int>(per), part, scale_part);
}

}  // namespace

size_t grad_wide_smem(int64_t D) { return GradWideLayout(wide_instance_groups(D)).bytes; }

template <typename T, bool kRowOwner, bool kBoth>
void launch_grad_wide(int64_t D, const Side<T>& own, const Side<T>& str, const Problem& p, const float* g_scale,
                      int64_t per, dim3 grid, float* part, double* scale_part, dev::Stream stream) {
  // D 129-256 (problems with features), 257-384, 385-512, 513-768.
  with_wide_groups(D, [&](auto w) {
    launch_groups<T, decltype(w)::value, kRowOwner, kBoth>(own, str, p, g_scale, per, grid, part, scale_part, stream);
  });
}

#define FASTCL_GRAD_WIDE(T, R, B)                                                                               \
  template void launch_grad_wide<T, R, B>(int64_t, const Side<T>&, const Side<T>&, const Problem&, const float*, \
                                          int64_t, dim3, float*, double*, dev::Stream);
FASTCL_GRAD_WIDE(__half, true, false)
FASTCL_GRAD_WIDE(__half, false, false)
FASTCL_GRAD_WIDE(__half, true, true)
FASTCL_GRAD_WIDE(__nv_bfloat16, true, false)
FASTCL_GRAD_WIDE(__nv_bfloat16, false, false)
FASTCL_GRAD_WIDE(__nv_bfloat16, true, true)
#undef FASTCL_GRAD_WIDE

}  // namespace fastcl::gpu

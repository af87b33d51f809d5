// The fp16/bf16 backward of contrastive_backward_mma.cu for 256 < D <= 768 (CLIP's 512 and 768,
// BERT's 768, MiniLM's 384; and 128 < D <= 256 with sample ids or an owned bias), 2U a side where slicing the narrow kernel's gradient into 128-column
// parts would recompute the logits once a slice (7U at D = 768).
//
// A block owns 32 rows and streams 32-row tiles of the other side, whole D, double-buffered, each
// as D / 64 swizzled 32 x 64 chunk tiles (D rounded up to a multiple of 128, zero-filled). Warp w
// owns the 16-column groups w, w + 8, ... of D twice over:
//   - the logits: its groups' share of the 32 x 32 tile S, from its owner-row fragments held in
//     registers for the whole kernel (D / 128 k-steps x 2 row halves), then the eight partial S
//     summed through shared memory, each warp taking one 16 x 8 fragment of the sum (4 logits a
//     thread), where it forms G' (grad_tile.cuh) and writes it to a padded shared tile as T;
//   - the gradient: acc (32 rows x its groups' columns, fp32 registers) += G' . stream tile, G' read
//     as the A operand by ldmatrix and the stream tile transposed by ldmatrix.trans, as the narrow
//     kernel's second product does with its fragments.
// The problem's features (sample ids, an owned bias) are read at run time on the few tiles that may
// need masks (tile_masked); there G' also goes through a second product as its rounding error (hi +
// lo, as in the narrow kernel). Column splits write separate partials: no atomics.
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

namespace fastcl::gpu {

namespace {

constexpr int kThreadsW = 256, kWarpsW = 8, kRowsW = kWideOwnRows, kColsW = kWideStrRows, kChunkW = 64;
constexpr int kGStride = kColsW + 8;  // G' row pitch in elements: 80 bytes, conflict-free ldmatrix rows
static_assert(kRowsW == 32 && kColsW == 32, "the reduction gives each of 8 warps one 16 x 8 fragment");

// Dynamic shared memory for `groups` 16-column groups per warp (D rounded up to 128 x groups):
// owner rows, two stages of stream rows (chunk tiles), the eight warps' partial S (fragment-major),
// G' and its low part, and per stage the stream rows' info, labels and ids.
struct GradWideLayout {
  size_t own, str, stage, part, ghi, glo, info, label, id, bytes;
  __host__ __device__ explicit GradWideLayout(int groups)
      : own(0),
        str(own + size_t(kRowsW) * 128 * groups * 2),
        stage(size_t(kColsW) * 128 * groups * 2),
        part(str + 2 * stage),
        ghi(part + size_t(kWarpsW) * kRowsW * kColsW * sizeof(float)),
        glo(ghi + size_t(kRowsW) * kGStride * 2),
        info(glo + size_t(kRowsW) * kGStride * 2),
        label(info + 2 * kColsW * sizeof(float4)),
        id(label + 2 * kColsW * sizeof(int64_t)),
        bytes(id + 2 * kColsW * sizeof(int64_t)) {}
};

int groups_of(int64_t D) { return static_cast<int>(ceil_div(D, 128)); }

// Rows [row0, row0 + 32) of the (n, D) matrix x, all of its kChunks x 64 columns (zero past n and D),
// into kChunks swizzled 32 x 64 tiles: thread t copies 16-byte chunk t % 8 of row t / 8 of every tile,
// one row offset and one swizzle for all of them, so a tile costs a copy and a compare.
template <typename T, int kChunks>
__device__ __forceinline__ void load_row_chunks(T* tiles, const T* __restrict__ x, int64_t n, int64_t D,
                                                int64_t row0) {
  static_assert(kRowsW == kColsW && kRowsW * 8 == kThreadsW, "one 16-byte chunk a thread per chunk tile");
  const int tid = opaque_tid(), cc = tid & 7, r = tid >> 3;
  const bool row_ok = row0 + r < n;
  const T* src = x + (row_ok ? (row0 + r) * D + cc * 8 : 0);
  T* dst = tiles + SwizzledRows<kChunkW>::at(r, cc);
  const int left = static_cast<int>(D) - cc * 8;  // columns of the row from this thread's first on
#pragma unroll
  for (int c = 0; c < kChunks; ++c) {
    const bool ok = row_ok && c * kChunkW < left;
    cp_async16(dst + c * (kRowsW * kChunkW), ok ? src + c * kChunkW : x, ok);
  }
}

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
    const int t = threadIdx.x;
    if (t == kThreadsW - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[stage] = tile_masked<T, kRowsW, kColsW, kRowOwner>(own, str, p, own0, s0, tile, ids, bias);
    }
    if (t < kColsW) {
      const bool ok = s0 + t < str.n;
      cp_async16(&sInfo[stage * kColsW + t], ok ? str.info + s0 + t : str.info, ok);
    } else if (t < 2 * kColsW) {
      const int c = t - kColsW;
      const bool ok = s0 + c < str.n;
      cp_async8(&sLabel[stage * kColsW + c], ok ? str.labels + s0 + c : str.labels, ok);
    } else if (t < 3 * kColsW && ids) {
      const int c = t - 2 * kColsW;
      const bool ok = s0 + c < str.n;
      cp_async8(&sId[stage * kColsW + c], ok ? str.ids + s0 + c : str.ids, ok);
    }
  };

  load_row_chunks<T, kChunks>(sOwn, own.x, own.n, p.D, own0);
  if (t_begin < t_end) issue(t_begin, 0);
  cp_async_commit();
  cp_async_wait_all();
  __syncthreads();

  // Group w + 8 i is 16-byte chunks c0, c0 + 1 (c0 = 2 (w % 4)) of chunk tile w / 4 + 2 i: the lane's
  // swizzled offsets are the same for all of a warp's groups, so they are taken once here and each
  // ldmatrix adds an immediate (i, the row block, the k-step). Owner rows as A (and stream rows as
  // the .trans B of the gradient): lanes 8j..8j+7 give rows 8 (j % 2) + l % 8, chunk c0 + j / 2; the
  // stream rows as the logits' B: rows 8 (j / 2) + l % 8, chunk c0 + j % 2.
  constexpr int kChunkBytes = kRowsW * kChunkW * 2, kRowBlock = 8 * kChunkW * 2;
  const int c0 = 2 * (warp & 3);
  const LaneRows<kChunkW> arow((lane & 7) + ((lane >> 3) & 1) * 8, lane >> 4);
  const LaneRows<kChunkW> srow((lane >> 4) * 8 + (lane & 7), (lane >> 3) & 1);
  const SmemAddr own_at = arow(smem_addr(sOwn) + (warp >> 2) * kChunkBytes, 0, c0);
  const SmemAddr str_a_at = arow(smem_addr(sStr) + (warp >> 2) * kChunkBytes, 0, c0);
  const SmemAddr str_b_at = srow(smem_addr(sStr) + (warp >> 2) * kChunkBytes, 0, c0);
  // Up to 4 groups (D <= 512) the fragments stay in registers; at 6, beside 96 accumulators, they
  // spilled (make sass), so they are read from shared memory at each tile there.
  constexpr bool kOwnInRegisters = kGroups <= 4;
  const auto owner_fragment = [&](uint32_t(&a)[4], int i, int m) {
    ldmatrix_x4(a, own_at + (2 * i * kChunkBytes + 2 * m * kRowBlock));
  };
  uint32_t oa[kOwnInRegisters ? kGroups : 1][2][4];
  if constexpr (kOwnInRegisters) {
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
#pragma unroll
      for (int m = 0; m < 2; ++m) owner_fragment(oa[i][m], i, m);
    }
  }
  float acc[kGroups][2][2][4];
#pragma unroll
  for (int i = 0; i < kGroups; ++i)
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 2; ++n) acc[i][m][n][0] = acc[i][m][n][1] = acc[i][m][n][2] = acc[i][m][n][3] = 0.f;
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

    // The warp's share of S (32 x 32) over its groups, then into the fragment-major partials.
    float s[2][4][4];
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int f = 0; f < 4; ++f) s[m][f][0] = s[m][f][1] = s[m][f][2] = s[m][f][3] = 0.f;
#pragma unroll
    for (int i = 0; i < kGroups; ++i) {
#pragma unroll
      for (int f = 0; f < 4; f += 2) {
        uint32_t b[4];
        ldmatrix_x4(b, str_b_at + sa + (2 * i * kChunkBytes + f * kRowBlock));
        const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          uint32_t a_smem[4];
          if constexpr (!kOwnInRegisters) owner_fragment(a_smem, i, m);
          const uint32_t(&a)[4] = kOwnInRegisters ? oa[i][m] : a_smem;
          mma_m16n8k16<T>(s[m][f], a, b0, s[m][f]);
          mma_m16n8k16<T>(s[m][f + 1], a, b1, s[m][f + 1]);
        }
      }
    }
    // sPart[warp][fragment][lane]: fragment m * 4 + f of each warp; the sum of fragment `warp` over the
    // eight warps is this thread's. Base pointers, so that the offsets are immediates.
    float4* mine = sPart + warp * 256 + lane;
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int f = 0; f < 4; ++f) mine[(m * 4 + f) * 32] = make_float4(s[m][f][0], s[m][f][1], s[m][f][2], s[m][f][3]);
    __syncthreads();
    const float4* sum_of = sPart + warp * 32 + lane;
    float x[4] = {0.f, 0.f, 0.f, 0.f};
#pragma unroll
    for (int w = 0; w < kWarpsW; ++w) {
      const float4 v = sum_of[w * 256];
      x[0] += v.x, x[1] += v.y, x[2] += v.z, x[3] += v.w;
    }

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
#pragma unroll
      for (int h = 0; h < 2; ++h) {
        const float a = x[2 * h], b = x[2 * h + 1];
        sLo[((fm * 16 + g + 8 * h) * kGStride + fn * 8 + 2 * t4) / 2] =
            pack2<T>(a - to_float(from_float<T>(a)), b - to_float(from_float<T>(b)));
      }
    }
    dscale += double(tile_dscale);
#pragma unroll
    for (int h = 0; h < 2; ++h) sHi[((fm * 16 + g + 8 * h) * kGStride + fn * 8 + 2 * t4) / 2] = pack2<T>(x[2 * h], x[2 * h + 1]);
    __syncthreads();

    // acc += G' (32 x 32) . stream tile (32 x the warp's groups), in two k-steps of 16 stream rows.
    const auto product = [&](const uint32_t* sg) {
#pragma unroll
      for (int k = 0; k < 2; ++k) {
        uint32_t ga[2][4];
#pragma unroll
        for (int m = 0; m < 2; ++m) {
          const int row = m * 16 + (lane & 7) + ((lane >> 3) & 1) * 8, col = k * 16 + (lane >> 4) * 8;
          ldmatrix_x4(ga[m], smem_addr(sg) + (row * kGStride + col) * 2);
        }
#pragma unroll
        for (int i = 0; i < kGroups; ++i) {
          uint32_t b[4];
          ldmatrix_x4_trans(b, str_a_at + sa + (2 * i * kChunkBytes + 2 * k * kRowBlock));
          const uint32_t b0[2] = {b[0], b[1]}, b1[2] = {b[2], b[3]};
#pragma unroll
          for (int m = 0; m < 2; ++m) {
            mma_m16n8k16<T>(acc[i][m][0], ga[m], b0, acc[i][m][0]);
            mma_m16n8k16<T>(acc[i][m][1], ga[m], b1, acc[i][m][1]);
          }
        }
      }
    };
    product(sHi);
    if (masked) product(sLo);  // sass: rare (the low part of G')
  }
  cp_async_wait_all();

  // part[split][owner row][d] = acc / gs; acc[i][m][n] element e: row m * 16 + g + 8 (e / 2),
  // column 16 (w + 8 i) + 8 n + 2 t4 + e % 2.
  const float unscale = 1.f / gs;
  float* out = part + int64_t(blockIdx.y) * own.n * p.D;
#pragma unroll
  for (int i = 0; i < kGroups; ++i)
#pragma unroll
    for (int m = 0; m < 2; ++m)
#pragma unroll
      for (int n = 0; n < 2; ++n)
#pragma unroll
        for (int h = 0; h < 2; ++h) {
          const int64_t row = own0 + m * 16 + g + 8 * h, d = int64_t(warp + kWarpsW * i) * 16 + n * 8 + 2 * t4;
          if (row < own.n && d < p.D) {
            *reinterpret_cast<float2*>(out + row * p.D + d) =
                make_float2(acc[i][m][n][2 * h] * unscale, acc[i][m][n][2 * h + 1] * unscale);
          }
        }
  if (kRowOwner) {
#pragma unroll
    for (int off = 16; off > 0; off >>= 1) dscale += __shfl_xor_sync(0xffffffffu, dscale, off);
    if (lane == 0) s_red[warp] = dscale;
    __syncthreads();
    if (threadIdx.x == 0) {
      double total = 0.0;
      for (int w = 0; w < kWarpsW; ++w) total += s_red[w];
      scale_part[int64_t(blockIdx.y) * gridDim.x + blockIdx.x] = total;
    }
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

size_t grad_wide_smem(int64_t D) { return GradWideLayout(groups_of(D)).bytes; }

template <typename T, bool kRowOwner, bool kBoth>
void launch_grad_wide(int64_t D, const Side<T>& own, const Side<T>& str, const Problem& p, const float* g_scale,
                      int64_t per, dim3 grid, float* part, double* scale_part, dev::Stream stream) {
  // D 129-256 (problems with features), 257-384, 385-512, 513-768 (640 rounds up to 768: four widths
  // keep the instantiations few).
  const int groups = groups_of(D);
  if (groups <= 2) {
    launch_groups<T, 2, kRowOwner, kBoth>(own, str, p, g_scale, per, grid, part, scale_part, stream);
  } else if (groups == 3) {
    launch_groups<T, 3, kRowOwner, kBoth>(own, str, p, g_scale, per, grid, part, scale_part, stream);
  } else if (groups == 4) {
    launch_groups<T, 4, kRowOwner, kBoth>(own, str, p, g_scale, per, grid, part, scale_part, stream);
  } else {
    TORCH_INTERNAL_ASSERT(groups <= 6, "fastcl: the wide backward takes D <= 768");
    launch_groups<T, 6, kRowOwner, kBoth>(own, str, p, g_scale, per, grid, part, scale_part, stream);
  }
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

// The fp16/bf16 forward of contrastive_forward_mma.cu for 256 < D <= 768: CLIP's 512 and 768,
// BERT's 768, MiniLM's 384, where a warp's 16 x D slice of q would not stay in registers.
//
// A block owns 128 rows (8 warps x 16), as forward_mma_kernel does, and keeps them in shared memory
// as D / 64 swizzled chunk tiles of 128 x 64 (192 KiB at D = 768). The 64-column tiles of k stream
// through a three-stage cp.async pipeline one 64 x 64 chunk at a time, so that a stage is 8 KiB
// whatever D is; each warp accumulates its 16 x 64 logits over the chunks with mma.sync, its q
// fragments read from shared memory by ldmatrix at each step, and folds the finished tile into its
// rows' online log-sum-exp with forward_fold.cuh, the same code as the narrow kernel. The column
// values of a tile (norms, labels, ids, the mask decision) are issued one tile ahead into three
// buffers, the one of two tiles back being free by then.
#include <ATen/ATen.h>

#include "common/contrastive_math.h"
#include "cuda/contrastive_device.cuh"
#include "cuda/contrastive_host.cuh"
#include "cuda/device_api.cuh"
#include "cuda/forward_fold.cuh"
#include "cuda/mma.cuh"
#include "cuda/swizzled_tile.cuh"
#include "cuda/tile_math.cuh"
#include "cuda/warp_logits.cuh"

namespace fastcl::gpu {

namespace {

constexpr int kChunk = 64;  // D columns one pipeline step carries
constexpr int kStages = 3;
constexpr int kColumnBuffers = 3;  // tiles t + 1 (being copied), t (being folded) and t - 1 (free)

// Dynamic shared memory for rows of `chunks` x kChunk columns: q as `chunks` swizzled (kBM x kChunk)
// tiles, kStages (kBN x kChunk) k chunks, and kColumnBuffers tiles' norms, labels (and ids).
struct WideLayout {
  size_t k, norm, label, id, bytes;
  __host__ __device__ WideLayout(int chunks, bool ids)
      : k(size_t(kBM) * kChunk * 2 * chunks),
        norm(k + size_t(kStages) * kBN * kChunk * 2),
        label(norm + kColumnBuffers * kBN * sizeof(float)),
        id(label + kColumnBuffers * kBN * sizeof(int64_t)),
        bytes(id + (ids ? kColumnBuffers * kBN * sizeof(int64_t) : 0)) {}
};

// partial[split][row] as forward_mma_kernel writes it.
template <typename T, uint32_t kFeatures>
__global__ void __launch_bounds__(kMmaThreads, 1)
    forward_wide_kernel(const T* __restrict__ q, const T* __restrict__ k, Problem p,
                        const float* __restrict__ col_norm, const int64_t* __restrict__ row_range,
                        const int64_t* __restrict__ col_range, const int64_t* __restrict__ row_id_range,
                        const int64_t* __restrict__ col_id_range, const int64_t* __restrict__ owner_range,
                        int chunks, int tiles_per_split, float4* __restrict__ partial) {
  constexpr bool kIds = (kFeatures & kSampleIds) != 0, kBias = (kFeatures & kColBias) != 0;
  constexpr int kFrags = kBN / 8;
  const WideLayout L(chunks, kIds);
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sQ = reinterpret_cast<T*>(smem);
  T* sK = reinterpret_cast<T*>(smem + L.k);
  float* sNorm = reinterpret_cast<float*>(smem + L.norm);
  int64_t* sLabel = reinterpret_cast<int64_t*>(smem + L.label);
  int64_t* sId = reinterpret_cast<int64_t*>(smem + L.id);

  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, t4 = lane & 3;
  const int64_t row0 = int64_t(blockIdx.x) * kBM;
  const int n_tiles = static_cast<int>((p.L + kBN - 1) / kBN);
  const int t_begin = blockIdx.y * tiles_per_split, t_end = min(n_tiles, t_begin + tiles_per_split);
  const int64_t my_row = row0 + warp * 16 + (lane >> 2);
  float a[2];
  row_factors(a, p, my_row);

  __shared__ int s_masked[kColumnBuffers];
  // Tile `tile`'s column values, joining the next commit; buffer (tile - t_begin) % 3 was last read
  // by tile - 2, which every thread has folded before it reaches tile - 1's barriers.
  auto issue_columns = [&](int tile) {
    const int buf = (tile - t_begin) % kColumnBuffers;
    const int64_t col0 = int64_t(tile) * kBN;
    load_col_values<kIds>(sNorm + buf * kBN, sLabel + buf * kBN, sId + buf * kBN, p, col_norm, col0);
    if (threadIdx.x == kMmaThreads - 1) {  // sass: share=1/8 (one warp of the block's eight)
      s_masked[buf] = forward_tile_masked<kIds, kBias>(p, row0, col0, blockIdx.x, tile, row_range, col_range,
                                                       row_id_range, col_id_range, owner_range);
    }
  };
  // The next k chunk to copy: chunk ic of tile it, into stage is; one commit per step, empty past the end.
  int it = t_begin, ic = 0, is = 0;
  auto issue_chunk = [&]() {
    if (it < t_end) {
      load_swizzled_chunk<T, kChunk, kBN, kMmaThreads>(sK + is * (kBN * kChunk), k + ic * kChunk, p.L, p.D,
                                                       p.D - ic * kChunk, int64_t(it) * kBN);
      if (++ic == chunks) {
        ic = 0;
        ++it;
      }
      is = is == kStages - 1 ? 0 : is + 1;
    }
    cp_async_commit();
  };

  // q's chunks and the first tile's columns ride in the first step's group.
  for (int c = 0; c < chunks; ++c) {
    load_swizzled_chunk<T, kChunk, kBM, kMmaThreads>(sQ + c * (kBM * kChunk), q + c * kChunk, p.M, p.D,
                                                     p.D - c * kChunk, row0);
  }
  if (t_begin < t_end) issue_columns(t_begin);
  for (int s = 0; s < kStages - 1; ++s) issue_chunk();

  const LaneRows<kChunk> qrow = warp_rows<kChunk>(warp, lane), krow = logit_rows<kChunk>(lane);
  RowRun run;
  int stage = 0;
  for (int tile = t_begin; tile < t_end; ++tile) {
    if (tile + 1 < t_end) issue_columns(tile + 1);
    float acc[kFrags][4];
#pragma unroll
    for (int f = 0; f < kFrags; ++f) acc[f][0] = acc[f][1] = acc[f][2] = acc[f][3] = 0.f;
    for (int c = 0; c < chunks; ++c) {
      cp_async_wait_prev();  // this step's group (kStages = 3: all but the newest)
      __syncthreads();       // its copies are visible, and the stage issued next was read a step ago
      issue_chunk();
      warp_logits_add_from_smem<T, kChunk, kBN>(acc, smem_addr(sQ) + c * (kBM * kChunk * 2), qrow,
                                                smem_addr(sK) + stage * (kBN * kChunk * 2), krow);
      stage = stage == kStages - 1 ? 0 : stage + 1;
    }
    const int buf = (tile - t_begin) % kColumnBuffers;
    fold_tile<kFrags, kIds, kBias>(acc, run, a, p, my_row, int64_t(tile) * kBN, sNorm + buf * kBN,
                                   sLabel + buf * kBN, sId + buf * kBN, s_masked[buf], t4);
  }
  cp_async_wait_all();  // without column tiles the q copies above were never waited for
  write_row_partials(run, p, my_row, t4, partial);
}

int chunks_of(int64_t D) { return static_cast<int>(ceil_div(D, kChunk)); }

template <typename T, uint32_t kFeatures>
void launch_forward_wide(const Inputs& in, const Problem& p, const ColumnTables& tab, const Split& split,
                         at::Tensor& partial, dev::Stream stream) {
  constexpr auto kernel = forward_wide_kernel<T, kFeatures>;
  const int chunks = chunks_of(in.D);
  const size_t smem = WideLayout(chunks, (kFeatures & kSampleIds) != 0).bytes;
  dev::allow_dynamic_smem<kernel>("fastcl", smem, " (the wide forward keeps 128 rows of D in shared memory)");
  dev::launch<kernel>(grid_of(ceil_div(in.M, kBM), split.count), kMmaThreads, smem, stream, ptr<T>(in.q),
                      ptr<T>(in.k), p, tab.norm.data_ptr<float>(), ptr<int64_t>(tab.row_range),
                      ptr<int64_t>(tab.col_range), ptr<int64_t>(tab.row_id_range), ptr<int64_t>(tab.col_id_range),
                      ptr<int64_t>(tab.owner_range), chunks, static_cast<int>(split.per),
                      reinterpret_cast<float4*>(partial.data_ptr<float>()));
}

}  // namespace

bool forward_wide_applies(const Inputs& in, size_t element_size) {
  if (!mma_takes_features(in, element_size) || in.D <= 256 || in.D > kMaxWideD || !in.vectorisable()) return false;
  const size_t smem = WideLayout(chunks_of(in.D), in.has(kSampleIds)).bytes;
  return smem + 1024 <= static_cast<size_t>(dev::properties().sharedMemPerBlockOptin);
}

template <typename T>
Split forward_wide_impl(const Inputs& in, dev::Stream stream, at::Tensor& partial) {
  const Problem p = in.problem();
  const Split split = split_stream(ceil_div(in.M, kBM), ceil_div(in.L, kBN));
  const ColumnTables tab = column_tables(in, stream);
  partial = at::empty({split.count * in.M * 4}, in.q.options().dtype(at::kFloat));
  switch (in.features & (kSampleIds | kColBias)) {
    case 0: launch_forward_wide<T, 0>(in, p, tab, split, partial, stream); break;
    case kSampleIds: launch_forward_wide<T, kSampleIds>(in, p, tab, split, partial, stream); break;
    case kColBias: launch_forward_wide<T, kColBias>(in, p, tab, split, partial, stream); break;
    default: launch_forward_wide<T, kColBias | kSampleIds>(in, p, tab, split, partial, stream);
  }
  return split;
}

template Split forward_wide_impl<__half>(const Inputs&, dev::Stream, at::Tensor&);
template Split forward_wide_impl<__nv_bfloat16>(const Inputs&, dev::Stream, at::Tensor&);

}  // namespace fastcl::gpu

// Small CUDA kernels for tests/sim/test_sim_checks.py, written as ordinary CUDA: each broken one
// trips exactly one check of the CPU simulator (csrc/sim), and correct twins must pass. The
// Python entry points launch them on buffers given as data pointers of torch tensors.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <algorithm>
#include <bitset>
#include <cstdint>
#include <cstring>

namespace py = pybind11;
using fastcl::sim::GlobalScope;
using fastcl::sim::launch;

namespace simtest {

// ---- correct kernels ------------------------------------------------------------------------

// Block sum with a static shared tree and barriers; one partial per block.
__global__ void block_reduce(const float* x, float* out, int n) {
  __shared__ float s[256];
  const int t = threadIdx.x, i = blockIdx.x * blockDim.x + t;
  s[t] = i < n ? x[i] : 0.f;
  __syncthreads();
  for (int o = blockDim.x / 2; o > 0; o >>= 1) {
    if (t < o) s[t] += s[t + o];
    __syncthreads();
  }
  if (t == 0) out[blockIdx.x] = s[0];
}

// Per-warp sums by xor shuffles, checked against a down-shuffle sum and broadcast by lane 0.
__global__ void warp_reduce(const float* x, float* out, unsigned* ballots) {
  const int t = threadIdx.x, lane = t & 31, warp = t >> 5;
  float v = x[blockIdx.x * blockDim.x + t], d = v;
  for (int o = 16; o > 0; o >>= 1) v += __shfl_xor_sync(0xffffffffu, v, o);
  for (int o = 16; o > 0; o >>= 1) d += __shfl_down_sync(0xffffffffu, d, o);
  d = __shfl_sync(0xffffffffu, d, 0);
  const unsigned agree = __ballot_sync(0xffffffffu, v == d);
  if (!__all_sync(0xffffffffu, v == d) || __any_sync(0xffffffffu, v != d)) __trap();
  if (lane == 0) {
    out[blockIdx.x * (blockDim.x / 32) + warp] = v;
    ballots[blockIdx.x * (blockDim.x / 32) + warp] = agree;
  }
}

// One warp: C = A B + C0 through shared memory; A row-major, B in either layout.
template <typename T, typename BLayout>
__global__ void wmma_gemm(const T* a, const T* b, const float* c0, float* c) {
  using namespace nvcuda;
  FASTCL_EXTERN_SHARED(unsigned char, smem, 128);
  T* sa = reinterpret_cast<T*>(smem);
  T* sb = sa + 256;
  float* sc = reinterpret_cast<float*>(sb + 256);
  for (int e = threadIdx.x; e < 256; e += 32) {
    sa[e] = a[e];
    sb[e] = b[e];
    sc[e] = c0[e];
  }
  __syncwarp();
  wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> fa;
  wmma::fragment<wmma::matrix_b, 16, 16, 16, T, BLayout> fb;
  wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
  wmma::load_matrix_sync(fa, sa, 16);
  wmma::load_matrix_sync(fb, sb, 16);
  wmma::load_matrix_sync(acc, sc, 16, wmma::mem_row_major);
  wmma::mma_sync(acc, fa, fb, acc);
  for (int e = 0; e < acc.num_elements; ++e) acc.x[e] *= 2.f;  // elementwise, layout-free
  wmma::store_matrix_sync(sc, acc, 16, wmma::mem_row_major);
  __syncwarp();
  for (int e = threadIdx.x; e < 256; e += 32) c[e] = sc[e];
}

// out = 2 x, streamed through two shared stages filled by cp.async (16 bytes per thread).
__global__ void cp_async_double_buffer(const float* x, float* out, int tiles) {
  FASTCL_EXTERN_SHARED(float, buf, 128);  // 2 stages x 256 floats
  const int t = threadIdx.x;               // 64 threads x 4 floats = one 256-float tile
  fastcl::sim::cp_async(buf + 4 * t, x + 4 * t, 16, 16);
  fastcl::sim::cp_async_commit();
  for (int k = 0; k < tiles; ++k) {
    float* cur = buf + (k & 1) * 256;
    if (k + 1 < tiles) {
      float* nxt = buf + ((k + 1) & 1) * 256;
      fastcl::sim::cp_async(nxt + 4 * t, x + (k + 1) * 256 + 4 * t, 16, 16);
    }
    fastcl::sim::cp_async_commit();
    fastcl::sim::cp_async_wait_group(1);  // tile k has landed; k + 1 may be in flight
    __syncthreads();
    for (int j = t; j < 256; j += 64) out[k * 256 + j] = 2.f * cur[j];
    __syncthreads();  // everyone is done with `cur` before it is refilled
  }
}

// Every thread stores its index in one shared word: the survivor depends on the order.
__global__ void last_writer(int* out) {
  __shared__ int last;
  if (threadIdx.x == 0) last = -1;
  __syncthreads();
  last = threadIdx.x;
  __syncthreads();
  if (threadIdx.x == 0) out[0] = last;
}

// ---- broken kernels ------------------------------------------------------------------------

__global__ void smem_oob_read(float* out) {
  FASTCL_EXTERN_SHARED(float, s, 16);  // launched with blockDim.x floats
  const int t = threadIdx.x;
  s[t] = t;
  __syncthreads();
  out[t] = s[t + 1];  // the last thread reads one past the end
}

__global__ void smem_oob_write(float* out) {
  FASTCL_EXTERN_SHARED(float, s, 16);
  const int t = threadIdx.x;
  s[t + 1] = t;  // the last thread writes one past the end
  __syncthreads();
  out[t] = t;
}

__global__ void global_oob_read(const float* x, float* out) {
  const int block = blockIdx.y * gridDim.x + blockIdx.x;
  const int i = (block * blockDim.y + threadIdx.y) * blockDim.x + threadIdx.x;
  out[i] = x[i + 1];  // the grid's last thread reads one past x
}

__global__ void global_oob_write(float* out, int n) {
  const int i = blockIdx.x * blockDim.x + threadIdx.x;
  if (i < n) out[i + 1] = 1.f;  // thread n - 1 writes one past out
}

// Warp 0 fills, warp 1 reads, with the __syncthreads between them left out (or not).
template <bool kSync>
__global__ void cross_warp(float* out) {
  __shared__ float s[32];
  const int t = threadIdx.x;
  if (t < 32) s[t] = t;
  if (kSync) __syncthreads();
  if (t >= 32) out[t - 32] = s[t - 32];
}

// Lane 0 writes, every lane reads, with the __syncwarp left out (or not).
template <bool kSync>
__global__ void intra_warp(float* out) {
  __shared__ float s[1];
  if (threadIdx.x == 0) s[0] = 42.f;
  if (kSync) __syncwarp();
  out[threadIdx.x] = s[0];
}

__global__ void divergent_barrier(float* out) {
  const int t = threadIdx.x;
  if (t % 2 == 0) __syncthreads();  // odd threads never arrive
  out[t] = t;
}

__global__ void barrier_sites(float* out) {
  const int t = threadIdx.x;
  if (t < 32) {
    __syncthreads();
  } else {
    __syncthreads();  // a different barrier
  }
  out[t] = t;
}

__global__ void shfl_caller_not_in_mask(float* out) {
  const float v = __shfl_sync(0xfffffffeu, static_cast<float>(threadIdx.x), 1);  // lane 0 is not in the mask
  out[threadIdx.x] = v;
}

__global__ void shfl_lane_never_arrives(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x != 5) v = __shfl_xor_sync(0xffffffffu, v, 1);  // lane 5 is in the mask but skips it
  out[threadIdx.x] = v;
}

__global__ void shfl_lane_waits_elsewhere(float* out) {
  float v = threadIdx.x;
  if (threadIdx.x == 3) __syncthreads();  // lane 3 of the mask waits at a block barrier instead
  else v = __shfl_xor_sync(0xffffffffu, v, 1);
  out[threadIdx.x] = v;
}

__global__ void uninit_dynamic(float* out) {
  FASTCL_EXTERN_SHARED(float, s, 16);
  out[threadIdx.x] = s[threadIdx.x];  // nobody wrote s
}

__global__ void uninit_static(float* out) {
  __shared__ float tile[64];
  if (threadIdx.x < 32) tile[threadIdx.x] = 1.f;  // only the first half is written
  __syncthreads();
  out[threadIdx.x] = tile[threadIdx.x];
}

__global__ void cp_async_no_wait(const float* x, float* out) {
  FASTCL_EXTERN_SHARED(float, buf, 128);
  const int t = threadIdx.x;
  fastcl::sim::cp_async(buf + 4 * t, x + 4 * t, 16, 16);
  fastcl::sim::cp_async_commit();
  __syncthreads();  // a barrier does not wait for cp.async
  out[t] = buf[4 * t];
}

// Warp 0 reads warp 1's chunk, then warp 1 refills its chunk without a __syncthreads first:
// the copy may land while warp 0 is still reading.
__global__ void cp_async_refill_without_barrier(const float* x, float* out) {
  FASTCL_EXTERN_SHARED(float, buf, 128);
  const int t = threadIdx.x;
  fastcl::sim::cp_async(buf + 4 * t, x + 4 * t, 16, 16);
  fastcl::sim::cp_async_wait_all();
  __syncthreads();
  if (t < 32) out[t] = buf[4 * (t + 32)];
  fastcl::sim::cp_async(buf + 4 * t, x + 256 + 4 * t, 16, 16);  // missing __syncthreads before
  fastcl::sim::cp_async_wait_all();
}

__global__ void misaligned_vector(const float* x, float4* out) {
  out[threadIdx.x] = *reinterpret_cast<const float4*>(x + 1);  // 4-byte aligned, 16 needed
}

__global__ void wmma_unwritten(float* c) {
  using namespace nvcuda;
  FASTCL_EXTERN_SHARED(__half, sa, 128);  // never written
  wmma::fragment<wmma::matrix_a, 16, 16, 16, __half, wmma::row_major> fa;
  wmma::load_matrix_sync(fa, sa, 16);
  c[threadIdx.x] = __half2float(fa.x[0]);
}

__global__ void traps(float* out) {
  if (threadIdx.x == 3) __trap();
  out[threadIdx.x] = 1.f;
}

// memset and memcpy are calls into libc, not instrumented loads and stores: the simulator
// intercepts them (sizes here depend on blockDim, so g++ keeps the calls).
__global__ void memset_then_read(float* out) {
  FASTCL_EXTERN_SHARED(float, s, 16);  // blockDim.x floats
  if (threadIdx.x == 0) memset(s, 0, blockDim.x * sizeof(float));
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x] + 1.f;
}

__global__ void memcpy_smem_overflow(const float* x, float* out) {
  FASTCL_EXTERN_SHARED(float, s, 16);  // blockDim.x floats
  if (threadIdx.x == 0) memcpy(s, x, (blockDim.x + 1) * sizeof(float));  // one float too many
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// A constant size: without -fno-builtin-memset g++ expands this into plain stores after the
// instrumentation pass, which no check would see.
__global__ void memset_constant_overflow(float* out) {
  FASTCL_EXTERN_SHARED(float, s, 16);  // 32 floats
  if (threadIdx.x == 0) memset(s, 0, 33 * sizeof(float));  // one float too many
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

__global__ void std_copy_global_oob(const float* x, float* out) {
  FASTCL_EXTERN_SHARED(float, s, 16);  // blockDim.x + 1 floats; x has blockDim.x
  if (threadIdx.x == 0) std::copy(x, x + blockDim.x + 1, s);  // a memmove reading one past x
  __syncthreads();
  out[threadIdx.x] = s[threadIdx.x];
}

// a has 33 floats; the array after it starts at a 16-byte (or larger) boundary, so a[33] is
// padding, not a neighbour's element.
__global__ void static_overflow(float* out) {
  __shared__ float a[33];
  __shared__ float b[32];
  const int t = threadIdx.x;
  a[t] = t;
  if (t == 0) a[32] = 32.f;
  b[t] = -t;
  __syncthreads();
  out[t] = a[t + 2] + b[t];  // the last thread reads a[33]
}

// Lane 0 writes, and the other lanes read after a shuffle (kSync: a __syncwarp). A shuffle
// exchanges values but orders no memory.
template <bool kSync>
__global__ void shfl_is_not_a_fence(float* out) {
  __shared__ float s[1];
  if (threadIdx.x == 0) s[0] = 42.f;
  if (kSync) __syncwarp();
  else out[threadIdx.x] = __shfl_sync(0xffffffffu, 1.f, 0);
  out[threadIdx.x] = s[0];
}

// Lane 1 reads, then a __syncwarp, then lane 0 reads and overwrites: lane 1's read is ordered
// before the write even though lane 0 read after the __syncwarp.
__global__ void older_read_then_syncwarp(float* out) {
  __shared__ float s[1];
  const int t = threadIdx.x;
  if (t == 0) s[0] = 1.f;
  __syncwarp();
  float v = 0.f;
  if (t == 1) v = s[0];
  __syncwarp();
  if (t == 0) {
    v = s[0];
    s[0] = 2.f;
  }
  __syncwarp();
  out[t] = v + s[0];
}

// The dynamic buffer is declared 4-byte aligned (kAlign 4) but read as float4, which needs 16.
template <int kAlign>
__global__ void extern_alignment(float4* out) {
  FASTCL_EXTERN_SHARED(float, s, kAlign);  // 4 * blockDim.x floats
  const int t = threadIdx.x;
  for (int j = 0; j < 4; ++j) s[4 * t + j] = t;
  __syncthreads();
  out[t] = reinterpret_cast<const float4*>(s)[t];
}

// Host library code called from a kernel throws (here libstdc++'s bounds check).
__global__ void throws(float* out) {
  std::bitset<4> bits;
  if (threadIdx.x == 5) bits.set(threadIdx.x);  // std::out_of_range
  out[threadIdx.x] = bits.count();
}

// 40 KiB of static shared memory: with 16 KiB of dynamic it is over the 48 KiB default.
__global__ void big_static(float* out) {
  __shared__ float big[10240];
  for (int i = threadIdx.x; i < 10240; i += blockDim.x) big[i] = i;
  __syncthreads();
  out[threadIdx.x] = big[10239 - threadIdx.x];
}

__global__ void empty_kernel() {}

}  // namespace simtest

namespace {

template <typename T>
T* ptr(uintptr_t p) {
  return reinterpret_cast<T*>(p);
}

// Registers each (pointer, bytes, name) for the launch it wraps.
struct Bufs {
  GlobalScope scope;
  Bufs(std::initializer_list<std::tuple<uintptr_t, size_t, const char*>> list) {
    for (auto& [p, n, name] : list) scope.add(reinterpret_cast<const void*>(p), n, name);
  }
};

}  // namespace

PYBIND11_MODULE(TORCH_EXTENSION_NAME, m) {
  using namespace simtest;
  m.def("set_schedule", [](uint64_t seed) { fastcl::sim::set_schedule(seed); });
  m.def("set_race_check", [](bool on) { fastcl::sim::set_race_check(on); });
  m.def("set_global_check", [](bool on) { fastcl::sim::set_global_check(on); });
  m.def("device_properties", [] {
    const auto* p = fastcl::sim::device_properties();
    py::dict d;
    d["name"] = p->name;
    d["major"] = p->major;
    d["minor"] = p->minor;
    d["multiProcessorCount"] = p->multiProcessorCount;
    d["maxThreadsPerBlock"] = p->maxThreadsPerBlock;
    d["sharedMemPerBlock"] = p->sharedMemPerBlock;
    d["sharedMemPerBlockOptin"] = p->sharedMemPerBlockOptin;
    d["warpSize"] = p->warpSize;
    d["maxGridSize"] = std::vector<int>{p->maxGridSize[0], p->maxGridSize[1], p->maxGridSize[2]};
    return d;
  });
  m.def("occupancy", [](int threads, size_t smem) {
    return fastcl::sim::max_active_blocks_per_sm<block_reduce>(threads, smem);
  });

  m.def("block_reduce", [](uintptr_t x, uintptr_t out, int n) {
    const int blocks = (n + 255) / 256;
    Bufs b{{x, n * 4ul, "x"}, {out, blocks * 4ul, "out"}};
    launch<block_reduce>(dim3(blocks), dim3(256), 0, ptr<const float>(x), ptr<float>(out), n);
  });
  m.def("warp_reduce", [](uintptr_t x, uintptr_t out, uintptr_t ballots, int blocks) {
    Bufs b{{x, blocks * 128 * 4ul, "x"}, {out, blocks * 4 * 4ul, "out"}, {ballots, blocks * 4 * 4ul, "ballots"}};
    launch<warp_reduce>(dim3(blocks), dim3(128), 0, ptr<const float>(x), ptr<float>(out), ptr<unsigned>(ballots));
  });
  m.def("wmma_gemm", [](const std::string& dtype, bool b_col_major, uintptr_t a, uintptr_t bm, uintptr_t c0, uintptr_t c) {
    Bufs b{{a, 512, "a"}, {bm, 512, "b"}, {c0, 1024, "c0"}, {c, 1024, "c"}};
    const size_t smem = 2 * 512 + 1024;
    if (dtype == "float16") {
      if (b_col_major) launch<wmma_gemm<__half, nvcuda::wmma::col_major>>(1, 32, smem, ptr<const __half>(a), ptr<const __half>(bm), ptr<const float>(c0), ptr<float>(c));
      else launch<wmma_gemm<__half, nvcuda::wmma::row_major>>(1, 32, smem, ptr<const __half>(a), ptr<const __half>(bm), ptr<const float>(c0), ptr<float>(c));
    } else {
      using B = __nv_bfloat16;
      if (b_col_major) launch<wmma_gemm<B, nvcuda::wmma::col_major>>(1, 32, smem, ptr<const B>(a), ptr<const B>(bm), ptr<const float>(c0), ptr<float>(c));
      else launch<wmma_gemm<B, nvcuda::wmma::row_major>>(1, 32, smem, ptr<const B>(a), ptr<const B>(bm), ptr<const float>(c0), ptr<float>(c));
    }
  });
  m.def("cp_async_double_buffer", [](uintptr_t x, uintptr_t out, int tiles) {
    Bufs b{{x, tiles * 1024ul, "x"}, {out, tiles * 1024ul, "out"}};
    launch<cp_async_double_buffer>(1, 64, 2 * 1024, ptr<const float>(x), ptr<float>(out), tiles);
  });
  m.def("last_writer", [](uintptr_t out, int threads) {
    Bufs b{{out, 4, "out"}};
    launch<last_writer>(1, threads, 0, ptr<int>(out));
  });

  m.def("smem_oob_read", [](uintptr_t out) {
    Bufs b{{out, 64 * 4, "out"}};
    launch<smem_oob_read>(1, 64, 64 * 4, ptr<float>(out));
  });
  m.def("smem_oob_write", [](uintptr_t out) {
    Bufs b{{out, 64 * 4, "out"}};
    launch<smem_oob_write>(1, 64, 64 * 4, ptr<float>(out));
  });
  m.def("global_oob_read", [](uintptr_t x, uintptr_t out) {  // grid (2, 3) of (8, 4): 192 threads
    Bufs b{{x, 192 * 4, "x"}, {out, 192 * 4, "out"}};
    launch<global_oob_read>(dim3(2, 3), dim3(8, 4), 0, ptr<const float>(x), ptr<float>(out));
  });
  m.def("global_oob_write", [](uintptr_t out, int n) {
    Bufs b{{out, n * 4ul, "out"}};
    launch<global_oob_write>((n + 31) / 32, 32, 0, ptr<float>(out), n);
  });
  m.def("cross_warp", [](bool sync, uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    if (sync) launch<cross_warp<true>>(1, 64, 0, ptr<float>(out));
    else launch<cross_warp<false>>(1, 64, 0, ptr<float>(out));
  });
  m.def("intra_warp", [](bool sync, uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    if (sync) launch<intra_warp<true>>(1, 32, 0, ptr<float>(out));
    else launch<intra_warp<false>>(1, 32, 0, ptr<float>(out));
  });
  m.def("divergent_barrier", [](uintptr_t out) {
    Bufs b{{out, 64 * 4, "out"}};
    launch<divergent_barrier>(1, 64, 0, ptr<float>(out));
  });
  m.def("barrier_sites", [](uintptr_t out) {
    Bufs b{{out, 64 * 4, "out"}};
    launch<barrier_sites>(1, 64, 0, ptr<float>(out));
  });
  m.def("shfl_caller_not_in_mask", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<shfl_caller_not_in_mask>(1, 32, 0, ptr<float>(out));
  });
  m.def("shfl_lane_never_arrives", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<shfl_lane_never_arrives>(1, 32, 0, ptr<float>(out));
  });
  m.def("shfl_lane_waits_elsewhere", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<shfl_lane_waits_elsewhere>(1, 32, 0, ptr<float>(out));
  });
  m.def("uninit_dynamic", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<uninit_dynamic>(1, 32, 32 * 4, ptr<float>(out));
  });
  m.def("uninit_static", [](uintptr_t out) {
    Bufs b{{out, 64 * 4, "out"}};
    launch<uninit_static>(1, 64, 0, ptr<float>(out));
  });
  m.def("cp_async_no_wait", [](uintptr_t x, uintptr_t out) {
    Bufs b{{x, 256 * 4, "x"}, {out, 64 * 4, "out"}};
    launch<cp_async_no_wait>(1, 64, 1024, ptr<const float>(x), ptr<float>(out));
  });
  m.def("cp_async_refill_without_barrier", [](uintptr_t x, uintptr_t out) {
    Bufs b{{x, 512 * 4, "x"}, {out, 64 * 4, "out"}};
    launch<cp_async_refill_without_barrier>(1, 64, 1024, ptr<const float>(x), ptr<float>(out));
  });
  m.def("misaligned_vector", [](uintptr_t x, uintptr_t out) {
    Bufs b{{x, 64 * 4, "x"}, {out, 32 * 16, "out"}};
    launch<misaligned_vector>(1, 32, 0, ptr<const float>(x), ptr<float4>(out));
  });
  m.def("wmma_unwritten", [](uintptr_t c) {
    Bufs b{{c, 32 * 4, "c"}};
    launch<wmma_unwritten>(1, 32, 512, ptr<float>(c));
  });
  m.def("traps", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<traps>(1, 32, 0, ptr<float>(out));
  });
  m.def("memset_then_read", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<memset_then_read>(1, 32, 32 * 4, ptr<float>(out));
  });
  m.def("memcpy_smem_overflow", [](uintptr_t x, uintptr_t out) {
    Bufs b{{x, 64 * 4, "x"}, {out, 32 * 4, "out"}};
    launch<memcpy_smem_overflow>(1, 32, 32 * 4, ptr<const float>(x), ptr<float>(out));
  });
  m.def("memset_constant_overflow", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<memset_constant_overflow>(1, 32, 32 * 4, ptr<float>(out));
  });
  m.def("std_copy_global_oob", [](uintptr_t x, uintptr_t out) {
    Bufs b{{x, 32 * 4, "x"}, {out, 32 * 4, "out"}};
    launch<std_copy_global_oob>(1, 32, 33 * 4, ptr<const float>(x), ptr<float>(out));
  });
  m.def("static_overflow", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<static_overflow>(1, 32, 0, ptr<float>(out));
  });
  m.def("shfl_is_not_a_fence", [](bool sync, uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    if (sync) launch<shfl_is_not_a_fence<true>>(1, 32, 0, ptr<float>(out));
    else launch<shfl_is_not_a_fence<false>>(1, 32, 0, ptr<float>(out));
  });
  m.def("older_read_then_syncwarp", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<older_read_then_syncwarp>(1, 32, 0, ptr<float>(out));
  });
  m.def("extern_alignment", [](int align, uintptr_t out) {
    Bufs b{{out, 32 * 16, "out"}};
    if (align == 4) launch<extern_alignment<4>>(1, 32, 32 * 16, ptr<float4>(out));
    else launch<extern_alignment<16>>(1, 32, 32 * 16, ptr<float4>(out));
  });
  m.def("throws", [](uintptr_t out) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<throws>(1, 32, 0, ptr<float>(out));
  });
  m.def("big_static", [](uintptr_t out, size_t smem) {
    Bufs b{{out, 32 * 4, "out"}};
    launch<big_static>(1, 32, smem, ptr<float>(out));
  });
  m.def("big_static_occupancy", [](int threads, size_t smem) {
    return fastcl::sim::max_active_blocks_per_sm<big_static>(threads, smem);
  });
  // Launch limits: (grid, block, dynamic smem, the kernel's dynamic smem limit: 0 = the default).
  m.def("launch_limits", [](std::vector<unsigned> grid, std::vector<unsigned> block, size_t smem, size_t raise) {
    fastcl::sim::set_max_dynamic_smem<empty_kernel>(raise ? raise : 48 * 1024);
    launch<empty_kernel>(dim3(grid[0], grid[1], grid[2]), dim3(block[0], block[1], block[2]), smem);
  });
}

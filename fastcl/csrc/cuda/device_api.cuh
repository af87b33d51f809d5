// The seam between the CUDA sources and the two compilers that build them: the host-side runtime
// calls (launches, kernel attributes, device properties, streams, the device guard, pinned
// staging memory), the dynamic shared-memory declaration and the op registration.
//   nvcc:        the CUDA runtime and ATen's CUDA context; ops register for the CUDA key of fastcl.
//   FASTCL_SIM:  g++ with csrc/sim/cuda_sim.h force-included (tests only): the CPU simulator of the
//                CUDA execution model, CPU tensors, ops registered for the CPU key of the library
//                the simulator build names (FASTCL_SIM_LIBRARY, tests/sim/sim_build.py).
// Kernel bodies never branch on FASTCL_SIM; only this header and the asm wrappers of
// tile_math.cuh do, one function each.
#pragma once
#include <ATen/ATen.h>
#include <torch/library.h>

#include <cstddef>
#include <utility>

namespace fastcl::dev {

// The device properties the ops read, one type for both builds (a field that only one side had
// would compile there alone): compute capability, SM count, opt-in shared memory per block.
struct Properties {
  int major, minor, multiProcessorCount;
  size_t sharedMemPerBlockOptin;
};

}  // namespace fastcl::dev

#if defined(FASTCL_SIM)

#ifndef FASTCL_SIM_LIBRARY
#error "the simulator build names the op library its kernels register for (-DFASTCL_SIM_LIBRARY=...)"
#endif

namespace fastcl::dev {

using Stream = int;  // the simulator runs each launch to completion, in order

inline Properties properties() {
  const sim::DeviceProperties* p = sim::device_properties();
  return {p->major, p->minor, p->multiProcessorCount, p->sharedMemPerBlockOptin};
}
inline Stream current_stream() { return 0; }

struct DeviceGuard {
  explicit DeviceGuard(const at::Device&) {}
};

template <auto Kernel>
void set_max_dynamic_smem(size_t bytes) {
  sim::set_max_dynamic_smem<Kernel>(bytes);
}
template <auto Kernel>
int max_active_blocks_per_sm(int threads, size_t dynamic_smem) {
  return sim::max_active_blocks_per_sm<Kernel>(threads, dynamic_smem);
}
// Throws std::runtime_error naming the check, kernel, block and thread when the simulator
// catches an error (or the launch exceeds an H200's limits).
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t dynamic_smem, Stream, Args&&... args) {
  sim::launch<Kernel>(grid, block, dynamic_smem, std::forward<Args>(args)...);
}

// Host memory the kernels' inputs are staged in before going to the device.
inline at::TensorOptions host_staging(at::TensorOptions options) { return options; }

}  // namespace fastcl::dev

#define FASTCL_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(FASTCL_SIM_LIBRARY, CPU, m)

#else  // nvcc

#include <ATen/cuda/CUDAContext.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>

namespace fastcl::dev {

using Stream = cudaStream_t;

inline Properties properties() {
  const cudaDeviceProp& p = *at::cuda::getCurrentDeviceProperties();
  return {p.major, p.minor, p.multiProcessorCount, p.sharedMemPerBlockOptin};
}
inline Stream current_stream() { return at::cuda::getCurrentCUDAStream(); }

using DeviceGuard = c10::cuda::CUDAGuard;

template <auto Kernel>
void set_max_dynamic_smem(size_t bytes) {
  C10_CUDA_CHECK(cudaFuncSetAttribute(Kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, static_cast<int>(bytes)));
}
template <auto Kernel>
int max_active_blocks_per_sm(int threads, size_t dynamic_smem) {
  int blocks = 0;
  C10_CUDA_CHECK(cudaOccupancyMaxActiveBlocksPerMultiprocessor(&blocks, Kernel, threads, dynamic_smem));
  return blocks;
}
template <auto Kernel, typename... Args>
void launch(dim3 grid, dim3 block, size_t dynamic_smem, Stream stream, Args&&... args) {
  Kernel<<<grid, block, dynamic_smem, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

// Pinned, so the copy to the device needs no host synchronisation.
inline at::TensorOptions host_staging(at::TensorOptions options) { return options.pinned_memory(true); }

}  // namespace fastcl::dev

#define FASTCL_EXTERN_SHARED(type, name, align) extern __shared__ __align__(align) type name[]
#define FASTCL_CUDA_KERNELS(m) TORCH_LIBRARY_IMPL(fastcl, CUDA, m)

#endif

#include "checks.h"

namespace fastcl::dev {

// Raises the kernel's dynamic shared-memory limit to `bytes`, after checking that the device
// allows that much (with the 1 KiB a resident block keeps); `hint` says what sets the size.
template <auto Kernel>
void allow_dynamic_smem(const char* what, size_t bytes, const char* hint = "") {
  check_shared_memory(what, static_cast<int64_t>(bytes), static_cast<int64_t>(properties().sharedMemPerBlockOptin), hint);
  set_max_dynamic_smem<Kernel>(bytes);
}

}  // namespace fastcl::dev

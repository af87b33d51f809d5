// Force-included (g++ -x c++ -DFASTCL_SIM=1 -include sim/cuda_sim.h -fsanitize=thread) into a
// .cu file compiled as host C++, so that unmodified kernel code builds and runs on the CPU
// simulator: CUDA keywords, the thread-index builtins, barriers, warp collectives, wmma,
// ldmatrix and mma.sync, cp.async, device math and launches. See csrc/sim/README.md.
#pragma once
#ifndef FASTCL_SIM
#define FASTCL_SIM 1
#endif

// Standard headers first: libstdc++ spells an attribute __noinline__, which must be parsed
// before the CUDA macro of that name exists.
#include <cmath>
#include <cstdint>
#include <cstring>
#include <memory>
#include <stdexcept>
#include <tuple>
#include <type_traits>
#include <utility>

// The real CUDA headers are host-capable: vector types, __half, __nv_bfloat16, and the extern
// declarations of threadIdx & co (included now, so the macros below cannot break them later).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>
#include <device_launch_parameters.h>
#include <vector_functions.h>
#include <vector_types.h>

#include "api.h"

// ---- keywords -------------------------------------------------------------------------------
#undef __global__
#undef __device__
#undef __host__
#undef __shared__
#undef __constant__
#undef __managed__
#undef __noinline__
#undef __launch_bounds__
#undef __grid_constant__
#define __global__
#define __device__
#define __host__
#define __constant__
#define __managed__
#define __grid_constant__
// Blocks of a launch run one at a time on one OS thread, so a function-static thread_local
// array is one block's shared array; the runtime finds it in the module's TLS block.
#define __shared__ static thread_local
#define __noinline__ __attribute__((noinline))
#define __launch_bounds__(...)
#ifndef __forceinline__
#define __forceinline__ inline __attribute__((always_inline))
#endif
#ifndef __align__
#define __align__(n) __attribute__((aligned(n)))
#endif
// The dynamic shared buffer of the running block (nvcc: extern __shared__ __align__(a) T name[]),
// aligned to `align` only, so code that needs more than it declares misaligns here too.
#define FASTCL_EXTERN_SHARED(type, name, align) \
  type* const name = reinterpret_cast<type*>(::fastcl::sim::dynamic_smem(align))

// ---- builtins -------------------------------------------------------------------------------
#define threadIdx (static_cast<const uint3&>(::fastcl::sim::detail::g_cur.thread_idx))
#define blockIdx (static_cast<const uint3&>(::fastcl::sim::detail::g_cur.block_idx))
#define blockDim (static_cast<const dim3&>(::fastcl::sim::detail::g_cur.block_dim))
#define gridDim (static_cast<const dim3&>(::fastcl::sim::detail::g_cur.grid_dim))
// A constant, not a macro (members named warpSize, as in cudaDeviceProp, must still parse);
// it defines the extern "C" declaration from device_launch_parameters.h, hidden so each module
// reads its own copy (read-only module data passes the memory checks).
extern "C" __attribute__((weak, visibility("hidden"))) const int warpSize = 32;

#include "device_math.h"
#include "device_sync.h"
#include "wmma.h"
#include "mma.h"
#include "launch.h"

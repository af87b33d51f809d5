#pragma once
// Lets the same math compile for the CPU kernels (plain C++) and the CUDA kernels. Always
// inlined on the host too: the x86 clones of the hot loops only vectorise code inlined into them.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTCL_HD __host__ __device__ __forceinline__
#else
#define FASTCL_HD inline __attribute__((always_inline))
#endif

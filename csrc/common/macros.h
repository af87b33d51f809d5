#pragma once
// Lets the same math compile for the CPU kernels (plain C++) and the CUDA kernels.
#if defined(__CUDACC__) || defined(__HIPCC__)
#define FASTCL_HD __host__ __device__ __forceinline__
#else
#define FASTCL_HD inline
#endif

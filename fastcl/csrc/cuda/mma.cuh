// Warp-level tensor-core primitives for FlashAttention-2 style kernels, which keep their
// accumulators in registers and so depend on the PTX ISA's fragment layouts (see
// fastcl/csrc/sim/mma.cpp for the maps):
//   ldmatrix_x{1,2,4}[_trans]  ldmatrix.sync.aligned.m8n8.x{1,2,4}[.trans].shared.b16
//   mma_m16n8k16_{bf16,f16}    mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//   ex2_approx                 ex2.approx.ftz.f32
//   pack_bf16x2, pack_half2    two floats -> one register, round to nearest even
// Each wrapper has three bodies: the simulator's call (FASTCL_SIM), the inline PTX for sm_80+,
// and a stub for older device passes, which only exist so that a wide TORCH_CUDA_ARCH_LIST
// builds (the launcher refuses such GPUs; the stubs trap).
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ < 800
#define FASTCL_MMA_STUB 1
#endif

namespace fastcl::gpu {

// ---- shared addresses ------------------------------------------------------------------------
// ldmatrix reads through a 32-bit shared-space address: a kernel converts its shared base once and
// adds byte offsets, instead of converting a generic pointer per instruction. In the simulator
// shared memory is host memory, so the address stays a byte pointer (the same arithmetic).
#if defined(FASTCL_SIM)
using SmemAddr = const unsigned char*;
__device__ __forceinline__ SmemAddr smem_addr(const void* p) { return static_cast<SmemAddr>(p); }
#else
using SmemAddr = uint32_t;
__device__ __forceinline__ SmemAddr smem_addr(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}
#endif

// ---- ldmatrix -----------------------------------------------------------------------------
// `row`: the shared address of the 16-byte row this lane supplies (lane l: row l % 8 of matrix
// l / 8; lanes past 8 x count are ignored). Register i of lane l receives matrix i's elements
// (l / 4, 2 (l % 4) .. +1), or with _trans (2 (l % 4) .. +1, l / 4), lower index in the low half.
// The asm has no "memory" clobber, as in CUTLASS: the rows are written by other threads, so a
// barrier (itself a compiler fence) always stands between those writes and this read.

__device__ __forceinline__ void ldmatrix_x1(uint32_t (&r)[1], const void* row) {
#if defined(FASTCL_SIM)
  sim::ldmatrix(1, false, r, row);
#elif !defined(FASTCL_MMA_STUB)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
#else
  (void)row;
  r[0] = 0;
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x2(uint32_t (&r)[2], const void* row) {
#if defined(FASTCL_SIM)
  sim::ldmatrix(2, false, r, row);
#elif !defined(FASTCL_MMA_STUB)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#else
  (void)row;
  r[0] = r[1] = 0;
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], const void* row) {
#if defined(FASTCL_SIM)
  sim::ldmatrix(4, false, r, row);
#elif !defined(FASTCL_MMA_STUB)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

#if !defined(FASTCL_SIM)
// The same from a shared-space address (smem_addr); the simulator's SmemAddr is a pointer and takes
// the overloads above.
__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], SmemAddr a) {
#if !defined(FASTCL_MMA_STUB)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  (void)a;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}
__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], SmemAddr a) {
#if !defined(FASTCL_MMA_STUB)
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  (void)a;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}
#endif

__device__ __forceinline__ void ldmatrix_x1_trans(uint32_t (&r)[1], const void* row) {
#if defined(FASTCL_SIM)
  sim::ldmatrix(1, true, r, row);
#elif !defined(FASTCL_MMA_STUB)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(r[0]) : "r"(a));
#else
  (void)row;
  r[0] = 0;
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x2_trans(uint32_t (&r)[2], const void* row) {
#if defined(FASTCL_SIM)
  sim::ldmatrix(2, true, r, row);
#elif !defined(FASTCL_MMA_STUB)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0, %1}, [%2];\n" : "=r"(r[0]), "=r"(r[1]) : "r"(a));
#else
  (void)row;
  r[0] = r[1] = 0;
  __trap();
#endif
}

__device__ __forceinline__ void ldmatrix_x4_trans(uint32_t (&r)[4], const void* row) {
#if defined(FASTCL_SIM)
  sim::ldmatrix(4, true, r, row);
#elif !defined(FASTCL_MMA_STUB)
  const unsigned a = static_cast<unsigned>(__cvta_generic_to_shared(row));
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0, %1, %2, %3}, [%4];\n"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(a));
#else
  (void)row;
  r[0] = r[1] = r[2] = r[3] = 0;
  __trap();
#endif
}

// ---- mma.sync m16n8k16, fp32 accumulators ------------------------------------------------------
// d = a b + c for a 16 x 16 A (row), a 16 x 8 B (col) and 16 x 8 C, D; lane l, g = l / 4,
// t = l % 4: a = {(g, 2t..), (g+8, 2t..), (g, 2t+8..), (g+8, 2t+8..)},
// b = {(k 2t.., n g), (k 2t+8.., n g)}, c, d = {(g, 2t), (g, 2t+1), (g+8, 2t), (g+8, 2t+1)}.
// d may be c.

__device__ __forceinline__ void mma_m16n8k16_bf16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                  const float (&c)[4]) {
#if defined(FASTCL_SIM)
  sim::mma_m16n8k16(sim::detail::Elem::BF16, d, a, b, c);
#elif !defined(FASTCL_MMA_STUB)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  (void)a, (void)b, (void)c;
  d[0] = d[1] = d[2] = d[3] = 0.f;
  __trap();
#endif
}

__device__ __forceinline__ void mma_m16n8k16_f16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                                 const float (&c)[4]) {
#if defined(FASTCL_SIM)
  sim::mma_m16n8k16(sim::detail::Elem::F16, d, a, b, c);
#elif !defined(FASTCL_MMA_STUB)
  asm volatile(
      "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
      "{%10, %11, %12, %13};\n"
      : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]), "f"(c[2]),
        "f"(c[3]));
#else
  (void)a, (void)b, (void)c;
  d[0] = d[1] = d[2] = d[3] = 0.f;
  __trap();
#endif
}

// The element type as a template parameter, for kernels templated on it.
template <typename T>
__device__ __forceinline__ void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                             const float (&c)[4]) {
  static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value, "bf16 or f16 operands");
  if constexpr (std::is_same<T, __nv_bfloat16>::value) mma_m16n8k16_bf16(d, a, b, c);
  else mma_m16n8k16_f16(d, a, b, c);
}

// ---- scalar helpers ---------------------------------------------------------------------------

// 2^x, flushing subnormal inputs and results to zero. PTX gives it a bounded relative error, not
// correct rounding; the simulator computes the correctly rounded exp2f.
__device__ __forceinline__ float ex2_approx(float x) {
#if defined(FASTCL_SIM)
  return sim::ex2_approx_ftz(x);
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;\n" : "=f"(y) : "f"(x));
  return y;
#endif
}

// Two floats as one operand register: `lo` (the lower column or row) in bits 0..15.
__device__ __forceinline__ uint32_t pack_bf16x2(float lo, float hi) {
#if !defined(FASTCL_SIM) && !defined(FASTCL_MMA_STUB)
  uint32_t r;
  asm("cvt.rn.bf16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));  // the first source goes high
  return r;
#else
  return uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(lo))) |
         uint32_t(__bfloat16_as_ushort(__float2bfloat16_rn(hi))) << 16;
#endif
}

__device__ __forceinline__ uint32_t pack_half2(float lo, float hi) {
#if !defined(FASTCL_SIM) && !defined(FASTCL_MMA_STUB)
  uint32_t r;
  asm("cvt.rn.f16x2.f32 %0, %1, %2;\n" : "=r"(r) : "f"(hi), "f"(lo));
  return r;
#else
  return uint32_t(__half_as_ushort(__float2half_rn(lo))) | uint32_t(__half_as_ushort(__float2half_rn(hi))) << 16;
#endif
}

// The pack for an operand type, for kernels templated on it.
template <typename T>
__device__ __forceinline__ uint32_t pack2(float lo, float hi) {
  static_assert(std::is_same<T, __nv_bfloat16>::value || std::is_same<T, __half>::value, "bf16 or f16 operands");
  if constexpr (std::is_same<T, __nv_bfloat16>::value) return pack_bf16x2(lo, hi);
  else return pack_half2(lo, hi);
}

}  // namespace fastcl::gpu

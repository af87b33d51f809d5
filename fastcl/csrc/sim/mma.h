// PTX warp matrix instructions for the kernels' asm wrappers (fastcl/csrc/cuda/mma.cuh) to call
// under FASTCL_SIM. Part of cuda_sim.h; also included by the runtime's mma.cpp, so C++17 and plain
// declarations only. Unlike wmma.h, the fragments here are the PTX ISA's, register for register:
// a kernel that gets a lane map wrong computes a wrong result here too.
//   ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16
//   mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32
//   ex2.approx.ftz.f32
#pragma once
#include <cmath>
#include <cstdint>
#include <map>
#include <string>

#include "api.h"

namespace fastcl {
namespace sim {

// One lane's share of ldmatrix: `row` is the address of the 16-byte row this lane supplies (row
// l % 8 of matrix l / 8; lanes past 8 * num are ignored), `regs` receives `num` registers.
void ldmatrix(int num, bool trans, uint32_t* regs, const void* row, detail::Site site = {});
// One lane's share of mma.m16n8k16 with fp32 accumulators: a[4], b[2] packed bf16/f16 pairs,
// c[4] and d[4] floats (d may alias c). `ab` is Elem::BF16 or Elem::F16.
void mma_m16n8k16(detail::Elem ab, float* d, const uint32_t* a, const uint32_t* b, const float* c,
                  detail::Site site = {});

// ex2.approx.ftz.f32 as the correctly rounded exp2f of libm, with .ftz's flushes: a subnormal
// input counts as zero and a subnormal result becomes +0. The GPU's answer may differ in the
// last bits (PTX promises a bounded relative error, not rounding), so tests must not demand
// bit equality with the hardware.
inline float ex2_approx_ftz(float x) {
  if (std::fpclassify(x) == FP_SUBNORMAL) x = 0.f;
  const float y = std::exp2(x);
  return std::fpclassify(y) == FP_SUBNORMAL ? 0.f : y;
}

// Per kernel (the launch's demangled name), since the last reset: "launches", and for the
// ldmatrix / mma.sync instructions of all its launches (warp instructions, not lanes) "mma",
// "ldmatrix", "ldmatrix_wavefronts" (shared-memory wavefronts: per 8-row phase, the most
// distinct 16-byte rows falling in one group of 4 banks), "ldmatrix_ideal_wavefronts" (one per
// phase), and the same four for its latest launch alone with a "last_" prefix. Bank conflicts
// show as wavefronts > ideal. Counters live in each built module's own copy of the runtime.
std::map<std::string, std::map<std::string, int64_t>> mma_counters();
void reset_mma_counters();

}  // namespace sim
}  // namespace fastcl

// ldmatrix.sync.aligned.m8n8.{x1,x2,x4}{,.trans}.shared.b16 and
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}.{bf16,f16}.f32 as warp collectives on
// collectives.cpp's rendezvous, with the PTX ISA's fragment maps, and their per-kernel counters.
// Lane l, g = l / 4, t = l % 4 (b16 pairs: the lower column or row in the low half):
//   mma A (16 x 16, row): a0 (g, 2t..2t+1), a1 (g+8, 2t..), a2 (g, 2t+8..), a3 (g+8, 2t+8..)
//   mma B (16 x 8, col):  b0 (k = 2t..2t+1, n = g), b1 (k = 2t+8..2t+9, n = g)
//   mma C, D (16 x 8):    c0 (g, 2t), c1 (g, 2t+1), c2 (g+8, 2t), c3 (g+8, 2t+1)
//   ldmatrix: lanes 8i..8i+7 supply the 16-byte rows of matrix i; register i of lane l holds
//   (row g, cols 2t, 2t+1) of matrix i, or with .trans (rows 2t, 2t+1, col g).
// The last lane to arrive does the whole warp's work; each ldmatrix row is checked as a 16-byte
// read by the lane that supplied its address. Compiled without instrumentation.
#include <algorithm>
#include <cstring>
#include <map>

#include "mma.h"
#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

struct Tally {
  int64_t mma = 0, ldmatrix = 0, wavefronts = 0, ideal = 0;
};
struct KernelTally {
  int64_t launches = 0;
  Tally total, last;
};
std::map<std::string, KernelTally> g_tally;  // by kernel name; node addresses are stable
KernelTally* g_now = nullptr;                // the running launch's entry

void count(int64_t Tally::*what, int64_t n) {
  if (!g_now) return;
  g_now->total.*what += n;
  g_now->last.*what += n;
}

std::string what_str(const Round& r) {
  if (r.kind == Coll::Mma) return std::string("mma.sync.m16n8k16 (") + site_str(r.site) + ")";
  return "ldmatrix.x" + std::to_string(r.nmat) + (r.trans ? ".trans" : "") + " (" + site_str(r.site) + ")";
}

// The PTX instructions are .aligned: the whole warp executes the same one, so lanes that differ
// in shape or type are a bug even where the GPU would not notice.
int arrive_matrix(Coll kind, int nmat, bool trans, Elem elem, const void* pc, const Site& site) {
  const int tid = L.tid;
  WarpState& ws = L.warps[tid >> 5];
  if (ws.exists != ~0u)
    fail("invalid warp collective", tid, std::string(coll_name(kind)) + " (" + site_str(site) + ") in a partial warp");
  const int ri = arrive(kind, ~0u, 32, site);
  Round& r = ws.rounds[ri];
  const int lane = tid & 31;
  if (!(r.arrived & ~(1u << lane))) {
    r.nmat = nmat;
    r.trans = trans;
    r.elem = elem;
  } else if (r.nmat != nmat || r.trans != trans || r.elem != elem) {
    fail("invalid warp collective", tid,
         std::string(coll_name(kind)) + " (" + site_str(site) + ") with a shape or type that differs from that of " +
             lane_str((tid & ~31) + r.first_lane) + ": every lane must execute the same instruction");
  }
  r.pc[lane] = pc;
  return ri;
}

uint16_t b16_at(const void* row, int col) {
  uint16_t v;
  std::memcpy(&v, static_cast<const char*>(row) + 2 * col, 2);
  return v;
}

void do_ldmatrix(Round& r, int w) {
  const int rows = 8 * r.nmat;
  // Every address first, then the reads: an unusable address is the clearer report.
  for (int l = 0; l < rows; ++l) {
    const uintptr_t a = reinterpret_cast<uintptr_t>(r.row[l]);
    const auto row = [&] {
      return what_str(r) + " row address " + hex(a) + " (row " + std::to_string(l & 7) + " of matrix " +
             std::to_string(l >> 3) + ")";
    };
    if (a % 16) fail("misaligned address", w * 32 + l, row() + " is not 16-byte aligned" + at(Origin{r.pc[l]}));
    if (!in_shared_window(a))
      fail("invalid ldmatrix", w * 32 + l, row() + " is not shared memory" + at(Origin{r.pc[l]}));
  }
  for (int l = 0; l < rows; ++l)
    check_access(reinterpret_cast<uintptr_t>(r.row[l]), 16, Access::Read, w * 32 + l,
                 Origin{r.pc[l], r.site, "ldmatrix row"});
  // Shared memory serves 32 banks of 4 bytes per wavefront, and each matrix is one phase of 8
  // rows. A 16-byte aligned row covers 4 banks, so rows collide exactly when they share the
  // bank group (address / 16) % 8; the same row twice is a broadcast, not a conflict.
  int64_t wavefronts = 0;
  for (int m = 0; m < r.nmat; ++m) {
    int per_group[8] = {};
    for (int i = 0; i < 8; ++i) {
      const void* a = r.row[8 * m + i];
      bool seen = false;
      for (int j = 0; j < i && !seen; ++j) seen = r.row[8 * m + j] == a;
      if (!seen) ++per_group[(reinterpret_cast<uintptr_t>(a) >> 4) & 7];
    }
    wavefronts += *std::max_element(per_group, per_group + 8);
  }
  count(&Tally::ldmatrix, 1);
  count(&Tally::wavefronts, wavefronts);
  count(&Tally::ideal, r.nmat);
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    uint32_t* regs = static_cast<uint32_t*>(r.frag[l]);
    for (int m = 0; m < r.nmat; ++m) {
      const void* const* mat = r.row + 8 * m;
      const uint16_t lo = r.trans ? b16_at(mat[2 * t], g) : b16_at(mat[g], 2 * t);
      const uint16_t hi = r.trans ? b16_at(mat[2 * t + 1], g) : b16_at(mat[g], 2 * t + 1);
      regs[m] = uint32_t(lo) | uint32_t(hi) << 16;
    }
  }
}

float lo_half(Elem e, uint32_t reg) {
  const uint16_t h = static_cast<uint16_t>(reg);
  return elem_to_float(e, &h);
}
float hi_half(Elem e, uint32_t reg) {
  const uint16_t h = static_cast<uint16_t>(reg >> 16);
  return elem_to_float(e, &h);
}

void do_product(Round& r) {
  float A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    const uint32_t* a = static_cast<const uint32_t*>(r.fa[l]);
    const uint32_t* b = static_cast<const uint32_t*>(r.fb[l]);
    const float* c = r.fc[l];
    for (int i = 0; i < 4; ++i) {
      const int m = g + 8 * (i & 1), k = 2 * t + 8 * (i >> 1);
      A[m][k] = lo_half(r.elem, a[i]);
      A[m][k + 1] = hi_half(r.elem, a[i]);
    }
    for (int i = 0; i < 2; ++i) {
      B[2 * t + 8 * i][g] = lo_half(r.elem, b[i]);
      B[2 * t + 8 * i + 1][g] = hi_half(r.elem, b[i]);
    }
    for (int i = 0; i < 4; ++i) C[g + 8 * (i >> 1)][2 * t + (i & 1)] = c[i];
  }
  // Every c is read before any d is written, so d may alias c. Each bf16/f16 product is exact
  // in fp32; fmaf adds it to the running sum with one rounding, over k = 0 .. 15 in order.
  for (int l = 0; l < 32; ++l) {
    const int g = l >> 2, t = l & 3;
    float* d = static_cast<float*>(r.frag[l]);
    for (int i = 0; i < 4; ++i) {
      const int m = g + 8 * (i >> 1), n = 2 * t + (i & 1);
      float acc = C[m][n];
      for (int k = 0; k < 16; ++k) acc = std::fmaf(A[m][k], B[k][n], acc);
      d[i] = acc;
    }
  }
  count(&Tally::mma, 1);
}

std::map<std::string, int64_t> tally_dict(const KernelTally& k) {
  return {{"launches", k.launches},
          {"mma", k.total.mma},
          {"ldmatrix", k.total.ldmatrix},
          {"ldmatrix_wavefronts", k.total.wavefronts},
          {"ldmatrix_ideal_wavefronts", k.total.ideal},
          {"last_mma", k.last.mma},
          {"last_ldmatrix", k.last.ldmatrix},
          {"last_ldmatrix_wavefronts", k.last.wavefronts},
          {"last_ldmatrix_ideal_wavefronts", k.last.ideal}};
}

}  // namespace

void do_mma(Round& r, int w) {
  if (r.kind == Coll::Ldmatrix) do_ldmatrix(r, w);
  else do_product(r);
}

void mma_begin_launch(const std::string& name) {
  g_now = &g_tally[name];
  ++g_now->launches;
  g_now->last = Tally{};
}

}  // namespace detail

using detail::FromKernel;
using detail::g_launch;

void ldmatrix(int num, bool trans, uint32_t* regs, const void* row, detail::Site site) {
  FromKernel guard;
  const void* pc = __builtin_return_address(0);
  detail::require_fiber("ldmatrix");
  if (num != 1 && num != 2 && num != 4)
    detail::fail("invalid ldmatrix", g_launch.tid,
                 "ldmatrix.x" + std::to_string(num) + " at " + detail::site_str(site) + " (x1, x2 or x4)");
  const int ri = detail::arrive_matrix(detail::Coll::Ldmatrix, num, trans, detail::Elem::F16, pc, site);
  detail::Round& r = g_launch.warps[g_launch.tid >> 5].rounds[ri];
  r.frag[g_launch.tid & 31] = regs;
  r.row[g_launch.tid & 31] = row;
  detail::wait_round(ri);
}

void mma_m16n8k16(detail::Elem ab, float* d, const uint32_t* a, const uint32_t* b, const float* c, detail::Site site) {
  FromKernel guard;
  const void* pc = __builtin_return_address(0);
  detail::require_fiber("mma.sync");
  if (ab != detail::Elem::BF16 && ab != detail::Elem::F16)
    detail::fail("invalid warp collective", g_launch.tid,
                 "mma.sync at " + detail::site_str(site) + ": bf16 or f16 operands only");
  const int ri = detail::arrive_matrix(detail::Coll::Mma, 0, false, ab, pc, site);
  detail::Round& r = g_launch.warps[g_launch.tid >> 5].rounds[ri];
  const int lane = g_launch.tid & 31;
  r.frag[lane] = d;
  r.fa[lane] = a;
  r.fb[lane] = b;
  r.fc[lane] = c;
  detail::wait_round(ri);
}

std::map<std::string, std::map<std::string, int64_t>> mma_counters() {
  std::map<std::string, std::map<std::string, int64_t>> out;
  for (const auto& [name, k] : detail::g_tally) out[name] = detail::tally_dict(k);
  return out;
}

void reset_mma_counters() {
  detail::g_tally.clear();
  detail::g_now = nullptr;
}

}  // namespace sim
}  // namespace fastcl

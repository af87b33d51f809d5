// nvcuda::wmma for 16x16x16 tiles with __half / __nv_bfloat16 operands and float accumulators:
// load_matrix_sync, mma_sync and store_matrix_sync are warp collectives over the whole warp
// (collectives.cpp's rendezvous), with the same pointer, ldm and layout in every lane. The last
// lane to arrive does the whole tile's loads and stores, each element checked as an access by
// the lane that owns it, or the whole product. Fragments use the simulator's own layout: lane l
// holds elements 8l .. 8l+7 of the row-major tile. Compiled without instrumentation.
#include <cmath>
#include <cstring>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

float half_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000u) << 16, e = (h >> 10) & 0x1f, m = h & 0x3ffu;
  float f;
  if (e == 0) {
    f = std::ldexp(static_cast<float>(m), -24);
    return sign ? -f : f;
  }
  const uint32_t bits = e == 31 ? (sign | 0x7f800000u | (m << 13)) : (sign | ((e + 112) << 23) | (m << 13));
  std::memcpy(&f, &bits, 4);
  return f;
}
size_t elem_size(Elem e) { return e == Elem::F32 ? 4 : 2; }

// Fragment element e of lane l is element (i, j) = divmod(8 l + e, 16) of the 16 x 16 tile:
// (m, k) of A, (k, n) of B, (m, n) of the accumulator. Each lane holds a distinct share.
size_t elem_offset(int l, int e, unsigned ldm, bool col_major) {
  const int idx = l * 8 + e, i = idx >> 4, j = idx & 15;
  return col_major ? size_t(j) * ldm + i : size_t(i) * ldm + j;
}

}  // namespace

float elem_to_float(Elem e, const void* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (e == Elem::F16) return half_to_float(h);
  const uint32_t bits = uint32_t(h) << 16;  // bf16 is the top half of a float
  float f;
  std::memcpy(&f, &bits, 4);
  return f;
}

void do_wmma(Round& r, int w) {
  const char* what = coll_name(r.kind);
  if (r.kind == Coll::WmmaLoad || r.kind == Coll::WmmaStore) {
    const size_t es = elem_size(r.elem);
    for (int l = 0; l < 32; ++l)
      for (int e = 0; e < 8; ++e) {
        char* mem = static_cast<char*>(const_cast<void*>(r.ptr)) + elem_offset(l, e, r.ldm, r.col_major) * es;
        char* reg = static_cast<char*>(r.frag[l]) + e * es;
        const Origin o{nullptr, r.site, what};
        if (r.kind == Coll::WmmaLoad) {
          check_access(reinterpret_cast<uintptr_t>(mem), es, Access::Read, w * 32 + l, o);
          std::memcpy(reg, mem, es);
        } else {
          check_access(reinterpret_cast<uintptr_t>(mem), es, Access::Write, w * 32 + l, o);
          std::memcpy(mem, reg, es);
        }
      }
    return;
  }
  float A[16][16], B[16][16], C[16][16];
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < 8; ++e) {
      const int idx = l * 8 + e, i = idx >> 4, j = idx & 15;
      A[i][j] = elem_to_float(r.elem, static_cast<const char*>(r.fa[l]) + 2 * e);
      B[i][j] = elem_to_float(r.elem, static_cast<const char*>(r.fb[l]) + 2 * e);
      C[i][j] = r.fc[l][e];
    }
  for (int l = 0; l < 32; ++l)
    for (int e = 0; e < 8; ++e) {
      const int idx = l * 8 + e, m = idx >> 4, n = idx & 15;
      float acc = C[m][n];  // fp16/bf16 products are exact in fp32; sum in k order
      for (int k = 0; k < 16; ++k) acc = std::fmaf(A[m][k], B[k][n], acc);
      static_cast<float*>(r.frag[l])[e] = acc;
    }
}

namespace {

// wmma runs on whole warps, with the same arguments in every lane.
int arrive_wmma(Coll kind, FragUse use, Elem elem, const void* ptr, unsigned ldm, bool col_major, const Site& site) {
  const int tid = L.tid;
  WarpState& ws = L.warps[tid >> 5];
  if (ws.exists != ~0u)
    fail("invalid warp collective", tid, std::string(coll_name(kind)) + " (" + site_str(site) + ") in a partial warp");
  if (ptr) {
    const size_t es = elem_size(elem);
    if (reinterpret_cast<uintptr_t>(ptr) % 32)
      fail("misaligned address", tid,
           std::string(coll_name(kind)) + " (" + site_str(site) + ") pointer is not 32-byte aligned");
    if ((ldm * es) % 16)
      fail("invalid warp collective", tid,
           std::string(coll_name(kind)) + " (" + site_str(site) + ") ldm " + std::to_string(ldm) +
               " is not a multiple of 16 bytes");
  }
  const int ri = arrive(kind, ~0u, 32, site);
  Round& r = ws.rounds[ri];
  const unsigned others = r.arrived & ~(1u << (tid & 31));
  if (!others) {
    r.use = use;
    r.elem = elem;
    r.ptr = ptr;
    r.ldm = ldm;
    r.col_major = col_major;
  } else if (r.use != use || r.elem != elem || r.ptr != ptr || r.ldm != ldm || r.col_major != col_major) {
    fail("invalid warp collective", tid,
         std::string(coll_name(kind)) + " (" + site_str(site) + ") with arguments that differ from those of " +
             lane_str((tid & ~31) + r.first_lane) + ": every lane must pass the same pointer, ldm and layout");
  }
  return ri;
}

}  // namespace

void wmma_load(FragUse use, Elem elem, void* frag, const void* ptr, unsigned ldm, bool col_major, Site site) {
  FromKernel guard;
  require_fiber("wmma::load_matrix_sync");
  const int ri = arrive_wmma(Coll::WmmaLoad, use, elem, ptr, ldm, col_major, site);
  L.warps[L.tid >> 5].rounds[ri].frag[L.tid & 31] = frag;
  wait_round(ri);
}

void wmma_store(void* ptr, const float* frag, unsigned ldm, bool col_major, Site site) {
  FromKernel guard;
  require_fiber("wmma::store_matrix_sync");
  const int ri = arrive_wmma(Coll::WmmaStore, FragUse::Acc, Elem::F32, ptr, ldm, col_major, site);
  L.warps[L.tid >> 5].rounds[ri].frag[L.tid & 31] = const_cast<float*>(frag);
  wait_round(ri);
}

void wmma_mma(Elem ab, float* d, const void* a, const void* b, const float* c, Site site) {
  FromKernel guard;
  require_fiber("wmma::mma_sync");
  const int ri = arrive_wmma(Coll::WmmaMma, FragUse::Acc, ab, nullptr, 0, false, site);
  Round& r = L.warps[L.tid >> 5].rounds[ri];
  const int lane = L.tid & 31;
  r.frag[lane] = d;
  r.fa[lane] = a;
  r.fb[lane] = b;
  r.fc[lane] = c;
  wait_round(ri);
}

}  // namespace detail
}  // namespace sim
}  // namespace fastcl

// Warp collectives (shuffles, votes, __syncwarp, wmma), cp.async and device atomics. A warp
// collective is a rendezvous: each lane of the mask deposits its share in a Round and parks;
// the last to arrive computes every lane's result (for wmma it also does the memory traffic,
// each element checked as an access by the lane that owns it) and releases the lanes.
// Completing a __syncwarp orders its lanes for the race check; other collectives do not.
#include <cmath>
#include <cstdio>
#include <cstring>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

std::string mask_str(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
}
std::string lane_str(int t) { return "lane " + std::to_string(t & 31) + " (thread " + thread_str(t) + ")"; }
std::string coll_at(Coll k, const Site& s) { return std::string(coll_name(k)) + " (" + site_str(s) + ")"; }
bool is_shfl(Coll k) { return k == Coll::ShflIdx || k == Coll::ShflUp || k == Coll::ShflDown || k == Coll::ShflXor; }

// Joins (or opens) the caller's round for `mask`, after checking that every other lane of the
// mask can still come. Returns the round's index in the warp.
int arrive(Coll kind, unsigned mask, int width, const Site& site) {
  const int tid = L.tid, w = tid >> 5, lane = tid & 31;
  const unsigned bit = 1u << lane;
  WarpState& ws = L.warps[w];
  // Built only when a check fails: arrivals are frequent.
  const auto me = [&] { return coll_at(kind, site) + " with mask " + mask_str(mask); };
  if (!(mask & bit))
    fail("invalid warp collective", tid, "calls " + me() + ", which does not include its own lane " + std::to_string(lane));
  if (is_shfl(kind) && (width < 1 || width > 32 || (width & (width - 1))))
    fail("invalid warp collective", tid, "calls " + me() + " with width " + std::to_string(width) + ", not a power of two up to 32");
  const unsigned need = mask & ws.exists;
  for (unsigned m = need & ~bit; m; m &= m - 1) {
    const int y = w * 32 + __builtin_ctz(m);
    const SimThread& ty = g_threads[y];
    if (ty.state == TState::Exited)
      fail("warp collective divergence", tid, "calls " + me() + ", but " + lane_str(y) + " of the mask has exited");
    if (ty.state == TState::Barrier)
      fail("warp collective divergence", tid,
           "calls " + me() + ", but " + lane_str(y) + " of the mask waits at __syncthreads (" + site_str(ty.site) + ")");
  }
  int ri = -1;
  for (size_t i = 0; i < ws.rounds.size(); ++i) {
    const Round& r = ws.rounds[i];
    if (r.used && r.mask == mask && !(r.arrived & bit)) {
      ri = static_cast<int>(i);
      break;
    }
  }
  if (ri >= 0) {
    const Round& r = ws.rounds[ri];
    if (r.kind != kind || (is_shfl(kind) && r.width != width))
      fail("warp collective divergence", tid,
           "calls " + me() + " while " + lane_str(w * 32 + r.first_lane) + " waits at " + coll_at(r.kind, r.site) +
               " with the same mask" + (r.kind == kind ? " but width " + std::to_string(r.width) : ""));
  } else {
    for (size_t i = 0; i < ws.rounds.size() && ri < 0; ++i)
      if (!ws.rounds[i].used) ri = static_cast<int>(i);
    if (ri < 0) {
      ws.rounds.emplace_back();
      ri = static_cast<int>(ws.rounds.size()) - 1;
    }
    Round& r = ws.rounds[ri];
    r.used = true;
    r.kind = kind;
    r.mask = mask;
    r.arrived = 0;
    r.width = width;
    r.site = site;
    r.first_lane = lane;
  }
  // A lane this round needs, parked in another round that needs this lane: neither can finish.
  for (unsigned m = need & ~bit & ~ws.rounds[ri].arrived; m; m &= m - 1) {
    const int y = w * 32 + __builtin_ctz(m);
    const SimThread& ty = g_threads[y];
    if (ty.state != TState::Warp || ty.round == ri) continue;
    const Round& o = ws.rounds[ty.round];
    if (o.mask & bit)
      fail("warp collective divergence", tid,
           "calls " + me() + " while " + lane_str(y) + " waits at " + coll_at(o.kind, o.site) + " with mask " +
               mask_str(o.mask) + ": each waits for the other");
  }
  ws.rounds[ri].arrived |= bit;
  return ri;
}

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
float elem_to_float(Elem e, const void* p) {
  uint16_t h;
  std::memcpy(&h, p, 2);
  if (e == Elem::F16) return half_to_float(h);
  const uint32_t bits = uint32_t(h) << 16;  // bf16 is the top half of a float
  float f;
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

void complete(int w, int ri) {
  WarpState& ws = L.warps[w];
  Round& r = ws.rounds[ri];
  const unsigned lanes = r.arrived;
  // CUDA promises memory ordering among a warp's lanes for __syncwarp only: a shuffle, a vote
  // or a wmma operation is a rendezvous of values, not a fence for the lanes' shared memory.
  if (r.kind == Coll::SyncWarp) memcheck_warp_sync(w, lanes);
  uint64_t res[32] = {};
  if (is_shfl(r.kind)) {
    const unsigned seg = ~unsigned(r.width - 1) & 31u;
    for (unsigned m = lanes; m; m &= m - 1) {
      const int lane = __builtin_ctz(m), b = r.operand[lane];
      const int lo = lane & seg, hi = lo | (~seg & 31);
      int j;
      bool ok;
      switch (r.kind) {
        case Coll::ShflUp: j = lane - b; ok = j >= lo; break;
        case Coll::ShflDown: j = lane + b; ok = j <= hi; break;
        case Coll::ShflXor: j = lane ^ b; ok = j <= hi; break;
        default: j = lo | (b & ~seg & 31); ok = j <= hi; break;
      }
      if (!ok) j = lane;
      // A lane outside the collective has no value to give: poison, as undefined on the GPU.
      res[lane] = (j >= 0 && j < 32 && (lanes >> j & 1)) ? r.value[j] : ~uint64_t(0);
    }
  } else if (r.kind == Coll::Ballot || r.kind == Coll::Any || r.kind == Coll::All) {
    unsigned votes = 0;
    for (unsigned m = lanes; m; m &= m - 1)
      if (r.value[__builtin_ctz(m)]) votes |= 1u << __builtin_ctz(m);
    const uint64_t v = r.kind == Coll::Ballot ? votes : r.kind == Coll::Any ? votes != 0 : votes == lanes;
    for (int l = 0; l < 32; ++l) res[l] = v;
  } else if (r.kind != Coll::SyncWarp) {
    do_wmma(r, w);
  }
  for (unsigned m = lanes; m; m &= m - 1) {
    SimThread& th = g_threads[w * 32 + __builtin_ctz(m)];
    th.state = TState::Runnable;
    th.result = res[__builtin_ctz(m)];
    th.round = -1;
  }
  r.used = false;
}

// Parks the caller in round ri (completing it if it is the last lane) and returns its result.
uint64_t wait_round(int ri) {
  const int tid = L.tid, w = tid >> 5;
  WarpState& ws = L.warps[w];
  SimThread& th = g_threads[tid];
  const Round& r = ws.rounds[ri];
  th.state = TState::Warp;
  th.coll = r.kind;
  th.site = r.site;
  th.round = ri;
  if (r.arrived == (r.mask & ws.exists)) complete(w, ri);
  yield_to_scheduler();
  return th.result;
}

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

void perform_copy(int tid, const CpCopy& c, const std::string& when) {
  if (c.pending_marked) mark_pending(reinterpret_cast<uintptr_t>(c.dst), c.bytes, -1);
  const std::string note = "cp.async issued here, performed " + when;
  const Origin o{nullptr, c.site, note.c_str()};
  if (c.src_bytes > 0) check_access(reinterpret_cast<uintptr_t>(c.src), c.src_bytes, Access::Read, tid, o);
  check_access(reinterpret_cast<uintptr_t>(c.dst), c.bytes, Access::Write, tid, o);
  std::memcpy(c.dst, c.src, c.src_bytes);
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
}

void retire(int tid, int64_t below, const Site& site) {
  SimThread& th = g_threads[tid];
  const std::string when = "at the wait at " + site_str(site);
  size_t keep = 0;
  for (size_t i = 0; i < th.cp.size(); ++i) {
    if (static_cast<int64_t>(th.cp[i].group) < below) perform_copy(tid, th.cp[i], when);
    else th.cp[keep++] = th.cp[i];
  }
  th.cp.resize(keep);
}

}  // namespace

uint64_t warp_collective(Coll kind, unsigned mask, uint64_t value, int operand, int width, Site site) {
  FromKernel guard;
  require_fiber(coll_name(kind));
  const int ri = arrive(kind, mask, width, site);
  Round& r = L.warps[L.tid >> 5].rounds[ri];
  r.value[L.tid & 31] = value;
  r.operand[L.tid & 31] = operand;
  return wait_round(ri);
}

unsigned activemask() {
  FromKernel guard;
  require_fiber("__activemask");
  const int w = L.tid >> 5;
  unsigned m = 0;
  for (unsigned e = L.warps[w].exists; e; e &= e - 1)
    if (g_threads[w * 32 + __builtin_ctz(e)].state != TState::Exited) m |= 1u << __builtin_ctz(e);
  return m;
}

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

uint64_t atomic_op(AtomicOp op, AtomicType type, void* p, uint64_t v, uint64_t compare, Site site) {
  FromKernel guard;
  require_fiber("atomic");
  const int tid = L.tid;
  const size_t n = (type == AtomicType::U64 || type == AtomicType::I64 || type == AtomicType::F64) ? 8 : 4;
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a % n) fail("misaligned address", tid, "atomic on " + std::to_string(n) + " bytes at a misaligned address (" + site_str(site) + ")");
  check_access(a, n, Access::Atomic, tid, Origin{nullptr, site, "atomic"});
  uint64_t old = 0;
  std::memcpy(&old, p, n);
  auto as_i = [&](uint64_t x) -> int64_t { return n == 4 ? int64_t(int32_t(uint32_t(x))) : int64_t(x); };
  auto as_f = [&](uint64_t x) -> double {
    if (n == 8) { double d; std::memcpy(&d, &x, 8); return d; }
    float f; uint32_t u = uint32_t(x); std::memcpy(&f, &u, 4); return f;
  };
  auto from_f = [&](double d) -> uint64_t {
    if (n == 8) { uint64_t x; std::memcpy(&x, &d, 8); return x; }
    float f = static_cast<float>(d); uint32_t u; std::memcpy(&u, &f, 4); return u;
  };
  const bool is_f = type == AtomicType::F32 || type == AtomicType::F64;
  const bool is_signed = type == AtomicType::I32 || type == AtomicType::I64;
  const uint64_t mask = n == 4 ? 0xffffffffull : ~0ull;
  uint64_t nv = old;
  switch (op) {
    case AtomicOp::Add: nv = is_f ? from_f(as_f(old) + as_f(v)) : old + v; break;
    case AtomicOp::Sub: nv = old - v; break;
    case AtomicOp::Exch: nv = v; break;
    case AtomicOp::And: nv = old & v; break;
    case AtomicOp::Or: nv = old | v; break;
    case AtomicOp::Xor: nv = old ^ v; break;
    case AtomicOp::Min: nv = is_signed ? (as_i(v) < as_i(old) ? v : old) : ((v & mask) < (old & mask) ? v : old); break;
    case AtomicOp::Max: nv = is_signed ? (as_i(v) > as_i(old) ? v : old) : ((v & mask) > (old & mask) ? v : old); break;
    case AtomicOp::Inc: nv = (old & mask) >= (v & mask) ? 0 : old + 1; break;
    case AtomicOp::Dec: nv = ((old & mask) == 0 || (old & mask) > (v & mask)) ? v : old - 1; break;
    case AtomicOp::Cas: nv = (old & mask) == (compare & mask) ? v : old; break;
  }
  std::memcpy(p, &nv, n);
  return old & mask;
}

void cp_async_flush(int tid) {
  SimThread& th = g_threads[tid];
  for (const CpCopy& c : th.cp) perform_copy(tid, c, "when its thread exited");
  th.cp.clear();
}

}  // namespace detail

using detail::FromKernel;
using detail::g_launch;
using detail::g_threads;

void cp_async(void* dst, const void* src, int bytes, int src_bytes, detail::Site site) {
  FromKernel guard;
  detail::require_fiber("cp_async");
  const int tid = g_launch.tid;
  if (bytes != 4 && bytes != 8 && bytes != 16)
    detail::fail("invalid cp.async", tid, "copy size " + std::to_string(bytes) + " at " + detail::site_str(site) + " (4, 8 or 16)");
  if (src_bytes < 0 || src_bytes > bytes)
    detail::fail("invalid cp.async", tid,
                 "source size " + std::to_string(src_bytes) + " at " + detail::site_str(site) + " outside [0, " +
                     std::to_string(bytes) + "]");
  if (reinterpret_cast<uintptr_t>(dst) % bytes || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes))
    detail::fail("misaligned address", tid,
                 "cp.async of " + std::to_string(bytes) + " bytes at " + detail::site_str(site) +
                     " with a source or destination not aligned to its size");
  if (!detail::in_shared_window(reinterpret_cast<uintptr_t>(dst))) {
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", dst);
    detail::fail("invalid cp.async", tid,
                 std::string("destination ") + addr + " at " + detail::site_str(site) + " is not shared memory");
  }
  const detail::Origin o{nullptr, site, "cp.async issued here"};
  detail::precheck_async_write(reinterpret_cast<uintptr_t>(dst), bytes, tid, o);
  const bool marked = detail::mark_pending(reinterpret_cast<uintptr_t>(dst), bytes, +1);
  detail::SimThread& th = g_threads[tid];
  th.cp.push_back({dst, src, bytes, src_bytes, th.cp_group, site, marked});
}

void cp_async_commit() {
  FromKernel guard;
  detail::require_fiber("cp_async_commit");
  ++g_threads[g_launch.tid].cp_group;
}

void cp_async_wait_group(int n, detail::Site site) {
  FromKernel guard;
  detail::require_fiber("cp_async_wait_group");
  const int tid = g_launch.tid;
  detail::retire(tid, static_cast<int64_t>(g_threads[tid].cp_group) - n, site);
}

void cp_async_wait_all(detail::Site site) {
  FromKernel guard;
  detail::require_fiber("cp_async_wait_all");
  const int tid = g_launch.tid;
  ++g_threads[tid].cp_group;  // wait_all commits the open group, then waits for everything
  detail::retire(tid, g_threads[tid].cp_group, site);
}

}  // namespace sim
}  // namespace fastcl

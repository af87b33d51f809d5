// Warp collectives: __syncwarp, shuffles and votes, and the rendezvous that wmma (wmma.cpp)
// and ldmatrix / mma.sync (mma.cpp) also use. A warp collective is a rendezvous: each lane of
// the mask deposits its share in a Round and parks; the last to arrive computes every lane's
// result and releases the lanes.
// Before a lane parks, every other lane of its mask must still be able to come: one that exited,
// waits at __syncthreads or waits at another collective that needs this lane is a divergence.
// Completing a __syncwarp orders its lanes for the race check; other collectives do not.
// Compiled without instrumentation.
#include <string>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

std::string coll_at(Coll k, const Site& s) { return std::string(coll_name(k)) + " (" + site_str(s) + ")"; }
bool is_shfl(Coll k) { return k == Coll::ShflIdx || k == Coll::ShflUp || k == Coll::ShflDown || k == Coll::ShflXor; }

}  // namespace

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

namespace {

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
  } else if (r.kind == Coll::Ldmatrix || r.kind == Coll::Mma) {
    do_mma(r, w);
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

}  // namespace

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

// A lane of `tid`'s warp that waits at a collective naming `tid` can only be released by it.
void check_warp_waiters(int tid, const std::string& doing) {
  WarpState& ws = L.warps[tid >> 5];
  const unsigned bit = 1u << (tid & 31);
  for (const Round& r : ws.rounds) {
    if (!r.used || !(r.mask & bit) || (r.arrived & bit)) continue;
    const int other = (tid & ~31) + r.first_lane;
    fail("warp collective divergence", tid,
         doing + " while thread " + thread_str(other) +
             " of its warp waits at " + coll_name(r.kind) + " (" + site_str(r.site) + ") with mask " +
             mask_str(r.mask) + ", which names it (lane " + std::to_string(tid & 31) + ")");
  }
}

}  // namespace detail
}  // namespace sim
}  // namespace fastcl

// __syncthreads and its variants (_count, _and, _or): the block barrier. Every live thread of
// the block must reach the same barrier call (the same source line); a thread that exited, a
// barrier on another line or a lane awaited by a warp collective is a divergence. The last to
// arrive starts a new barrier epoch for the race check, computes the result and releases the
// waiters. Compiled without instrumentation.
#include <cstring>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || (a.file && b.file && std::strcmp(a.file, b.file) == 0));
}

}  // namespace

int syncthreads(int op, int pred, Site site) {
  FromKernel guard;
  require_fiber("__syncthreads");
  const int tid = L.tid;
  SimThread& th = g_threads[tid];
  if (L.exited > 0)
    fail("divergent __syncthreads", tid,
         "reached __syncthreads at " + site_str(site) + " after thread " + thread_str(L.first_exited) +
             " exited: every thread of the block must reach every barrier");
  check_warp_waiters(tid, "reached __syncthreads at " + site_str(site));
  BarrierState& b = L.bar;
  if (b.arrived == 0) {
    b.first = tid;
    b.site = site;
    b.count = 0;
    b.op = op;
  } else if (!same_site(b.site, site)) {
    fail("divergent __syncthreads", tid,
         "reached __syncthreads at " + site_str(site) + " while thread " + thread_str(b.first) +
             " waits at the one at " + site_str(b.site));
  }
  ++b.arrived;
  b.count += pred != 0;
  th.state = TState::Barrier;
  th.site = site;
  if (b.arrived == L.live) {
    memcheck_barrier();
    const int64_t r = b.op == 1 ? b.count : b.op == 2 ? (b.count == b.arrived) : b.op == 3 ? (b.count > 0) : 0;
    for (int t = 0; t < L.nthreads; ++t)
      if (g_threads[t].state == TState::Barrier) {
        g_threads[t].state = TState::Runnable;
        g_threads[t].result = static_cast<uint64_t>(r);
      }
    b.arrived = 0;
  }
  yield_to_scheduler();
  return static_cast<int>(th.result);
}

}  // namespace detail
}  // namespace sim
}  // namespace fastcl

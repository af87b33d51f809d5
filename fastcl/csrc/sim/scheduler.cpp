// The threads of a block: each a ucontext fiber with its own stack on this OS thread, scheduled
// cooperatively. A thread runs until it blocks (__syncthreads, a warp collective) or exits, then
// switches straight to the next runnable thread of the current round; a round is the threads
// runnable when it started, in index order or shuffled by set_schedule's seed. Also thread exit,
// exceptions escaping kernel code and deadlocks. Compiled without instrumentation.
#include <cxxabi.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>
#include <typeinfo>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {

uint64_t g_seed = 0;  // set_schedule

namespace {

LaunchState& L = g_launch;
constexpr size_t kStackSize = 256 * 1024;  // per simulated thread, plus a guard page below

void thread_exit(int tid);

std::string demangled_current_exception() {
  const std::type_info* t = abi::__cxa_current_exception_type();
  if (!t) return "an exception";
  int status = 0;
  char* d = abi::__cxa_demangle(t->name(), nullptr, nullptr, &status);
  std::string out = status == 0 && d ? d : t->name();
  std::free(d);
  return out;
}

// Every fiber starts here; the kernel's own entry (a template in the kernel's TU) copies the
// arguments and calls it between kernel_begin and kernel_end.
// An exception must not leave the fiber (nothing above it can catch it: std::terminate): it
// becomes an error of the launch, reported once the handler is left.
void fiber_main() {
  const int tid = L.tid;
  std::string what;
  try {
    L.spec.entry(L.spec.args);
  } catch (const std::exception& e) {
    g_active = false;  // runtime code from here: its own memcpy calls are not the kernel's
    what = demangled_current_exception() + ": " + e.what();
  } catch (...) {
    g_active = false;
    what = demangled_current_exception();
  }
  if (!what.empty()) {
    fail("uncaught exception", tid, "kernel code threw " + what);
  }
  thread_exit(tid);
}

uint64_t next_rand() {  // splitmix64
  uint64_t z = (L.rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string state_str(int t) {
  const SimThread& th = g_threads[t];
  switch (th.state) {
    case TState::Barrier: return "waits at __syncthreads (" + site_str(th.site) + ")";
    case TState::Warp: return std::string("waits at ") + coll_name(th.coll) + " (" + site_str(th.site) + ")";
    case TState::Exited: return "has exited";
    default: return "is runnable";
  }
}

// Nothing can run but threads are still blocked: name a waiter and whom it waits for.
void report_deadlock() {
  for (int t = 0; t < L.nthreads; ++t) {
    const SimThread& th = g_threads[t];
    if (th.state != TState::Warp) continue;
    const WarpState& ws = L.warps[t >> 5];
    const Round& r = ws.rounds[th.round];
    const unsigned missing = r.mask & ws.exists & ~r.arrived;
    const int y = (t & ~31) + __builtin_ctz(missing ? missing : 1u);
    fail("warp collective divergence", t,
         std::string("deadlock: waits at ") + coll_name(r.kind) + " (" + site_str(r.site) + ") with mask " +
             mask_str(r.mask) + " for lane " + std::to_string(y & 31) + ", thread " + thread_str(y) + ", which " +
             state_str(y));
    return;
  }
  for (int t = 0; t < L.nthreads; ++t)
    if (g_threads[t].state == TState::Barrier) {
      fail("divergent __syncthreads", t, "deadlock at __syncthreads (" + site_str(g_threads[t].site) + ")");
      return;
    }
  fail("deadlock", -1, "no thread can run");
}

// The running thread as everything else sees it (threadIdx, the fast stack check, messages).
void make_current(int t) {
  L.tid = t;
  g_cur.thread_idx = g_threads[t].idx;
  memcheck_set_thread(t);
}

// The next runnable thread of this round, or -1 when the round is over.
int next_in_round() {
  while (L.pos < L.order.size()) {
    const int t = L.order[L.pos++];
    if (g_threads[t].state == TState::Runnable) return t;
  }
  return -1;
}

void thread_exit(int tid) {
  g_active = false;
  cp_async_flush(tid);
  if (L.bar.arrived > 0)
    fail("divergent __syncthreads", tid,
         "exited while thread " + thread_str(L.bar.first) + " waits at __syncthreads (" + site_str(L.bar.site) +
             "): every thread of the block must reach every barrier");
  check_warp_waiters(tid, "exited");
  SimThread& th = g_threads[tid];
  th.state = TState::Exited;
  --L.live;
  ++L.exited;
  if (L.first_exited < 0) L.first_exited = tid;
  // This fiber is never resumed: on to the round's next thread, or back to the scheduler.
  const int next = next_in_round();
  if (next < 0) setcontext(&L.sched_ctx);
  make_current(next);
  setcontext(&g_threads[next].ctx);
}

}  // namespace

void ensure_stacks(int n) {
  const size_t page = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  for (int t = 0; t < n; ++t) {
    SimThread& th = g_threads[t];
    if (th.stack) continue;
    void* m = mmap(nullptr, kStackSize + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE,
                   -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("fastcl.sim: cannot map a fiber stack");
    mprotect(m, page, PROT_NONE);  // overflow faults instead of corrupting a neighbour
    th.stack = static_cast<char*>(m);
    th.stack_size = kStackSize + page;
  }
}

void run_block(uint3 b) {
  L.block = b;
  g_cur.block_idx = b;
  const dim3 bd = L.spec.block;
  const int n = L.nthreads;
  for (int w = 0; w < L.nwarps; ++w) {
    WarpState& ws = L.warps[w];
    ws.rounds.clear();
    ws.seq = 0;
    std::memset(ws.common, 0, sizeof ws.common);
    const int lanes = std::min(32, n - 32 * w);
    ws.exists = lanes == 32 ? ~0u : ((1u << lanes) - 1);
  }
  L.bar = BarrierState{};
  L.live = n;
  L.exited = 0;
  L.first_exited = -1;
  for (int t = 0; t < n; ++t) {
    SimThread& th = g_threads[t];
    th.state = TState::Runnable;
    th.idx = uint3{t % bd.x, (t / bd.x) % bd.y, t / (bd.x * bd.y)};
    th.cp.clear();
    th.cp_group = 0;
    th.round = -1;
    getcontext(&th.ctx);
    th.ctx.uc_stack.ss_sp = th.stack;
    th.ctx.uc_stack.ss_size = th.stack_size;
    th.ctx.uc_link = &L.sched_ctx;
    makecontext(&th.ctx, fiber_main, 0);
  }
  memcheck_begin_block();
  // One round: the threads runnable at its start, each run until it blocks or exits. A thread
  // that blocks switches straight to the next one of the round; the last returns here.
  while (L.live > 0 && !L.failed) {
    L.order.clear();
    for (int t = 0; t < n; ++t)
      if (g_threads[t].state == TState::Runnable) L.order.push_back(t);
    if (L.order.empty()) {
      report_deadlock();
      return;
    }
    if (g_seed)
      for (size_t i = L.order.size(); i > 1; --i) std::swap(L.order[i - 1], L.order[next_rand() % i]);
    L.pos = 0;
    make_current(next_in_round());
    L.on_fiber = true;
    swapcontext(&L.sched_ctx, &g_threads[L.tid].ctx);
    L.on_fiber = false;
    L.tid = -1;
    g_active = false;
  }
}

void yield_to_scheduler() {
  SimThread& th = g_threads[L.tid];
  const int next = next_in_round();
  if (next < 0) {
    swapcontext(&th.ctx, &L.sched_ctx);
  } else {
    make_current(next);
    swapcontext(&th.ctx, &g_threads[next].ctx);
  }
  // Whoever switched back here made this thread current again.
}

void require_fiber(const char* what) {
  if (!L.on_fiber) {
    std::fprintf(stderr, "fastcl.sim: %s called outside a simulated kernel\n", what);
    std::abort();
  }
}

}  // namespace detail

void set_schedule(uint64_t seed) { detail::g_seed = seed; }

}  // namespace sim
}  // namespace fastcl

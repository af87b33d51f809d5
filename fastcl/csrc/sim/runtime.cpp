// Launches: limit checks, then the grid's blocks one at a time (x fastest), each block's threads
// as ucontext fibers on this OS thread, scheduled cooperatively: a thread runs until it reaches
// __syncthreads, a warp collective or its end. Also the block barrier, error reporting and the
// device description. Compiled without instrumentation.
#include <cxxabi.h>
#include <dlfcn.h>
#include <sys/mman.h>
#include <unistd.h>

#include <algorithm>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {

CurrentThread g_cur;
LaunchState g_launch;
SimThread g_threads[kMaxThreads];

namespace {

LaunchState& L = g_launch;
std::mutex g_mutex;              // one launch at a time per process
uint64_t g_seed = 0;             // set_schedule
std::map<const void*, size_t> g_smem_limit;  // set_max_dynamic_smem
constexpr size_t kStackSize = 256 * 1024;  // per simulated thread, plus a guard page below

std::string kernel_name(const char* pretty) {
  // g++: "const char* fastcl::sim::detail::pretty() [with auto K = ns::kernel<float>]"
  std::string s = pretty ? pretty : "?";
  const size_t at = s.find("K = ");
  if (at == std::string::npos) return s;
  std::string n = s.substr(at + 4);
  if (!n.empty() && n.back() == ']') n.pop_back();
  while (!n.empty() && (n[0] == '&' || n[0] == ' ')) n.erase(0, 1);
  return n;
}

std::string dim_str(dim3 d) {
  return "(" + std::to_string(d.x) + "," + std::to_string(d.y) + "," + std::to_string(d.z) + ")";
}

[[noreturn]] void limit_error(const std::string& name, const std::string& what) {
  throw std::runtime_error("fastcl.sim: launch out of limits: kernel " + name + ": " + what);
}

void validate(const LaunchSpec& s, const std::string& name, size_t static_smem) {
  const dim3 b = s.block, g = s.grid;
  if (b.x == 0 || b.y == 0 || b.z == 0 || g.x == 0 || g.y == 0 || g.z == 0)
    limit_error(name, "empty grid " + dim_str(g) + " or block " + dim_str(b));
  const uint64_t threads = uint64_t(b.x) * b.y * b.z;
  if (threads > 1024)
    limit_error(name, "block " + dim_str(b) + " has " + std::to_string(threads) +
                          " threads, more than the 1024 a block may have");
  if (b.x > 1024 || b.y > 1024 || b.z > 64)
    limit_error(name, "block " + dim_str(b) + " exceeds the per-dimension maximum (1024,1024,64)");
  if (g.x > 2147483647u || g.y > 65535 || g.z > 65535)
    limit_error(name, "grid " + dim_str(g) + " exceeds the maximum (2147483647,65535,65535)");
  // CUDA: static arrays get at most 48 KiB; the dynamic limit defaults to what is left of
  // 48 KiB and can be raised so that static plus dynamic reach the opt-in maximum.
  const std::string with_static =
      static_smem ? " (plus " + std::to_string(static_smem) + " bytes of static shared memory)" : "";
  if (static_smem > kDefaultSmem)
    limit_error(name, std::to_string(static_smem) + " bytes of static shared memory, more than " +
                          std::to_string(kDefaultSmem));
  if (s.dynamic_smem + static_smem > kOptinSmem)
    limit_error(name, std::to_string(s.dynamic_smem) + " bytes of dynamic shared memory" + with_static +
                          ", more than the device's opt-in maximum of " + std::to_string(kOptinSmem));
  auto it = g_smem_limit.find(s.kernel);
  const size_t limit = it == g_smem_limit.end() ? kDefaultSmem - static_smem : it->second;
  if (s.dynamic_smem > limit)
    limit_error(name, std::to_string(s.dynamic_smem) +
                          " bytes of dynamic shared memory, more than the kernel's limit of " +
                          std::to_string(limit) +
                          (it == g_smem_limit.end() && static_smem ? " (49152 less its " + std::to_string(static_smem) + " static bytes)" : "") +
                          " (set_max_dynamic_smem raises it, up to " + std::to_string(kOptinSmem - static_smem) + ")");
}

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

bool same_site(const Site& a, const Site& b) {
  return a.line == b.line && (a.file == b.file || (a.file && b.file && std::strcmp(a.file, b.file) == 0));
}

uint64_t next_rand() {  // splitmix64
  uint64_t z = (L.rng += 0x9E3779B97F4A7C15ull);
  z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
  z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
  return z ^ (z >> 31);
}

std::string mask_str(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
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

// ---- messages ---------------------------------------------------------------------------------

std::string thread_str(int tid) {
  if (tid < 0) return "(none)";
  const uint3 i = g_threads[tid].idx;
  return "(" + std::to_string(i.x) + "," + std::to_string(i.y) + "," + std::to_string(i.z) + ")";
}

std::string where(int tid) {
  std::string s = "kernel " + L.name + ", block (" + std::to_string(L.block.x) + "," + std::to_string(L.block.y) +
                  "," + std::to_string(L.block.z) + ")";
  if (tid >= 0)
    s += ", thread " + thread_str(tid) + " [warp " + std::to_string(tid >> 5) + " lane " + std::to_string(tid & 31) + "]";
  return s;
}

std::string site_str(const Site& s) {
  if (!s.file) return "?";
  if (s.line == 0) return s.file;
  return std::string(s.file) + ":" + std::to_string(s.line);
}

std::string describe_pc(const void* pc) {
  Dl_info info;
  char buf[64];
  std::snprintf(buf, sizeof buf, "pc %p", pc);
  if (!pc || !dladdr(pc, &info) || !info.dli_fname) return buf;
  const char* env = std::getenv("FASTCL_SIM_SYMBOLIZE");
  if (env && std::strcmp(env, "0") == 0) return buf;
  // pc is a return address: the access's own instruction is just before it.
  const uintptr_t off = reinterpret_cast<uintptr_t>(pc) - 1 - reinterpret_cast<uintptr_t>(info.dli_fbase);
  char cmd[4300];
  std::snprintf(cmd, sizeof cmd, "addr2line -C -f -i -e '%s' 0x%lx 2>/dev/null", info.dli_fname,
                static_cast<unsigned long>(off));
  FILE* f = popen(cmd, "r");
  if (!f) return buf;
  std::vector<std::string> lines;
  char line[4096];
  while (std::fgets(line, sizeof line, f)) {
    std::string l = line;
    while (!l.empty() && (l.back() == '\n' || l.back() == '\r')) l.pop_back();
    lines.push_back(l);
  }
  pclose(f);
  if (lines.size() < 2 || lines[1].rfind("??", 0) == 0) return buf;
  std::string out = lines[1] + " (in " + lines[0] + ")";
  // With inlining, the next pair is the caller the access was inlined into.
  if (lines.size() >= 4 && lines[3].rfind("??", 0) != 0) out += ", inlined into " + lines[2] + " at " + lines[3];
  return out;
}

const char* coll_name(Coll k) {
  switch (k) {
    case Coll::SyncWarp: return "__syncwarp";
    case Coll::ShflIdx: return "__shfl_sync";
    case Coll::ShflUp: return "__shfl_up_sync";
    case Coll::ShflDown: return "__shfl_down_sync";
    case Coll::ShflXor: return "__shfl_xor_sync";
    case Coll::Ballot: return "__ballot_sync";
    case Coll::Any: return "__any_sync";
    case Coll::All: return "__all_sync";
    case Coll::WmmaLoad: return "wmma::load_matrix_sync";
    case Coll::WmmaMma: return "wmma::mma_sync";
    case Coll::WmmaStore: return "wmma::store_matrix_sync";
  }
  return "?";
}

void fail(const std::string& check, int tid, const std::string& detail) {
  if (!L.failed) {
    L.failed = true;
    L.error = "fastcl.sim: " + check + ": " + where(tid) + ": " + detail;
  }
  g_active = false;
  if (L.on_fiber) setcontext(&L.sched_ctx);  // abandon the fiber: no unwinding across contexts
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

// ---- entry points ------------------------------------------------------------------------------

void kernel_begin() { g_active = true; }
void kernel_end() { g_active = false; }

void launch(const LaunchSpec& s) {
  if (L.on_fiber) {  // from kernel code: no dynamic parallelism here
    g_active = false;
    fail("invalid launch", L.tid, "kernel " + kernel_name(s.pretty) + " launched from inside a kernel");
  }
  std::lock_guard<std::mutex> lock(g_mutex);
  const std::string name = kernel_name(s.pretty);
  const KernelInfo& info = kernel_info(s.kernel);
  validate(s, name, info.static_smem);
  L.spec = s;
  L.name = name;
  L.failed = false;
  L.error.clear();
  L.nthreads = static_cast<int>(s.block.x * s.block.y * s.block.z);
  L.nwarps = (L.nthreads + 31) / 32;
  L.rng = g_seed;
  g_cur.block_dim = s.block;
  g_cur.grid_dim = s.grid;
  ensure_stacks(L.nthreads);
  memcheck_begin_launch(info, s.dynamic_smem);
  for (unsigned z = 0; z < s.grid.z && !L.failed; ++z)
    for (unsigned y = 0; y < s.grid.y && !L.failed; ++y)
      for (unsigned x = 0; x < s.grid.x && !L.failed; ++x) run_block(uint3{x, y, z});
  memcheck_end_launch();
  g_active = false;
  if (L.failed) throw std::runtime_error(L.error);
}

void set_max_dynamic_smem(const void* kernel, const char* pretty, size_t bytes) {
  std::lock_guard<std::mutex> lock(g_mutex);
  const size_t static_smem = kernel_info(kernel).static_smem;
  if (bytes + static_smem > kOptinSmem)
    throw std::runtime_error("fastcl.sim: launch out of limits: kernel " + kernel_name(pretty) + ": " +
                             "set_max_dynamic_smem(" + std::to_string(bytes) + ")" +
                             (static_smem ? " plus " + std::to_string(static_smem) + " bytes of static shared memory" : "") +
                             " is more than the device's opt-in maximum of " + std::to_string(kOptinSmem));
  g_smem_limit[kernel] = bytes;
}

int max_active_blocks_per_sm(const void* kernel, int threads, size_t dynamic_smem) {
  const DeviceProperties* p = device_properties();
  size_t static_smem;
  {
    std::lock_guard<std::mutex> lock(g_mutex);
    static_smem = kernel_info(kernel).static_smem;
  }
  const size_t smem = dynamic_smem + static_smem;
  if (threads <= 0 || threads > p->maxThreadsPerBlock || smem > p->sharedMemPerBlockOptin) return 0;
  const int warps = (threads + 31) / 32;
  int by_threads = p->maxThreadsPerMultiProcessor / (warps * 32);
  const size_t per_block = smem + p->reservedSharedMemPerBlock;
  int by_smem = static_cast<int>(p->sharedMemPerMultiprocessor / per_block);
  return std::max(0, std::min({by_threads, by_smem, p->maxBlocksPerMultiProcessor}));
}

void* dynamic_smem(size_t align) {
  FromKernel guard;
  require_fiber("dynamic_smem()");
  return dyn_smem_base(align);
}

void trap(Site site) {
  g_active = false;
  require_fiber("__trap()");
  fail("__trap", L.tid, "__trap() called at " + site_str(site));
  std::abort();  // not reached: fail() leaves the fiber
}

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

void set_schedule(uint64_t seed) { detail::g_seed = seed; }

const DeviceProperties* device_properties() {
  static const DeviceProperties p = [] {
    DeviceProperties d{};
    d.name = "NVIDIA H200 (fastcl.sim)";
    d.major = 9;
    d.minor = 0;
    d.multiProcessorCount = 132;
    d.maxThreadsPerBlock = 1024;
    d.maxThreadsDim[0] = 1024;
    d.maxThreadsDim[1] = 1024;
    d.maxThreadsDim[2] = 64;
    d.maxGridSize[0] = 2147483647;
    d.maxGridSize[1] = 65535;
    d.maxGridSize[2] = 65535;
    d.warpSize = 32;
    d.sharedMemPerBlock = detail::kDefaultSmem;
    d.sharedMemPerBlockOptin = detail::kOptinSmem;
    d.sharedMemPerMultiprocessor = 233472;
    d.reservedSharedMemPerBlock = 1024;
    d.maxThreadsPerMultiProcessor = 2048;
    d.maxBlocksPerMultiProcessor = 32;
    d.regsPerBlock = 65536;
    d.regsPerMultiprocessor = 65536;
    d.totalGlobalMem = size_t(141) << 30;
    return d;
  }();
  return &p;
}

}  // namespace sim
}  // namespace fastcl

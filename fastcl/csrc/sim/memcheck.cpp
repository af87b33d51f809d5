// Memory checks: where a kernel's access lands. The kernel's translation unit is compiled with
// -fsanitize=thread but linked without libtsan, so every load and store it makes reaches
// check_access (through tsan.cpp's entry points) with its address. Each access is classified:
// the thread's own fiber stack (ignored), the block's dynamic shared buffer (bounds, then the
// shadow checks of shadow.cpp), the kernel module's thread-local block, which holds the
// `static thread_local` arrays __shared__ expands to (per-symbol bounds from the module's symbol
// table, then the shadow checks), g_cur, registered global ranges, the module's read-only data,
// and anything else, which is out of bounds. Also the per-launch layout of those ranges, the
// dynamic shared buffer and the registry of global ranges. Compiled without instrumentation.
#include <sys/mman.h>

#include <cstring>
#include <stdexcept>
#include <vector>

#include "memcheck.h"

extern "C" void* __tls_get_addr(void*);  // glibc's; forces this thread's block of a module to exist

namespace fastcl {
namespace sim {
namespace detail {

Hot g_hot;
pthread_t g_launch_thread;

namespace {

LaunchState& L = g_launch;

constexpr size_t kRedzone = 64 * 1024;
uint8_t* g_map = nullptr;
size_t g_map_bytes = 0;
bool g_global_check = true;

struct Range {
  uintptr_t lo, hi;
  std::string name;
};
std::vector<Range> g_globals;
size_t g_last_hit = 0;

const KernelInfo* g_kernel = nullptr;
// Per byte of the module's TLS segment: the index of the TLS symbol there, or -1 (padding).
std::vector<int32_t> g_tls_sym;
size_t g_dyn_align = 0;     // the alignment the dynamic base honours now (0: none asked yet)
bool g_dyn_touched = false;  // a dynamic shared byte was accessed in this launch: no re-basing

std::string static_name(size_t off) {
  const int32_t s = off < g_tls_sym.size() ? g_tls_sym[off] : -1;
  if (s < 0) return "";
  const TlsSymbol& t = g_kernel->mod->tls[s];
  std::string out = "'" + t.name + "'";
  if (off != t.lo) out += " + " + std::to_string(off - t.lo);
  return out;
}

void check_global(uintptr_t a, size_t n, Access k, int tid, const Origin& o) {
  if (g_last_hit < g_globals.size()) {
    const Range& r = g_globals[g_last_hit];
    if (a >= r.lo && a + n <= r.hi) return;
  }
  for (size_t i = 0; i < g_globals.size(); ++i) {
    const Range& r = g_globals[i];
    if (a >= r.lo && a + n <= r.hi) {
      g_last_hit = i;
      return;
    }
    if (a < r.hi && a + n > r.lo && g_global_check)
      fail("global out of bounds", tid,
           access_str(k, n) + " at " + hex(a) + " runs past '" + r.name + "' (" + std::to_string(r.hi - r.lo) +
               " bytes at " + hex(r.lo) + "; the access starts at its offset " +
               std::to_string(static_cast<long long>(a - r.lo)) + ")" + at(o));
  }
  for (const auto& ro : g_kernel->mod->ro)
    if (a >= ro.first && a + n <= ro.second) {
      if (k == Access::Read) return;
      fail("write to read-only memory", tid, access_str(k, n) + " at " + hex(a) + " in the module's read-only data" + at(o));
    }
  if (!g_global_check) return;
  std::string what;
  for (int t = 0; t < L.nthreads; ++t)
    if (a - reinterpret_cast<uintptr_t>(g_threads[t].stack) < g_threads[t].stack_size)
      what = ", the local memory of " + thr(t);
  if (what.empty()) {
    const Range* best = nullptr;
    uintptr_t dist = ~uintptr_t(0);
    for (const Range& r : g_globals) {
      const uintptr_t d = a >= r.hi ? a - r.hi : r.lo - (a + n);
      if (d < dist) dist = d, best = &r;
    }
    if (best)
      what = ", offset " + std::to_string(static_cast<long long>(a - best->lo)) + " of '" + best->name + "' (" +
             std::to_string(best->hi - best->lo) + " bytes at " + hex(best->lo) + "), " + std::to_string(dist) +
             " bytes " + (a >= best->hi ? "past its end" : "before its start");
  }
  fail("global out of bounds", tid,
       access_str(k, n) + " at " + hex(a) + ", outside every registered buffer" + what + at(o));
}

// Why a static shared access is out of bounds: it starts in padding between arrays, in a
// library's thread-local, or runs past the end of the array it starts in.
std::string static_oob_str(size_t off, size_t n) {
  const int32_t s = g_tls_sym[off];
  const auto& tls = g_kernel->mod->tls;
  const std::string at_off = "offset " + std::to_string(off) + " in the module's shared block";
  if (s >= 0 && tls[s].library)
    return "in '" + tls[s].name + "' (" + at_off + "), a thread-local of library code, not a __shared__ array";
  if (s >= 0 && !g_kernel->usable[s])
    return "in '" + tls[s].name + "' (" + at_off + "), a __shared__ array of another kernel";
  if (s >= 0)
    return "static shared " + static_name(off) + " (" + at_off + "), runs past the end of '" + tls[s].name + "' (" +
           std::to_string(tls[s].size) + " bytes) by " + std::to_string(off + n - tls[s].lo - tls[s].size) + " bytes";
  // In padding: name the array that ends below it.
  const TlsSymbol* below = nullptr;
  for (const TlsSymbol& t : tls)
    if (t.lo + t.size <= off) below = &t;
  std::string what = "static shared " + at_off + ", outside every __shared__ array";
  if (below) what += " (" + std::to_string(off - below->lo - below->size) + " bytes past the end of '" + below->name + "', " + std::to_string(below->size) + " bytes)";
  return what;
}

}  // namespace

std::string region_str(bool dyn, size_t off) {
  if (dyn) return hex(g_hot.dyn_lo + off) + " (dynamic shared offset " + std::to_string(off) + ")";
  const std::string sym = static_name(off);
  return hex(g_hot.tls_lo + off) + " (static shared " + (sym.empty() ? "" : sym + ", ") + "offset " +
         std::to_string(off) + " in the module's shared block)";
}

void check_access(uintptr_t a, size_t n, Access k, int tid, const Origin& o, bool scalar) {
  const SimThread& th = g_threads[tid];
  if (a - reinterpret_cast<uintptr_t>(th.stack) < th.stack_size) return;
  if (a - g_hot.map_lo < g_hot.map_size) {
    if (a >= g_hot.dyn_lo && a + n <= g_hot.dyn_lo + g_hot.dyn_size) {
      g_dyn_touched = true;
      shadow(true, a - g_hot.dyn_lo, n, k, tid, o, scalar);
      return;
    }
    fail("shared out of bounds", tid,
         access_str(k, n) + " at " + hex(a) + ", dynamic shared offset " +
             std::to_string(static_cast<long long>(a - g_hot.dyn_lo)) + ", outside the launch's " +
             std::to_string(g_hot.dyn_size) + " bytes of dynamic shared memory" + at(o));
    return;
  }
  if (a - g_hot.tls_lo < g_hot.tls_size) {
    const size_t off = a - g_hot.tls_lo;
    const int32_t s = g_tls_sym[off];
    if (s >= 0) {
      const TlsSymbol& t = g_kernel->mod->tls[s];
      if (g_kernel->usable[s] && off + n <= t.lo + t.size) {
        shadow(false, off, n, k, tid, o, scalar);
        return;
      }
    }
    fail("shared out of bounds", tid, access_str(k, n) + " at " + hex(a) + ", " + static_oob_str(off, n) + at(o));
    return;
  }
  if (a - g_hot.cur_lo < g_hot.cur_size) return;
  check_global(a, n, k, tid, o);
}

void check_libc_call(void* dst, const void* src, size_t n, const void* pc) {
  // g_active is process-wide: another OS thread's memcpy is not the kernel's.
  if (!n || !pthread_equal(pthread_self(), g_launch_thread)) return;
  g_active = false;
  const char* what = src ? "memcpy/memmove" : "memset";
  if (src) check_access(reinterpret_cast<uintptr_t>(src), n, Access::Read, L.tid, Origin{pc, Site{nullptr, 0}, what}, false);
  check_access(reinterpret_cast<uintptr_t>(dst), n, Access::Write, L.tid, Origin{pc, Site{nullptr, 0}, what}, false);
  g_active = true;
}

bool in_shared_window(uintptr_t a) { return a - g_hot.map_lo < g_hot.map_size || a - g_hot.tls_lo < g_hot.tls_size; }

void memcheck_begin_launch(const KernelInfo& kernel, size_t dynamic_smem) {
  g_launch_thread = pthread_self();
  g_kernel = &kernel;
  const KernelModule& mod = *kernel.mod;
  g_hot = Hot{};
  if (mod.tls_size) {
    struct {
      unsigned long mod, off;
    } ti{mod.tls_modid, 0};
    g_hot.tls_lo = reinterpret_cast<uintptr_t>(__tls_get_addr(&ti));
    g_hot.tls_size = mod.tls_size;
  }
  g_tls_sym.assign(g_hot.tls_size, -1);
  for (size_t i = 0; i < mod.tls.size(); ++i)
    for (size_t b = mod.tls[i].lo; b < mod.tls[i].lo + mod.tls[i].size && b < g_hot.tls_size; ++b)
      g_tls_sym[b] = static_cast<int32_t>(i);
  if (!g_map) {
    g_map_bytes = 2 * kRedzone + ((kOptinSmem + 4095) & ~size_t(4095));
    void* m = mmap(nullptr, g_map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("fastcl.sim: cannot map the shared-memory buffer");
    g_map = static_cast<uint8_t*>(m);
  }
  g_hot.map_lo = reinterpret_cast<uintptr_t>(g_map);
  g_hot.map_size = g_map_bytes;
  g_hot.dyn_lo = g_hot.map_lo + kRedzone;  // until the kernel declares its alignment (dyn_smem_base)
  g_hot.dyn_size = dynamic_smem;
  g_dyn_align = 0;
  g_dyn_touched = false;
  g_hot.cur_lo = reinterpret_cast<uintptr_t>(&g_cur);
  g_hot.cur_size = sizeof g_cur;
  shadow_begin_launch(dynamic_smem, g_hot.tls_size);
}

void memcheck_begin_block() {
  std::memset(reinterpret_cast<void*>(g_hot.dyn_lo), 0xFF, g_hot.dyn_size);
  shadow_begin_block();
}

void memcheck_end_launch() {
  g_hot.stack_lo = g_hot.stack_size = 0;
  g_hot.map_size = g_hot.tls_size = g_hot.cur_size = 0;
}

void memcheck_set_thread(int tid) {
  g_hot.stack_lo = reinterpret_cast<uintptr_t>(g_threads[tid].stack);
  g_hot.stack_size = g_threads[tid].stack_size;
}

// On the GPU the dynamic buffer starts after the static arrays, aligned only as declared. So the
// base sits an odd multiple of the declared alignment past a larger one: an access that needs
// more alignment than was declared faults here too. A larger alignment declared later (a second
// FASTCL_EXTERN_SHARED) moves the base while no dynamic byte has been touched in this launch.
uint8_t* dyn_smem_base(size_t align) {
  if (align < 1 || (align & (align - 1)) || align > 4096) align = 16;
  if (align > g_dyn_align && !g_dyn_touched) {
    g_dyn_align = align;
    const uintptr_t twice = 2 * align;
    g_hot.dyn_lo = ((g_hot.map_lo + kRedzone + twice - 1) & ~(twice - 1)) + align;
    std::memset(reinterpret_cast<void*>(g_hot.dyn_lo), 0xFF, g_hot.dyn_size);  // as at the block start
  }
  return reinterpret_cast<uint8_t*>(g_hot.dyn_lo);
}

}  // namespace detail

// ---- registry -----------------------------------------------------------------------------------

void register_global(const void* p, size_t bytes, const char* what) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  detail::g_globals.push_back({a, a + bytes, what ? what : "?"});
}
void unregister_global(const void* p) {
  auto& g = detail::g_globals;
  for (size_t i = g.size(); i-- > 0;)
    if (g[i].lo == reinterpret_cast<uintptr_t>(p)) g.erase(g.begin() + static_cast<long>(i));
}
void clear_globals() { detail::g_globals.clear(); }
GlobalScope::GlobalScope() : mark_(detail::g_globals.size()) {}
GlobalScope::~GlobalScope() {
  if (detail::g_globals.size() > mark_) detail::g_globals.resize(mark_);
}
void set_global_check(bool on) { detail::g_global_check = on; }

}  // namespace sim
}  // namespace fastcl

// Memory checks. The kernel's translation unit is compiled with -fsanitize=thread but linked
// without libtsan: every load and store it makes calls one of the __tsan_* functions defined
// here with its address. While a simulated thread runs kernel code (g_active), each access is
// classified: the thread's own fiber stack (ignored), the block's dynamic shared buffer (bounds
// and shadow), the kernel module's thread-local block, which holds the `static thread_local`
// arrays __shared__ expands to (shadow), registered global ranges, the module's read-only data,
// and anything else, which is out of bounds. Static shared accesses must stay inside one
// __shared__ array (per-symbol bounds from the module's symbol table). Shared bytes carry a
// shadow cell for the uninitialised-read and race checks.
#include <pthread.h>
#include <sys/mman.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include "state.h"

extern "C" void* __tls_get_addr(void*);  // glibc's; forces this thread's block of a module to exist

namespace fastcl {
namespace sim {
namespace detail {

bool g_active = false;

namespace {

LaunchState& L = g_launch;

// Per shared byte. Epochs number the block's barrier intervals (global, so a block's first
// epoch tells "written since block start"); seq numbers a warp's completed collectives.
struct Cell {
  uint32_t w_epoch, w_seq;  // last write
  uint32_t r_epoch, r_seq;  // reads in r_epoch (r_seq: the warp seq of every r_lanes read, if r_ext == 0)
  uint32_t r_lanes;         // lanes of warp r_warp that read in r_epoch
  uint32_t r_ext;           // 1 + index in g_lane_seqs when r_lanes read at different seqs, else 0
  uint16_t w_tid, r_tid, r_other, p_tid;  // writer, a reader in r_warp, a reader outside it, cp.async issuer
  uint16_t pending;                       // cp.async copies in flight to this byte
  uint8_t r_warp, flags;
};
enum : uint8_t { kMultiWarp = 1, kAtomicWrite = 2 };
// Each reader lane's latest read seq, for cells whose readers read at different seqs: a single
// seq per cell would make an older lane's read look as recent as the latest one, unordered by a
// __syncwarp in between. Only read records of the current epoch are consulted, so the pool is
// emptied at every barrier.
struct LaneSeqs {
  uint32_t seq[32];
};
std::vector<LaneSeqs> g_lane_seqs;

// Ranges the fast path tests, as (lo, size) so one unsigned compare tests membership.
struct Hot {
  uintptr_t stack_lo = 0, stack_size = 0;  // the running fiber's stack
  uintptr_t map_lo = 0, map_size = 0;      // dynamic shared buffer with its redzones
  uintptr_t dyn_lo = 0, dyn_size = 0;      // the launched dynamic shared bytes
  uintptr_t tls_lo = 0, tls_size = 0;      // kernel module's TLS block (static shared)
  uintptr_t cur_lo = 0, cur_size = 0;      // g_cur (threadIdx & co)
} H;

constexpr size_t kRedzone = 64 * 1024;
uint8_t* g_map = nullptr;
size_t g_map_bytes = 0;
std::vector<Cell> g_dyn_cells, g_tls_cells;
uint32_t g_epoch = 0, g_block_epoch0 = 0;
bool g_global_check = true, g_race_check = true;
pthread_t g_launch_thread;

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

std::string access_str(Access k, size_t n) {
  const char* v = k == Access::Read ? "read" : k == Access::Write ? "write" : "atomic";
  return std::string(v) + " of " + std::to_string(n) + (n == 1 ? " byte" : " bytes");
}

std::string at(const Origin& o) {
  std::string s;
  if (o.pc) s = " at " + describe_pc(o.pc);
  else if (o.site.file) s = " at " + site_str(o.site);
  if (o.note) s += std::string(" (") + o.note + ")";
  return s;
}

std::string hex(uintptr_t a) {
  char b[32];
  std::snprintf(b, sizeof b, "0x%lx", static_cast<unsigned long>(a));
  return b;
}

std::string region_str(bool dyn, size_t off) {
  if (dyn) return hex(H.dyn_lo + off) + " (dynamic shared offset " + std::to_string(off) + ")";
  const std::string sym = static_name(off);
  return hex(H.tls_lo + off) + " (static shared " + (sym.empty() ? "" : sym + ", ") + "offset " +
         std::to_string(off) + " in the module's shared block)";
}

std::string thr(int t) {
  return "thread " + thread_str(t) + " [warp " + std::to_string(t >> 5) + " lane " + std::to_string(t & 31) + "]";
}

bool ordered(int prev, uint32_t prev_seq, int tid) {
  if ((prev >> 5) != (tid >> 5)) return false;
  return L.warps[tid >> 5].common[prev & 31][tid & 31] > prev_seq;
}

void race(const char* kind, int tid, int other, Access k, size_t n, bool dyn, size_t off, const Origin& o,
          const char* other_did) {
  const bool same_warp = (other >> 5) == (tid >> 5);
  fail("shared memory race", tid,
       std::string("(") + kind + ") " + (k == Access::Read ? "reads " : "writes ") + std::to_string(n) + " bytes at " +
           region_str(dyn, off) + at(o) + "; " + thr(other) + " " + other_did +
           " byte since the last __syncthreads" +
           (same_warp ? ", with no __syncwarp of both lanes in between" : ""));
}

// record = false: only the race checks, as for a cp.async at its issue (its data may land at
// any moment from then on, so it conflicts with unordered accesses made before the issue too).
void shadow(Cell* cells, size_t off, size_t n, Access k, int tid, const Origin& o, bool scalar, bool dyn,
            bool record = true) {
  const uint32_t E = g_epoch;
  const int w = tid >> 5, lane = tid & 31;
  const uint32_t seq = L.warps[w].seq;
  // A cp.async into these bytes that its issuer has not waited for: the data may land at any
  // moment (first, as it also explains what an uninitialised read would report).
  for (size_t i = 0; g_race_check && i < n; ++i)
    if (cells[off + i].pending)
      fail("shared memory race", tid,
           access_str(k, n) + " at " + region_str(dyn, off) + at(o) + " while a cp.async to byte " +
               std::to_string(off + i) + " issued by " + thr(cells[off + i].p_tid) +
               " is still in flight (not yet retired by cp_async_wait_group)");
  if (k != Access::Write && record) {
    size_t unwritten = 0;
    for (size_t i = 0; i < n; ++i) unwritten += cells[off + i].w_epoch < g_block_epoch0;
    if (unwritten && (scalar || unwritten == n))
      fail("uninitialised shared read", tid,
           access_str(k, n) + " at " + region_str(dyn, off) + at(o) + ": " +
               (unwritten == n ? "no thread of this block has written it" : "part of it was never written") +
               " since the block started");
  }
  for (size_t i = 0; i < n; ++i) {
    Cell& c = cells[off + i];
    if (g_race_check) {
      const bool both_atomic = k == Access::Atomic && (c.flags & kAtomicWrite);
      if (c.w_epoch == E && c.w_tid != tid && !both_atomic && !ordered(c.w_tid, c.w_seq, tid))
        race(k == Access::Read ? "read-after-write" : "write-after-write", tid, c.w_tid, k, n, dyn, off + i, o,
             "wrote this");
      if (k != Access::Read && c.r_epoch == E) {
        int other = -1;
        if (c.r_warp != w) other = c.r_tid;
        else if (c.flags & kMultiWarp) other = c.r_other;
        else
          for (unsigned m = c.r_lanes & ~(1u << lane); m; m &= m - 1) {
            const int u = __builtin_ctz(m);
            const uint32_t read_seq = c.r_ext ? g_lane_seqs[c.r_ext - 1].seq[u] : c.r_seq;
            if (L.warps[w].common[u][lane] <= read_seq) {
              other = w * 32 + u;
              break;
            }
          }
        if (other >= 0) race("write-after-read", tid, other, k, n, dyn, off + i, o, "read this");
      }
    }
    if (!record) continue;
    if (k == Access::Read) {
      if (c.r_epoch != E) {
        c.r_epoch = E;
        c.r_warp = static_cast<uint8_t>(w);
        c.r_lanes = 1u << lane;
        c.r_tid = static_cast<uint16_t>(tid);
        c.r_seq = seq;
        c.r_ext = 0;
        c.flags &= ~kMultiWarp;
      } else if (c.r_warp == w) {
        if (c.r_ext) {
          g_lane_seqs[c.r_ext - 1].seq[lane] = seq;
        } else if (c.r_seq != seq && (c.r_lanes & ~(1u << lane))) {
          // Readers at different seqs: keep one seq per lane from now on.
          LaneSeqs ls{};
          for (unsigned m = c.r_lanes; m; m &= m - 1) ls.seq[__builtin_ctz(m)] = c.r_seq;
          ls.seq[lane] = seq;
          g_lane_seqs.push_back(ls);
          c.r_ext = static_cast<uint32_t>(g_lane_seqs.size());
        } else {
          c.r_seq = seq;
        }
        c.r_lanes |= 1u << lane;
        c.r_tid = static_cast<uint16_t>(tid);
      } else {
        c.flags |= kMultiWarp;  // any later write by another thread is then a race
        c.r_other = static_cast<uint16_t>(tid);
      }
    } else {
      c.w_epoch = E;
      c.w_seq = seq;
      c.w_tid = static_cast<uint16_t>(tid);
      c.flags = static_cast<uint8_t>((c.flags & ~kAtomicWrite) | (k == Access::Atomic ? kAtomicWrite : 0));
      c.r_epoch = 0;
    }
  }
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

// The slow path of a kernel access (not on the thread's own stack).
__attribute__((noinline)) void slow_hook(uintptr_t a, size_t n, Access k, bool aligned, bool scalar, const void* pc) {
  // g_active is process-wide: instrumented code that another OS thread runs meanwhile is not
  // the simulated kernel.
  if (!pthread_equal(pthread_self(), g_launch_thread)) return;
  g_active = false;
  const int tid = L.tid;
  if (aligned && n > 1 && (a & (n - 1)))
    fail("misaligned address", tid, access_str(k, n) + " at " + hex(a) + ", not a multiple of " + std::to_string(n) + at(Origin{pc}));
  check_access(a, n, k, tid, Origin{pc}, scalar);
  g_active = true;
}

inline void hook(void* p, size_t n, Access k, bool aligned, bool scalar, const void* pc) {
  const uintptr_t a = reinterpret_cast<uintptr_t>(p);
  if (a - H.stack_lo < H.stack_size) return;
  slow_hook(a, n, k, aligned, scalar, pc);
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

void check_access(uintptr_t a, size_t n, Access k, int tid, const Origin& o, bool scalar) {
  const SimThread& th = g_threads[tid];
  if (a - reinterpret_cast<uintptr_t>(th.stack) < th.stack_size) return;
  if (a - H.map_lo < H.map_size) {
    if (a >= H.dyn_lo && a + n <= H.dyn_lo + H.dyn_size) {
      g_dyn_touched = true;
      shadow(g_dyn_cells.data(), a - H.dyn_lo, n, k, tid, o, scalar, true);
      return;
    }
    fail("shared out of bounds", tid,
         access_str(k, n) + " at " + hex(a) + ", dynamic shared offset " +
             std::to_string(static_cast<long long>(a - H.dyn_lo)) + ", outside the launch's " +
             std::to_string(H.dyn_size) + " bytes of dynamic shared memory" + at(o));
    return;
  }
  if (a - H.tls_lo < H.tls_size) {
    const size_t off = a - H.tls_lo;
    const int32_t s = g_tls_sym[off];
    if (s >= 0) {
      const TlsSymbol& t = g_kernel->mod->tls[s];
      if (g_kernel->usable[s] && off + n <= t.lo + t.size) {
        shadow(g_tls_cells.data(), off, n, k, tid, o, scalar, false);
        return;
      }
    }
    fail("shared out of bounds", tid, access_str(k, n) + " at " + hex(a) + ", " + static_oob_str(off, n) + at(o));
    return;
  }
  if (a - H.cur_lo < H.cur_size) return;
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

void precheck_async_write(uintptr_t a, size_t n, int tid, const Origin& o) {
  if (a >= H.dyn_lo && a + n <= H.dyn_lo + H.dyn_size)
    shadow(g_dyn_cells.data(), a - H.dyn_lo, n, Access::Write, tid, o, true, true, false);
  else if (a >= H.tls_lo && a + n <= H.tls_lo + H.tls_size)
    shadow(g_tls_cells.data(), a - H.tls_lo, n, Access::Write, tid, o, true, false, false);
}

bool in_shared_window(uintptr_t a) { return a - H.map_lo < H.map_size || a - H.tls_lo < H.tls_size; }

bool mark_pending(uintptr_t a, size_t n, int delta) {
  Cell* cells = nullptr;
  if (a >= H.dyn_lo && a + n <= H.dyn_lo + H.dyn_size) cells = g_dyn_cells.data() + (a - H.dyn_lo);
  else if (a >= H.tls_lo && a + n <= H.tls_lo + H.tls_size) cells = g_tls_cells.data() + (a - H.tls_lo);
  if (!cells) return false;
  for (size_t i = 0; i < n; ++i) {
    cells[i].pending = static_cast<uint16_t>(cells[i].pending + delta);
    cells[i].p_tid = static_cast<uint16_t>(L.tid);
  }
  return true;
}

void memcheck_begin_launch(const KernelInfo& kernel, size_t dynamic_smem) {
  g_launch_thread = pthread_self();
  g_kernel = &kernel;
  const KernelModule& mod = *kernel.mod;
  H = Hot{};
  if (mod.tls_size) {
    struct {
      unsigned long mod, off;
    } ti{mod.tls_modid, 0};
    H.tls_lo = reinterpret_cast<uintptr_t>(__tls_get_addr(&ti));
    H.tls_size = mod.tls_size;
  }
  g_tls_sym.assign(H.tls_size, -1);
  for (size_t i = 0; i < mod.tls.size(); ++i)
    for (size_t b = mod.tls[i].lo; b < mod.tls[i].lo + mod.tls[i].size && b < H.tls_size; ++b)
      g_tls_sym[b] = static_cast<int32_t>(i);
  if (!g_map) {
    g_map_bytes = 2 * kRedzone + ((kOptinSmem + 4095) & ~size_t(4095));
    void* m = mmap(nullptr, g_map_bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("fastcl.sim: cannot map the shared-memory buffer");
    g_map = static_cast<uint8_t*>(m);
  }
  H.map_lo = reinterpret_cast<uintptr_t>(g_map);
  H.map_size = g_map_bytes;
  H.dyn_lo = H.map_lo + kRedzone;  // until the kernel declares its alignment (dyn_smem_base)
  H.dyn_size = dynamic_smem;
  g_dyn_align = 0;
  g_dyn_touched = false;
  H.cur_lo = reinterpret_cast<uintptr_t>(&g_cur);
  H.cur_size = sizeof g_cur;
  g_dyn_cells.assign(dynamic_smem, Cell{});
  g_tls_cells.assign(H.tls_size, Cell{});
}

void memcheck_begin_block() {
  std::memset(reinterpret_cast<void*>(H.dyn_lo), 0xFF, H.dyn_size);
  g_block_epoch0 = ++g_epoch;
  g_lane_seqs.clear();
}

void memcheck_end_launch() {
  H.stack_lo = H.stack_size = 0;
  H.map_size = H.tls_size = H.cur_size = 0;
}

void memcheck_set_thread(int tid) {
  H.stack_lo = reinterpret_cast<uintptr_t>(g_threads[tid].stack);
  H.stack_size = g_threads[tid].stack_size;
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
    H.dyn_lo = ((H.map_lo + kRedzone + twice - 1) & ~(twice - 1)) + align;
    std::memset(reinterpret_cast<void*>(H.dyn_lo), 0xFF, H.dyn_size);  // as at the block start
  }
  return reinterpret_cast<uint8_t*>(H.dyn_lo);
}

void memcheck_barrier() {
  ++g_epoch;
  g_lane_seqs.clear();  // every read record now belongs to a past epoch
}

void memcheck_warp_sync(int warp, unsigned lanes) {
  WarpState& ws = L.warps[warp];
  const uint32_t s = ++ws.seq;
  for (unsigned a = lanes; a; a &= a - 1)
    for (unsigned b = lanes; b; b &= b - 1) ws.common[__builtin_ctz(a)][__builtin_ctz(b)] = s;
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
void set_race_check(bool on) { detail::g_race_check = on; }

}  // namespace sim
}  // namespace fastcl

// ---- ThreadSanitizer entry points -------------------------------------------------------------
// Hidden, so the instrumented code of this module binds to these directly.
using fastcl::sim::detail::Access;
using fastcl::sim::detail::g_active;
#define FASTCL_TSAN extern "C" __attribute__((visibility("hidden")))
#define FASTCL_RA __builtin_return_address(0)

FASTCL_TSAN void __tsan_init() {}
FASTCL_TSAN void __tsan_func_entry(void*) {}
FASTCL_TSAN void __tsan_func_exit() {}
FASTCL_TSAN void __tsan_vptr_update(void**, void*) {}
FASTCL_TSAN void __tsan_vptr_read(void**) {}

#define FASTCL_TSAN_SIZED(N)                                                                       \
  FASTCL_TSAN void __tsan_read##N(void* p) {                                                       \
    if (g_active) fastcl::sim::detail::hook(p, N, Access::Read, true, true, FASTCL_RA);            \
  }                                                                                                \
  FASTCL_TSAN void __tsan_write##N(void* p) {                                                      \
    if (g_active) fastcl::sim::detail::hook(p, N, Access::Write, true, true, FASTCL_RA);           \
  }                                                                                                \
  FASTCL_TSAN void __tsan_unaligned_read##N(void* p) {                                             \
    if (g_active) fastcl::sim::detail::hook(p, N, Access::Read, false, true, FASTCL_RA);           \
  }                                                                                                \
  FASTCL_TSAN void __tsan_unaligned_write##N(void* p) {                                            \
    if (g_active) fastcl::sim::detail::hook(p, N, Access::Write, false, true, FASTCL_RA);          \
  }                                                                                                \
  FASTCL_TSAN void __tsan_volatile_read##N(void* p) {                                              \
    if (g_active) fastcl::sim::detail::hook(p, N, Access::Read, true, true, FASTCL_RA);            \
  }                                                                                                \
  FASTCL_TSAN void __tsan_volatile_write##N(void* p) {                                             \
    if (g_active) fastcl::sim::detail::hook(p, N, Access::Write, true, true, FASTCL_RA);           \
  }
FASTCL_TSAN_SIZED(1)
FASTCL_TSAN_SIZED(2)
FASTCL_TSAN_SIZED(4)
FASTCL_TSAN_SIZED(8)
FASTCL_TSAN_SIZED(16)

FASTCL_TSAN void __tsan_read_range(void* p, unsigned long n) {
  if (g_active && n) fastcl::sim::detail::hook(p, n, Access::Read, false, false, FASTCL_RA);
}
FASTCL_TSAN void __tsan_write_range(void* p, unsigned long n) {
  if (g_active && n) fastcl::sim::detail::hook(p, n, Access::Write, false, false, FASTCL_RA);
}

// Atomics in instrumented host code (std::atomic in library headers) must still be atomic.
// Every order is served as seq_cst, which is always valid.
#define FASTCL_TSAN_ATOMIC(N, T)                                                                           \
  FASTCL_TSAN T __tsan_atomic##N##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  FASTCL_TSAN void __tsan_atomic##N##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  FASTCL_TSAN T __tsan_atomic##N##_exchange(volatile T* a, T v, int) {                                     \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                        \
  FASTCL_TSAN T __tsan_atomic##N##_fetch_add(volatile T* a, T v, int) { return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST); } \
  FASTCL_TSAN T __tsan_atomic##N##_fetch_sub(volatile T* a, T v, int) { return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST); } \
  FASTCL_TSAN T __tsan_atomic##N##_fetch_and(volatile T* a, T v, int) { return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST); } \
  FASTCL_TSAN T __tsan_atomic##N##_fetch_or(volatile T* a, T v, int) { return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST); }   \
  FASTCL_TSAN T __tsan_atomic##N##_fetch_xor(volatile T* a, T v, int) { return __atomic_fetch_xor(a, v, __ATOMIC_SEQ_CST); } \
  FASTCL_TSAN T __tsan_atomic##N##_fetch_nand(volatile T* a, T v, int) {                                   \
    return __atomic_fetch_nand(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                        \
  FASTCL_TSAN int __tsan_atomic##N##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {          \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                 \
  }                                                                                                        \
  FASTCL_TSAN int __tsan_atomic##N##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {            \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                 \
  }                                                                                                        \
  FASTCL_TSAN T __tsan_atomic##N##_compare_exchange_val(volatile T* a, T c, T v, int, int) {                \
    __atomic_compare_exchange_n(a, &c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                       \
    return c;                                                                                              \
  }
FASTCL_TSAN_ATOMIC(8, char)
FASTCL_TSAN_ATOMIC(16, short)
FASTCL_TSAN_ATOMIC(32, int)
FASTCL_TSAN_ATOMIC(64, long long)
FASTCL_TSAN void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
FASTCL_TSAN void __tsan_atomic_signal_fence(int) { __atomic_signal_fence(__ATOMIC_SEQ_CST); }

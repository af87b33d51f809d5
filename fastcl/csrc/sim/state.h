// The runtime's private state and the declarations its files share: launch.cpp (launches,
// limits), scheduler.cpp (fibers), barrier.cpp (__syncthreads), collectives.cpp (warp
// collectives), wmma.cpp, mma.cpp (ldmatrix, mma.sync), cp_async.cpp, atomics.cpp, messages.cpp
// (error reporting), module.cpp (the kernel's symbols), memcheck.cpp, shadow.cpp and tsan.cpp
// (the memory checks, whose own internals are in memcheck.h) and libc_mem.cpp. Compiled only into uninstrumented code.
// Everything is a plain global: thread_local would land in the kernel module's TLS block, which
// the checks treat as static shared memory.
#pragma once
#include <ucontext.h>

#include <cstdint>
#include <string>
#include <vector>

#include "api.h"

namespace fastcl {
namespace sim {
namespace detail {

constexpr int kMaxThreads = 1024;
constexpr int kMaxWarps = kMaxThreads / 32;
constexpr size_t kOptinSmem = 232448;  // 227 KiB
constexpr size_t kDefaultSmem = 49152;

// True only while a simulated thread executes kernel code: the one flag the memory callbacks
// (tsan.cpp) test before anything else, so instrumented host code costs a call and a load.
extern bool g_active;

enum class TState : uint8_t { Runnable, Barrier, Warp, Exited };

struct CpCopy {
  void* dst;
  const void* src;
  int bytes, src_bytes;
  uint32_t group;
  Site site;
  bool pending_marked;  // the destination bytes carry a cp.async-in-flight mark
};

struct SimThread {
  ucontext_t ctx;
  char* stack = nullptr;  // mapping base (lowest address, a guard page), allocated once
  size_t stack_size = 0;
  TState state = TState::Exited;
  uint3 idx{};
  Site site{};                 // where it waits
  Coll coll = Coll::SyncWarp;  // which collective, when state == Warp
  int round = -1;              // index of its pending round in its warp
  uint64_t result = 0;         // barrier / collective result, set by whoever completes it
  std::vector<CpCopy> cp;      // cp.async copies not yet performed
  uint32_t cp_group = 0;       // commits so far = id of the open group
};

// One pending warp collective: the lanes of `mask` that arrived and what they deposited.
struct Round {
  bool used = false;
  Coll kind;
  unsigned mask, arrived;
  int width;
  Site site;
  int first_lane;
  uint64_t value[32];
  int operand[32];
  // wmma deposits
  FragUse use;
  Elem elem;
  const void* ptr;
  unsigned ldm;
  bool col_major;
  void* frag[32];
  const void* fa[32];
  const void* fb[32];
  const float* fc[32];
  // ldmatrix / mma.sync deposits (mma.cpp); frag, fa, fb and fc above hold mma's d, a, b, c
  int nmat;                // ldmatrix: matrices (1, 2 or 4)
  bool trans;
  const void* row[32];     // ldmatrix: the row address each lane supplies
  const void* pc[32];      // where each lane called from, for messages
};

struct WarpState {
  std::vector<Round> rounds;
  uint32_t seq = 0;           // completed collectives of this warp in this block
  uint32_t common[32][32];    // seq of the last collective both lanes took part in
  unsigned exists = 0;        // lanes that exist (a partial last warp has fewer)
};

struct BarrierState {
  int arrived = 0;
  int first = -1;
  Site site{};
  int op = 0;
  int64_t count = 0;
};

// What one launch is running.
struct LaunchState {
  LaunchSpec spec;
  std::string name;
  int nthreads = 0, nwarps = 0;
  uint3 block{};
  int live = 0, exited = 0, first_exited = -1;
  BarrierState bar;
  WarpState warps[kMaxWarps];
  bool failed = false;
  std::string error;
  ucontext_t sched_ctx;
  bool on_fiber = false;
  int tid = -1;  // the running simulated thread
  std::vector<int> order;  // this scheduling round's threads, and the next to consider
  size_t pos = 0;
  uint64_t rng = 0;
};
extern LaunchState g_launch;
extern SimThread g_threads[kMaxThreads];

// ---- the kernel's module (module.cpp) ------------------------------------------------------
// A TLS symbol of the module: a __shared__ array (function-static thread_local) or a
// thread-local of library code, which kernel code must not touch.
struct TlsSymbol {
  size_t lo, size;          // offset and size in the module's TLS segment
  std::string mangled, name;
  std::string kernel;       // the launched kernel it is nested in (a demangled-name prefix), or ""
  bool library;             // pybind11's, std's, torch's: never shared memory
};
struct KernelModule {
  std::string path;
  uintptr_t base = 0;
  size_t tls_modid = 0, tls_size = 0;
  std::vector<std::pair<uintptr_t, uintptr_t>> ro;  // [lo, hi): read-only segments and RELRO
  std::vector<TlsSymbol> tls;                       // sorted by offset, one per address
};
struct KernelInfo {
  const KernelModule* mod = nullptr;
  std::string mangled;        // the kernel's symbol; empty when the symbol table lacks it
  std::vector<uint8_t> own;     // per TLS symbol: 1 if it is a __shared__ variable of this kernel
  std::vector<uint8_t> usable;  // per TLS symbol: 1 if this kernel may use it as shared memory
  size_t static_smem = 0;     // bytes of those
};
// Cached per kernel address; the first call per module reads its symbol table.
const KernelInfo& kernel_info(const void* kernel);

// ---- memory checking (memcheck.cpp, shadow.cpp) ---------------------------------------------
enum class Access : uint8_t { Read, Write, Atomic };
// Where an access comes from, for messages: a return address into kernel code, or a source site.
struct Origin {
  const void* pc = nullptr;
  Site site{nullptr, 0};
  const char* note = nullptr;
};
// Checks one access of `n` bytes by simulated thread `tid`; reports (and stops) on an error.
// `scalar`: a 1/2/4/8/16-byte access whose every byte must have been written (range reads only
// fail when no byte was).
void check_access(uintptr_t a, size_t n, Access k, int tid, const Origin& o, bool scalar = true);
// The race checks of a write, without recording it: a cp.async at its issue (in-bounds shared only).
void precheck_async_write(uintptr_t a, size_t n, int tid, const Origin& o);
// Whether an address is in shared memory (dynamic, with its redzones, or static).
bool in_shared_window(uintptr_t a);
// Marks (+1) or clears (-1) the cp.async-in-flight state of shared bytes; false if not shared.
bool mark_pending(uintptr_t a, size_t n, int delta);

// Per launch / per block set-up.
void memcheck_begin_launch(const KernelInfo& kernel, size_t dynamic_smem);
void memcheck_begin_block();
void memcheck_end_launch();
void memcheck_set_thread(int tid);  // the running fiber's stack for the fast path
// The dynamic shared buffer, `align` (a power of two) aligned and deliberately not 2 * align.
uint8_t* dyn_smem_base(size_t align);
// memcpy/memmove/memset called by kernel code (libc_mem.cpp): src (if any) as a range read and
// dst as a range write of n bytes, on the launch thread while a kernel runs.
void check_libc_call(void* dst, const void* src, size_t n, const void* pc);
// The barrier epoch advances at block start and at every completed __syncthreads.
void memcheck_barrier();
// A completed warp collective: its lanes are ordered with each other from now on.
void memcheck_warp_sync(int warp, unsigned lanes);

// ---- messages (messages.cpp) -----------------------------------------------------------------
std::string thread_str(int tid);   // "(x,y,z)"
std::string thr(int tid);          // "thread (x,y,z) [warp w lane l]"
std::string lane_str(int tid);     // "lane l (thread (x,y,z))"
std::string where(int tid);        // "kernel K, block (..), thread (..) [warp w lane l]"
std::string mask_str(unsigned m);  // "0x0000ffff"
std::string site_str(const Site& s);
std::string describe_pc(const void* pc);  // "file:line (function)" via addr2line, or "pc 0x.."
const char* coll_name(Coll k);
std::string access_str(Access k, size_t n);  // "read of 4 bytes"
std::string at(const Origin& o);             // " at <pc or site> (<note>)", or ""
std::string hex(uintptr_t a);                // "0x7f..."
// Reports the first error and stops the launch; from a fiber it never returns.
void fail(const std::string& check, int tid, const std::string& detail);

// ---- scheduling (scheduler.cpp) --------------------------------------------------------------
extern uint64_t g_seed;      // set_schedule's seed; 0: threads run in index order
void ensure_stacks(int n);   // fiber stacks for threads [0, n), mapped once and reused
void run_block(uint3 b);     // runs every thread of block b to its end or to the first error
void yield_to_scheduler();   // the running thread has blocked; resume when it is runnable
void require_fiber(const char* what);

// Runtime entry points from kernel code clear g_active for their duration: their own memory
// traffic (and any instrumented inline code they share with the kernel's TU) is not checked.
struct FromKernel {
  bool prev;
  FromKernel() : prev(g_active) { g_active = false; }
  ~FromKernel() { g_active = prev; }
};

// ---- warp collectives (collectives.cpp, wmma.cpp) --------------------------------------------
// Joins (or opens) the calling lane's round for `mask`, after the divergence checks; returns the
// round's index in the warp.
int arrive(Coll kind, unsigned mask, int width, const Site& site);
// Parks the caller in round ri (completing it if it is the last lane) and returns its result.
uint64_t wait_round(int ri);
// Fails if a lane of tid's warp waits at a collective whose mask names tid: `doing` (exiting,
// reaching __syncthreads) means tid will not come.
void check_warp_waiters(int tid, const std::string& doing);
// The memory traffic or the product of a completed wmma round of warp w (wmma.cpp).
void do_wmma(Round& r, int w);
// The memory traffic or the product of a completed ldmatrix / mma.sync round (mma.cpp).
void do_mma(Round& r, int w);
// A launch of kernel `name` begins: its ldmatrix / mma.sync counters open a new "last launch"
// (mma.cpp).
void mma_begin_launch(const std::string& name);
// A b16 value (F16 or BF16) at p as a float (wmma.cpp).
float elem_to_float(Elem e, const void* p);

// cp.async copies still queued when a thread exits land then (cp_async.cpp).
void cp_async_flush(int tid);

}  // namespace detail
}  // namespace sim
}  // namespace fastcl

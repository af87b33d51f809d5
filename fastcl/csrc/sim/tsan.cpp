// The ThreadSanitizer entry points. The kernel's translation unit is compiled with
// -fsanitize=thread but linked without libtsan: every load and store it makes calls one of the
// __tsan_* functions defined here with its address. While a simulated thread runs kernel code
// (g_active), an access off the thread's own stack goes to check_access (memcheck.cpp), after
// the alignment check of an access the compiler emitted as aligned. The remaining entry points
// (function entry and exit, vptr updates, atomics of instrumented host code) do no checking.
// Compiled without instrumentation.
#include "memcheck.h"

namespace fastcl {
namespace sim {
namespace detail {

bool g_active = false;

namespace {

LaunchState& L = g_launch;

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
  if (a - g_hot.stack_lo < g_hot.stack_size) return;
  slow_hook(a, n, k, aligned, scalar, pc);
}

}  // namespace
}  // namespace detail
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

// memcpy, memmove and memset for the kernel's module. GCC's ThreadSanitizer pass instruments
// neither these calls nor std::copy of trivial types (which becomes memmove), so without this a
// kernel's memcpy into shared memory escapes every check and memset-initialised shared memory
// reads as uninitialised. Defined here, hidden, they bind every call the module makes (the
// link resolves them inside the module, before libc); other modules keep libc's.
// While a kernel runs on the launch thread, the source is checked as a range read and the
// destination as a range write; then libc's own function (found with dlsym(RTLD_NEXT), whose
// IFUNC picks the CPU's variant) does the work. Outside kernels the cost is one flag test and an
// indirect call, as host code calls these often.
// Not covered: calls with a constant size that g++ expands inline (rep stos, vector moves) after
// the instrumentation pass; -fno-builtin-memcpy/-memmove/-memset on the kernel build turns them
// into calls.
#include <dlfcn.h>

#include <cstdio>
#include <cstdlib>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace libc_mem {

using Copy = void* (*)(void*, const void*, size_t);
using Set = void* (*)(void*, int, size_t);

void* resolve(const char* name) {
  void* f = dlsym(RTLD_NEXT, name);
  if (!f) f = dlsym(RTLD_DEFAULT, name);  // not ours: ours is hidden, so never in the global scope
  if (!f) {
    std::fprintf(stderr, "fastcl.sim: cannot find libc's %s\n", name);
    std::abort();
  }
  return f;
}

Copy g_memcpy = nullptr, g_memmove = nullptr;
Set g_memset = nullptr;

template <typename F>
inline F real(F& slot, const char* name) {
  if (__builtin_expect(!slot, 0)) slot = reinterpret_cast<F>(resolve(name));
  return slot;
}

inline void check(void* dst, const void* src, size_t n, const void* pc) {
  if (__builtin_expect(g_active, 0)) check_libc_call(dst, src, n, pc);
}

}  // namespace libc_mem
}  // namespace detail
}  // namespace sim
}  // namespace fastcl

namespace lm = fastcl::sim::detail::libc_mem;
#define FASTCL_LIBC extern "C" __attribute__((visibility("hidden"), used))

FASTCL_LIBC void* fastcl_sim_memcpy(void* dst, const void* src, size_t n) {
  lm::check(dst, src, n, __builtin_return_address(0));
  return lm::real(lm::g_memcpy, "memcpy")(dst, src, n);
}

FASTCL_LIBC void* fastcl_sim_memmove(void* dst, const void* src, size_t n) {
  lm::check(dst, src, n, __builtin_return_address(0));
  return lm::real(lm::g_memmove, "memmove")(dst, src, n);
}

FASTCL_LIBC void* fastcl_sim_memset(void* dst, int c, size_t n) {
  lm::check(dst, nullptr, n, __builtin_return_address(0));
  return lm::real(lm::g_memset, "memset")(dst, c, n);
}

// The libc names as hidden aliases. A plain definition would inherit <cstring>'s default
// visibility, and a default-visibility memcpy in a shared object is looked up in the global
// scope first, where libc's wins.
#define FASTCL_LIBC_ALIAS(name) \
  ".globl " #name "\n\t.hidden " #name "\n\t.type " #name ", @function\n\t.set " #name ", fastcl_sim_" #name "\n\t"
asm(FASTCL_LIBC_ALIAS(memcpy) FASTCL_LIBC_ALIAS(memmove) FASTCL_LIBC_ALIAS(memset));

// Internals of the memory checks, shared by memcheck.cpp (where an access lands: the launch's
// memory layout, bounds, registered global ranges), shadow.cpp (the shadow cells of shared
// bytes: uninitialised reads, races, cp.async in flight) and tsan.cpp (the entry points that
// instrumented code calls). The rest of the runtime uses the interface in state.h.
#pragma once
#include <pthread.h>

#include <cstdint>
#include <string>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {

// Ranges the fast path tests, as (lo, size) so one unsigned compare tests membership.
struct Hot {
  uintptr_t stack_lo = 0, stack_size = 0;  // the running fiber's stack
  uintptr_t map_lo = 0, map_size = 0;      // dynamic shared buffer with its redzones
  uintptr_t dyn_lo = 0, dyn_size = 0;      // the launched dynamic shared bytes
  uintptr_t tls_lo = 0, tls_size = 0;      // kernel module's TLS block (static shared)
  uintptr_t cur_lo = 0, cur_size = 0;      // g_cur (threadIdx & co)
};
extern Hot g_hot;                  // memcheck.cpp
extern pthread_t g_launch_thread;  // the OS thread running the launch (memcheck.cpp)

// A shared byte, for messages: its address and offset, and for static shared the __shared__
// array there (memcheck.cpp).
std::string region_str(bool dyn, size_t off);

// ---- shadow cells (shadow.cpp) ----------------------------------------------------------------
// The shadow checks of an in-bounds shared access of n bytes at offset off of the dynamic buffer
// (dyn) or of the module's TLS block, then its record. record = false: only the race checks, as
// for a cp.async at its issue (its data may land at any moment from then on, so it conflicts
// with unordered accesses made before the issue too).
void shadow(bool dyn, size_t off, size_t n, Access k, int tid, const Origin& o, bool scalar, bool record = true);
// Fresh cells for a launch's dynamic bytes and TLS block; a new block's first barrier epoch.
void shadow_begin_launch(size_t dyn_bytes, size_t tls_bytes);
void shadow_begin_block();

}  // namespace detail
}  // namespace sim
}  // namespace fastcl

// cp.async. cp_async checks the copy (a size of 4, 8 or 16 bytes, src_bytes within it, aligned
// addresses, a shared destination) and queues it on its thread in the open group;
// cp_async_commit closes that group, and the waits perform every copy of the groups they retire,
// zero-filling the bytes past src_bytes. From its issue to its wait a copy is an in-flight write
// to its destination bytes for the race check (shadow.cpp); when performed it is checked and
// recorded as its thread's read of the source and write of the destination. Copies still queued
// when a thread exits land then. Compiled without instrumentation.
#include <cstdio>
#include <cstring>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

void perform_copy(int tid, const CpCopy& c, const std::string& when) {
  if (c.pending_marked) mark_pending(reinterpret_cast<uintptr_t>(c.dst), c.bytes, -1);
  const std::string note = "cp.async issued here, performed " + when;
  const Origin o{nullptr, c.site, note.c_str()};
  if (c.src_bytes > 0) check_access(reinterpret_cast<uintptr_t>(c.src), c.src_bytes, Access::Read, tid, o);
  check_access(reinterpret_cast<uintptr_t>(c.dst), c.bytes, Access::Write, tid, o);
  std::memcpy(c.dst, c.src, c.src_bytes);
  std::memset(static_cast<char*>(c.dst) + c.src_bytes, 0, c.bytes - c.src_bytes);
}

void retire(int tid, int64_t below, const Site& site) {
  SimThread& th = g_threads[tid];
  const std::string when = "at the wait at " + site_str(site);
  size_t keep = 0;
  for (size_t i = 0; i < th.cp.size(); ++i) {
    if (static_cast<int64_t>(th.cp[i].group) < below) perform_copy(tid, th.cp[i], when);
    else th.cp[keep++] = th.cp[i];
  }
  th.cp.resize(keep);
}

}  // namespace

void cp_async_flush(int tid) {
  SimThread& th = g_threads[tid];
  for (const CpCopy& c : th.cp) perform_copy(tid, c, "when its thread exited");
  th.cp.clear();
}

}  // namespace detail

using detail::FromKernel;
using detail::g_launch;
using detail::g_threads;

void cp_async(void* dst, const void* src, int bytes, int src_bytes, detail::Site site) {
  FromKernel guard;
  detail::require_fiber("cp_async");
  const int tid = g_launch.tid;
  if (bytes != 4 && bytes != 8 && bytes != 16)
    detail::fail("invalid cp.async", tid, "copy size " + std::to_string(bytes) + " at " + detail::site_str(site) + " (4, 8 or 16)");
  if (src_bytes < 0 || src_bytes > bytes)
    detail::fail("invalid cp.async", tid,
                 "source size " + std::to_string(src_bytes) + " at " + detail::site_str(site) + " outside [0, " +
                     std::to_string(bytes) + "]");
  if (reinterpret_cast<uintptr_t>(dst) % bytes || (src_bytes > 0 && reinterpret_cast<uintptr_t>(src) % bytes))
    detail::fail("misaligned address", tid,
                 "cp.async of " + std::to_string(bytes) + " bytes at " + detail::site_str(site) +
                     " with a source or destination not aligned to its size");
  if (!detail::in_shared_window(reinterpret_cast<uintptr_t>(dst))) {
    char addr[32];
    std::snprintf(addr, sizeof addr, "%p", dst);
    detail::fail("invalid cp.async", tid,
                 std::string("destination ") + addr + " at " + detail::site_str(site) + " is not shared memory");
  }
  const detail::Origin o{nullptr, site, "cp.async issued here"};
  detail::precheck_async_write(reinterpret_cast<uintptr_t>(dst), bytes, tid, o);
  const bool marked = detail::mark_pending(reinterpret_cast<uintptr_t>(dst), bytes, +1);
  detail::SimThread& th = g_threads[tid];
  th.cp.push_back({dst, src, bytes, src_bytes, th.cp_group, site, marked});
}

void cp_async_commit() {
  FromKernel guard;
  detail::require_fiber("cp_async_commit");
  ++g_threads[g_launch.tid].cp_group;
}

void cp_async_wait_group(int n, detail::Site site) {
  FromKernel guard;
  detail::require_fiber("cp_async_wait_group");
  const int tid = g_launch.tid;
  detail::retire(tid, static_cast<int64_t>(g_threads[tid].cp_group) - n, site);
}

void cp_async_wait_all(detail::Site site) {
  FromKernel guard;
  detail::require_fiber("cp_async_wait_all");
  const int tid = g_launch.tid;
  ++g_threads[tid].cp_group;  // wait_all commits the open group, then waits for everything
  detail::retire(tid, g_threads[tid].cp_group, site);
}

}  // namespace sim
}  // namespace fastcl

// Error reporting: the pieces every message is made of (threads, lanes, masks, source sites,
// kernel code addresses symbolised with addr2line, accesses) and fail(), which records the
// launch's first error and abandons the failing fiber. Compiled without instrumentation.
#include <dlfcn.h>
#include <ucontext.h>

#include <cstdio>
#include <cstdlib>
#include <cstring>

#include "state.h"

namespace fastcl {
namespace sim {
namespace detail {
namespace {

LaunchState& L = g_launch;

}  // namespace

std::string thread_str(int tid) {
  if (tid < 0) return "(none)";
  const uint3 i = g_threads[tid].idx;
  return "(" + std::to_string(i.x) + "," + std::to_string(i.y) + "," + std::to_string(i.z) + ")";
}

std::string thr(int t) {
  return "thread " + thread_str(t) + " [warp " + std::to_string(t >> 5) + " lane " + std::to_string(t & 31) + "]";
}

std::string where(int tid) {
  std::string s = "kernel " + L.name + ", block (" + std::to_string(L.block.x) + "," + std::to_string(L.block.y) +
                  "," + std::to_string(L.block.z) + ")";
  if (tid >= 0) s += ", " + thr(tid);
  return s;
}

std::string lane_str(int t) { return "lane " + std::to_string(t & 31) + " (thread " + thread_str(t) + ")"; }

std::string mask_str(unsigned m) {
  char b[16];
  std::snprintf(b, sizeof b, "0x%08x", m);
  return b;
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
    case Coll::Ldmatrix: return "ldmatrix";
    case Coll::Mma: return "mma.sync";
  }
  return "?";
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

void fail(const std::string& check, int tid, const std::string& detail) {
  if (!L.failed) {
    L.failed = true;
    L.error = "fastcl.sim: " + check + ": " + where(tid) + ": " + detail;
  }
  g_active = false;
  if (L.on_fiber) setcontext(&L.sched_ctx);  // abandon the fiber: no unwinding across contexts
}

}  // namespace detail
}  // namespace sim
}  // namespace fastcl

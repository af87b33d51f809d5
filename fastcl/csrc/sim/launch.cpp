// Launches: the limit checks, then the grid's blocks one at a time, x fastest (scheduler.cpp
// runs each block). Also the kernel attributes (set_max_dynamic_smem), occupancy, the device
// description and the small entry points of kernel code: kernel_begin/kernel_end, the dynamic
// shared buffer, __trap. Defines the launch's state. Compiled without instrumentation.
#include <algorithm>
#include <cstdlib>
#include <map>
#include <mutex>
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
std::map<const void*, size_t> g_smem_limit;  // set_max_dynamic_smem

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

}  // namespace

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
  mma_begin_launch(name);
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

}  // namespace detail

namespace {
DeviceProperties& properties_of_the_device() {
  static DeviceProperties p = [] {
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
  return p;
}
}  // namespace

const DeviceProperties* device_properties() { return &properties_of_the_device(); }

int set_multiprocessor_count(int count) {
  const int before = properties_of_the_device().multiProcessorCount;
  properties_of_the_device().multiProcessorCount = count;
  return before;
}

}  // namespace sim
}  // namespace fastcl
